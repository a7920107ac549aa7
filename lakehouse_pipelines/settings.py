"""The one place that decides the environment: local (the default) or AWS, from env variables.

Everything environment-specific is read here, once, 12-factor style. Resources are built from
these settings; assets receive resources and never look at the environment themselves. Every
variable is listed in the README's configuration table (a test keeps the two in step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dagster._utils.schedules import is_valid_cron_string

from lambda_functions.contracts import (
    SOURCE_AUDIT_BUCKETS,
    fold_identifier,
    validate_name,
    warehouse_name_problem,
)


class SettingsError(ValueError):
    """A configuration variable is missing or wrong; the message names it and the fix."""


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
    "LAKEHOUSE_MAX_CDC_LAG_SECONDS": (
        "900",
        "900",
        "the `cdc_lag` check on `cdc_raw_batches` fails above this many seconds",
    ),
    "LAKEHOUSE_SNAPSHOT_RANGES": (
        "1",
        "1",
        "ranges a collection's initial load (or reset) is captured as, each by its own "
        "invocation, at most `LAKEHOUSE_FANOUT_CONCURRENCY` at once (1 to 256; 1: one worker)",
    ),
    "LAKEHOUSE_DMS_CSV_DELIMITER": (
        ",",
        ",",
        "DMS ingestion: the S3 target endpoint's `CsvDelimiter` (one character, DMS default `,`; "
        "`\\t` for a tab)",
    ),
    "LAKEHOUSE_CHANGE_STREAM_RETENTION_SECONDS": (
        "10800",
        "10800",
        "the cluster's change_stream_log_retention_duration; a quiet collection's token is "
        "re-saved after half of it",
    ),
}


@dataclass(frozen=True)
class LakehouseSettings:
    """Every setting, typed and checked; built by ``from_env`` (defaults live in ``VARIABLES``)."""

    env: str
    root: Path
    lake_uri: str
    collections: tuple[str, ...]
    source_kind: str
    source_location: str
    demo_changes: int
    warehouse_kind: str
    duckdb_path: str
    warehouse_schema: str
    capture_cron: str
    function_prefix: str
    pipes_bucket: str
    metrics_namespace: str
    lambda_price_per_gb_second: float
    aws_region: str
    merge_cron: str
    load_cron: str
    metrics_cron: str
    maintenance_cron: str
    audit_cron: str
    audit_buckets_per_run: int
    vacuum_retention_hours: int
    tombstone_retention_hours: int
    fanout_concurrency: int
    freshness_warn_minutes: float
    freshness_fail_minutes: float
    metrics_window_hours: float
    queue_stuck_seconds: float
    max_failure_rate: float
    dashboard_name: str
    warehouse_projection: Mapping[str, str]
    warehouse_table_names: str
    warehouse_table_overrides: Mapping[str, str]
    redshift_database: str
    redshift_workgroup: str
    redshift_cluster: str
    redshift_db_user: str
    redshift_secret_arn: str = field(repr=False)
    redshift_iam_role: str = field(repr=False)
    redshift_timeout_seconds: int
    documentdb_secret_arn: str
    documentdb_ca_file: str
    documentdb_tls: bool
    auto_resnapshot: bool
    max_cdc_lag_seconds: float
    change_stream_retention_seconds: int
    dms_csv_delimiter: str
    snapshot_ranges: int = 1

    @property
    def is_aws(self) -> bool:
        return self.env == "aws"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LakehouseSettings:
        """Read and check every variable.

        Raises:
            SettingsError: naming *every* wrong or missing variable with its fix, one per line
                (not only the first), so one round of corrections is enough.
        """
        environ = os.environ if environ is None else environ
        problems: list[str] = []

        def attempt(read: Callable[[], Any], fallback: Any) -> Any:
            """``read()``, or ``fallback`` with its problem recorded (reported all at once)."""
            try:
                return read()
            except SettingsError as error:
                problems.append(str(error))
                return fallback

        def problem(message: str) -> None:
            problems.append(message)

        env = environ.get("LAKEHOUSE_ENV", "local").strip().lower() or "local"
        if env not in ("local", "aws"):
            problem(f"LAKEHOUSE_ENV={env!r}: use 'local' or 'aws'")
            env = "local"
        column = 0 if env == "local" else 1

        def get(name: str) -> str:
            value = environ.get(name)
            if value is not None and value.strip() != "":
                return value.strip()
            default = VARIABLES[name][column]
            if default is None:
                problem(f"{name} is required when LAKEHOUSE_ENV={env} ({VARIABLES[name][2]})")
                return ""
            return default

        def typed(name: str, convert: Callable[[str, str], Any], fallback: Any = 0) -> Any:
            value = get(name)
            return attempt(lambda: convert(value, name), fallback) if value else fallback

        def choice(name: str, *options: str) -> str:
            value = get(name)
            if value not in options:
                problem(f"{name}={value!r}: use " + " or ".join(map(repr, options)))
                return options[0]
            return value

        root = Path(get("LAKEHOUSE_ROOT")).expanduser().resolve()

        def under_root(value: str) -> str:
            return value.replace("<LAKEHOUSE_ROOT>", str(root))

        lake_uri = under_root(get("LAKEHOUSE_LAKE_URI"))
        collections_value = get("LAKEHOUSE_COLLECTIONS")
        collections = (
            attempt(lambda: _collections(collections_value), ()) if collections_value else ()
        )
        fanout = typed("LAKEHOUSE_FANOUT_CONCURRENCY", _int, 1)
        if fanout < 1:
            problem("LAKEHOUSE_FANOUT_CONCURRENCY must be 1 or more")
        if not 1 <= typed("LAKEHOUSE_SNAPSHOT_RANGES", _int, 1) <= 256:
            problem("LAKEHOUSE_SNAPSHOT_RANGES must be 1 to 256")
        retention = typed("LAKEHOUSE_VACUUM_RETENTION_HOURS", _int, 168)
        if retention < 1:
            # A merge in flight still references files it read; vacuum must never reach them.
            problem(
                "LAKEHOUSE_VACUUM_RETENTION_HOURS must be at least 1 (a merge runs for up to 15 "
                "minutes and its files must outlive it; 168 keeps a week of time travel)"
            )
        tombstone_retention = typed("LAKEHOUSE_TOMBSTONE_RETENTION_HOURS", _int, 168)
        if tombstone_retention < 1:
            problem(
                "LAKEHOUSE_TOMBSTONE_RETENTION_HOURS must be at least 1 (168, DocumentDB's "
                "longest change-stream retention, keeps late changes from resurrecting deletes)"
            )
        pipes_bucket = get("LAKEHOUSE_PIPES_BUCKET")
        if pipes_bucket.startswith("<"):
            parsed = urlparse(lake_uri)
            if parsed.scheme != "s3":
                problem("LAKEHOUSE_PIPES_BUCKET is required when the lake is not on S3 in aws mode")
            pipes_bucket = parsed.netloc
        namespace_metrics = get("LAKEHOUSE_METRICS_NAMESPACE")
        if namespace_metrics.startswith("AWS/"):
            problem("LAKEHOUSE_METRICS_NAMESPACE must not start with 'AWS/' (reserved)")
        for cron_variable in (
            "LAKEHOUSE_CAPTURE_CRON",
            "LAKEHOUSE_MERGE_CRON",
            "LAKEHOUSE_LOAD_CRON",
            "LAKEHOUSE_METRICS_CRON",
            "LAKEHOUSE_MAINTENANCE_CRON",
            "LAKEHOUSE_AUDIT_CRON",
        ):
            cron = get(cron_variable)
            if cron and not is_valid_cron_string(cron):
                problem(
                    f"{cron_variable}={cron!r} is not a cron string (e.g. '*/15 * * * *'), "
                    "or leave it empty for no schedule"
                )
        audit_buckets = typed("LAKEHOUSE_AUDIT_BUCKETS_PER_RUN", _int, 1)
        if not 1 <= audit_buckets <= SOURCE_AUDIT_BUCKETS:
            problem(
                f"LAKEHOUSE_AUDIT_BUCKETS_PER_RUN must be 1 to {SOURCE_AUDIT_BUCKETS} (the "
                "share of keys one source audit compares is this / 64)"
            )
        warehouse_schema = get("LAKEHOUSE_WAREHOUSE_SCHEMA")
        schema_problem = warehouse_name_problem(warehouse_schema, "warehouse schema")
        if schema_problem:
            problem(f"LAKEHOUSE_WAREHOUSE_SCHEMA: {schema_problem}")
        freshness_warn = typed("LAKEHOUSE_FRESHNESS_WARN_MINUTES", _float, 0.0)
        freshness_fail = typed("LAKEHOUSE_FRESHNESS_FAIL_MINUTES", _float, 1.0)
        if freshness_warn >= freshness_fail:
            problem(
                "LAKEHOUSE_FRESHNESS_WARN_MINUTES must be below LAKEHOUSE_FRESHNESS_FAIL_MINUTES"
            )
        warehouse_kind = choice("LAKEHOUSE_WAREHOUSE", "duckdb", "redshift")
        settings = cls(
            env=env,
            root=root,
            lake_uri=lake_uri,
            collections=collections,
            fanout_concurrency=fanout,
            source_kind=choice("LAKEHOUSE_SOURCE", "embedded", "documentdb"),
            source_location=under_root(get("LAKEHOUSE_SOURCE_LOCATION")),
            demo_changes=typed("LAKEHOUSE_DEMO_CHANGES", _int),
            warehouse_kind=warehouse_kind,
            duckdb_path=under_root(get("LAKEHOUSE_DUCKDB_PATH")),
            warehouse_schema=warehouse_schema,
            capture_cron=get("LAKEHOUSE_CAPTURE_CRON"),
            merge_cron=get("LAKEHOUSE_MERGE_CRON"),
            load_cron=get("LAKEHOUSE_LOAD_CRON"),
            metrics_cron=get("LAKEHOUSE_METRICS_CRON"),
            maintenance_cron=get("LAKEHOUSE_MAINTENANCE_CRON"),
            audit_cron=get("LAKEHOUSE_AUDIT_CRON"),
            audit_buckets_per_run=audit_buckets,
            vacuum_retention_hours=retention,
            tombstone_retention_hours=tombstone_retention,
            freshness_warn_minutes=freshness_warn,
            freshness_fail_minutes=freshness_fail,
            function_prefix=get("LAKEHOUSE_FUNCTION_PREFIX"),
            pipes_bucket=pipes_bucket,
            metrics_namespace=namespace_metrics,
            lambda_price_per_gb_second=typed("LAKEHOUSE_LAMBDA_PRICE_PER_GB_SECOND", _float),
            aws_region=get("AWS_REGION"),
            metrics_window_hours=typed("LAKEHOUSE_METRICS_WINDOW_HOURS", _float),
            queue_stuck_seconds=typed("LAKEHOUSE_QUEUE_STUCK_SECONDS", _float),
            max_failure_rate=typed("LAKEHOUSE_MAX_FAILURE_RATE", _float),
            dashboard_name=get("LAKEHOUSE_DASHBOARD_NAME"),
            warehouse_projection=attempt(
                lambda: _projection(get("LAKEHOUSE_WAREHOUSE_PROJECTION"), warehouse_kind),
                {},
            ),
            warehouse_table_names=choice(
                "LAKEHOUSE_WAREHOUSE_TABLE_NAMES", "collection", "database_collection"
            ),
            warehouse_table_overrides=attempt(
                lambda: _table_overrides(get("LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES")), {}
            ),
            redshift_database=get("LAKEHOUSE_REDSHIFT_DATABASE"),
            redshift_workgroup=get("LAKEHOUSE_REDSHIFT_WORKGROUP"),
            redshift_cluster=get("LAKEHOUSE_REDSHIFT_CLUSTER"),
            redshift_db_user=get("LAKEHOUSE_REDSHIFT_DB_USER"),
            redshift_secret_arn=get("LAKEHOUSE_REDSHIFT_SECRET_ARN"),
            redshift_iam_role=get("LAKEHOUSE_REDSHIFT_IAM_ROLE"),
            redshift_timeout_seconds=typed("LAKEHOUSE_REDSHIFT_TIMEOUT_SECONDS", _int),
            documentdb_secret_arn=get("LAKEHOUSE_DOCUMENTDB_SECRET_ARN"),
            documentdb_ca_file=get("LAKEHOUSE_DOCUMENTDB_CA_FILE"),
            documentdb_tls=typed("LAKEHOUSE_DOCUMENTDB_TLS", _bool),
            auto_resnapshot=typed("LAKEHOUSE_AUTO_RESNAPSHOT", _bool),
            max_cdc_lag_seconds=typed("LAKEHOUSE_MAX_CDC_LAG_SECONDS", _float),
            change_stream_retention_seconds=typed(
                "LAKEHOUSE_CHANGE_STREAM_RETENTION_SECONDS", _int
            ),
            dms_csv_delimiter=typed("LAKEHOUSE_DMS_CSV_DELIMITER", _delimiter, ","),
            snapshot_ranges=typed("LAKEHOUSE_SNAPSHOT_RANGES", _int, 1),
        )
        if len(problems) == 1:
            raise SettingsError(problems[0])
        if problems:
            raise SettingsError(
                f"{len(problems)} settings are wrong; fix them all before starting again:\n"
                + "\n".join(f"- {message}" for message in problems)
            )
        return settings


def split_namespace(namespace: str, variable: str = "collection") -> tuple[str, str]:
    """``database.collection`` -> (database, collection), both checked as names."""
    database, dot, collection = namespace.strip().partition(".")
    if not dot:
        raise SettingsError(
            f"{variable}: {namespace!r} must be 'database.collection', e.g. shop.orders"
        )
    try:
        validate_name(database, "database")
        if collection != "*":
            validate_name(collection, "collection")
    except ValueError as error:
        raise SettingsError(f"{variable}: {error}") from None
    return database, collection


def warehouse_table_name(settings: LakehouseSettings, namespace: str) -> str:
    """The warehouse table a collection loads into: its ``LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES``
    entry, else the name ``LAKEHOUSE_WAREHOUSE_TABLE_NAMES`` derives. Not checked against the
    warehouse's rules here: ``lakehouse_pipelines.warehouse_names`` does that, per collection."""
    override = settings.warehouse_table_overrides.get(namespace)
    return override or derived_table_name(namespace, settings.warehouse_table_names)


