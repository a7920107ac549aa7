"""The embedded warehouse: DuckDB runs the plan from ``lambda_functions.warehouse_sql`` in one BEGIN..COMMIT.

Staging is an Arrow table registered with the connection (DuckDB cannot read ``s3://`` here and
needs no file): the plan's ``load_stage`` copies it into the temporary staging table inside the
transaction, exactly where Redshift's COPY sits. A process that dies before COMMIT leaves the file
as it was (DuckDB's WAL holds only committed transactions), and a Python error rolls back.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from lambda_functions.contracts import InvalidRequestError
from lambda_functions.waits import REPORT_EVERY_S, WaitReport
from lambda_functions.warehouse_sql import (
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


def connect_waiting(
    path: str,
    wait_s: float = LOCK_WAIT_S,
    *,
    on_progress: Callable[[str], None] | None = None,
    report_every_s: float = REPORT_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> duckdb.DuckDBPyConnection:
    """Open ``path``, waiting (with backoff) while another process holds the file's lock.

    A wait is reported through ``on_progress`` every ``report_every_s`` seconds: how long so far
    and who holds the lock (the process DuckDB names: its program and PID, with the command
    line when it runs on this machine), then how long it took.

    Raises:
        duckdb.IOException: the lock is still held after ``wait_s`` seconds (or another IO
            error); the message names the holder.
    """
    report = WaitReport(
        f"the DuckDB file lock on {path}", on_progress, every_s=report_every_s, clock=clock
    )
    deadline = clock() + wait_s
    delay = 0.05
    while True:
        try:
            connection = duckdb.connect(path)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or clock() + delay > deadline:
                raise
            report.still(lock_holder(str(error)))
        else:
            report.done("acquired")
            return connection
        sleep(delay)
        delay = min(delay * 2, 1.0)


_HOLDER = re.compile(r"lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def lock_holder(message: str) -> str:
    """``held by PID 123 (<command line or program>)`` from DuckDB's lock error, or the
    error itself when it does not name the holder."""
    found = _HOLDER.search(message)
    if not found:
        return message
    pid, program = found["pid"], found["program"]
    with contextlib.suppress(OSError):  # the holder's command line, when it runs here
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if command:
            program = command if len(command) <= 160 else command[:157] + "..."
    return f"held by PID {pid} ({program})"


class DuckDBWarehouse:
    """A DuckDB database file as the warehouse: one connection per ``session()``."""

    dialect: Dialect = DUCKDB

    def __init__(self, path: str, on_progress: Callable[[str], None] | None = None):
        if not path:
            raise InvalidRequestError(
                "warehouse_location must name the DuckDB database file (LAKEHOUSE_DUCKDB_PATH)"
            )
        self.path = path
        self.on_progress = on_progress  # where a wait for the file lock is reported
        self._db: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        # Open per load and close at once: DuckDB locks the file for the process that has it open.
        self._db = connect_waiting(self.path, on_progress=self.on_progress)
        # Projected timestamps written without an offset are UTC (see warehouse_sql.staging),
        # whatever the machine's zone; casts to TIMESTAMPTZ read the session's.
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
                if statement.sql.startswith(("INSERT", "DELETE", "UPDATE")) and rows:
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
