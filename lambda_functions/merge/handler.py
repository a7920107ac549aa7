"""Lambda handler: apply pending raw batches to the lake table and report the commit."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import MergeRequest
from lambda_functions.emf import emit_stage_metrics
from lambda_functions.merge.merge import merge_batches
from lambda_functions.pipes import open_pipes, typed_metadata, without_pipes_keys


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
        metadata = typed_metadata(result.as_metadata())
        pipes.report_asset_materialization(
            metadata=metadata, data_version=str(metadata["table_version"]["raw_value"])
        )
        emit_stage_metrics("merge", request.namespace, metadata)
        pipes.report_asset_check(
            check_name="no_duplicate_keys",
            passed=result.duplicate_keys == 0 and result.version is not None,
            metadata=typed_metadata(
                {
                    "duplicate_keys": result.duplicate_keys,
                    "partitions_checked": len(result.buckets_touched),
                }
            ),
        )
        return {
            "version": result.version,
            "batches_applied": result.batches_applied,
            "batches_superseded": result.batches_superseded,
            "merge_path": result.merge_path,
        }
