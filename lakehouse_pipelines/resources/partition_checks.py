"""Asset check results of a fanned-out step: one result per check over every partition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import AssetCheckResult, MaterializeResult, MetadataValue


def combine_checks(results: Mapping[str, MaterializeResult]) -> list[AssetCheckResult]:
    by_name: dict[str, dict[str, AssetCheckResult]] = {}
    for key, result in results.items():
        for check in result.check_results or []:
            by_name.setdefault(check.check_name, {})[key] = check
    combined = []
    for name, checks in sorted(by_name.items()):
        failed = sorted(key for key, check in checks.items() if not check.passed)
        first = next(iter(checks.values()))
        combined.append(
            AssetCheckResult(
                check_name=name,
                asset_key=first.asset_key,
                passed=not failed,
                severity=first.severity,
                metadata={
                    "partitions_checked": MetadataValue.int(len(checks)),
                    "failed_partitions": MetadataValue.json(failed),
                    **collection_figures(checks),
                },
            )
        )
    return combined


def collection_figures(checks: Mapping[str, AssetCheckResult]) -> dict[str, Any]:
    """Each collection's numeric check figures under ``<collection>/<name>``.

    Asset checks are not partitioned, so the UI plots a check's metadata as one series over
    time; a figure keyed by collection is one series per collection there, where a bare key
    would join the collections' values (one run's shop.orders lag, the next run's
    shop.customers lag) into one line."""
    figures: dict[str, Any] = {}
    for key, check in sorted(checks.items()):
        for name, value in (check.metadata or {}).items():
            raw = getattr(value, "value", value)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                figures[f"{key}/{name}"] = value
    return figures


def with_collection_figures(
    check: AssetCheckResult, checks: Mapping[str, AssetCheckResult]
) -> AssetCheckResult:
    return check._replace(metadata={**(check.metadata or {}), **collection_figures(checks)})
