"""Load the lake table's changes since the last loaded version into the warehouse.

Incremental by default (Delta change data feed), full when it must be (see ``lake_changes``) or
when the projection gained columns (so every row gets them). The SQL comes from
``lambda_functions.warehouse_sql`` and is the same logical plan on DuckDB and Redshift; only the executor differs. The loaded version is
recorded in the warehouse in the same transaction as the data, and the transaction first checks
that the control row is still the one the load was planned from, so a re-run after a failure at
any point loads the same changes once, and a replayed or stale load commits nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lambda_functions.contracts import LoadRequest
from lambda_functions.lake import ObjectStore, open_store
from lambda_functions.lake.lake_table import (
    LakeTableMissingError,
    lake_table_location,
    masking_generation,
)
from lambda_functions.warehouse_load.lake_changes import lake_keys, read_lake_changes
from lambda_functions.warehouse_load.reconcile import Reconciliation, reconcile
from lambda_functions.warehouse_load.set_aside import mark_set_aside
from lambda_functions.warehouse_sql import (
    BASE_COLUMNS,
    Dialect,
    LoadedState,
    ProjectedColumn,
    PurgeBelow,
    StageSource,
    Statement,
    TargetTable,
    check_column_types,
    column_additions,
    columns_fit_in_load,
    columns_query,
    ensure_tables,
    history_rows_query,
    history_target,
    history_value_columns,
    load_transaction,
    loaded_state_query,
    parse_projection,
    set_aside_query,
    unpurged_history_query,
)


class Warehouse(Protocol):
    """What the load needs from a warehouse; ``DuckDBWarehouse`` and ``RedshiftWarehouse``."""

    dialect: Dialect

    def session(self) -> AbstractContextManager[None]: ...

    def query(self, statement: Statement) -> list[tuple[Any, ...]]: ...

    def run_transaction(self, statements: Sequence[Statement], *, name: str) -> dict[str, int]: ...

    def stage(
        self, rows: pa.Table, *, key: str, projection: Sequence[ProjectedColumn] = ()
    ) -> StageSource: ...

    def unstage(self, *, key: str, succeeded: bool) -> None: ...


@dataclass(frozen=True)
class LoadResult:
    """What one load did (reported to Dagster as the materialization's metadata).

    Attributes:
        target: ``schema.table``, folded as the warehouse resolves it.
        warehouse_kind: ``"duckdb"`` or ``"redshift"``.
        lake_version: the lake table version now recorded as loaded.
        previous_version: the version loaded before, None on a first load or a reload from 0.
        full_reload: every row was reloaded (first load, lost change feed, new columns, asked).
        reason: why this load was incremental or full, in words.
        rows_staged: change rows staged (latest change per key; with history, one per key per
            lake commit); deletes included.
        rows_deleted / rows_inserted: rows the transaction's DELETE / INSERT affected
            (Redshift's ``ResultRows``; 0 when nothing was staged).
        projected_columns / columns_added / undeclared_columns: column names, in order.
        documents_set_aside: staged documents over the warehouse's limits, recorded, not loaded.
        reconciliation: the comparison with the lake at ``lake_version`` (None if not asked).
        duration_s: wall-clock seconds of the whole load.
        statements: labels of the load transaction's statements, in order.
        history_table: ``schema.<table>_history`` when the collection keeps history, else None.
        history_rows_inserted: versions added to the history table (``insert_history``).
        history_rows_closed: history rows given their ``valid_to`` (``close_history`` and, on
            a full reload, ``close_history_absent``).
        history_rows_purged: history rows whose values were set to NULL after a masking rules
            change (``purge_history``; 0 when it did not run).
    """

    target: str
    warehouse_kind: str
    lake_version: int
    previous_version: int | None
    full_reload: bool
    reason: str
    rows_staged: int
    rows_deleted: int
    rows_inserted: int
    projected_columns: list[str]
    columns_added: list[str]
    undeclared_columns: list[str]  # in the table, no longer projected: kept, NULL in new rows
    documents_set_aside: int  # staged by this load but over the warehouse's limits (not loaded)
    reconciliation: Reconciliation | None
    duration_s: float
    statements: list[str] = field(default_factory=list)  # labels of the transaction, in order
    history_table: str | None = None
    history_rows_inserted: int = 0
    history_rows_closed: int = 0
    history_rows_purged: int = 0

    @property
    def warehouse_rows(self) -> int:
        return self.reconciliation.warehouse_rows if self.reconciliation else -1


def staging_key(target: TargetTable, version: int) -> str:
    """Where the staged rows of a load are written under the lake (read by Redshift's COPY)."""
    return f"_staging/{target.schema}/{target.table}/{version}/part.parquet"


def open_warehouse(
    request: LoadRequest, store: ObjectStore, on_progress: Callable[[str], None] | None = None
) -> Warehouse:
    """The warehouse the request names. Imports stay local: each path needs only its own.

    Args:
        request: a validated load request (``warehouse_kind`` and its connection fields).
        store: the lake's object store (Redshift stages its COPY input there: S3 only).
        on_progress: hears about long waits (the DuckDB file lock, a Data API statement).

    Returns:
        A ``DuckDBWarehouse`` on ``warehouse_location``, or a ``RedshiftWarehouse`` through the
        Redshift Data API.

    Raises:
        InvalidRequestError: no DuckDB file; an incomplete Redshift connection
            (``check_redshift_connection``); a lake that is not on S3 for Redshift.
        UnsafeSqlValueError: the IAM role is not a role ARN.
    """
    if request.warehouse_kind == "duckdb":
        from lambda_functions.warehouse_load.duckdb_warehouse import DuckDBWarehouse

        return DuckDBWarehouse(request.warehouse_location, on_progress=on_progress)
    from lambda_functions.warehouse_load.redshift import (
        RedshiftConnection,
        RedshiftDataApiClient,
        RedshiftWarehouse,
    )

    connection = RedshiftConnection(
        database=request.redshift_database,
        workgroup=request.redshift_workgroup,
        cluster=request.redshift_cluster,
        db_user=request.redshift_db_user,
        secret_arn=request.redshift_secret_arn,
    )
    client = RedshiftDataApiClient(
        connection,
        timeout_s=request.redshift_timeout_s,
        secrets=(request.redshift_iam_role,),
        on_progress=on_progress,
    )
    return RedshiftWarehouse(client, store, request.redshift_iam_role)


def load_changes(
    request: LoadRequest,
    *,
    store: ObjectStore | None = None,
    warehouse: Warehouse | None = None,
    on_progress: Callable[[str], None] | None = None,
    check: bool = True,
) -> LoadResult:
    """Apply the lake table's changes since the loaded version in one warehouse transaction, then
    (``check``) reconcile the warehouse with the lake at the loaded version.

    Incremental from the last loaded lake version (the control row ``_lakehouse_loads``): the
    Delta change data feed since it, latest change per key; full when there is no loaded
    version, the lake table was replaced, the feed is gone (vacuumed), the projection gained
    columns, or ``force_full_reload``. The delete of changed keys, the insert of their latest
    versions and the control row's update run as ONE transaction (one Redshift Data API
    ``BatchExecuteStatement``, which runs its SQL statements as a single transaction; DuckDB
    BEGIN..COMMIT), guarded by the control row the plan was made from. With
    ``request.history`` the same transaction keeps ``<table>_history`` (SCD type 2, every
    commit's version of each changed key, ``lambda_functions.warehouse_sql.history``); an empty
    history table of a loaded collection is seeded by a full reload; after a masking rules change
    (the lake's ``masking_generation``) the same transaction NULLs ``doc`` and the projected
    columns of history versions below its position (``purge_history``, only while some still
    hold a value). Hence:
    atomic (a failure leaves the previous data and control row), idempotent (re-running after
    any failure loads the same changes once; re-running after success loads nothing) and safe
    against a concurrent or stale load (it commits nothing). Redshift reads the staged rows with
    ``COPY ... FORMAT AS PARQUET`` from S3 under the lake (Amazon Redshift Database Developer
    Guide, "COPY from columnar data formats") using the request's IAM role; the staging object
    is deleted after success and kept after a failure for diagnosis.

    Args:
        request: the load request (validated by ``LoadRequest.from_event``/``validate``).
        store: the lake's object store; default: opened from ``request.lake_uri``.
        warehouse: the executor; default: ``open_warehouse(request, store, on_progress)``.
        on_progress: receives progress lines (versions, keys to apply, long waits).
        check: reconcile after loading (a read-only comparison by key-hash bucket).

    Returns:
        A ``LoadResult``; ``reconciliation`` is set when ``check``.

    Raises:
        LakeTableMissingError: no lake table yet (materialize the merge stage first).
        PlanError: the projection does not fit the table's existing columns or the warehouse's
            limits (the message names the fix); nothing was run.
        RedshiftStatementError / RedshiftSerializationError / RedshiftTimeoutError: Redshift
            failed, kept conflicting or timed out; nothing of the load was committed.
        duckdb.Error: DuckDB failed (e.g. a value that does not cast to its declared type);
            nothing was committed.
    """
    started = time.monotonic()
    say = on_progress or (lambda _message: None)
    projection = parse_projection(request.projection)
    store = store or open_store(request.lake_uri)
    uri, options = lake_table_location(store, request.database, request.collection)
    warehouse = warehouse or open_warehouse(request, store, say)
    dialect = warehouse.dialect
    target = TargetTable.named(dialect, request.target_schema, request.table_name)
    history = history_target(dialect, target) if request.history else None
    with warehouse.session():
        warehouse.run_transaction(
            ensure_tables(dialect, target, history=history), name=f"lakehouse-ensure {target}"
        )
        rows = warehouse.query(loaded_state_query(dialect, target))
        state = LoadedState(rows[0][0], int(rows[0][1])) if rows else None
        catalog = warehouse.query(columns_query(dialect, target))
        check_column_types(target, projection, catalog)
        existing = {str(row[0]).lower() for row in catalog}
        add = [c for c in projection if c.column not in existing]
        add_history: list[ProjectedColumn] = []
        history_values: list[str] = []
        seed_history = False
        if history:
            history_catalog = warehouse.query(columns_query(dialect, history))
            check_column_types(history, projection, history_catalog)
            kept = {str(row[0]).lower() for row in history_catalog}
            add_history = [c for c in projection if c.column not in kept]
            history_values = history_value_columns(sorted(kept), projection)
            seed_history = state is not None and not warehouse.query(history_rows_query(history))
        undeclared = sorted(existing - set(BASE_COLUMNS) - {c.column for c in projection})
        if undeclared:
            say(
                f"{target}: columns {', '.join(undeclared)} are no longer projected; they are "
                "kept (never dropped) and left NULL in rows loaded from now on"
            )
        added_ahead: list[ProjectedColumn] = []
        additions = len(add) + len(add_history)
        if additions and not columns_fit_in_load(
            dialect, additions, history=bool(history), purge=bool(history)
        ):
            batches = column_additions(
                dialect, target, add, history=history, history_columns=add_history
            )
            for number, batch in enumerate(batches, 1):
                warehouse.run_transaction(batch, name=f"lakehouse-columns {target} {number}")
            say(
                f"{target}: {additions} projected columns added ahead of the load in "
                f"{len(batches)} transactions (more than one transaction holds); the control "
                "row was cleared, so this load reloads every row to fill them"
            )
            added_ahead, add, add_history, state = add, [], [], None
        full_reason = None
        if request.force_full_reload:
            full_reason = "full reload requested"
        elif add:
            full_reason = (
                f"projection added column(s) {', '.join(c.column for c in add)}: full reload "
                "to fill them for every row"
            )
        elif seed_history:
            full_reason = f"history table {history} is empty: full reload to seed it"
        try:
            table = DeltaTable(uri, storage_options=options)
        except TableNotFoundError as error:
            raise LakeTableMissingError(
                f"no lake table at {uri}: materialize the merge stage first"
            ) from error
        changes = read_lake_changes(
            table,
            since_version=state.version if state else None,
            since_table_id=state.table_id if state else None,
            full_reason=full_reason,
            every_version=history is not None,
        )
        say(
            f"{target}: lake version {changes.to_version} ({changes.reason}); "
            f"{changes.rows.num_rows} keys to apply"
        )
        purge_below = None
        if history:  # after a masking rules change: null what the old rules let through
            held = [c for c in history_values if c in kept]  # columns the table has already
            purge_below = _masking_purge(request, table, changes.rows, warehouse, history, held)
            if purge_below is not None:
                say(f"{history}: purging versions captured before the masking rules changed")
        affected: dict[str, int] = {}
        labels: list[str] = []
        set_aside = 0
        if changes.full or changes.rows.num_rows or purge_below is not None:
            key = staging_key(target, changes.to_version)
            staged = mark_set_aside(changes.rows, dialect)
            set_aside = staged.num_rows - staged.column("_set_aside").null_count
            if set_aside:
                say(
                    f"{target}: {set_aside} document(s) over {dialect.name}'s limits set aside "
                    f"(recorded in {target.schema}._lakehouse_set_aside, not loaded)"
                )
            source = warehouse.stage(staged, key=key, projection=projection)
            succeeded = False
            try:
                statements = load_transaction(
                    dialect,
                    target,
                    source=source,
                    full=changes.full,
                    expected=state,
                    table_id=changes.table_id,
                    version=changes.to_version,
                    projection=projection,
                    add_columns=add,
                    history=history,
                    add_history_columns=add_history,
                    purge_history_below=purge_below,
                    history_values=history_values,
                )
                labels = [s.label for s in statements]
                affected = warehouse.run_transaction(
                    statements, name=f"lakehouse-load {target}@{changes.to_version}"
                )
                succeeded = True
            finally:
                warehouse.unstage(key=key, succeeded=succeeded)
        reconciliation = None
        if check:
            aside = warehouse.query(set_aside_query(dialect, target))
            reconciliation = reconcile(warehouse, target, lake_keys(table, changes), aside)
    return LoadResult(
        target=str(target),
        warehouse_kind=dialect.name,
        lake_version=changes.to_version,
        previous_version=state.version if state else None,
        full_reload=changes.full,
        reason=changes.reason,
        rows_staged=changes.rows.num_rows,
        rows_deleted=max(affected.get("delete_changed", 0), 0),
        rows_inserted=max(affected.get("insert_upserts", 0), 0),
        projected_columns=[c.column for c in projection],
        columns_added=[c.column for c in added_ahead + add],
        undeclared_columns=undeclared,
        documents_set_aside=set_aside,
        reconciliation=reconciliation,
        duration_s=time.monotonic() - started,
        statements=labels,
        history_table=str(history) if history else None,
        history_rows_inserted=max(affected.get("insert_history", 0), 0),
        history_rows_purged=max(affected.get("purge_history", 0), 0),
        history_rows_closed=sum(
            max(affected.get(label, 0), 0) for label in ("close_history", "close_history_absent")
        ),
    )


def _masking_purge(
    request: LoadRequest,
    table: DeltaTable,
    rows: pa.Table,
    warehouse: Warehouse,
    history: TargetTable,
    columns: Sequence[str],
) -> PurgeBelow | None:
    """The history versions captured before the lake's latest masking rules change, when some
    may hold values: this window stages versions of lake versions before it, or a history row
    before it still holds a value in ``columns``; None when there is nothing to purge (the
    rules never changed, or the change is purged already)."""
    generation = masking_generation(table, f"{request.database}.{request.collection}")
    if generation is None:
        return None
    below = PurgeBelow(generation.position, generation.lake_version)
    if rows.num_rows:  # the same test as ``PurgeBelow.predicate``, on the staged versions
        before = pc.less(rows["_pos"], below.position)
        if "_commit_version" in rows.column_names:
            at_start = pc.equal(rows["_pos"], below.position)
            earlier = pc.less(rows["_commit_version"], below.lake_version)
            before = pc.or_(before, pc.and_(at_start, earlier))
        if pc.any(before).as_py():
            return below
    held = warehouse.query(unpurged_history_query(history, below=below, columns=columns))
    return below if held else None
