"""A CloudWatch dashboard generated from the metrics the pipeline publishes.

One widget per metric name, one line per dimension combination seen, so every published metric is
on the dashboard. The body is what ``cloudwatch.put_dashboard(DashboardBody=...)`` accepts.
"""

import json
from collections.abc import Sequence

from lakehouse_pipelines.resources.metrics_sink import Metric

WIDGET_WIDTH, WIDGET_HEIGHT, COLUMNS = 8, 6, 3
STAT_BY_UNIT = {"Count": "Maximum", "Seconds": "Average", "Milliseconds": "Average"}


def dashboard_body(namespace: str, region: str, metrics: Sequence[Metric]) -> str:
    series: dict[str, list[list[str]]] = {}
    units: dict[str, str] = {}
    for m in metrics:
        line = [namespace, m.name]
        for name, value in sorted(m.dimensions.items()):
            line += [name, value]
        lines = series.setdefault(m.name, [])
        if line not in lines:
            lines.append(line)
        units[m.name] = m.unit
    widgets = []
    for index, name in enumerate(sorted(series)):
        widgets.append(
            {
                "type": "metric",
                "x": (index % COLUMNS) * WIDGET_WIDTH,
                "y": (index // COLUMNS) * WIDGET_HEIGHT,
                "width": WIDGET_WIDTH,
                "height": WIDGET_HEIGHT,
                "properties": {
                    "title": name,
                    "region": region,
                    "view": "timeSeries",
                    "stat": STAT_BY_UNIT.get(units[name], "Average"),
                    "period": 300,
                    "metrics": series[name],
                },
            }
        )
    return json.dumps({"widgets": widgets}, indent=1)
