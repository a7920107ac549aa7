"""Where pipeline metrics go: a table in the lake locally, CloudWatch in AWS.

Both receive the same ``Metric`` list. CloudWatch calls are batched within PutMetricData's limits
(at most 1,000 metric data items per call, 30 dimensions per metric, 150 distinct values per item:
a distribution with more values becomes several items); the namespace may not start with the
reserved ``AWS/`` prefix.
"""

from __future__ import annotations

import dataclasses
import io
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse_pipelines.settings_values import SettingsError
from lambda_functions.emf import MAX_DIMENSIONS  # the same CloudWatch limit
from lambda_functions.lake import ObjectStore

MAX_METRICS_PER_CALL = 1000

MAX_VALUES_PER_METRIC = 150


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str = "None"  # a CloudWatch unit: Count, Seconds, Milliseconds, Megabytes, None, ...
    dimensions: dict[str, str] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    # A distribution (e.g. every run duration in the window); ``value`` is then its summary.
    values: list[float] | None = None

    def at(self, timestamp: datetime) -> Metric:
        return dataclasses.replace(self, timestamp=timestamp)


class MetricsSink(ABC):
    @abstractmethod
    def publish(self, metrics: Sequence[Metric]) -> int:
        """Publish the metrics; return how many were written."""

    @abstractmethod
    def publish_dashboard(self, name: str, body: str) -> str:
        """Store a CloudWatch dashboard definition; return where it went."""

    @property
    @abstractmethod
    def location(self) -> str: ...


class LakeMetricsTable(MetricsSink):
    """Appends one Parquet file per publish under ``metrics/pipeline_metrics/`` in the lake."""

    PREFIX = "metrics/pipeline_metrics/"
    SCHEMA = pa.schema(
        [
            ("timestamp", pa.timestamp("ms", tz="UTC")),
            ("name", pa.string()),
            ("value", pa.float64()),
            ("unit", pa.string()),
            ("dimensions", pa.map_(pa.string(), pa.string())),
        ]
    )

    def __init__(self, store: ObjectStore):
        self.store = store

    @property
    def location(self) -> str:
        return f"{self.store.uri}/{self.PREFIX}"

    def publish(self, metrics: Sequence[Metric]) -> int:
        if not metrics:
            return 0
        table = pa.table(
            {
                "timestamp": [m.timestamp for m in metrics],
                "name": [m.name for m in metrics],
                "value": [float(m.value) for m in metrics],
                "unit": [m.unit for m in metrics],
                "dimensions": [list(m.dimensions.items()) for m in metrics],
            },
            schema=self.SCHEMA,
        )
        sink = io.BytesIO()
        pq.write_table(table, sink)
        day = metrics[0].timestamp.strftime("%Y-%m-%d")
        self.store.put(f"{self.PREFIX}date={day}/{uuid.uuid4().hex}.parquet", sink.getvalue())
        return len(metrics)

    def publish_dashboard(self, name: str, body: str) -> str:
        key = f"metrics/dashboards/{name}.json"
        self.store.put(key, body.encode())
        return f"{self.store.uri}/{key}"


class CloudWatchMetrics(MetricsSink):
    def __init__(self, namespace: str, client: Any = None, region: str | None = None):
        import boto3

        if namespace.startswith("AWS/"):
            raise SettingsError(
                f"LAKEHOUSE_METRICS_NAMESPACE={namespace!r}: CloudWatch namespaces starting with "
                "'AWS/' are reserved for AWS services; choose another (e.g. Lakehouse/Pipelines)"
            )
        from botocore.exceptions import NoRegionError

        from lakehouse_pipelines.resources.lambda_failures import (
            NO_REGION_HINT,
            MissingAwsSettingError,
        )

        self.namespace = namespace
        try:
            self.client = client or boto3.client("cloudwatch", region_name=region or None)
        except NoRegionError:
            raise MissingAwsSettingError(NO_REGION_HINT) from None

    @property
    def location(self) -> str:
        return f"cloudwatch://{self.namespace}"

    def publish(self, metrics: Sequence[Metric]) -> int:
        data = [datum for m in metrics for datum in metric_data(m)]
        for start in range(0, len(data), MAX_METRICS_PER_CALL):
            self.client.put_metric_data(
                Namespace=self.namespace, MetricData=data[start : start + MAX_METRICS_PER_CALL]
            )
        return len(data)

    def publish_dashboard(self, name: str, body: str) -> str:
        self.client.put_dashboard(DashboardName=name, DashboardBody=body)
        return f"cloudwatch dashboard {name}"


def metric_data(metric: Metric) -> list[dict[str, Any]]:
    """PutMetricData items for one metric: one ``Value``, or ``Values``/``Counts`` in chunks of
    at most 150 distinct values (CloudWatch aggregates the chunks into one statistic set)."""
    if len(metric.dimensions) > MAX_DIMENSIONS:
        raise ValueError(f"metric {metric.name} has more than {MAX_DIMENSIONS} dimensions")
    base = {
        "MetricName": metric.name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in metric.dimensions.items()],
        "Timestamp": metric.timestamp,
        "Unit": metric.unit,
    }
    if not metric.values:
        return [{**base, "Value": float(metric.value)}]
    counts = Counter(map(float, metric.values))
    distinct = sorted(counts)
    chunks = (
        distinct[i : i + MAX_VALUES_PER_METRIC]
        for i in range(0, len(distinct), MAX_VALUES_PER_METRIC)
    )
    return [
        {**base, "Values": chunk, "Counts": [float(counts[v]) for v in chunk]} for chunk in chunks
    ]
