"""Lambda handler: expire old tombstones, compact the lake table's cold partitions and vacuum it,
and report what it did."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import CompactRequest
from lambda_functions.emf import emit_stage_metrics
from lambda_functions.merge.maintenance import compact_table
from lambda_functions.pipes import open_pipes, typed_metadata, without_pipes_keys


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = CompactRequest.from_event(without_pipes_keys(event))
        result = compact_table(request, on_progress=pipes.log.info)
        metadata = typed_metadata(
            {
                "table_uri": result.table_uri,
                "table_version": result.version_after,
                "dry_run": result.dry_run,
                "partitions_compacted": len(result.partitions_compacted),
                "hot_partitions": result.hot_partitions,
                "files_compacted": result.files_compacted,
                "files_written": result.files_written,
                "bytes_compacted": result.bytes_compacted,
                "bytes_written": result.bytes_written,
                "files_vacuumed": result.files_vacuumed,
                "files_in_table": result.files_in_table,
                "tombstones_expired": result.tombstones_expired,
                "tombstones": result.tombstones,
                "duration_seconds": round(result.duration_s, 3),
            }
        )
        pipes.report_asset_materialization(
            metadata=metadata, data_version=str(result.version_after)
        )
        emit_stage_metrics("maintenance", request.namespace, metadata)
        return {
            "version": result.version_after,
            "partitions_compacted": result.partitions_compacted,
            "files_vacuumed": result.files_vacuumed,
            "tombstones_expired": result.tombstones_expired,
        }
