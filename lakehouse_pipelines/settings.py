"""The one place that decides the environment: local (the default) or AWS, from env variables.

Everything environment-specific is read here, once, 12-factor style. Resources are built from
these settings; assets receive resources and never look at the environment themselves. Every
variable is listed in the README's configuration table (a test keeps the two in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lambda_functions.contracts import validate_name


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
    "LAKEHOUSE_COLLECTION": (
        "shop.orders",
        "shop.orders",
        "source collection as `database.collection`",
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
    "LAKEHOUSE_CAPTURE_CRON": ("*/15 * * * *", "*/15 * * * *", "capture schedule (cron)"),
    "LAKEHOUSE_FUNCTION_PREFIX": ("", "", "prefix added to the Lambda function names"),
    "LAKEHOUSE_PIPES_BUCKET": (
        "",
        "<bucket of LAKEHOUSE_LAKE_URI>",
        "aws: S3 bucket the Lambdas write Pipes messages to",
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
}


@dataclass(frozen=True)
class LakehouseSettings:
    env: str
    root: Path
    lake_uri: str
    database: str
    collection: str
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
    metrics_window_hours: float = 24.0
    queue_stuck_seconds: float = 3600.0
    max_failure_rate: float = 0.25
    dashboard_name: str = "lakehouse-pipelines"

    @property
    def namespace(self) -> str:
        return f"{self.database}.{self.collection}"

    @property
    def is_aws(self) -> bool:
        return self.env == "aws"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LakehouseSettings:
        environ = os.environ if environ is None else environ
        env = environ.get("LAKEHOUSE_ENV", "local").strip().lower() or "local"
        if env not in ("local", "aws"):
            raise SettingsError(f"LAKEHOUSE_ENV={env!r}: use 'local' or 'aws'")
        column = 0 if env == "local" else 1

        def get(name: str) -> str:
            value = environ.get(name)
            if value is not None and value.strip() != "":
                return value.strip()
            default = VARIABLES[name][column]
            if default is None:
                raise SettingsError(
                    f"{name} is required when LAKEHOUSE_ENV={env} ({VARIABLES[name][2]})"
                )
            return default

        root = Path(get("LAKEHOUSE_ROOT")).expanduser().resolve()

        def under_root(value: str) -> str:
            return value.replace("<LAKEHOUSE_ROOT>", str(root))

        lake_uri = under_root(get("LAKEHOUSE_LAKE_URI"))
        namespace = get("LAKEHOUSE_COLLECTION")
        database, dot, collection = namespace.partition(".")
        if not dot:
            raise SettingsError(
                f"LAKEHOUSE_COLLECTION={namespace!r} must be 'database.collection', e.g. shop.orders"
            )
        try:
            validate_name(database, "database")
            validate_name(collection, "collection")
        except ValueError as error:
            raise SettingsError(f"LAKEHOUSE_COLLECTION: {error}") from None
        pipes_bucket = get("LAKEHOUSE_PIPES_BUCKET")
        if pipes_bucket.startswith("<"):
            parsed = urlparse(lake_uri)
            if parsed.scheme != "s3":
                raise SettingsError(
                    "LAKEHOUSE_PIPES_BUCKET is required when the lake is not on S3 in aws mode"
                )
            pipes_bucket = parsed.netloc
        source_kind = get("LAKEHOUSE_SOURCE")
        if source_kind not in ("embedded", "documentdb"):
            raise SettingsError(f"LAKEHOUSE_SOURCE={source_kind!r}: use 'embedded' or 'documentdb'")
        warehouse_kind = get("LAKEHOUSE_WAREHOUSE")
        if warehouse_kind not in ("duckdb", "redshift"):
            raise SettingsError(
                f"LAKEHOUSE_WAREHOUSE={warehouse_kind!r}: use 'duckdb' or 'redshift'"
            )
        namespace_metrics = get("LAKEHOUSE_METRICS_NAMESPACE")
        if namespace_metrics.startswith("AWS/"):
            raise SettingsError("LAKEHOUSE_METRICS_NAMESPACE must not start with 'AWS/' (reserved)")
        return cls(
            env=env,
            root=root,
            lake_uri=lake_uri,
            database=database,
            collection=collection,
            source_kind=source_kind,
            source_location=under_root(get("LAKEHOUSE_SOURCE_LOCATION")),
            demo_changes=_int(get("LAKEHOUSE_DEMO_CHANGES"), "LAKEHOUSE_DEMO_CHANGES"),
            warehouse_kind=warehouse_kind,
            duckdb_path=under_root(get("LAKEHOUSE_DUCKDB_PATH")),
            warehouse_schema=get("LAKEHOUSE_WAREHOUSE_SCHEMA"),
            capture_cron=get("LAKEHOUSE_CAPTURE_CRON"),
            function_prefix=get("LAKEHOUSE_FUNCTION_PREFIX"),
            pipes_bucket=pipes_bucket,
            metrics_namespace=namespace_metrics,
            lambda_price_per_gb_second=_float(
                get("LAKEHOUSE_LAMBDA_PRICE_PER_GB_SECOND"), "LAKEHOUSE_LAMBDA_PRICE_PER_GB_SECOND"
            ),
            aws_region=get("AWS_REGION"),
            metrics_window_hours=_float(
                get("LAKEHOUSE_METRICS_WINDOW_HOURS"), "LAKEHOUSE_METRICS_WINDOW_HOURS"
            ),
            queue_stuck_seconds=_float(
                get("LAKEHOUSE_QUEUE_STUCK_SECONDS"), "LAKEHOUSE_QUEUE_STUCK_SECONDS"
            ),
            max_failure_rate=_float(
                get("LAKEHOUSE_MAX_FAILURE_RATE"), "LAKEHOUSE_MAX_FAILURE_RATE"
            ),
            dashboard_name=get("LAKEHOUSE_DASHBOARD_NAME"),
        )


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
