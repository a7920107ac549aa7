"""Lambda ``lakehouse-cdc-capture``: capture one collection's changes into the raw zone.

Thin by design: parse the request, open the source, call ``capture_changes``, report to Dagster.
Everything the orchestrator needs travels as Pipes messages (the return value is discarded by
Lambda on success): the materialization with typed metadata, and two asset checks:
``batch_verified`` (the batches just published re-read through their manifests) and
``cdc_lag`` (fails when the capture is further behind the source than
``request.max_cdc_lag_seconds``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import closing
from typing import Any

from lambda_functions.cdc_capture.capture import CaptureResult, capture_changes
from lambda_functions.cdc_capture.change_source import open_source
from lambda_functions.cdc_capture.range_snapshot import advance_range_snapshot, capture_range
from lambda_functions.cdc_capture.verify import verify_batches
from lambda_functions.contracts import CaptureRequest
from lambda_functions.emf import emit_stage_metrics
from lambda_functions.pipes import open_pipes, typed_metadata, without_pipes_keys

LAG_CHECK = "cdc_lag"


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = CaptureRequest.from_event(without_pipes_keys(event))  # a bad event is reported
        pipes.log.info(
            f"capturing {request.namespace} from {request.source_kind} into {request.lake_uri}"
            + (" (reset: new snapshot)" if request.reset else "")
        )
        remaining = lambda: context.get_remaining_time_in_millis() / 1000  # noqa: E731
        ranges = None
        with closing(open_source(request)) as source:
            if request.snapshot_range is not None:  # one range of a parallel snapshot
                part = capture_range(
                    request, source=source, deadline=remaining, on_progress=pipes.log.info
                )
                pipes.report_asset_materialization(metadata=part.metadata())
                return {"range": part.index, "documents": part.progress.documents}
            if request.snapshot_ranges > 1:  # plan the ranges, or publish them when complete
                ranges = advance_range_snapshot(
                    request, source=source, on_progress=pipes.log.info, reset=request.reset
                )
                if ranges.step == "in_progress":
                    pipes.report_asset_materialization(metadata=ranges.metadata())
                    return {"range_step": ranges.step, "unfinished": len(ranges.unfinished)}
            result = capture_changes(
                request,
                source=source,
                deadline=remaining,
                on_progress=pipes.log.info,
                reset=request.reset and ranges is None,
            )
        published = (ranges.batch,) if ranges is not None and ranges.batch else ()
        verification = verify_batches(request, published + result.batches)
        metadata = result.metadata()
        if ranges is not None and ranges.plan is not None:
            metadata |= ranges.metadata()
            snapshot_rows = sum(p.documents for p in ranges.progress) if ranges.batch else 0
            # the generation this call published comes first among the batches of this step
            metadata |= typed_metadata(
                {
                    "dagster/row_count": result.rows + snapshot_rows,
                    "batches": [*published, *result.batches],
                }
            )
        pipes.report_asset_materialization(
            metadata=metadata, data_version=str(result.checkpoint_batch)
        )
        emit_stage_metrics("capture", request.namespace, metadata)
        pipes.report_asset_check(
            check_name="batch_verified",
            passed=verification.passed,
            metadata=verification.metadata(),
        )
        pipes.report_asset_check(
            check_name=LAG_CHECK,
            passed=lag_within_bound(result, request),
            metadata=lag_metadata(result, request),
        )
        return result.summary()


def lag_within_bound(result: CaptureResult, request: CaptureRequest) -> bool:
    """The capture position is no further behind the source than the configured bound."""
    return result.cdc_lag_seconds <= request.max_cdc_lag_seconds


def lag_metadata(result: CaptureResult, request: CaptureRequest) -> dict[str, dict[str, Any]]:
    """The lag check's metadata: the lag and its bound in seconds, the phase and why reading
    stopped, in the typed form ``dagster_pipes`` accepts."""
    return typed_metadata(
        {
            "cdc_lag_seconds": float(round(result.cdc_lag_seconds, 3)),
            "max_cdc_lag_seconds": float(request.max_cdc_lag_seconds),
            "phase": result.phase,
            "stopped_by": result.stopped_by,
        }
    )
