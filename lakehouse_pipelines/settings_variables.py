"""The configuration variables: each one's defaults (local, aws) and what it means.

The single list ``LakehouseSettings.from_env`` reads and the README's configuration table
documents (a test keeps the two in step). Environment variables, 12-factor style.
"""

from __future__ import annotations

# name -> (default in local mode, default in aws mode, description); None means "required".
VARIABLES: dict[str, tuple[str | None, str | None, str]] = {
    "LAKEHOUSE_ENV": ("local", "aws", "`local` (embedded stand-ins, no AWS) or `aws`"),
    "LAKEHOUSE_ROOT": (
        ".lakehouse",
        ".lakehouse",
        "local state directory (lake, source, warehouse)",
    ),
    "LAKEHOUSE_LAKE_URI": (
        "<LAKEHOUSE_ROOT>/lake",
        None,
        "lake location: a directory, or `s3://bucket/prefix`",
    ),
    "LAKEHOUSE_COLLECTIONS": (
        "shop.orders,shop.customers",
        None,
        "collections to keep, comma-separated `database.collection`, or `database.*` for every "
        "collection the source lists; each becomes a partition (the `collections_sensor` also "
        "adds every collection that has batches in the raw zone)",
    ),
    "LAKEHOUSE_FANOUT_CONCURRENCY": (
        "4",
        "4",
        "Lambda invocations one step runs at once when it covers several collections; keep "
        "pool slots (deploy/dagster.yaml) x this below the functions' reserved concurrency",
    ),
    "LAKEHOUSE_SOURCE": (
        "embedded",
        "documentdb",
        "`embedded` (demo change stream) or `documentdb`",
    ),
    "LAKEHOUSE_SOURCE_LOCATION": (
        "<LAKEHOUSE_ROOT>/source.sqlite",
        "DOCUMENTDB_URI",
        "embedded: the store file; documentdb: name of the env var holding the connection URI",
    ),
    "LAKEHOUSE_DEMO_CHANGES": (
        "200",
        "0",
        "embedded only: changes the demo workload makes per capture",
    ),
    "LAKEHOUSE_WAREHOUSE": ("duckdb", "redshift", "`duckdb` (embedded) or `redshift`"),
    "LAKEHOUSE_DUCKDB_PATH": ("<LAKEHOUSE_ROOT>/warehouse.duckdb", "", "DuckDB warehouse file"),
    "LAKEHOUSE_WAREHOUSE_SCHEMA": ("analytics", "analytics", "warehouse schema for loaded tables"),
    "LAKEHOUSE_WAREHOUSE_PROJECTION": (
        '{"status": "VARCHAR(32)", "total": "DECIMAL(18,2)", "created_at": "TIMESTAMPTZ"}',
        "{}",
        "JSON object: document field (or dotted path) -> SQL type, loaded as typed columns beside "
        "the full document; new entries are added as columns (never dropped)",
    ),
    "LAKEHOUSE_WAREHOUSE_TABLE_NAMES": (
        "collection",
        "collection",
        "warehouse table per collection: `collection` (`<schema>.<collection>`) or "
        "`database_collection` (`<schema>.<database>_<collection>`); names are compared in lower "
        "case (Redshift folds identifiers, DuckDB ignores case) and may be at most 127 bytes "
        "(Redshift): a collection whose table another one already has, or whose name is too "
        "long, is not registered; the sensor's warning names it with the fix",
    ),
    "LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES": (
        "{}",
        "{}",
        'JSON object: collection -> warehouse table, e.g. `{"shop.Orders": "orders_upper"}`, '
        "for a collection whose derived table name is taken or too long; checked at startup "
        "(plain names up to 127 bytes, no two tables equal in lower case)",
    ),
    "LAKEHOUSE_HISTORY_COLLECTIONS": (
        "",
        "",
        "comma list of `database.collection` (`shop.*`, or `*` for all) whose warehouse load also "
        "keeps `<table>_history`: every version with `valid_from`/`valid_to`/`is_current` (SCD "
        'type 2), in the same transaction (see "History tables")',
    ),
    "LAKEHOUSE_REDSHIFT_DATABASE": ("", "", "redshift: database to load into"),
    "LAKEHOUSE_REDSHIFT_WORKGROUP": ("", "", "redshift: Serverless workgroup name (or a cluster)"),
    "LAKEHOUSE_REDSHIFT_CLUSTER": ("", "", "redshift: provisioned cluster identifier"),
    "LAKEHOUSE_REDSHIFT_DB_USER": (
        "",
        "",
        "redshift cluster: database user (temporary credentials)",
    ),
    "LAKEHOUSE_REDSHIFT_SECRET_ARN": (
        "",
        "",
        "redshift: Secrets Manager secret ARN with the database credentials (instead of a user)",
    ),
    "LAKEHOUSE_REDSHIFT_IAM_ROLE": (
        "",
        "",
        "redshift: IAM role ARN that COPY uses to read the staged Parquet under the lake",
    ),
    "LAKEHOUSE_REDSHIFT_TIMEOUT_SECONDS": (
        "600",
        "600",
        "redshift: a Data API statement still running after this is cancelled",
    ),
    "LAKEHOUSE_CAPTURE_CRON": ("*/15 * * * *", "*/15 * * * *", "capture schedule (cron)"),
    "LAKEHOUSE_MERGE_CRON": (
        "",
        "",
        "merge+load schedule (cron); empty: merges start from `raw_batches_sensor` only",
    ),
    "LAKEHOUSE_LOAD_CRON": ("", "", "warehouse load schedule (cron); empty: no schedule"),
    "LAKEHOUSE_METRICS_CRON": ("*/10 * * * *", "*/10 * * * *", "`pipeline_metrics` schedule"),
    "LAKEHOUSE_MAINTENANCE_CRON": (
        "0 3 * * *",
        "0 3 * * *",
        "lake compaction + vacuum schedule (`lake_maintenance_schedule`, off until turned on)",
    ),
    "LAKEHOUSE_AUDIT_CRON": (
        "",
        "",
        "source audit schedule (`source_audit_schedule`: the `source_audit` check of every "
        "registered collection); empty: no schedule, run it from the UI",
    ),
    "LAKEHOUSE_AUDIT_BUCKETS_PER_RUN": (
        "64",
        "64",
        "key-hash buckets (of 64) one source audit compares; below 64 each run samples "
        "that share of the keys and the next run continues with the next buckets",
    ),
    "LAKEHOUSE_VACUUM_RETENTION_HOURS": (
        "168",
        "168",
        "maintenance deletes files removed longer ago than this (time travel and the change "
        "feed reach back this far)",
    ),
    "LAKEHOUSE_TOMBSTONE_RETENTION_HOURS": (
        "168",
        "168",
        "maintenance expires tombstones (kept deletes that stop an older change delivered late "
        "from bringing a document back) whose delete is older than this; at least the longest "
        "delay of any input (DocumentDB keeps a change stream at most 168 h)",
    ),
    "LAKEHOUSE_FRESHNESS_WARN_MINUTES": (
        "60",
        "60",
        "lake and warehouse tables warn when not updated for this long",
    ),
    "LAKEHOUSE_FRESHNESS_FAIL_MINUTES": (
        "180",
        "180",
        "lake and warehouse tables fail freshness when not updated for this long",
    ),
    "LAKEHOUSE_FUNCTION_PREFIX": ("", "", "prefix added to the Lambda function names"),
    "LAKEHOUSE_PIPES_BUCKET": (
        "",
        "<bucket of LAKEHOUSE_LAKE_URI>",
        "aws: S3 bucket the Lambdas write Pipes messages to (under `_dagster_pipes/`, deleted once "
        "read; `deploy/template.yaml` creates one whose lifecycle rule expires leftovers: its "
        "output `PipesBucketName`)",
    ),
    "LAKEHOUSE_METRICS_NAMESPACE": (
        "Lakehouse/Pipelines",
        "Lakehouse/Pipelines",
        "CloudWatch namespace for pipeline metrics (never `AWS/...`)",
    ),
    "LAKEHOUSE_LAMBDA_PRICE_PER_GB_SECOND": (
        "0.0000166667",
        "0.0000166667",
        "USD per GB-second, for the Lambda cost estimate",
    ),
    "AWS_REGION": ("", "", "aws: region of the Lambda functions, bucket and CloudWatch"),
    "LAKEHOUSE_METRICS_WINDOW_HOURS": ("24", "24", "window for run outcome and duration metrics"),
    "LAKEHOUSE_QUEUE_STUCK_SECONDS": (
        "3600",
        "3600",
        "`queue_not_stuck` warns when a run has been queued longer than this",
    ),
    "LAKEHOUSE_MAX_FAILURE_RATE": (
        "0.25",
        "0.25",
        "`failure_rate_ok` warns when the share of failed runs in the window exceeds this",
    ),
    "LAKEHOUSE_DASHBOARD_NAME": (
        "lakehouse-pipelines",
        "lakehouse-pipelines",
        "CloudWatch dashboard generated from the published metrics",
    ),
    "LAKEHOUSE_DOCUMENTDB_SECRET_ARN": (
        "",
        "",
        "documentdb: Secrets Manager secret ARN with {username, password, host, port} (instead "
        "of the URI variable named by `LAKEHOUSE_SOURCE_LOCATION`)",
    ),
    "LAKEHOUSE_DOCUMENTDB_CA_FILE": (
        "",
        "global-bundle.pem",
        "documentdb: CA bundle path inside the function (Amazon RDS global bundle); empty uses "
        "the system trust store",
    ),
    "LAKEHOUSE_DOCUMENTDB_TLS": ("true", "true", "documentdb: `false` turns TLS off (tests only)"),
    "LAKEHOUSE_AUTO_RESNAPSHOT": (
        "false",
        "false",
        "`true`: on an expired resume token capture re-snapshots by itself (new table "
        "generation) instead of failing",
    ),
    "LAKEHOUSE_UPDATE_LOOKUP": (
        "true",
        "true",
        "`false`: the change stream is opened without `fullDocument: updateLookup` (one read "
        "less per update on the cluster); updates arrive as `updateDescription` deltas that the "
        "merge applies to the stored document",
    ),
    "LAKEHOUSE_MAX_CDC_LAG_SECONDS": (
        "900",
        "900",
        "the `cdc_lag` check on `cdc_raw_batches` fails above this many seconds",
    ),
    "LAKEHOUSE_DMS_CSV_DELIMITER": (
        ",",
        ",",
        "DMS ingestion: the S3 target endpoint's `CsvDelimiter` (one character, DMS default `,`; "
        "`\\t` for a tab)",
    ),
    "LAKEHOUSE_MASKING": (
        "",
        "",
        'PII masking rules per collection, JSON: {"shop.customers": {"drop": ["ssn"], "hash": '
        '["email"]}} (dotted paths; README "PII masking"); a change starts a new generation',
    ),
    "LAKEHOUSE_MASKING_KEY_SECRET_ARN": (
        "",
        "",
        "PII masking: Secrets Manager secret holding the HMAC key of hashed fields (AWS)",
    ),
    "LAKEHOUSE_MASKING_KEY": (
        "",
        "",
        "PII masking: the HMAC key of hashed fields as text, at least 32 bytes (local only; on "
        "AWS use `LAKEHOUSE_MASKING_KEY_SECRET_ARN`)",
    ),
    "LAKEHOUSE_MERGE_SEGMENT_BYTES": (
        "",
        "",
        "merge function's environment: the most batch bytes (rows as JSON) per Delta commit; "
        "empty: the function's memory / 16 (a larger single batch is still applied alone; a "
        "new generation over it is applied page by page, still in one commit)",
    ),
    "LAKEHOUSE_SNAPSHOT_RANGES": (
        "1",
        "1",
        "ranges a collection's initial load (or reset) is captured as, each by its own "
        "invocation, at most `LAKEHOUSE_FANOUT_CONCURRENCY` at once (1 to 256; 1: one worker)",
    ),
    "LAKEHOUSE_CHANGE_STREAM_RETENTION_SECONDS": (
        "10800",
        "10800",
        "the cluster's change_stream_log_retention_duration; a quiet collection's token is "
        "re-saved after half of it",
    ),
    "LAKEHOUSE_ECS_CLUSTER": (
        "",
        "",
        "ECS route: the cluster tasks run on (deploy template output `EcsClusterName`); empty: "
        'no ECS route, everything runs in Lambda (README "Running on ECS")',
    ),
    "LAKEHOUSE_ECS_TASK_DEFINITION": (
        "",
        "",
        "ECS route: the task definition (family[:revision] or ARN; output `EcsTaskDefinitionArn`)",
    ),
    "LAKEHOUSE_ECS_SUBNETS": ("", "", "ECS route: comma list of the VPC subnets tasks run in"),
    "LAKEHOUSE_ECS_SECURITY_GROUPS": (
        "",
        "",
        "ECS route: comma list of the tasks' security groups (empty: the VPC's default)",
    ),
    "LAKEHOUSE_ECS_CONTAINER_NAME": (
        "lakehouse-task",
        "lakehouse-task",
        "ECS route: the task definition's container that runs `lambda_functions.ecs_task`",
    ),
    "LAKEHOUSE_ECS_LOG_GROUP": (
        "",
        "",
        "ECS route: the tasks' CloudWatch log group (output `EcsLogGroupName`), named in failures",
    ),
    "LAKEHOUSE_ECS_COLLECTIONS": (
        "",
        "",
        "ECS route: comma list of `database.collection` (or `*`) whose work always runs on ECS; "
        "others go there only when their size estimate exceeds the function's memory or timeout",
    ),
    "LAKEHOUSE_COLLECTION_BYTES": (
        "",
        "",
        "ECS route: JSON object collection -> bytes (e.g. `collStats` size), the initial "
        "snapshot's size estimate for a collection not captured yet",
    ),
}
