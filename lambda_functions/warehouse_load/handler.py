"""Lambda handler: load the lake table's changes into the warehouse and reconcile."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import LoadRequest
from lambda_functions.emf import emit_stage_metrics
from lambda_functions.pipes import open_pipes, without_pipes_keys
from lambda_functions.warehouse_load.load import load_changes


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = LoadRequest.from_event(without_pipes_keys(event))
        result = load_changes(request, on_progress=pipes.log.info)
        check = result.reconciliation
        assert check is not None  # load_changes reconciles unless told not to
        metadata = {
            "dagster/row_count": {"raw_value": result.warehouse_rows, "type": "int"},
            "target": {"raw_value": result.target, "type": "text"},
            "warehouse": {"raw_value": result.warehouse_kind, "type": "text"},
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
            "projected_columns": {"raw_value": result.projected_columns, "type": "json"},
            "columns_added": {"raw_value": result.columns_added, "type": "json"},
            "undeclared_columns": {"raw_value": result.undeclared_columns, "type": "json"},
            "documents_set_aside": {"raw_value": check.documents_set_aside, "type": "int"},
            "transaction": {"raw_value": result.statements, "type": "json"},
            "duration_seconds": {"raw_value": round(result.duration_s, 3), "type": "float"},
        }
        pipes.report_asset_materialization(metadata=metadata, data_version=str(result.lake_version))
        emit_stage_metrics("load", request.namespace, metadata)
        figures = check.metadata()
        pipes.report_asset_check(
            check_name="matches_lake_table",
            # Documents over the warehouse's limits are accounted for (matches) but missing from
            # the table: the check fails as a warning and names them until they load.
            passed=check.complete,
            severity="WARN" if check.matches else "ERROR",
            metadata={
                name: {
                    "raw_value": value,
                    "type": "int" if isinstance(value, int) else "json",
                }
                for name, value in figures.items()
            },
        )
        return {"lake_version": result.lake_version, "rows_inserted": result.rows_inserted}