def derived_table_name(namespace: str, naming: str) -> str:
    """The table ``naming`` (a ``LAKEHOUSE_WAREHOUSE_TABLE_NAMES`` mode) derives for a collection."""
    database, collection = split_namespace(namespace)
    if naming == "database_collection":
        return f"{database}_{collection}"
    return collection


def _collections(value: str) -> tuple[str, ...]:
    """LAKEHOUSE_COLLECTIONS: ``db.coll`` names and ``db.*`` patterns, checked, deduplicated."""
    names: dict[str, None] = {}
    for item in value.split(","):
        if item.strip():
            database, collection = split_namespace(item, "LAKEHOUSE_COLLECTIONS")
            names[f"{database}.{collection}"] = None
    if not names:
        raise SettingsError(
            "LAKEHOUSE_COLLECTIONS names no collection: list them as db.collection, "
            "comma-separated (or db.* for every collection of a database)"
        )
    return tuple(names)


def _projection(value: str, warehouse: str = "duckdb") -> dict[str, str]:
    """LAKEHOUSE_WAREHOUSE_PROJECTION: a JSON object of field -> SQL type, checked now, also
    against ``warehouse``'s table and request limits (with the longest table names: a projection
    accepted here fits every collection's load)."""
    from lambda_functions.warehouse_sql import (
        REDSHIFT,
        PlanError,
        check_projection_limits,
        parse_projection,
    )

    try:
        projection = json.loads(value)
    except ValueError:
        projection = None
    if not isinstance(projection, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in projection.items()
    ):
        raise SettingsError(
            "LAKEHOUSE_WAREHOUSE_PROJECTION must be a JSON object of field -> SQL type, e.g. "
            '{"status": "VARCHAR(32)", "total": "DECIMAL(18,2)"}'
        )
    try:
        columns = parse_projection(projection)
        if warehouse == "redshift":
            check_projection_limits(REDSHIFT, columns)
    except PlanError as error:
        raise SettingsError(f"LAKEHOUSE_WAREHOUSE_PROJECTION: {error}") from None
    return projection


