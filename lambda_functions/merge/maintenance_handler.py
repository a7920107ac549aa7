"""Lambda handler: expire old tombstones, compact the lake table's cold partitions and vacuum it,
and report what it did."""

from __future__ import annotations

from typing import Any

from lambda_functions.contracts import CompactRequest
from lambda_functions.emf import emit_stage_metrics
from lambda_functions.merge.maintenance import compact_table
from lambda_functions.pipes import open_pipes, without_pipes_keys


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = CompactRequest.from_event(without_pipes_keys(event))
        result = compact_table(request, on_progress=pipes.log.info)
        metadata = {
            "table_uri": {"raw_value": result.table_uri, "type": "text"},
            "table_version": {"raw_value": result.version_after, "type": "int"},
            "dry_run": {"raw_value": result.dry_run, "type": "bool"},
            "partitions_compacted": {
                "raw_value": len(result.partitions_compacted),
                "type": "int",
            },
            "hot_partitions": {"raw_value": result.hot_partitions, "type": "int"},
            "files_compacted": {"raw_value": result.files_compacted, "type": "int"},
            "files_written": {"raw_value": result.files_written, "type": "int"},
            "bytes_compacted": {"raw_value": result.bytes_compacted, "type": "int"},
            "bytes_written": {"raw_value": result.bytes_written, "type": "int"},
            "files_vacuumed": {"raw_value": result.files_vacuumed, "type": "int"},
            "files_in_table": {"raw_value": result.files_in_table, "type": "int"},
            "tombstones_expired": {"raw_value": result.tombstones_expired, "type": "int"},
            "tombstones": {"raw_value": result.tombstones, "type": "int"},
            "duration_seconds": {"raw_value": round(result.duration_s, 3), "type": "float"},
        }
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
