"""Compute MWAA-style metrics from a Dagster instance: pure functions, no publishing.

MWAA publishes queue metrics (QueuedTasks, RunningTasks, ApproximateAgeOfOldestTask), container
and database health. The Dagster equivalents read here: queued and in-progress runs, the age of the
oldest queued run, run outcomes and durations over a window, pool slot usage, daemon heartbeat ages;
plus the pipeline's own figures from each stage's latest materialization (rows, durations, Lambda
duration / billed duration / max memory / estimated cost, CDC lag).
"""

import statistics
from collections.abc import Iterable, Mapping

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from lakehouse_pipelines.resources.metrics_sink import Metric

IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
# Stage metadata key -> (metric name, CloudWatch unit)
STAGE_FIGURES = {
    "dagster/row_count": ("Rows", "Count"),
    "bytes": ("Bytes", "Bytes"),
    "duration_seconds": ("StageDuration", "Seconds"),
    "lambda/duration_ms": ("LambdaDuration", "Milliseconds"),
    "lambda/billed_duration_ms": ("LambdaBilledDuration", "Milliseconds"),
    "lambda/max_memory_used_mb": ("LambdaMaxMemoryUsed", "Megabytes"),
    "lambda/estimated_cost_usd": ("LambdaEstimatedCost", "None"),
    "cdc_lag_seconds": ("CdcLag", "Seconds"),
}
RUN_FETCH_LIMIT = 5000


def queue_metrics(instance: DagsterInstance, now: float) -> list[Metric]:
    queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
    running = instance.get_runs_count(RunsFilter(statuses=IN_PROGRESS))
    oldest = instance.get_run_records(
        filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED]), limit=1, ascending=True
    )
    oldest_age = max(0.0, now - oldest[0].create_timestamp.timestamp()) if oldest else 0.0
    return [
        Metric("QueuedRuns", queued, "Count"),
        Metric("RunningRuns", running, "Count"),
        Metric("OldestQueuedRunAge", round(oldest_age, 3), "Seconds"),
    ]


def run_window_metrics(instance: DagsterInstance, now: float, window_s: float) -> list[Metric]:
    """Outcomes and durations of runs that finished within the last ``window_s`` seconds."""
    from datetime import UTC, datetime

    since = datetime.fromtimestamp(now - window_s, UTC)
    records = instance.get_run_records(
        filters=RunsFilter(statuses=FINISHED, updated_after=since), limit=RUN_FETCH_LIMIT
    )
    durations = [
        r.end_time - r.start_time for r in records if r.start_time is not None and r.end_time
    ]
    failed = sum(1 for r in records if r.dagster_run.status == DagsterRunStatus.FAILURE)
    finished = len(records)
    metrics = [
        Metric("RunsFinished", finished, "Count"),
        Metric("RunsFailed", failed, "Count"),
        Metric("RunFailureRate", round(failed / finished, 4) if finished else 0.0, "None"),
    ]
    if durations:
        metrics += [
            Metric(
                "RunDuration",
                round(statistics.fmean(durations), 3),
                "Seconds",
                values=[round(d, 3) for d in durations],
            ),
            Metric("RunDurationMax", round(max(durations), 3), "Seconds"),
        ]
    return metrics


def pool_metrics(instance: DagsterInstance) -> list[Metric]:
    metrics = []
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return metrics
    for key in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(key)
        dims = {"Pool": key}
        metrics += [
            Metric("PoolSlotsLimit", info.slot_count, "Count", dims),
            Metric("PoolSlotsInUse", info.active_slot_count, "Count", dims),
            Metric("PoolStepsPending", info.pending_step_count, "Count", dims),
        ]
    return metrics


def daemon_metrics(instance: DagsterInstance, now: float) -> list[Metric]:
    heartbeats = instance.get_daemon_heartbeats()
    return [
        Metric(
            "DaemonHeartbeatAge",
            round(max(0.0, now - beat.timestamp), 3),
            "Seconds",
            {"Daemon": name},
        )
        for name, beat in sorted(heartbeats.items())
    ]


def stage_metrics(
    instance: DagsterInstance, stages: Mapping[str, str], collections: Iterable[str]
) -> list[Metric]:
    """Figures from the latest materialization of each stage asset (key -> stage name), per
    collection (partition)."""
    metrics = []
    for key, stage in stages.items():
        for collection in collections:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[collection]),
                limit=1,
                ascending=False,
            ).records
            if not records or records[0].asset_materialization is None:
                continue
            metadata = records[0].asset_materialization.metadata
            dims = {"Stage": stage, "Collection": collection}
            for field, (name, unit) in STAGE_FIGURES.items():
                value = metadata.get(field)
                if (
                    value is not None
                    and isinstance(value.value, int | float)
                    and not isinstance(value.value, bool)
                ):
                    metrics.append(Metric(name, value.value, unit, dims))
    return metrics


def metric_label(metric: Metric) -> str:
    """A stable, readable metadata key: ``Name`` or ``<dim values>/Name``."""
    if not metric.dimensions:
        return metric.name
    return "/".join([*(v for _, v in sorted(metric.dimensions.items())), metric.name])


def labels(metrics: Iterable[Metric]) -> dict[str, float]:
    return {metric_label(m): float(m.value) for m in metrics}
