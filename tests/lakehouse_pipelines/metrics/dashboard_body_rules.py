"""CloudWatch's documented dashboard body structure, as checks (moto accepts any JSON body).

From the CloudWatch API reference, "Dashboard Body Structure and Syntax"
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/CloudWatch-Dashboard-Body-Structure.html)
and the CloudWatch quotas page (500 widgets per dashboard):

- the body is a JSON object whose ``widgets`` array is required; ``start``, ``end``,
  ``periodOverride`` (``auto`` | ``inherit``) and ``variables`` are the other top-level keys;
- a widget has a ``type`` (``metric``, ``text``, ``log``, ``alarm``, ``explorer``, ``custom``) and
  ``properties`` (both required); ``x`` is 0-23, ``width`` 1-24 (the grid is 24 wide), ``y`` 0 or
  more, ``height`` 1-1000;
- a metric widget's properties: ``metrics`` (array), ``region`` (required), ``view``
  (``timeSeries`` | ``singleValue`` | ``gauge`` | ``bar`` | ``pie`` | ``table``), ``stacked``
  (boolean), ``stat``, ``period`` (seconds: 1, 5, 10, 30 or a multiple of 60), ``title``, ...;
- each entry of ``metrics`` is either ``[Namespace, MetricName, DimensionName, DimensionValue, ...,
  {rendering properties}]`` (strings; "." repeats the line above; up to 30 dimensions), or
  ``[{"expression": "...", "id": "...", "label": "..."}]``; an ``id`` starts with a lowercase
  letter and holds letters, digits and underscores;
- a text widget's properties: ``markdown`` (required), ``background`` (``solid`` |
  ``transparent``).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_WIDGETS = 500
MAX_DIMENSIONS = 30
WIDGET_TYPES = {"metric", "text", "log", "alarm", "explorer", "custom"}
TOP_LEVEL_KEYS = {"widgets", "start", "end", "periodOverride", "variables"}
WIDGET_KEYS = {"type", "x", "y", "width", "height", "properties"}
VIEWS = {"timeSeries", "singleValue", "gauge", "bar", "pie", "table"}
METRIC_PROPERTIES = {
    *("accountId", "annotations", "liveData", "legend", "metrics", "period", "region"),
    *("stat", "title", "view", "stacked", "yAxis", "setPeriodToTimeRange", "sparkline"),
    *("trend", "labels", "table", "singleValueFullPrecision", "timezone", "start", "end"),
}
RENDERING_PROPERTIES = {
    *("accountId", "color", "expression", "id", "label", "period", "region", "stat"),
    *("visible", "yAxis"),
}
STATISTICS = {"SampleCount", "Average", "Sum", "Minimum", "Maximum", "IQM"}
_PERCENTILE = re.compile(r"^(p|tm|wm|tc|ts|pr)\(?[0-9.:%]+\)?$")
_ID = re.compile(r"^[a-z][A-Za-z0-9_]*$")


def dashboard_body_errors(body: str) -> list[str]:
    """Every way ``body`` departs from the documented structure (empty: it conforms)."""
    try:
        document = json.loads(body)
    except ValueError as error:
        return [f"not JSON: {error}"]
    if not isinstance(document, dict):
        return ["the body must be a JSON object"]
    errors = [f"unknown top-level key {k!r}" for k in document if k not in TOP_LEVEL_KEYS]
    widgets = document.get("widgets")
    if not isinstance(widgets, list):
        return [*errors, "'widgets' (an array) is required"]
    if len(widgets) > MAX_WIDGETS:
        errors.append(f"{len(widgets)} widgets: at most {MAX_WIDGETS}")
    if document.get("periodOverride", "auto") not in ("auto", "inherit"):
        errors.append("periodOverride must be 'auto' or 'inherit'")
    for index, widget in enumerate(widgets):
        errors += [f"widget {index}: {e}" for e in _widget_errors(widget)]
    return errors


def _widget_errors(widget: Any) -> list[str]:
    if not isinstance(widget, dict):
        return ["a widget must be an object"]
    errors = [f"unknown key {k!r}" for k in widget if k not in WIDGET_KEYS]
    if widget.get("type") not in WIDGET_TYPES:
        errors.append(f"type {widget.get('type')!r} is not one of {sorted(WIDGET_TYPES)}")
    x, y = widget.get("x", 0), widget.get("y", 0)
    width, height = widget.get("width", 6), widget.get("height", 6)
    if not _int_in(x, 0, 23):
        errors.append(f"x={x!r}: an integer 0-23")
    if not _int_in(y, 0, None):
        errors.append(f"y={y!r}: an integer, 0 or more")
    if not _int_in(width, 1, 24):
        errors.append(f"width={width!r}: an integer 1-24")
    elif _int_in(x, 0, 23) and x + width > 24:
        errors.append(f"x + width = {x + width}: the grid is 24 wide")
    if not _int_in(height, 1, 1000):
        errors.append(f"height={height!r}: an integer 1-1000")
    properties = widget.get("properties")
    if not isinstance(properties, dict):
        return [*errors, "'properties' (an object) is required"]
    if widget.get("type") == "metric":
        errors += _metric_widget_errors(properties)
    elif widget.get("type") == "text":
        if not isinstance(properties.get("markdown"), str):
            errors.append("a text widget needs 'markdown' (a string)")
        if properties.get("background", "solid") not in ("solid", "transparent"):
            errors.append("background must be 'solid' or 'transparent'")
    return errors


def _metric_widget_errors(properties: dict[str, Any]) -> list[str]:
    errors = [f"unknown property {k!r}" for k in properties if k not in METRIC_PROPERTIES]
    if not isinstance(properties.get("region"), str) or not properties.get("region"):
        errors.append("'region' is required")
    if properties.get("view", "timeSeries") not in VIEWS:
        errors.append(f"view {properties.get('view')!r} is not one of {sorted(VIEWS)}")
    if not isinstance(properties.get("stacked", False), bool):
        errors.append("stacked must be a boolean")
    if "stat" in properties and not _is_statistic(properties["stat"]):
        errors.append(f"stat {properties['stat']!r} is not a statistic")
    if "period" in properties and not _is_period(properties["period"]):
        errors.append(f"period {properties['period']!r}: 1, 5, 10, 30 or a multiple of 60")
    if "title" in properties and not isinstance(properties["title"], str):
        errors.append("title must be a string")
    metrics = properties.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        return [*errors, "'metrics' must be a non-empty array"]
    ids = []
    for number, line in enumerate(metrics):
        line_errors, line_id = _metric_line_errors(line, first=number == 0)
        errors += [f"metrics[{number}]: {e}" for e in line_errors]
        if line_id is not None:
            ids.append(line_id)
    if len(ids) != len(set(ids)):
        errors.append("metric ids must be unique within a widget")
    return errors


def _metric_line_errors(line: Any, *, first: bool) -> tuple[list[str], str | None]:
    if not isinstance(line, list) or not line:
        return ["each entry is a non-empty array"], None
    options: dict[str, Any] = {}
    if isinstance(line[-1], dict):
        options, line = line[-1], line[:-1]
    errors = [f"unknown rendering property {k!r}" for k in options if k not in RENDERING_PROPERTIES]
    if "expression" in options:
        if line:
            errors.append("an expression entry holds only its object")
        if not isinstance(options["expression"], str) or not options["expression"].strip():
            errors.append("expression must be a non-empty string")
        if "id" not in options:
            errors.append("an expression needs an 'id'")
    else:
        if not all(isinstance(part, str) for part in line):
            errors.append("namespace, metric name and dimensions must be strings")
        elif len(line) < 2 or len(line) % 2:
            errors.append("[Namespace, MetricName, (DimensionName, DimensionValue)...]")
        elif first and "." in line:
            errors.append("'.' repeats the line above: not allowed in the first line")
        elif (len(line) - 2) // 2 > MAX_DIMENSIONS:
            errors.append(f"at most {MAX_DIMENSIONS} dimensions")
    line_id = options.get("id")
    if line_id is not None and not (isinstance(line_id, str) and _ID.match(line_id)):
        errors.append(f"id {line_id!r}: a lowercase letter, then letters, digits, underscores")
    if "stat" in options and not _is_statistic(options["stat"]):
        errors.append(f"stat {options['stat']!r} is not a statistic")
    if "period" in options and not _is_period(options["period"]):
        errors.append(f"period {options['period']!r}: 1, 5, 10, 30 or a multiple of 60")
    if options.get("yAxis", "left") not in ("left", "right"):
        errors.append("yAxis must be 'left' or 'right'")
    return errors, line_id


def _int_in(value: Any, low: int, high: int | None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def _is_period(value: Any) -> bool:
    return _int_in(value, 1, None) and (value in (1, 5, 10, 30) or value % 60 == 0)


def _is_statistic(value: Any) -> bool:
    return isinstance(value, str) and (value in STATISTICS or bool(_PERCENTILE.match(value)))