def _table_overrides(value: str) -> dict[str, str]:
    """LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES: a JSON object of collection -> warehouse table, each
    checked now (a valid collection, a table name Redshift and DuckDB accept, no two tables that
    the warehouses would read as one)."""
    variable = "LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES"
    try:
        overrides = json.loads(value)
    except ValueError:
        overrides = None
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
    ):
        raise SettingsError(
            f"{variable} must be a JSON object of collection -> warehouse table, e.g. "
            '{"shop.Orders": "orders_upper"}'
        )
    folded: dict[str, str] = {}
    for namespace, table in overrides.items():
        _database, collection = split_namespace(namespace, variable)
        if collection == "*":
            raise SettingsError(f"{variable}: name one collection, not a pattern ({namespace!r})")
        problem = warehouse_name_problem(table)
        if problem:
            raise SettingsError(f"{variable}: {namespace}: {problem}")
        other = folded.setdefault(fold_identifier(table), namespace)
        if other != namespace:
            raise SettingsError(
                f"{variable}: {other} and {namespace} would both load into warehouse table "
                f"{fold_identifier(table)!r} (Redshift folds names to lower case, DuckDB ignores "
                "case); give each its own table"
            )
    return overrides


def _delimiter(value: str, name: str) -> str:
    """One CSV field delimiter; ``\\t`` (written as two characters) is a tab."""
    value = "\t" if value == "\\t" else value
    if len(value) != 1 or value in '"\r\n':
        raise SettingsError(
            f"{name}={value!r} must be one character, the CsvDelimiter of the DMS S3 target "
            "endpoint (DMS default ','; write \\t for a tab)"
        )
    return value


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} must be a whole number") from None


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} must be a number") from None


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} must be true or false")
