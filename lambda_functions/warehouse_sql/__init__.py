"""The warehouse load as SQL: one logical plan, rendered for DuckDB or for Redshift.

Pure: this package renders statements and checks limits, it runs nothing. It sits below the
invoke contract (``lambda_functions.contracts`` refuses, when a ``LoadRequest`` is validated, a
projection whose worst-case load statement Redshift's Data API would reject, by rendering that
plan) and below the ``warehouse_load`` stage, whose executors run what it renders. Modules:
``names`` (identifier rule, the load's own tables and columns), ``literals`` (checked values in
SQL text), ``projection`` (declared typed columns), ``staging`` (their values, computed while the
rows are staged), ``statements`` (statements, the target table), ``dialects`` (DuckDB, Redshift),
``plan`` (DDL, the load transaction, limits), ``history`` (the optional SCD type 2 history
table: its rows, how they chain, their statements in the load transaction), ``catalog`` (the
table's existing columns) and ``reconciliation`` (reads that compare the warehouse with the lake).

Everything that differs between the two warehouses lives in ``dialects``, in the two ``Dialect``
classes; the executors (``warehouse_load.duckdb_warehouse.DuckDBWarehouse`` and
``warehouse_load.redshift.RedshiftWarehouse``) only run the statements they are given. The plan of one load::

    guard              abort unless the control row still says what the load was planned from
    create_stage       a temporary staging table (dropped with the session if anything fails)
    load_stage         COPY the staged Parquet from S3 (Redshift) / insert the Arrow rows (DuckDB),
                       projected columns already computed (``stage_query``)
    add_column:<name>  ALTER TABLE ADD COLUMN for projected columns the table lacks (never DROP)
    delete_changed     DELETE target rows whose key is staged (every row on a full reload)
    delete_set_aside   \\ forget set-aside records of staged keys, record the staged documents
    insert_upserts      | the warehouse cannot hold (``set_aside``) instead of loading them, and
    insert_set_aside   /  INSERT the latest staged change per key unless it is a delete
    close_history        \\ only when the collection keeps history (``history``): close the open
    close_history_absent  | rows of changed keys (and, on a full reload, of keys gone from the
    insert_history       /  lake), insert every new version of the window
    purge_history        after a masking rules change: NULL the values of history versions
                         captured under the old rules (``history``)
    delete_control     \\ the control row names the lake table and version now in the warehouse
    insert_control     /
    drop_stage

All of it runs as ONE transaction (one ``batch_execute_statement`` on Redshift, BEGIN..COMMIT on
DuckDB), so a load that dies anywhere leaves the previous data *and* the previous control row, and
the re-run applies the same changes again: nothing lost, nothing doubled. Redshift's MERGE allows a
single unconditional WHEN MATCHED branch, hence the delete + insert shape on both warehouses.

Values in SQL. The Data API's named ``Parameters`` are used for reads (``execute_statement``), but
the transaction renders its few values as literals, because: the COPY statement's ``FROM`` and
``IAM_ROLE`` cannot be bind parameters on any SDK; ``Parameters`` on ``batch_execute_statement``
only exist in recent SDKs (older Lambda images reject them); and the values involved are all
machine-made and checked against strict patterns before rendering: integers (versions), identifiers
(``quote_identifier``), the Delta table id (a UUID), the S3 staging URI and the IAM role ARN. The
only free text, the guard's message, is ours. ``sql_string`` doubles quotes and refuses what the
dialects read differently (a backslash escapes in Redshift and is a plain character in DuckDB) and
control characters, so a rendered literal means the same thing in both. Document data never
enters SQL text: it travels as Parquet (Redshift) or Arrow (DuckDB).
"""

