"""The logical plan of one load: DDL, the one load transaction, column additions, size limits.

The statements and why they run as one transaction are in the package doc
(``lambda_functions.warehouse_sql``).
"""

from __future__ import annotations

from collections.abc import Sequence

from lambda_functions.warehouse_sql.dialects import Dialect
from lambda_functions.warehouse_sql.errors import PlanError
from lambda_functions.warehouse_sql.history import (
    HISTORY_STATEMENTS,
    PURGE_HISTORY_STATEMENTS,
    PurgeBelow,
    create_history,
    history_statements,
    history_target,
)
from lambda_functions.warehouse_sql.literals import checked_table_id, sql_integer, sql_string
from lambda_functions.warehouse_sql.names import (
    BASE_COLUMNS,
    HISTORY_SUFFIX,
    MAX_IDENTIFIER_BYTES,
    quote_identifier,
)
from lambda_functions.warehouse_sql.projection import ProjectedColumn
from lambda_functions.warehouse_sql.staging import insert_changes, staged_type
from lambda_functions.warehouse_sql.statements import (
    LoadedState,
    StageSource,
    Statement,
    TargetTable,
)


def ensure_tables(
    dialect: Dialect, target: TargetTable, *, history: TargetTable | None = None
) -> list[Statement]:
    """Idempotent DDL: schema, control table, target table with the load's own columns, and the
    history table (``warehouse_sql.history``) when ``history`` names it.

    Projected columns are not created here but by the load transaction (``add_column:*``), so a
    load that fails, e.g. on a value that does not fit a declared type, leaves no column behind
    and a corrected projection applies cleanly on the re-run."""
    d = dialect
    columns = d.own_columns(['"_event_time" TIMESTAMPTZ'])
    return [
        Statement(
            "create_schema", f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(target.schema)}"
        ),
        Statement(
            "create_control",
            f"CREATE TABLE IF NOT EXISTS {target.control} ("
            '"table_name" VARCHAR(127) NOT NULL, "lake_table_id" VARCHAR(64) NOT NULL, '
            '"lake_version" BIGINT NOT NULL, "loaded_at" TIMESTAMPTZ NOT NULL)',
        ),
        Statement(
            "create_set_aside",
            f"CREATE TABLE IF NOT EXISTS {target.set_aside} ("
            f'"table_name" VARCHAR(127) NOT NULL, "_id" {d.key_type} NOT NULL, "_pos" BIGINT, '
            '"doc_bytes" BIGINT, "reason" VARCHAR(256), "lake_version" BIGINT NOT NULL)',
        ),
        Statement(
            "create_target",
            f"CREATE TABLE IF NOT EXISTS {target.qualified} ({', '.join(columns)})"
            f"{d.table_options}",
        ),
        *([create_history(d, history)] if history else []),
    ]


def loaded_state_query(dialect: Dialect, target: TargetTable) -> Statement:
    """The control row of ``target``: at most one ``(lake_table_id, lake_version)`` row."""
    return target.bookkeeping_rows(
        "loaded_state",
        dialect,
        target.control,
        ["lake_table_id", "lake_version"],
        any_case=True,
    )


