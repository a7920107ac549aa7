"""Checks that a handler's stdout holds valid CloudWatch Embedded Metric Format documents.

The rules are the EMF specification's: a root ``_aws`` member with an integer millisecond
``Timestamp`` and a ``CloudWatchMetrics`` array of directives; each directive names a
``Namespace``, ``Dimensions`` (an array of dimension sets, each naming root members whose values
are strings, at most 30 per set) and ``Metrics`` (at most 100, each naming a numeric root member,
with a CloudWatch unit).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

UNITS = {
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
}


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents among ``stdout``'s lines, each checked against the specification."""
    documents = []
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        document = json.loads(line)
        if "_aws" in document:
            check_emf(document)
            documents.append(document)
    return documents


def check_emf(document: Mapping[str, Any]) -> None:
    meta = document["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 0
    directives = meta["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert isinstance(directive["Namespace"], str) and directive["Namespace"]
        assert not directive["Namespace"].startswith("AWS/")
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(document[name], str), f"dimension {name} is not a string"
        metrics = directive["Metrics"]
        assert 1 <= len(metrics) <= 100
        for metric in metrics:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            assert metric["Unit"] in UNITS, metric
            value = document[metric["Name"]]
            assert isinstance(value, int | float) and not isinstance(value, bool), metric


def stage_metrics(stdout: str, stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one EMF document a handler printed for ``stage``, and its directive."""
    (document,) = [d for d in emf_documents(stdout) if d.get("Stage") == stage]
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    return document, directive


def numeric_metadata(metadata: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The numbers of a Pipes materialization's metadata, as ``emit_stage_metrics`` names them."""
    from lambda_functions.emf import NOT_FIGURES, _metric_name

    return {
        _metric_name(key): float(entry["raw_value"])
        for key, entry in metadata.items()
        if entry["type"] in ("int", "float")
        and not isinstance(entry["raw_value"], bool)
        and key not in NOT_FIGURES
    }