from lambda_functions.warehouse_sql.catalog import (
    check_column_types,
    columns_query,
    holds,
    table_column_type,
)
from lambda_functions.warehouse_sql.dialects import (
    DUCKDB,
    REDSHIFT,
    Dialect,
    DuckDBDialect,
    RedshiftDialect,
)
from lambda_functions.warehouse_sql.errors import (
    PlanError,
    UnsafeSqlValueError,
)
from lambda_functions.warehouse_sql.history import (
    HISTORY_RESERVED_COLUMNS,
    HISTORY_STATEMENTS,
    PurgeBelow,
    check_history,
    history_rows_query,
    history_table_name,
    history_target,
    history_value_columns,
    unpurged_history_query,
)
from lambda_functions.warehouse_sql.literals import (
    checked_iam_role,
    checked_s3_uri,
    checked_table_id,
    sql_integer,
    sql_string,
)
from lambda_functions.warehouse_sql.names import (
    BASE_COLUMNS,
    CONTROL_TABLE,
    HISTORY_COLUMNS,
    HISTORY_STAGE_COLUMNS,
    HISTORY_SUFFIX,
    LOAD_TABLES,
    MAX_IDENTIFIER_BYTES,
    RESERVED_COLUMNS,
    SET_ASIDE_TABLE,
    STAGE_COLUMNS,
    STAGE_TABLE,
    SYSTEM_COLUMNS,
    fold_identifier,
    quote_identifier,
)
from lambda_functions.warehouse_sql.plan import (
    LOAD_STATEMENTS,
    check_projection_limits,
    check_statement_sizes,
    column_additions,
    columns_fit_in_load,
    ensure_tables,
    load_transaction,
    loaded_state_query,
)
from lambda_functions.warehouse_sql.projection import (
    SUPPORTED_TYPES,
    ProjectedColumn,
    parse_projection,
)
from lambda_functions.warehouse_sql.reconciliation import (
    BUCKET_HEX_DIGITS,
    bucket_rows_query,
    key_bucket,
    reconciliation_query,
    set_aside_query,
    version_hash,
)
from lambda_functions.warehouse_sql.staging import (
    projected_value,
    stage_query,
    staged_type,
)
from lambda_functions.warehouse_sql.statements import (
    LoadedState,
    StageSource,
    Statement,
    TargetTable,
    redact,
)

__all__ = [
    "BASE_COLUMNS",
    "BUCKET_HEX_DIGITS",
    "CONTROL_TABLE",
    "DUCKDB",
    "HISTORY_COLUMNS",
    "HISTORY_RESERVED_COLUMNS",
    "HISTORY_STAGE_COLUMNS",
    "HISTORY_STATEMENTS",
    "HISTORY_SUFFIX",
    "LOAD_STATEMENTS",
    "LOAD_TABLES",
    "MAX_IDENTIFIER_BYTES",
    "REDSHIFT",
    "RESERVED_COLUMNS",
    "SET_ASIDE_TABLE",
    "STAGE_COLUMNS",
    "STAGE_TABLE",
    "SUPPORTED_TYPES",
    "SYSTEM_COLUMNS",
    "Dialect",
    "DuckDBDialect",
    "LoadedState",
    "PlanError",
    "ProjectedColumn",
    "PurgeBelow",
    "RedshiftDialect",
    "StageSource",
    "Statement",
    "TargetTable",
    "UnsafeSqlValueError",
    "bucket_rows_query",
    "check_column_types",
    "check_history",
    "check_projection_limits",
    "check_statement_sizes",
    "checked_iam_role",
    "checked_s3_uri",
    "checked_table_id",
    "column_additions",
    "columns_fit_in_load",
    "columns_query",
    "ensure_tables",
    "fold_identifier",
    "history_rows_query",
    "history_table_name",
    "history_target",
    "history_value_columns",
    "holds",
    "key_bucket",
    "load_transaction",
    "loaded_state_query",
    "parse_projection",
    "projected_value",
    "quote_identifier",
    "reconciliation_query",
    "redact",
    "set_aside_query",
    "sql_integer",
    "sql_string",
    "stage_query",
    "staged_type",
    "table_column_type",
    "unpurged_history_query",
    "version_hash",
]
