"""Lambda handler: apply pending raw batches to the lake table and report the commit."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import MergeRequest
from lambda_functions.emf import emit_stage_metrics
from lambda_functions.merge.merge import merge_batches
from lambda_functions.pipes import open_pipes, without_pipes_keys


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = MergeRequest.from_event(without_pipes_keys(event))
        result = merge_batches(request, on_progress=pipes.log.info)
        pipes.log.info(
            f"{result.namespace}: batches {result.batches_applied or 'none'} -> version "
            f"{result.version} ({result.merge_path}); +{result.inserted} ~{result.updated} "
            f"-{result.deleted}; rewrote {result.files_rewritten} files "
            f"({result.bytes_rewritten / 1e6:.1f} MB) of {result.files_in_table}"
        )
        if result.batches_superseded:
            pipes.log.warning(
                f"{result.namespace}: batches {result.batches_superseded} were superseded by a "
                "reset marker (a new generation) and skipped unread"
            )
        for note in result.schema_changes:
            pipes.log.warning(note)
        for keys in result.ambiguous_deletes:
            pipes.log.warning(
                f"{result.namespace}: a DMS key-only delete could mean any of {keys}; "
                "not applied (the source audit shows the document that remains)"
            )
        metadata = {
            "dagster/row_count": {"raw_value": result.table_rows, "type": "int"},
            "table_uri": {"raw_value": result.table_uri, "type": "text"},
            "table_version": {"raw_value": _int(result.version), "type": "int"},
            "batches_applied": {"raw_value": len(result.batches_applied), "type": "int"},
            "last_applied_batch": {"raw_value": result.last_applied_batch, "type": "int"},
            "change_rows_in": {"raw_value": result.rows_in, "type": "int"},
            "rows_inserted": {"raw_value": result.inserted, "type": "int"},
            "rows_updated": {"raw_value": result.updated, "type": "int"},
            "rows_deleted": {"raw_value": result.deleted, "type": "int"},
            "tombstones_written": {"raw_value": result.tombstones_written, "type": "int"},
            "tombstones": {"raw_value": result.tombstones, "type": "int"},
            "changes_below_drop_floor": {"raw_value": result.below_floor, "type": "int"},
            "drop_floor": {"raw_value": result.drop_floor, "type": "int"},
            "batches_superseded": {"raw_value": len(result.batches_superseded), "type": "int"},
            "merge_path": {"raw_value": result.merge_path, "type": "text"},
            "commits": {"raw_value": result.commits, "type": "int"},
            "files_added": {"raw_value": result.files_added, "type": "int"},
            "files_removed": {"raw_value": result.files_removed, "type": "int"},
            "files_rewritten": {"raw_value": result.files_rewritten, "type": "int"},
            "bytes_rewritten": {"raw_value": result.bytes_rewritten, "type": "int"},
            "bytes_written": {"raw_value": result.bytes_written, "type": "int"},
            "files_in_table": {"raw_value": result.files_in_table, "type": "int"},
            "bytes_in_table": {"raw_value": result.bytes_in_table, "type": "int"},
            "schema_changes": {
                "raw_value": "\n".join(result.schema_changes) or "none",
                "type": "text",
            },
            "ambiguous_deletes": {"raw_value": len(result.ambiguous_deletes), "type": "int"},
            "partitions_touched": {"raw_value": len(result.buckets_touched), "type": "int"},
            "duration_seconds": {"raw_value": round(result.duration_s, 3), "type": "float"},
        }
        pipes.report_asset_materialization(
            metadata=metadata, data_version=str(_int(result.version))
        )
        emit_stage_metrics("merge", request.namespace, metadata)
        pipes.report_asset_check(
            check_name="no_duplicate_keys",
            passed=result.duplicate_keys == 0 and result.version is not None,
            metadata={
                "duplicate_keys": {"raw_value": result.duplicate_keys, "type": "int"},
                "partitions_checked": {"raw_value": len(result.buckets_touched), "type": "int"},
            },
        )
        return {
            "version": result.version,
            "batches_applied": result.batches_applied,
            "batches_superseded": result.batches_superseded,
            "merge_path": result.merge_path,
        }


def _int(value: int | None) -> int:
    return -1 if value is None else value
