"""CloudWatch Embedded Metric Format (EMF) lines, printed by the Lambdas.

In Lambda, a JSON line on stdout with an ``_aws`` member becomes CloudWatch metrics without any API
call (CloudWatch Logs extracts them). Locally the line simply lands in the function log. Format and
limits are the EMF specification's (Amazon CloudWatch User Guide, "Specification: Embedded metric
format", https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html):
at most 100 metrics per directive, at most 30 dimensions per dimension set, namespaces not starting
with ``AWS/``, units from CloudWatch's list.

Hand-written because (issue 14, item 8; aws-lambda-powertools 3.37.0): Powertools' ``Metrics`` /
``EphemeralMetrics`` would replace only ``emf_lines`` (~35 lines; the work here is
``emit_stage_metrics``, which Powertools does not do) and would change the output: it writes each
value as an array (``"Rows": [529.0]``, valid EMF) where our lines, and the tests that read them
(``tests/lambda_functions/emf_checks.py``, the metrics and handler tests), have a number.
``Metrics`` keeps its metric set in class attributes shared by every instance (state that
outlives an invocation in a warm container unless flushed), and ``POWERTOOLS_DEV=1`` silently
turns it off. Cost (``benchmarks/powertools_cost.py``, 2 shared cores, median of fresh
interpreters, quietest run): importing ``aws_lambda_powertools.metrics`` takes 37.8 ms alone,
10.4 ms on top of a handler's imports (this module: 3.6 ms); the package with its
dependencies installs 8.3 MB (6.3 MB of it Powertools itself), 67.5 MB with the ``[all]`` extras.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from lambda_functions.errors import TerminalError

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


class InvalidEmfDocumentError(TerminalError, ValueError):
    """Metrics that no EMF document may carry (a reserved namespace, too many dimensions): the
    caller must change them; printing again cannot help."""


def emf_lines(
    namespace: str,
    dimensions: Mapping[str, str],
    metrics: Mapping[str, tuple[float, str]],
    *,
    timestamp_ms: int | None = None,
) -> list[str]:
    """EMF documents for ``metrics``, as compact JSON lines, 100 metrics per line.

    Every line carries one metric directive with the same namespace and the one dimension set
    ``dimensions`` (names in their given order), the dimension values and its share of the metric
    values as root members. Pure: nothing is printed.

    Args:
        namespace: the CloudWatch namespace, e.g. ``"Lakehouse/Pipelines"``.
        dimensions: dimension name -> value (strings), at most ``MAX_DIMENSIONS``; the same on
            every line.
        metrics: metric name -> ``(value, unit)``, the unit one of CloudWatch's
            (``"Count"``, ``"Seconds"``, ``"Milliseconds"``, ``"Bytes"``, ...). Insertion order is
            kept, across lines too.
        timestamp_ms: the documents' ``Timestamp``, milliseconds since the Unix epoch (default:
            now).

    Returns:
        ``ceil(len(metrics) / MAX_METRICS_PER_LINE)`` JSON documents without newlines (none for
        no metrics); each metric appears on exactly one line.

    Raises:
        InvalidEmfDocumentError: ``namespace`` starts with ``AWS/`` (reserved for AWS services)
            or ``dimensions`` has more than ``MAX_DIMENSIONS`` names (EMF specification,
            "DimensionSet").
    """
    if namespace.startswith("AWS/"):
        raise InvalidEmfDocumentError(
            f"EMF namespace {namespace!r} starts with 'AWS/', which is reserved for AWS services: "
            "use a namespace of your own, e.g. 'Lakehouse/Pipelines'"
        )
    if len(dimensions) > MAX_DIMENSIONS:
        raise InvalidEmfDocumentError(
            f"{len(dimensions)} dimensions ({', '.join(dimensions)}): at most {MAX_DIMENSIONS} "
            "per EMF dimension set; drop the dimensions that do not identify the series"
        )
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
    """Print ``emf_lines(namespace, dimensions, metrics)`` to stdout, one flushed line each.

    In Lambda, stdout goes to CloudWatch Logs, which extracts the metrics (no API call, no
    throttling, nothing to retry). Lines are flushed one by one, so a function that fails later
    has still logged them.

    Args:
        namespace: the CloudWatch namespace (see ``emf_lines``).
        dimensions: dimension name -> value, at most ``MAX_DIMENSIONS``.
        metrics: metric name -> ``(value, unit)``.

    Raises:
        InvalidEmfDocumentError: as ``emf_lines`` (nothing is printed then).
    """
    for line in emf_lines(namespace, dimensions, metrics):
        print(line, flush=True)


def emit_stage_metrics(stage: str, collection: str, metadata: Mapping[str, object]) -> None:
    """Print the numeric figures a handler reported to Dagster as EMF lines as well.

    Each int or float entry becomes a metric named in CamelCase (``rows_inserted`` ->
    ``RowsInserted``, ``dagster/row_count`` -> ``Rows``), its unit taken from the name's suffix
    (``_seconds``, ``_ms``, ``bytes``; else ``Count``); booleans, text and the identifiers in
    ``NOT_FIGURES`` (versions, batch numbers, positions) are left out. Nothing is printed when no
    figure is left. In Lambda these lines become CloudWatch metrics in the namespace from
    ``LAKEHOUSE_METRICS_NAMESPACE`` (set by the deployment; default ``Lakehouse/Pipelines``).

    Args:
        stage: the ``Stage`` dimension, e.g. ``"merge"``.
        collection: the ``Collection`` dimension, ``database.collection``.
        metadata: the Pipes metadata the handler reported, typed (``{"raw_value": v, "type":
            t}``, as ``lambda_functions.pipes.typed_metadata`` builds it) or plain values.

    Raises:
        InvalidEmfDocumentError: ``LAKEHOUSE_METRICS_NAMESPACE`` starts with ``AWS/``.
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
