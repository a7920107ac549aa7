"""Lambda handler: load the lake table's changes into the warehouse and reconcile."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import LoadRequest
from lambda_functions.pipes import open_pipes, without_pipes_keys
from lambda_functions.warehouse_load.load import load_changes


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = LoadRequest.from_event(without_pipes_keys(event))
        result = load_changes(request, on_progress=pipes.log.info)
        check = result.reconciliation
        pipes.report_asset_materialization(
            metadata={
                "dagster/row_count": {"raw_value": result.warehouse_rows, "type": "int"},
                "target": {"raw_value": result.target, "type": "text"},
                "lake_version": {"raw_value": result.lake_version, "type": "int"},
                "previous_lake_version": {
                    "raw_value": -1 if result.previous_version is None else result.previous_version,
                    "type": "int",
                },
                "full_reload": {"raw_value": result.full_reload, "type": "bool"},
                "load_reason": {"raw_value": result.reason, "type": "text"},
                "rows_staged": {"raw_value": result.rows_staged, "type": "int"},
                "rows_deleted": {"raw_value": result.rows_deleted, "type": "int"},
                "rows_inserted": {"raw_value": result.rows_inserted, "type": "int"},
                "duration_seconds": {"raw_value": round(result.duration_s, 3), "type": "float"},
            },
            data_version=str(result.lake_version),
        )
        pipes.report_asset_check(
            check_name="matches_lake_table",
            passed=check.matches,
            metadata={
                "warehouse_rows": {"raw_value": check.warehouse_rows, "type": "int"},
                "lake_rows": {"raw_value": check.lake_rows, "type": "int"},
                "duplicate_keys": {"raw_value": check.duplicate_keys, "type": "int"},
                "missing_keys_sample": {"raw_value": check.missing_keys, "type": "json"},
                "extra_keys_sample": {"raw_value": check.extra_keys, "type": "json"},
            },
        )
        return {"lake_version": result.lake_version, "rows_inserted": result.rows_inserted}
