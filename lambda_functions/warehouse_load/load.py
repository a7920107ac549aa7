"""Load the lake table's changes since the last loaded version into the warehouse.

Incremental by default (Delta change data feed), full when it must be (see ``lake_changes``). The
loaded version is recorded in the warehouse in the same transaction as the data, so a re-run after
any failure loads nothing twice and misses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lambda_functions.contracts import LoadRequest
from lambda_functions.lake import ObjectStore, open_store
from lambda_functions.merge.merge import lake_table_location
from lambda_functions.warehouse_load.duckdb_warehouse import DuckDBWarehouse, Reconciliation
from lambda_functions.warehouse_load.lake_changes import lake_keys, read_lake_changes


class LakeTableMissingError(RuntimeError):
    """There is no lake table to load yet."""


@dataclass(frozen=True)
class LoadResult:
    target: str
    lake_version: int
    previous_version: int | None
    full_reload: bool
    reason: str
    rows_staged: int
    rows_deleted: int
    rows_inserted: int
    warehouse_rows: int
    reconciliation: Reconciliation
    duration_s: float


def load_changes(
    request: LoadRequest,
    *,
    store: ObjectStore | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> LoadResult:
    started = time.monotonic()
    say = on_progress or (lambda _message: None)
    if request.warehouse_kind != "duckdb":
        raise NotImplementedError(
            "loading into Redshift is not available in this version; set "
            "LAKEHOUSE_WAREHOUSE=duckdb (the Redshift Data API path is tracked separately)"
        )
    if not request.warehouse_location:
        raise ValueError("warehouse_location must name the DuckDB database file")
    store = store or open_store(request.lake_uri)
    uri, options = lake_table_location(store, request.database, request.collection)
    warehouse = DuckDBWarehouse(
        request.warehouse_location, request.target_schema, request.table_name
    )
    with warehouse.connect() as db:
        warehouse.ensure_tables(db)
        state = warehouse.loaded_state(db)
        try:
            changes = read_lake_changes(
                uri,
                options,
                since_version=state.version if state else None,
                since_table_id=state.table_id if state else None,
            )
        except Exception as error:
            if type(error).__name__ == "TableNotFoundError":
                raise LakeTableMissingError(
                    f"no lake table at {uri}: materialize the merge stage first"
                ) from error
            raise
        say(
            f"{warehouse.target}: lake version {changes.to_version} ({changes.reason}); "
            f"{changes.rows.num_rows} keys to apply"
        )
        deleted = inserted = 0
        if changes.full or changes.rows.num_rows:
            deleted, inserted = warehouse.apply(
                db,
                changes.rows,
                full=changes.full,
                table_id=changes.table_id,
                version=changes.to_version,
            )
        reconciliation = warehouse.reconcile(db, lake_keys(uri, options, changes.to_version))
    return LoadResult(
        target=f"{request.target_schema}.{request.table_name}",
        lake_version=changes.to_version,
        previous_version=state.version if state else None,
        full_reload=changes.full,
        reason=changes.reason,
        rows_staged=changes.rows.num_rows,
        rows_deleted=deleted,
        rows_inserted=inserted,
        warehouse_rows=reconciliation.warehouse_rows,
        reconciliation=reconciliation,
        duration_s=time.monotonic() - started,
    )
