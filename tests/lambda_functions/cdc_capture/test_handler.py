"""The Lambda handler end to end: event in (with Pipes bootstrap keys), Pipes messages out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from dagster_pipes import encode_param

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture.handler import handler
from lambda_functions.contracts import InvalidRequestError
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore

ASSET = "raw/shop/orders"


class FakeLambdaContext:
    """The attributes of Lambda's context object that handlers use."""

    function_name = "lakehouse-cdc-capture"
    memory_limit_in_mb = 1024
    aws_request_id = "00000000-0000-4000-8000-000000000000"

    def __init__(self, remaining_ms: int = 900_000):
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def pipes_event(
    request_event: dict[str, Any], messages: Path, asset: str = ASSET
) -> dict[str, Any]:
    """What PipesLambdaClient sends: the request plus the two Pipes bootstrap keys."""
    context_data = {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "run-1",
        "job_name": "capture_job",
        "retry_number": 0,
        "extras": {},
    }
    return {
        **request_event,
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": context_data}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)}),
    }


def read_messages(path: Path) -> dict[str, list[dict[str, Any]]]:
    by_method: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        message = json.loads(line)
        by_method.setdefault(message["method"], []).append(message["params"])
    return by_method


def test_handler_reports_materialization_and_verified_check_twice_in_a_warm_process(
    tmp_path: Path, make_request
):
    request = make_request(demo_changes=40, max_rows=200)
    context = FakeLambdaContext()

    first = handler(pipes_event(request.to_event(), tmp_path / "first.jsonl"), context)
    second = handler(pipes_event(request.to_event(), tmp_path / "second.jsonl"), context)

    snapshot, stream = (
        read_messages(tmp_path / "first.jsonl"),
        read_messages(tmp_path / "second.jsonl"),
    )
    for messages in (snapshot, stream):
        assert len(messages["opened"]) == 1 and messages["closed"] == [{}]
        (materialization,) = messages["report_asset_materialization"]
        checks = {c["check_name"]: c for c in messages["report_asset_check"]}
        assert materialization["asset_key"] == ASSET
        assert set(checks) == {"batch_verified", "cdc_lag"}
        assert all(check["passed"] is True for check in checks.values())
        assert any("capturing shop.orders" in log["message"] for log in messages["log"])

    metadata = snapshot["report_asset_materialization"][0]["metadata"]
    assert metadata["dagster/row_count"] == {"raw_value": first["rows"], "type": "int"}
    assert metadata["batch"] == {"raw_value": first["batch"], "type": "int"}
    assert metadata["rows_by_op"]["raw_value"] == {"snapshot": first["rows"]}
    assert metadata["phase"] == {"raw_value": "stream", "type": "text"}
    assert metadata["snapshot_progress"]["raw_value"]["complete"] is True
    assert metadata["bytes"]["raw_value"] > 0 and metadata["quarantined"]["raw_value"] == 0
    assert metadata["cdc_lag_seconds"]["type"] == "float"
    assert snapshot["report_asset_materialization"][0]["data_version"] == str(first["batch"])
    assert first["batches"] == [1, 2, 3]  # 500 seeded + 40 changed orders, 200 rows a batch

    stream_metadata = stream["report_asset_materialization"][0]["metadata"]
    assert second["batch"] == 4 and second["rows"] > 0  # the workload's next 40 changes
    assert stream_metadata["dagster/row_count"]["raw_value"] == second["rows"]
    assert set(stream_metadata["rows_by_op"]["raw_value"]) <= {
        "insert",
        "update",
        "replace",
        "delete",
    }
    check_metadata = stream["report_asset_check"][0]["metadata"]  # batch_verified
    assert check_metadata["rows_read"]["raw_value"] == second["rows"]
    zone = RawZone(LocalObjectStore(tmp_path / "lake"), "shop", "orders")
    assert zone.read_checkpoint().batch == 4


def test_handler_with_nothing_new_reports_no_batch_and_a_passing_check(tmp_path, make_request):
    request = make_request(demo_changes=5)
    handler(pipes_event(request.to_event(), tmp_path / "m1.jsonl"), FakeLambdaContext())
    quiet = make_request(demo_changes=0)

    summary = handler(pipes_event(quiet.to_event(), tmp_path / "m2.jsonl"), FakeLambdaContext())

    messages = read_messages(tmp_path / "m2.jsonl")
    metadata = messages["report_asset_materialization"][0]["metadata"]
    assert summary["batch"] is None and metadata["batch"]["raw_value"] == -1
    assert metadata["dagster/row_count"]["raw_value"] == 0
    assert messages["report_asset_materialization"][0]["data_version"] == str(
        summary["checkpoint_batch"]
    )
    assert messages["report_asset_check"][0]["passed"] is True


def test_a_bad_event_is_reported_to_dagster_and_fails_the_invocation(tmp_path, make_request):
    event = make_request().to_event()
    del event["collection"]

    with pytest.raises(InvalidRequestError, match="collection"):
        handler(pipes_event(event, tmp_path / "m.jsonl"), FakeLambdaContext())

    (closed,) = read_messages(tmp_path / "m.jsonl")["closed"]
    assert closed["exception"]["name"] == "InvalidRequestError"
    assert "missing the field 'collection'" in closed["exception"]["message"]


def test_lag_check_fails_when_capture_stops_further_behind_than_the_bound(tmp_path, make_request):
    hour_ago = time.time() - 3600
    with EmbeddedChangeStreamSource(tmp_path / "source.db", clock=lambda: hour_ago) as source:
        DemoWorkload(source, initial_documents=20).run(0)
    handler(pipes_event(make_request().to_event(), tmp_path / "m1.jsonl"), FakeLambdaContext())
    with EmbeddedChangeStreamSource(tmp_path / "source.db", clock=lambda: hour_ago) as source:
        DemoWorkload(source, initial_documents=20).run(50)  # changes made an hour ago
    behind = make_request(max_rows=10, max_cdc_lag_seconds=900.0)  # stops after 10 of them

    summary = handler(pipes_event(behind.to_event(), tmp_path / "m2.jsonl"), FakeLambdaContext())

    checks = {
        c["check_name"]: c for c in read_messages(tmp_path / "m2.jsonl")["report_asset_check"]
    }
    lag = checks["cdc_lag"]
    assert summary["stopped_by"] == "max_rows" and summary["cdc_lag_seconds"] > 900
    assert lag["passed"] is False and checks["batch_verified"]["passed"] is True
    assert lag["metadata"]["max_cdc_lag_seconds"]["raw_value"] == 900.0
    assert lag["metadata"]["cdc_lag_seconds"]["raw_value"] > 3000


def test_reset_in_the_request_publishes_a_dropped_marker_then_a_new_snapshot(
    tmp_path, make_request
):
    handler(
        pipes_event(make_request(demo_changes=5).to_event(), tmp_path / "m1.jsonl"),
        FakeLambdaContext(),
    )

    summary = handler(
        pipes_event(make_request(reset=True).to_event(), tmp_path / "m2.jsonl"),
        FakeLambdaContext(),
    )

    zone = RawZone(LocalObjectStore(tmp_path / "lake"), "shop", "orders")
    marker = zone.read_manifest(summary["batches"][0])
    assert marker.extra["dropped"] is True and marker.rows == 0
    assert summary["resnapshot_reason"] == "reset" and summary["phase"] == "stream"
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        assert summary["rows_by_op"] == {"snapshot": source.count_documents("shop", "orders")}
