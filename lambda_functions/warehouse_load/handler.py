"""Lambda handler: load the lake table's changes into the warehouse and reconcile."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import LoadRequest
from lambda_functions.emf import emit_stage_metrics
from lambda_functions.pipes import open_pipes, typed_metadata, without_pipes_keys
from lambda_functions.warehouse_load.load import load_changes


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Load one collection's lake table into the warehouse (a ``warehouse_load`` request).

    Args:
        event: a ``LoadRequest`` event plus the Pipes keys Dagster injects.
        context: the Lambda context (unused).

    Returns:
        ``{"lake_version": int, "rows_inserted": int}``; the full account goes to Dagster through
        Pipes: a materialization (data version = the loaded lake version) and the
        ``matches_lake_table`` check.

    Raises:
        InvalidRequestError: the event is not a valid ``LoadRequest``.
        Whatever ``load_changes`` raises (see there); nothing is committed then.
    """
    with open_pipes(event) as pipes:
        request = LoadRequest.from_event(without_pipes_keys(event))
        result = load_changes(request, on_progress=pipes.log.info)
        check = result.reconciliation
        assert check is not None  # load_changes reconciles unless told not to
        metadata = typed_metadata(
            {
                "dagster/row_count": result.warehouse_rows,
                "target": result.target,
                "warehouse": result.warehouse_kind,
                "lake_version": result.lake_version,
                "previous_lake_version": (
                    -1 if result.previous_version is None else result.previous_version
                ),
                "full_reload": result.full_reload,
                "load_reason": result.reason,
                "rows_staged": result.rows_staged,
                "rows_deleted": result.rows_deleted,
                "rows_inserted": result.rows_inserted,
                "projected_columns": result.projected_columns,
                "columns_added": result.columns_added,
                "undeclared_columns": result.undeclared_columns,
                "documents_set_aside": check.documents_set_aside,
                "transaction": result.statements,
                "duration_seconds": round(float(result.duration_s), 3),
                # Only for collections that keep history (each figure is a billed EMF metric).
                **(
                    {
                        "history_table": result.history_table,
                        "history_rows_inserted": result.history_rows_inserted,
                        "history_rows_closed": result.history_rows_closed,
                    }
                    if result.history_table
                    else {}
                ),
                # Only for the load that purged a masking rules change (rare: no metric otherwise).
                **(
                    {"history_rows_purged": result.history_rows_purged}
                    if "purge_history" in result.statements
                    else {}
                ),
            }
        )
        pipes.report_asset_materialization(metadata=metadata, data_version=str(result.lake_version))
        emit_stage_metrics("load", request.namespace, metadata)
        pipes.report_asset_check(
            check_name="matches_lake_table",
            # Documents over the warehouse's limits are accounted for (matches) but missing from
            # the table: the check fails as a warning and names them until they load.
            passed=check.complete,
            severity="WARN" if check.matches else "ERROR",
            metadata=typed_metadata(check.metadata()),
        )
        return {"lake_version": result.lake_version, "rows_inserted": result.rows_inserted}
