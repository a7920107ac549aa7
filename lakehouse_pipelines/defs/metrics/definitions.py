"""MWAA-style metrics: the Dagster queue and the pipeline's own figures, to CloudWatch or the lake.

MWAA's queue metrics (QueuedTasks, RunningTasks, ApproximateAgeOfOldestTask) map to Dagster's
queued runs, in-progress runs and the age of the oldest queued run; the pipeline adds per-stage rows
and durations, Lambda figures (duration, billed duration, max memory, estimated cost) and CDC lag,
read from the latest materialization of each stage.
"""

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    RunsFilter,
    asset,
)

from lakehouse_pipelines.defs.cdc_capture.definitions import CAPTURE_KEY
from lakehouse_pipelines.defs.merge.definitions import LAKE_TABLE_KEY
from lakehouse_pipelines.defs.warehouse_load.definitions import WAREHOUSE_TABLE_KEY
from lakehouse_pipelines.resources import Metric, MetricsSink
from lakehouse_pipelines.settings import LakehouseSettings

STAGES = {CAPTURE_KEY: "capture", LAKE_TABLE_KEY: "merge", WAREHOUSE_TABLE_KEY: "load"}
# Stage metadata key -> (metric name, CloudWatch unit)
STAGE_FIGURES = {
    "dagster/row_count": ("Rows", "Count"),
    "duration_seconds": ("StageDuration", "Seconds"),
    "lambda/duration_ms": ("LambdaDuration", "Milliseconds"),
    "lambda/billed_duration_ms": ("LambdaBilledDuration", "Milliseconds"),
    "lambda/max_memory_used_mb": ("LambdaMaxMemoryUsed", "Megabytes"),
    "lambda/estimated_cost_usd": ("LambdaEstimatedCost", "None"),
    "cdc_lag_seconds": ("CdcLag", "Seconds"),
}
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
QUEUE_STUCK_AFTER_S = 3600.0


def queue_metrics(instance: DagsterInstance, now: float) -> list[Metric]:
    queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
    running = instance.get_runs_count(RunsFilter(statuses=IN_PROGRESS))
    oldest = instance.get_run_records(
        filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED]), limit=1, ascending=True
    )
    oldest_age = now - oldest[0].create_timestamp.timestamp() if oldest else 0.0
    return [
        Metric("QueuedRuns", queued, "Count"),
        Metric("RunningRuns", running, "Count"),
        Metric("OldestQueuedRunAge", round(oldest_age, 3), "Seconds"),
    ]


def stage_metrics(instance: DagsterInstance, namespace: str) -> list[Metric]:
    metrics = []
    for key, stage in STAGES.items():
        event = instance.get_latest_materialization_event(AssetKey(key))
        if event is None or event.asset_materialization is None:
            continue
        metadata = event.asset_materialization.metadata
        for field, (name, unit) in STAGE_FIGURES.items():
            value = metadata.get(field)
            if value is not None and isinstance(value.value, int | float):
                metrics.append(
                    Metric(name, value.value, unit, {"Stage": stage, "Collection": namespace})
                )
    return metrics


def as_metadata(metrics: Sequence[Metric]) -> dict[str, MetadataValue]:
    out: dict[str, MetadataValue] = {}
    for m in metrics:
        label = m.name if "Stage" not in m.dimensions else f"{m.dimensions['Stage']}/{m.name}"
        out[label] = MetadataValue.float(float(m.value))
    return out


@asset(
    name="pipeline_metrics",
    deps=[WAREHOUSE_TABLE_KEY],
    group_name="operations",
    kinds={"cloudwatch"},
    check_specs=[
        AssetCheckSpec(
            "queue_not_stuck",
            asset="pipeline_metrics",
            description=f"No run has waited in the queue longer than {QUEUE_STUCK_AFTER_S:.0f} s.",
        )
    ],
    description=(
        "MWAA-style queue metrics (queued and running runs, oldest queued age) and the pipeline's "
        "figures (rows, durations, Lambda duration/memory/cost, CDC lag) published to CloudWatch "
        "(AWS) or a metrics table in the lake (local); every figure is also numeric metadata here."
    ),
)
def pipeline_metrics(
    context: AssetExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    metrics_sink: ResourceParam[MetricsSink],
) -> MaterializeResult:
    now = time.time()
    metrics = queue_metrics(context.instance, now) + stage_metrics(
        context.instance, lakehouse.namespace
    )
    stamp = datetime.fromtimestamp(now, UTC)
    metrics = [Metric(m.name, m.value, m.unit, m.dimensions, stamp) for m in metrics]
    published = metrics_sink.publish(metrics)
    context.log.info(f"Published {published} metrics to {metrics_sink.location}")
    oldest_age = next(m.value for m in metrics if m.name == "OldestQueuedRunAge")
    return MaterializeResult(
        metadata={
            **as_metadata(metrics),
            "metrics_published": MetadataValue.int(published),
            "destination": MetadataValue.text(metrics_sink.location),
        },
        check_results=[
            AssetCheckResult(
                check_name="queue_not_stuck",
                passed=oldest_age <= QUEUE_STUCK_AFTER_S,
                severity=AssetCheckSeverity.WARN,
                metadata={"oldest_queued_run_age_seconds": MetadataValue.float(oldest_age)},
            )
        ],
    )


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(assets=[pipeline_metrics])
