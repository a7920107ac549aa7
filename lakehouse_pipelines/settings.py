"""The one place that decides the environment: local (the default) or AWS, from env variables.

Everything environment-specific is read here, once, 12-factor style. Resources are built from
these settings; assets receive resources and never look at the environment themselves. Every
variable is listed in the README's configuration table (a test keeps the two in step).

The variables and their defaults live in ``settings_variables``, the parsers of single values in
``settings_values``; this module assembles and cross-checks them (``LakehouseSettings.from_env``)
and is the import path for all of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lakehouse_pipelines.dagster_internals import is_valid_cron_string
from lakehouse_pipelines.settings_ecs import EcsRouteSettings
from lakehouse_pipelines.settings_values import (
    SettingsError,
    parse_bool,
    parse_collections,
    parse_delimiter,
    parse_float,
    parse_history_collections,
    parse_int,
    parse_masking,
    parse_string_object,
    parse_table_overrides,
    split_namespace,
)
from lakehouse_pipelines.settings_variables import VARIABLES
from lambda_functions.contracts import SOURCE_AUDIT_BUCKETS, warehouse_name_problem

__all__ = [
    "VARIABLES",
    "LakehouseSettings",
    "SettingsError",
    "derived_table_name",
    "split_namespace",
    "warehouse_table_name",
]


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
    update_lookup: bool
    max_cdc_lag_seconds: float
    change_stream_retention_seconds: int
    dms_csv_delimiter: str
    history_collections: frozenset[str] = frozenset()
    # PII masking: namespace -> {"drop": [...], "hash": [...]} (LAKEHOUSE_MASKING), key source
    masking: Mapping[str, Mapping[str, list[str]]] = field(default_factory=dict)
    masking_key_secret_arn: str = ""
    masking_key: str = field(default="", repr=False)
    # LAKEHOUSE_MERGE_SEGMENT_BYTES for the merge function ("": derived from its memory)
    merge_segment_bytes: str = ""
    # The ECS route (LAKEHOUSE_ECS_*, LAKEHOUSE_COLLECTION_BYTES); not configured by default.
    ecs: EcsRouteSettings = field(default_factory=EcsRouteSettings)

    def masking_of(self, namespace: str) -> dict[str, list[str]]:
        """The masking rules of one collection for its requests (``{}``: none)."""
        return {name: list(paths) for name, paths in self.masking.get(namespace, {}).items()}

    snapshot_ranges: int = 1

    @property
    def is_aws(self) -> bool:
        return self.env == "aws"

    def keeps_history(self, namespace: str) -> bool:
        """Whether ``database.collection``'s load keeps a history table
        (``LAKEHOUSE_HISTORY_COLLECTIONS``: the name, ``database.*`` or ``*``)."""
        database = namespace.partition(".")[0]
        return bool({"*", f"{database}.*", namespace} & self.history_collections)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LakehouseSettings:
        """Read and check every variable (``VARIABLES``), once, when the code location loads.

        Args:
            environ: the variables to read; ``None`` reads ``os.environ``. Unset variables take
                the default of the environment ``LAKEHOUSE_ENV`` names (``local`` or ``aws``).

        Returns:
            The settings, typed (durations in the unit their variable names: seconds, minutes,
            hours; prices in USD) and cross-checked (e.g. the freshness windows, the audit
            buckets, the warehouse schema and table names against Redshift's and DuckDB's
            identifier rules). Pure: nothing is created or contacted (no AWS call).

        Raises:
            SettingsError: naming *every* wrong or missing variable with its fix, one per line
                (not only the first), so one round of corrections is enough. Terminal: the same
                environment fails the same way.
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
            attempt(lambda: parse_collections(collections_value), ()) if collections_value else ()
        )
        fanout = typed("LAKEHOUSE_FANOUT_CONCURRENCY", parse_int, 1)
        if fanout < 1:
            problem("LAKEHOUSE_FANOUT_CONCURRENCY must be 1 or more")
        segment_bytes = get("LAKEHOUSE_MERGE_SEGMENT_BYTES")
        if segment_bytes and not (segment_bytes.isdigit() and int(segment_bytes) > 0):
            problem(
                "LAKEHOUSE_MERGE_SEGMENT_BYTES must be a positive integer (bytes of batch data "
                f"per merge commit), not {segment_bytes!r}; leave it empty to derive it from "
                "the merge function's memory"
            )
        if not 1 <= typed("LAKEHOUSE_SNAPSHOT_RANGES", parse_int, 1) <= 256:
            problem("LAKEHOUSE_SNAPSHOT_RANGES must be 1 to 256")
        retention = typed("LAKEHOUSE_VACUUM_RETENTION_HOURS", parse_int, 168)
        if retention < 1:
            # A merge in flight still references files it read; vacuum must never reach them.
            problem(
                "LAKEHOUSE_VACUUM_RETENTION_HOURS must be at least 1 (a merge runs for up to 15 "
                "minutes and its files must outlive it; 168 keeps a week of time travel)"
            )
        tombstone_retention = typed("LAKEHOUSE_TOMBSTONE_RETENTION_HOURS", parse_int, 168)
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
        audit_buckets = typed("LAKEHOUSE_AUDIT_BUCKETS_PER_RUN", parse_int, 1)
        if not 1 <= audit_buckets <= SOURCE_AUDIT_BUCKETS:
            problem(
                f"LAKEHOUSE_AUDIT_BUCKETS_PER_RUN must be 1 to {SOURCE_AUDIT_BUCKETS} (the "
                "share of keys one source audit compares is this / 64)"
            )
        warehouse_schema = get("LAKEHOUSE_WAREHOUSE_SCHEMA")
        schema_problem = warehouse_name_problem(warehouse_schema, "warehouse schema")
        if schema_problem:
            problem(f"LAKEHOUSE_WAREHOUSE_SCHEMA: {schema_problem}")
        freshness_warn = typed("LAKEHOUSE_FRESHNESS_WARN_MINUTES", parse_float, 0.0)
        freshness_fail = typed("LAKEHOUSE_FRESHNESS_FAIL_MINUTES", parse_float, 1.0)
        if freshness_warn >= freshness_fail:
            problem(
                "LAKEHOUSE_FRESHNESS_WARN_MINUTES must be below LAKEHOUSE_FRESHNESS_FAIL_MINUTES"
            )
        warehouse_kind = choice("LAKEHOUSE_WAREHOUSE", "duckdb", "redshift")
        ecs = attempt(lambda: EcsRouteSettings.from_env(environ), EcsRouteSettings())
        if ecs.configured and ecs.missing():
            problem(
                f"LAKEHOUSE_ECS_CLUSTER is set, so the ECS route also needs "
                f"{', '.join(ecs.missing())} (the deploy template's outputs and your VPC subnets)"
            )
        settings = cls(
            env=env,
            root=root,
            lake_uri=lake_uri,
            collections=collections,
            fanout_concurrency=fanout,
            source_kind=choice("LAKEHOUSE_SOURCE", "embedded", "documentdb"),
            source_location=under_root(get("LAKEHOUSE_SOURCE_LOCATION")),
            demo_changes=typed("LAKEHOUSE_DEMO_CHANGES", parse_int),
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
            lambda_price_per_gb_second=typed("LAKEHOUSE_LAMBDA_PRICE_PER_GB_SECOND", parse_float),
            aws_region=get("AWS_REGION"),
            metrics_window_hours=typed("LAKEHOUSE_METRICS_WINDOW_HOURS", parse_float),
            queue_stuck_seconds=typed("LAKEHOUSE_QUEUE_STUCK_SECONDS", parse_float),
            max_failure_rate=typed("LAKEHOUSE_MAX_FAILURE_RATE", parse_float),
            dashboard_name=get("LAKEHOUSE_DASHBOARD_NAME"),
            warehouse_projection=attempt(
                lambda: _projection(get("LAKEHOUSE_WAREHOUSE_PROJECTION"), warehouse_kind),
                {},
            ),
            warehouse_table_names=choice(
                "LAKEHOUSE_WAREHOUSE_TABLE_NAMES", "collection", "database_collection"
            ),
            warehouse_table_overrides=attempt(
                lambda: parse_table_overrides(get("LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES")), {}
            ),
            redshift_database=get("LAKEHOUSE_REDSHIFT_DATABASE"),
            redshift_workgroup=get("LAKEHOUSE_REDSHIFT_WORKGROUP"),
            redshift_cluster=get("LAKEHOUSE_REDSHIFT_CLUSTER"),
            redshift_db_user=get("LAKEHOUSE_REDSHIFT_DB_USER"),
            redshift_secret_arn=get("LAKEHOUSE_REDSHIFT_SECRET_ARN"),
            redshift_iam_role=get("LAKEHOUSE_REDSHIFT_IAM_ROLE"),
            redshift_timeout_seconds=typed("LAKEHOUSE_REDSHIFT_TIMEOUT_SECONDS", parse_int),
            documentdb_secret_arn=get("LAKEHOUSE_DOCUMENTDB_SECRET_ARN"),
            documentdb_ca_file=get("LAKEHOUSE_DOCUMENTDB_CA_FILE"),
            documentdb_tls=typed("LAKEHOUSE_DOCUMENTDB_TLS", parse_bool),
            auto_resnapshot=typed("LAKEHOUSE_AUTO_RESNAPSHOT", parse_bool),
            update_lookup=typed("LAKEHOUSE_UPDATE_LOOKUP", parse_bool, True),
            max_cdc_lag_seconds=typed("LAKEHOUSE_MAX_CDC_LAG_SECONDS", parse_float),
            change_stream_retention_seconds=typed(
                "LAKEHOUSE_CHANGE_STREAM_RETENTION_SECONDS", parse_int
            ),
            dms_csv_delimiter=typed("LAKEHOUSE_DMS_CSV_DELIMITER", parse_delimiter, ","),
            history_collections=typed(
                "LAKEHOUSE_HISTORY_COLLECTIONS", parse_history_collections, frozenset()
            ),
            masking=typed("LAKEHOUSE_MASKING", parse_masking, {}),
            masking_key_secret_arn=get("LAKEHOUSE_MASKING_KEY_SECRET_ARN"),
            masking_key=get("LAKEHOUSE_MASKING_KEY"),
            snapshot_ranges=typed("LAKEHOUSE_SNAPSHOT_RANGES", parse_int, 1),
            merge_segment_bytes=segment_bytes,
            ecs=ecs,
        )
        if len(problems) == 1:
            raise SettingsError(problems[0])
        if problems:
            raise SettingsError(
                f"{len(problems)} settings are wrong; fix them all before starting again:\n"
                + "\n".join(f"- {message}" for message in problems)
            )
        return settings


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

    projection = parse_string_object(
        "LAKEHOUSE_WAREHOUSE_PROJECTION",
        value,
        shape="field -> SQL type",
        example='{"status": "VARCHAR(32)", "total": "DECIMAL(18,2)"}',
    )
    try:
        columns = parse_projection(projection)
        if warehouse == "redshift":
            check_projection_limits(REDSHIFT, columns)
    except PlanError as error:
        raise SettingsError(f"LAKEHOUSE_WAREHOUSE_PROJECTION: {error}") from None
    return projection