def load_transaction(
    dialect: Dialect,
    target: TargetTable,
    *,
    source: StageSource,
    full: bool,
    expected: LoadedState | None,
    table_id: str,
    version: int,
    projection: Sequence[ProjectedColumn],
    add_columns: Sequence[ProjectedColumn] = (),
    history: TargetTable | None = None,
    add_history_columns: Sequence[ProjectedColumn] = (),
    purge_history_below: PurgeBelow | None = None,
    history_values: Sequence[str] = (),
) -> list[Statement]:
    """The statements of one load, to run as ONE transaction, in order (see the package doc).

    Atomic and idempotent when run as one transaction: the first statement (``guard``) fails
    the transaction unless the control row still holds ``expected``; the last ones replace the
    control row with ``table_id``/``version``; so a re-run after any failure applies the same
    changes once, and a stale or replayed plan commits nothing. On Redshift the list is one
    Data API ``BatchExecuteStatement`` (at most 40 statements, each under 100 KB).

    Args:
        dialect: the warehouse's dialect.
        target: the loaded table.
        source: where the staged rows come from (a DuckDB relation, or S3 Parquet + IAM role).
        full: reload every row (delete all) instead of the staged keys only.
        expected: the control row the plan was made from; None when there was none.
        table_id: the Delta table's id (a UUID) recorded in the control row.
        version: the lake table version being loaded (recorded as ``_lake_version``).
        projection: every projected column, in declaration order.
        add_columns: the projected columns the table lacks, added inside this transaction.
        history: the history table (``history_target``) when the collection keeps history
            (``warehouse_sql.history``); the stage then holds every version of the window.
        add_history_columns: the projected columns the history table lacks.
        purge_history_below: after a masking rules change, the versions captured before it:
            ``purge_history`` NULLs their ``history_values`` (None: no purge).
        history_values: the history table's value columns (``history_value_columns``).

    Returns:
        ``LOAD_STATEMENTS + len(add_columns)`` statements; with ``history``, also its
        ``add_history_column:*`` and ``close_history``, (full) ``close_history_absent`` and
        ``insert_history`` (and ``purge_history`` when ``purge_history_below``) before the
        control row.

    Raises:
        PlanError: more statements than the dialect's batch holds, or a statement over its size.
        UnsafeSqlValueError: a value that fails its pattern (table id, URI, role).
    """
    d = dialect
    checked_table_id(table_id)
    staged = target.stage
    table_name = sql_string(target.table)
    stage_columns = [
        f'"_id" {d.key_type} NOT NULL',
        f'"doc" {d.staged_document_type}',
        '"_op" VARCHAR(16)',
        '"_pos" BIGINT',
        '"_event_time" TIMESTAMPTZ',
        '"_deleted" BOOLEAN NOT NULL',
        '"_set_aside" VARCHAR(256)',
        '"_doc_bytes" BIGINT',
        *(['"_commit_version" BIGINT'] if history else []),
        *(f"{quote_identifier(c.column)} {staged_type(c)}" for c in projection),
    ]
    statements = [
        _guard(target, expected),
        Statement(
            "create_stage",
            f"CREATE TEMP TABLE {staged} ({', '.join(stage_columns)}){d.stage_options}",
        ),
        d.load_stage(staged, source, projection, history=history is not None),
        *(_add_column(target, c) for c in add_columns),
    ]
    if history:
        statements += [_add_column(history, c, "add_history_column") for c in add_history_columns]
    if full:
        statements += [
            Statement("delete_changed", f"DELETE FROM {target.qualified}"),
            Statement(
                "delete_set_aside",
                f'DELETE FROM {target.set_aside} WHERE "table_name" = {table_name}',
            ),
        ]
    else:
        statements += [
            Statement(
                "delete_changed",
                f"DELETE FROM {target.qualified} USING {staged} "
                f'WHERE {target.qualified}."_id" = {staged}."_id"',
            ),
            Statement(
                "delete_set_aside",
                f"DELETE FROM {target.set_aside} USING {staged} "
                f'WHERE {target.set_aside}."table_name" = {table_name} '
                f'AND {target.set_aside}."_id" = {staged}."_id"',
            ),
        ]
    # With history the stage holds every commit's version of a key: the latest is the last commit.
    newest = '"_commit_version" DESC, "_pos" DESC' if history else '"_pos" DESC'
    latest = (
        f'(SELECT *, ROW_NUMBER() OVER (PARTITION BY "_id" ORDER BY {newest}) AS "_rank" '
        f'FROM {staged}) AS s WHERE s."_rank" = 1 AND NOT s."_deleted"'
    )
    statements += [
        insert_changes(
            "insert_upserts",
            d,
            table=target.qualified,
            columns=BASE_COLUMNS,
            row="s",
            computed=[sql_integer(version), d.now],
            projection=projection,
            source=f'{latest} AND s."_set_aside" IS NULL',
        ),
        Statement(
            "insert_set_aside",
            f'INSERT INTO {target.set_aside} ("table_name", "_id", "_pos", "doc_bytes", '
            f'"reason", "lake_version") SELECT {table_name}, s."_id", s."_pos", '
            f's."_doc_bytes", s."_set_aside", {sql_integer(version)} FROM {latest} '
            'AND s."_set_aside" IS NOT NULL',
        ),
    ]
    if history:
        statements += history_statements(
            d,
            history,
            stage=staged,
            full=full,
            projection=projection,
            purge_below=purge_history_below,
            value_columns=history_values,
        )
    statements += [
        Statement(
            "delete_control",
            f"DELETE FROM {target.control} WHERE {_control_row(target)}",
        ),
        Statement(
            "insert_control",
            f'INSERT INTO {target.control} ("table_name", "lake_table_id", "lake_version", '
            f'"loaded_at") VALUES ({table_name}, {sql_string(table_id)}, '
            f"{sql_integer(version)}, {d.now})",
        ),
        Statement("drop_stage", f"DROP TABLE {staged}"),
    ]
    if d.max_batch_statements and len(statements) > d.max_batch_statements:
        raise PlanError(
            f"this load needs {len(statements)} statements but {d.name} runs at most "
            f"{d.max_batch_statements} in one transaction; add fewer projected columns per load "
            f"(at most {d.max_batch_statements - len(statements) + len(add_columns)} at once)"
        )
    check_statement_sizes(d, statements)
    return statements


