"""The embedded warehouse: DuckDB runs the plan from ``sql_plan`` in one BEGIN..COMMIT.

Staging is an Arrow table registered with the connection (DuckDB cannot read ``s3://`` here and
needs no file): the plan's ``load_stage`` copies it into the temporary staging table inside the
transaction, exactly where Redshift's COPY sits. A process that dies before COMMIT leaves the file
as it was (DuckDB's WAL holds only committed transactions), and a Python error rolls back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from lambda_functions.warehouse_load.sql_plan import (
    DUCKDB,
    Dialect,
    ProjectedColumn,
    StageSource,
    Statement,
)

STAGE_RELATION = "_lakehouse_stage_rows"
# DuckDB lets one process at a time open a database file for writing; loads of several
# collections running in parallel (one Lambda worker each) take turns, waiting up to this long.
LOCK_WAIT_S = 300.0


def connect_waiting(path: str, wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open ``path``, waiting (with backoff) while another process holds the file's lock."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


class DuckDBWarehouse:
    """A DuckDB database file as the warehouse: one connection per ``session()``."""

    dialect: Dialect = DUCKDB

    def __init__(self, path: str):
        if not path:
            raise ValueError(
                "warehouse_location must name the DuckDB database file (LAKEHOUSE_DUCKDB_PATH)"
            )
        self.path = path
        self._db: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        # Open per load and close at once: DuckDB locks the file for the process that has it open.
        self._db = connect_waiting(self.path)
        # Projected timestamps written without an offset are UTC (see sql_plan), whatever the
        # machine's zone; casts to TIMESTAMPTZ read the session's.
        self._db.execute("SET TimeZone = 'UTC'")
        try:
            yield
        finally:
            self._db.close()
            self._db = None

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        if self._db is None:
            raise RuntimeError("use the warehouse inside `with warehouse.session():`")
        return self._db

    def _execute(self, statement: Statement) -> list[tuple[Any, ...]]:
        """Run one statement and consume its result (DuckDB 2 requires it before the next)."""
        return self.db.execute(statement.sql, dict(statement.parameters) or None).fetchall()

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        return self._execute(statement)

    def run_transaction(self, statements: Sequence[Statement], *, name: str) -> dict[str, int]:
        """Run ``statements`` as one transaction; return rows affected by label (DML only)."""
        affected: dict[str, int] = {}
        self.db.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                rows = self._execute(statement)
                if statement.sql.startswith(("INSERT", "DELETE")) and rows:
                    affected[statement.label] = int(rows[0][0])
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # keep the original error if this fails too
                self.db.execute("ROLLBACK")
            raise
        return affected

    def stage(
        self, rows: pa.Table, *, key: str, projection: Sequence[ProjectedColumn] = ()
    ) -> StageSource:
        # The projection is computed by the plan's load_stage, inside the transaction.
        self.db.register(STAGE_RELATION, rows)
        return StageSource(relation=STAGE_RELATION)

    def unstage(self, *, key: str, succeeded: bool) -> None:
        self.db.unregister(STAGE_RELATION)
