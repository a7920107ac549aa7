"""Lambda ``lakehouse-dms-ingest``: AWS DMS output files of one collection into raw batches.

Thin like the capture handler: parse the request, call ``ingest_dms_files``, report the
materialization (rows by operation, batches, files, quarantined) through Pipes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.contracts import DmsIngestRequest
from lambda_functions.pipes import open_pipes, without_pipes_keys


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Publish the AWS DMS files of one collection not ingested yet, reporting through Pipes.

    Safe to invoke again or concurrently: every DMS file's rows land in exactly one batch
    (``ingest_dms_files``); an invocation near its timeout stops between files and reports how
    many are left as ``pending_files`` metadata, for the next run.

    Args:
        event: a ``DmsIngestRequest`` event (``lambda_functions.contracts``), plus the Pipes
            keys ``PipesLambdaClient`` adds.
        context: the Lambda context; its ``get_remaining_time_in_millis()`` bounds the work.

    Returns:
        ``{"batches": [batch numbers published], "files": [DMS object keys ingested],
        "rows_by_op": {operation: rows}}``. The materialization reported
        through Pipes carries the same figures as typed metadata, and the newest batch number
        (``-1`` for none) as its data version.

    Raises:
        InvalidRequestError: the event is not a valid ``DmsIngestRequest``.
        ConcurrentCaptureError: other ingests of the collection kept publishing first.
    """
    with open_pipes(event) as pipes:
        request = DmsIngestRequest.from_event(without_pipes_keys(event))
        pipes.log.info(f"ingesting DMS files of {request.namespace} from {request.dms_uri}")
        result = ingest_dms_files(
            request,
            deadline=lambda: context.get_remaining_time_in_millis() / 1000,
            on_progress=pipes.log.info,
        )
        newest = result.batches[-1] if result.batches else -1
        pipes.report_asset_materialization(metadata=result.metadata(), data_version=str(newest))
        return {
            "batches": result.batches,
            "files": result.files,
            "rows_by_op": dict(result.rows_by_op),
        }
