"""Lambda ``lakehouse-cdc-capture``: capture one collection's changes into the raw zone.

Thin by design: parse the request, open the source, call ``capture_changes``, report to Dagster.
Everything the orchestrator needs travels as Pipes messages (the return value is discarded by
Lambda on success): the materialization with typed metadata, and the ``batch_verified`` check,
which re-reads the batches just published through their manifests.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import closing
from typing import Any

from lambda_functions.cdc_capture.capture import capture_changes, verify_batches
from lambda_functions.cdc_capture.change_source import open_source
from lambda_functions.contracts import CaptureRequest
from lambda_functions.pipes import open_pipes, without_pipes_keys


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = CaptureRequest.from_event(without_pipes_keys(event))  # a bad event is reported
        pipes.log.info(
            f"capturing {request.namespace} from {request.source_kind} into {request.lake_uri}"
        )
        with closing(open_source(request)) as source:
            result = capture_changes(
                request,
                source=source,
                deadline=lambda: context.get_remaining_time_in_millis() / 1000,
                on_progress=pipes.log.info,
            )
        verification = verify_batches(request, result.batches)
        pipes.report_asset_materialization(
            metadata=result.metadata(), data_version=str(result.checkpoint_batch)
        )
        pipes.report_asset_check(
            check_name="batch_verified",
            passed=verification.passed,
            metadata=verification.metadata(),
        )
        return result.summary()
