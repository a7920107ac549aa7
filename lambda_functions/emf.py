"""CloudWatch Embedded Metric Format (EMF) lines, printed by the Lambdas.

In Lambda, a JSON line on stdout with an ``_aws`` member becomes CloudWatch metrics without any API
call (CloudWatch Logs extracts them). Locally the line simply lands in the function log. Limits
from the EMF specification: at most 100 metrics per line, at most 30 dimensions per set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

MAX_METRICS_PER_LINE = 100
MAX_DIMENSIONS = 30
# Numeric metadata that identifies rather than measures (a version, a batch number, a stream
# position): useful in Dagster, meaningless as a metric, and each custom metric is billed.
NOT_FIGURES = frozenset(
    {
        "batch",
        "checkpoint_batch",
        "last_applied_batch",
        "table_version",
        "lake_version",
        "previous_lake_version",
        "resume_position",
        "max_event_time",
    }
)


def emf_lines(
    namespace: str,
    dimensions: Mapping[str, str],
    metrics: Mapping[str, tuple[float, str]],
    *,
    timestamp_ms: int | None = None,
) -> list[str]:
    """EMF documents for ``metrics`` (name -> (value, unit)), 100 metrics per line."""
    if namespace.startswith("AWS/"):
        raise ValueError("EMF namespaces starting with 'AWS/' are reserved")
    if len(dimensions) > MAX_DIMENSIONS:
        raise ValueError(f"at most {MAX_DIMENSIONS} dimensions per EMF dimension set")
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    names = list(metrics)
    lines = []
    for start in range(0, len(names), MAX_METRICS_PER_LINE):
        chunk = names[start : start + MAX_METRICS_PER_LINE]
        document: dict = {
            "_aws": {
                "Timestamp": stamp,
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [list(dimensions)],
                        "Metrics": [{"Name": n, "Unit": metrics[n][1]} for n in chunk],
                    }
                ],
            },
            **dimensions,
            **{n: metrics[n][0] for n in chunk},
        }
        lines.append(json.dumps(document, separators=(",", ":")))
    return lines


def print_emf(
    namespace: str, dimensions: Mapping[str, str], metrics: Mapping[str, tuple[float, str]]
) -> None:
    for line in emf_lines(namespace, dimensions, metrics):
        print(line, flush=True)


def emit_stage_metrics(stage: str, collection: str, metadata: Mapping[str, object]) -> None:
    """Print the numeric figures a handler reported to Dagster as EMF lines as well.

    ``metadata`` is the Pipes metadata the handler reported (``{"raw_value": v, "type": t}`` or
    plain values). In Lambda these lines become CloudWatch metrics in the namespace from
    ``LAKEHOUSE_METRICS_NAMESPACE`` (set by the deployment), dimensioned by stage and collection.
    """
    figures: dict[str, tuple[float, str]] = {}
    for key, entry in metadata.items():
        value = entry.get("raw_value") if isinstance(entry, Mapping) else entry
        if key in NOT_FIGURES or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        figures[_metric_name(key)] = (float(value), _unit(key))
    if figures:
        namespace = os.environ.get("LAKEHOUSE_METRICS_NAMESPACE") or "Lakehouse/Pipelines"
        print_emf(namespace, {"Stage": stage, "Collection": collection}, figures)


def _metric_name(key: str) -> str:
    if key == "dagster/row_count":
        return "Rows"
    return "".join(part.capitalize() for part in key.replace("/", "_").split("_") if part)


def _unit(key: str) -> str:
    if key.endswith("_seconds"):
        return "Seconds"
    if key.endswith("_ms"):
        return "Milliseconds"
    if key == "bytes" or key.endswith("_bytes") or key.startswith("bytes_"):
        return "Bytes"  # "bytes", "snapshot_bytes", "bytes_rewritten", "bytes_in_table"
    return "Count"
