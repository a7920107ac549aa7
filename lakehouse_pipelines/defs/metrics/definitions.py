"""MWAA-style metrics: the Dagster queue, runs, pools, daemons and the pipeline's own figures.

Published to CloudWatch in AWS and to a metrics table in the lake locally (the sink resource
decides), with a CloudWatch dashboard generated from the same metric list. The asset also returns
every figure as numeric metadata, so the Dagster UI plots them over materializations. A sensor
publishes the same metrics without launching a run, so they keep flowing when runs cannot start
(a full queue or a stopped run coordinator is exactly when they matter).
"""

import time
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from lakehouse_pipelines.defs.cdc_capture.definitions import CAPTURE_KEY
from lakehouse_pipelines.defs.collections import registered_collections, single_run_asset
from lakehouse_pipelines.defs.merge.definitions import LAKE_TABLE_KEY
from lakehouse_pipelines.defs.metrics.collect import (
    daemon_metrics,
    labels,
    pool_metrics,
    queue_metrics,
    run_window_metrics,
    stage_metrics,
)
from lakehouse_pipelines.defs.metrics.dashboard import dashboard_body
from lakehouse_pipelines.defs.policies import optional_schedule
from lakehouse_pipelines.defs.warehouse_load.definitions import WAREHOUSE_TABLE_KEY
from lakehouse_pipelines.resources import Metric, MetricsSink
from lakehouse_pipelines.settings import LakehouseSettings

STAGES = {CAPTURE_KEY: "capture", LAKE_TABLE_KEY: "merge", WAREHOUSE_TABLE_KEY: "load"}
METRICS_KEY = "pipeline_metrics"


def collect_metrics(instance: DagsterInstance, settings: LakehouseSettings) -> list[Metric]:
    now = time.time()
    metrics = [
        *queue_metrics(instance, now),
        *run_window_metrics(instance, now, settings.metrics_window_hours * 3600),
        *pool_metrics(instance),
        *daemon_metrics(instance, now),
        *stage_metrics(instance, STAGES, registered_collections(instance)),
    ]
    stamp = datetime.fromtimestamp(now, UTC)
    return [m.at(stamp) for m in metrics]


def publish(metrics: list[Metric], sink: MetricsSink, settings: LakehouseSettings) -> str:
    sink.publish(metrics)
    # from the catalogue, not from ``metrics``: a partial publish must not shrink the dashboard
    body = dashboard_body(settings.metrics_namespace, settings.aws_region or "us-east-1")
    return sink.publish_dashboard(settings.dashboard_name, body)


def _value(metrics: list[Metric], name: str) -> float:
    return next((float(m.value) for m in metrics if m.name == name), 0.0)


@single_run_asset(  # it joins the runs over many collections
    name=METRICS_KEY,
    deps=[WAREHOUSE_TABLE_KEY],
    group_name="operations",
    kinds={"cloudwatch"},
    check_specs=[
        AssetCheckSpec(
            "queue_not_stuck",
            asset=METRICS_KEY,
            description="No run has waited in the queue longer than LAKEHOUSE_QUEUE_STUCK_SECONDS.",
        ),
        AssetCheckSpec(
            "failure_rate_ok",
            asset=METRICS_KEY,
            description="The share of failed runs in the window is at most LAKEHOUSE_MAX_FAILURE_RATE.",
        ),
    ],
    description=(
        "MWAA-style metrics: queued and running runs, oldest queued age, run outcomes and "
        "durations, pool slots, daemon heartbeats, and per-stage rows, durations, Lambda "
        "duration/memory/cost and CDC lag. Published to CloudWatch (AWS) or the lake (local)."
    ),
)
def pipeline_metrics(
    context: AssetExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    metrics_sink: ResourceParam[MetricsSink],
) -> MaterializeResult:
    metrics = collect_metrics(context.instance, lakehouse)
    dashboard = publish(metrics, metrics_sink, lakehouse)
    context.log.info(f"Published {len(metrics)} metrics to {metrics_sink.location}; {dashboard}")
    oldest = _value(metrics, "OldestQueuedRunAge")
    failure_rate = _value(metrics, "RunFailureRate")
    return MaterializeResult(
        metadata={
            **{k: MetadataValue.float(v) for k, v in labels(metrics).items()},
            "metrics_published": MetadataValue.int(len(metrics)),
            "destination": MetadataValue.text(metrics_sink.location),
            "dashboard": MetadataValue.text(dashboard),
        },
        check_results=[
            _warn_above(
                "queue_not_stuck",
                oldest,
                lakehouse.queue_stuck_seconds,
                {
                    "oldest_queued_run_age_seconds": MetadataValue.float(oldest),
                    "threshold_seconds": MetadataValue.float(lakehouse.queue_stuck_seconds),
                },
            ),
            _warn_above(
                "failure_rate_ok",
                failure_rate,
                lakehouse.max_failure_rate,
                {
                    "failure_rate": MetadataValue.float(failure_rate),
                    "runs_failed": MetadataValue.int(int(_value(metrics, "RunsFailed"))),
                    "runs_finished": MetadataValue.int(int(_value(metrics, "RunsFinished"))),
                    "threshold": MetadataValue.float(lakehouse.max_failure_rate),
                },
            ),
        ],
    )


def _warn_above(
    check_name: str, value: float, threshold: float, metadata: dict[str, Any]
) -> AssetCheckResult:
    """A warning-severity check result: passed while ``value`` is at most ``threshold``."""
    return AssetCheckResult(
        check_name=check_name,
        passed=value <= threshold,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
    )


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Publishes pipeline metrics every minute without launching a run.",
)
def pipeline_metrics_sensor(
    context: SensorEvaluationContext,
    lakehouse: ResourceParam[LakehouseSettings],
    metrics_sink: ResourceParam[MetricsSink],
) -> SkipReason:
    metrics = collect_metrics(context.instance, lakehouse)
    publish(metrics, metrics_sink, lakehouse)
    return SkipReason(f"published {len(metrics)} metrics to {metrics_sink.location}")


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(
        assets=[pipeline_metrics],
        sensors=[pipeline_metrics_sensor],
        schedules=optional_schedule(
            "pipeline_metrics_schedule", [METRICS_KEY], settings.metrics_cron
        ),
    )
