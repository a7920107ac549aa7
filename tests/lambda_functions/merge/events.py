"""Requests and Pipes events for the merge and maintenance stages, built for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster_pipes import encode_param

from lambda_functions.contracts import CollectionRequest, CompactRequest, MergeRequest


def compact_request(request: MergeRequest, **fields: Any) -> CompactRequest:
    """A maintenance request for the collection ``request`` merges."""
    return CompactRequest(
        lake_uri=request.lake_uri,
        database=request.database,
        collection=request.collection,
        **fields,
    )


def pipes_event(
    request: CollectionRequest, messages: Path, *, asset: str, job: str
) -> dict[str, Any]:
    """What PipesLambdaClient sends: the request plus the two Pipes bootstrap keys (messages
    are written to the file ``messages``)."""
    context = {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "run-1",
        "job_name": job,
        "retry_number": 0,
        "extras": {},
    }
    return {
        **request.to_event(),
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": context}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)}),
    }