def _guard(target: TargetTable, expected: LoadedState | None) -> Statement:
    """Fail the transaction (a cast error carrying the message) unless the control row is the one
    the plan was made from: a stale or replayed plan can never commit over a newer load."""
    where = _control_row(target)
    if expected is None:
        condition = f"(SELECT COUNT(*) FROM {target.control} WHERE {where}) = 0"
    else:
        condition = (
            f"(SELECT COUNT(*) FROM {target.control} WHERE {where} AND "
            f'"lake_table_id" = {sql_string(checked_table_id(expected.table_id))} AND '
            f'"lake_version" = {sql_integer(expected.version)}) = 1'
        )
    message = (
        f"lakehouse load of {target} stopped: the control row changed since this load was "
        "planned (another load committed first); nothing was applied, re-run the load"
    )
    return Statement(
        "guard",
        f"SELECT CAST(CASE WHEN {condition} THEN '0' ELSE {sql_string(message)} END AS INTEGER)",
    )


# Statements of ``load_transaction`` besides its ADD COLUMNs (a test holds it to the plan).
LOAD_STATEMENTS = 10


def columns_fit_in_load(
    dialect: Dialect, count: int, *, history: bool = False, purge: bool = False
) -> bool:
    """Whether ``count`` ADD COLUMNs (of the table and, with ``history``, of its history table)
    fit in the load's one transaction (``max_batch_statements``: 40 for the Data API's
    ``batch_execute_statement``); ``purge`` keeps room for ``purge_history`` as well (a load
    that may follow a masking rules change)."""
    limit = dialect.max_batch_statements
    own = LOAD_STATEMENTS + (HISTORY_STATEMENTS if history else 0)
    own += PURGE_HISTORY_STATEMENTS if history and purge else 0
    return not limit or own + count <= limit


def column_additions(
    dialect: Dialect,
    target: TargetTable,
    columns: Sequence[ProjectedColumn],
    *,
    history: TargetTable | None = None,
    history_columns: Sequence[ProjectedColumn] = (),
) -> list[list[Statement]]:
    """ADD COLUMN for projected columns too many for the load's transaction, as transactions of at
    most ``max_batch_statements`` to run before it (Redshift adds one column per ALTER TABLE).

    The first transaction deletes the control row before anything else, so the load that follows
    is a full reload, and so is any retry if the run stops between these transactions and the
    load: no row is left with NULL in a new column while the control row says it is loaded.
    ``history_columns`` are added to the ``history`` table the same way (its older rows keep
    NULL in them: they are versions loaded before the column existed).
    """
    statements = [
        Statement("delete_control", f"DELETE FROM {target.control} WHERE {_control_row(target)}"),
        *(_add_column(target, c) for c in columns),
    ]
    if history:
        statements += [_add_column(history, c, "add_history_column") for c in history_columns]
    size = dialect.max_batch_statements or len(statements)
    return [statements[i : i + size] for i in range(0, len(statements), size)]


