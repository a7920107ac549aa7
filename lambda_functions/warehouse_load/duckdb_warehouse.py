"""The embedded warehouse: DuckDB running the same logical load plan as Redshift.

Plan, in one transaction: stage the changed rows, delete target rows whose keys changed, insert the
rows that are not deletes, and record the loaded lake version in the control table. A load that dies
before COMMIT leaves the warehouse as it was, and the control table still names the old version, so
the re-run loads the same changes again: nothing lost, nothing doubled.

Identifiers are validated by the request contract and quoted here; values are always parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pyarrow as pa

CONTROL_TABLE = "_lakehouse_loads"


def run(db: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    """Execute one statement and consume its result (DuckDB 2 requires it before the next)."""
    return db.execute(sql, params or []).fetchall()


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class LoadedState:
    table_id: str
    version: int


@dataclass(frozen=True)
class Reconciliation:
    warehouse_rows: int
    lake_rows: int
    duplicate_keys: int
    missing_keys: list[str]  # in the lake, not in the warehouse (first few)
    extra_keys: list[str]  # in the warehouse, not in the lake (first few)

    @property
    def matches(self) -> bool:
        return (
            self.warehouse_rows == self.lake_rows
            and not self.duplicate_keys
            and not self.missing_keys
            and not self.extra_keys
        )


class DuckDBWarehouse:
    def __init__(self, path: str, schema: str, table: str):
        self.path = path
        self.schema = schema
        self.table = table
        self.target = f"{quote(schema)}.{quote(table)}"
        self.control = f"{quote(schema)}.{quote(CONTROL_TABLE)}"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # Open per load and close at once: DuckDB locks the file for the process that has it open.
        connection = duckdb.connect(self.path)
        try:
            yield connection
        finally:
            connection.close()

    def ensure_tables(self, db: duckdb.DuckDBPyConnection) -> None:
        run(db, f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
        run(
            db,
            f"""CREATE TABLE IF NOT EXISTS {self.control} (
                table_name VARCHAR NOT NULL, lake_table_id VARCHAR NOT NULL,
                lake_version BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL)""",
        )
        run(
            db,
            f"""CREATE TABLE IF NOT EXISTS {self.target} (
                _id VARCHAR NOT NULL, doc JSON, _op VARCHAR, _pos BIGINT,
                _event_time TIMESTAMPTZ, _lake_version BIGINT NOT NULL,
                _loaded_at TIMESTAMPTZ NOT NULL)""",
        )

    def loaded_state(self, db: duckdb.DuckDBPyConnection) -> LoadedState | None:
        rows = run(
            db,
            f"SELECT lake_table_id, lake_version FROM {self.control} WHERE table_name = ?",
            [self.table],
        )
        return LoadedState(rows[0][0], rows[0][1]) if rows else None

    def apply(
        self,
        db: duckdb.DuckDBPyConnection,
        stage: pa.Table,
        *,
        full: bool,
        table_id: str,
        version: int,
    ) -> tuple[int, int]:
        """Apply staged changes atomically; return (rows deleted, rows inserted)."""
        db.register("lake_stage", stage)
        try:
            run(db, "BEGIN TRANSACTION")
            if full:
                deleted = run(db, f"DELETE FROM {self.target}")[0][0]
            else:
                deleted = run(
                    db, f"DELETE FROM {self.target} WHERE _id IN (SELECT _id FROM lake_stage)"
                )[0][0]
            inserted = run(
                db,
                f"""INSERT INTO {self.target}
                    SELECT _id, doc::JSON, _op, _pos, _event_time, ?, now()
                    FROM lake_stage WHERE NOT _deleted""",
                [version],
            )[0][0]
            run(db, f"DELETE FROM {self.control} WHERE table_name = ?", [self.table])
            run(
                db,
                f"INSERT INTO {self.control} VALUES (?, ?, ?, now())",
                [self.table, table_id, version],
            )
            run(db, "COMMIT")
        except BaseException:
            run(db, "ROLLBACK")
            raise
        finally:
            db.unregister("lake_stage")
        return deleted, inserted

    def reconcile(self, db: duckdb.DuckDBPyConnection, lake_ids: pa.Array) -> Reconciliation:
        db.register("lake_ids", pa.table({"_id": lake_ids}))
        try:
            ((rows, distinct),) = run(
                db, f"SELECT count(*), count(DISTINCT _id) FROM {self.target}"
            )
            missing = run(
                db,
                f"SELECT _id FROM lake_ids EXCEPT SELECT _id FROM {self.target} ORDER BY 1 LIMIT 10",
            )
            extra = run(
                db,
                f"SELECT _id FROM {self.target} EXCEPT SELECT _id FROM lake_ids ORDER BY 1 LIMIT 10",
            )
        finally:
            db.unregister("lake_ids")
        return Reconciliation(
            warehouse_rows=rows,
            lake_rows=len(lake_ids),
            duplicate_keys=rows - distinct,
            missing_keys=[r[0] for r in missing],
            extra_keys=[r[0] for r in extra],
        )
