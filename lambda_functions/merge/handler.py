"""Lambda handler: apply pending raw batches to the lake table and report the commit."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import MergeRequest
from lambda_functions.merge.merge import merge_batches
from lambda_functions.pipes import open_pipes, without_pipes_keys


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = MergeRequest.from_event(without_pipes_keys(event))
        result = merge_batches(request, on_progress=pipes.log.info)
        pipes.log.info(
            f"{result.namespace}: batches {result.batches_applied or 'none'} -> version "
            f"{result.version}; +{result.inserted} ~{result.updated} -{result.deleted}"
        )
        pipes.report_asset_materialization(
            metadata={
                "dagster/row_count": {"raw_value": result.table_rows, "type": "int"},
                "table_uri": {"raw_value": result.table_uri, "type": "text"},
                "table_version": {"raw_value": _int(result.version), "type": "int"},
                "batches_applied": {"raw_value": len(result.batches_applied), "type": "int"},
                "last_applied_batch": {"raw_value": result.last_applied_batch, "type": "int"},
                "change_rows_in": {"raw_value": result.rows_in, "type": "int"},
                "rows_inserted": {"raw_value": result.inserted, "type": "int"},
                "rows_updated": {"raw_value": result.updated, "type": "int"},
                "rows_deleted": {"raw_value": result.deleted, "type": "int"},
                "files_added": {"raw_value": result.files_added, "type": "int"},
                "files_removed": {"raw_value": result.files_removed, "type": "int"},
                "partitions_touched": {"raw_value": len(result.buckets_touched), "type": "int"},
                "duration_seconds": {"raw_value": round(result.duration_s, 3), "type": "float"},
            },
            data_version=str(_int(result.version)),
        )
        pipes.report_asset_check(
            check_name="no_duplicate_keys",
            passed=result.duplicate_keys == 0,
            metadata={
                "duplicate_keys": {"raw_value": result.duplicate_keys, "type": "int"},
                "partitions_checked": {"raw_value": len(result.buckets_touched), "type": "int"},
            },
        )
        return {"version": result.version, "batches_applied": result.batches_applied}


def _int(value: int | None) -> int:
    return -1 if value is None else value