def _add_column(
    target: TargetTable, column: ProjectedColumn, label: str = "add_column"
) -> Statement:
    return Statement(
        f"{label}:{column.column}",
        f"ALTER TABLE {target.qualified} ADD COLUMN {quote_identifier(column.column)} "
        f"{column.sql_type}",
    )


def _control_row(target: TargetTable) -> str:
    """The control row of ``target``, matched by folded name: a row written with another case
    (DuckDB kept the case it was given before names were folded) is the same table's row."""
    return f'LOWER("table_name") = {sql_string(target.table)}'


def check_statement_sizes(dialect: Dialect, statements: Sequence[Statement]) -> None:
    """Refuse a plan holding a statement the warehouse's API would reject for its size.

    Raises:
        PlanError: a statement's SQL is over ``dialect.max_statement_bytes`` (UTF-8 bytes).
    """
    limit = dialect.max_statement_bytes
    if not limit:
        return
    for statement in statements:
        size = len(statement.sql.encode())
        if size > limit:
            raise PlanError(
                f"statement {statement.label} of this load is {size} bytes but {dialect.name} "
                f"accepts at most {limit} bytes per statement; project fewer columns or use "
                "shorter column names"
            )


# The longest names a load can have (Redshift's 127 bytes), for checks made before the table is
# known (configuration): a projection that fits with these fits with any table.
_LONGEST_NAME = "t" * MAX_IDENTIFIER_BYTES
_CHECK_TABLE_ID = "00000000-0000-0000-0000-000000000000"


def check_projection_limits(
    dialect: Dialect,
    projection: Sequence[ProjectedColumn],
    *,
    schema: str = _LONGEST_NAME,
    table: str = _LONGEST_NAME,
    history: bool = False,
) -> None:
    """Refuse a projection that no load into ``schema.table`` could carry.

    Called at configuration (settings, worst-case names) and when a load request is validated
    (its names), so it never first fails at every load. It renders the steady-state load plan
    with worst-case values (longest S3 URI, role, versions) and measures it.

    Args:
        dialect: the warehouse (``REDSHIFT`` has limits; ``DUCKDB`` none).
        projection: the parsed projection.
        schema, table: the target's names; default: the longest a name can be (127 bytes).
        history: the collection keeps a history table (its statements are measured too).

    Raises:
        PlanError: more columns than the warehouse's table limit (Redshift: 1,600 including the
            load's own), or a load statement over its API's size limit (Redshift Data API:
            100 KB per statement); the message says how many fields fit.
    """
    columns = len(BASE_COLUMNS) + len(projection)
    if dialect.max_table_columns and columns > dialect.max_table_columns:
        raise PlanError(
            f"the projection has {len(projection)} columns, which with the load's "
            f"{len(BASE_COLUMNS)} own columns makes {columns}; {dialect.name} tables hold at most "
            f"{dialect.max_table_columns} columns: project at most "
            f"{dialect.max_table_columns - len(BASE_COLUMNS)} fields"
        )
    if not dialect.max_statement_bytes:
        return
    source = StageSource(
        relation="_lakehouse_stage_rows",
        s3_uri="s3://" + "b" * 63 + "/" + "k" * 900,
        iam_role=f"arn:aws:iam::123456789012:role/{'r' * 64}",
    )
    target = TargetTable.named(dialect, schema, table)
    if history and len(target.table) + len(HISTORY_SUFFIX) > MAX_IDENTIFIER_BYTES:
        # The longest table that can keep history (a longer one is refused by its name).
        target = TargetTable.named(
            dialect, schema, table[: MAX_IDENTIFIER_BYTES - len(HISTORY_SUFFIX)]
        )
    check_statement_sizes(
        dialect,
        load_transaction(
            dialect,
            target,
            source=source,
            full=False,
            expected=LoadedState(_CHECK_TABLE_ID, 2**62),
            table_id=_CHECK_TABLE_ID,
            version=2**62,
            projection=projection,
            history=history_target(dialect, target) if history else None,
        ),
    )
