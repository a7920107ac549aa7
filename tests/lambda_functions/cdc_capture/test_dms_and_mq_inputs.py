"""AWS DMS files and MQ/SQS messages produce the same batches as the change stream.

Fixtures in ``fixtures/`` follow the AWS documentation's formats: DMS document mode (``_id``,
``_doc``) full-load files without ``Op`` and CDC files with ``Op`` first, CSV with and without
header and Parquet, a CDC file in a date folder; ActiveMQ (``physicalname`` in the older
spelling), RabbitMQ (``rmqMessagesByQueue``, one message without ``messageId``) and SQS events,
each with a malformed message.
"""

from __future__ import annotations

import copy
import json
import shutil
from functools import partial
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lakehouse_local.demo_workload import DemoWorkload
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.cdc_capture.mq_handler import handler as mq_handler
from lambda_functions.cdc_capture.mq_ingest import Message, ingest_messages, parse_event
from lambda_functions.cdc_capture.positions import cluster_position, commit_position
from lambda_functions.contracts import DmsIngestRequest, MergeRequest
from lambda_functions.lake.extended_json import decode_document, encode_document
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.lake.store import LocalObjectStore
from lambda_functions.lake.table_layout import live_rows
from lambda_functions.merge import lake_table_location, merge_batches
from tests.lambda_functions.cdc_capture.conftest import batch_rows
from tests.lambda_functions.change_events import relayed_message

FIXTURES = Path(__file__).parent / "fixtures"
DB, COLL = "shop", "orders"


def expected(name: str) -> dict[str, str]:
    documents = decode_document((FIXTURES / name / "expected_documents.json").read_text())
    return {record_key(doc["_id"]): encode_document(doc) for doc in documents.values()}


def merged(lake: Path) -> dict[str, str]:
    merge_batches(MergeRequest(lake_uri=str(lake), database=DB, collection=COLL))
    uri, options = lake_table_location(LocalObjectStore(lake), DB, COLL)
    table = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["_id", "doc", "_op"])
    ids = table.column("_id").to_pylist()
    assert len(ids) == len(set(ids))  # one row per key, tombstones included
    live = live_rows(table)  # tombstones are deleted documents, not data
    return dict(zip(live.column("_id").to_pylist(), live.column("doc").to_pylist(), strict=True))


def fixture_event(name: str) -> dict:
    return json.loads((FIXTURES / "mq" / name).read_text())


def rows(lake: Path) -> list[dict]:
    return batch_rows(LocalObjectStore(lake), DB, COLL)


# -- DMS --------------------------------------------------------------------------------------------
@pytest.fixture
def dms_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dms" / DB / COLL
    shutil.copytree(FIXTURES / "dms" / DB / COLL, folder)
    return folder


def dms_request(tmp_path: Path, folder: Path, **fields) -> DmsIngestRequest:
    return DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"), database=DB, collection=COLL, dms_uri=str(folder), **fields
    )


def test_dms_full_load_and_cdc_files_load_into_the_same_table(tmp_path, dms_folder):
    result = ingest_dms_files(dms_request(tmp_path, dms_folder))

    assert merged(tmp_path / "lake") == expected("dms")
    assert [Path(f).name for f in result.files] == [
        "LOAD00000001.csv",
        "LOAD00000002.parquet",
        "20240105-101500123.csv",
        "20240105-101600456.parquet",
    ]
    assert dict(result.rows_by_op) == {"snapshot": 3, "update": 2, "insert": 1, "delete": 2}
    published = rows(tmp_path / "lake")
    assert all(r["pos"] == 0 for r in published if r["op"] == "snapshot")
    first_update = next(r for r in published if r["op"] == "update")
    assert first_update["pos"] == commit_position(
        first_update["event_time"].replace(microsecond=250000)
    )
    assert result.quarantined == 1  # the U row with an empty _doc
    quarantine = (tmp_path / "lake" / f"raw/{DB}/{COLL}/quarantine").glob("*.jsonl")
    (line,) = [json.loads(x) for f in quarantine for x in f.read_text().splitlines()]
    assert (
        "20240105-101600456.parquet row 3" in line["reason"] and "_doc is empty" in line["reason"]
    )


def test_dms_files_are_never_ingested_twice_and_late_files_are_not_skipped(tmp_path, dms_folder):
    ingest_dms_files(dms_request(tmp_path, dms_folder))

    again = ingest_dms_files(dms_request(tmp_path, dms_folder))
    late = dms_folder / "20240105-101550000.csv"  # older name than the newest ingested file
    late.write_text('I,2024-01-05 10:15:50.000000,late-1,"{""_id"": ""late-1"", ""n"": 1}"\n')
    newer = dms_folder / "20240105-101700000.csv"
    newer.write_text('I,late-2,"{""_id"": ""late-2"", ""n"": 2}"\n')  # no timestamp column
    third = ingest_dms_files(dms_request(tmp_path, dms_folder))

    assert again.batches == [] and again.files == []
    assert [Path(f).name for f in third.files] == [late.name, newer.name]
    table = merged(tmp_path / "lake")
    assert set(table) == set(expected("dms")) | {record_key("late-1"), record_key("late-2")}
    late_2 = next(r for r in rows(tmp_path / "lake") if r["_id"] == record_key("late-2"))
    assert late_2["event_time"].isoformat() == "2024-01-05T10:17:00+00:00"  # from the file name


def test_a_dms_file_larger_than_a_batch_spans_batches_and_resumes_after_a_crash(
    tmp_path, dms_folder
):
    request = dms_request(tmp_path, dms_folder, max_rows=2)

    class CrashOnThirdManifest(LocalObjectStore):
        manifests = 0

        def put_if_absent(self, key: str, data: bytes) -> None:
            if "/manifests/" in key:
                type(self).manifests += 1
                if self.manifests == 3:
                    raise OSError("killed")
            super().put_if_absent(key, data)

    with pytest.raises(OSError, match="killed"):
        ingest_dms_files(request, store=CrashOnThirdManifest(tmp_path / "lake"))
    resumed = ingest_dms_files(request)

    keys = [(r["_id"], r["op"], r["pos"]) for r in rows(tmp_path / "lake")]
    assert len(keys) == len(set(keys)) == 8  # 3 load + 5 CDC rows (one quarantined), once each
    assert len(resumed.batches) >= 2
    assert merged(tmp_path / "lake") == expected("dms")


def test_new_full_load_files_after_cdc_mean_a_reload_and_start_a_new_generation(
    tmp_path, dms_folder
):
    ingest_dms_files(dms_request(tmp_path, dms_folder))
    for path in list(dms_folder.rglob("*")):
        if path.is_file():
            path.unlink()
    (dms_folder / "LOAD00000003.csv").write_text('reloaded-1,"{""_id"": ""reloaded-1""}"\n')

    result = ingest_dms_files(dms_request(tmp_path, dms_folder))

    assert result.reloaded
    zone = RawZone(LocalObjectStore(tmp_path / "lake"), DB, COLL)
    assert zone.read_manifest(result.batches[0]).extra["dropped"] is True
    assert merged(tmp_path / "lake") == {
        record_key("reloaded-1"): encode_document({"_id": "reloaded-1"})
    }


# -- MQ / SQS ---------------------------------------------------------------------------------------
def test_mq_and_sqs_fixture_events_load_into_the_same_table(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))

    amq = mq_handler(fixture_event("amq_event.json"), None)
    rmq = mq_handler(fixture_event("rmq_event.json"), None)
    sqs = mq_handler(fixture_event("sqs_event.json"), None)

    assert merged(tmp_path / "lake") == expected("mq")
    assert amq["rows"] == 3 and amq["quarantined"] == 1  # the third message is not JSON
    assert rmq["rows"] == 2 and rmq["quarantined"] == 0
    assert sqs == {
        "batchItemFailures": [{"itemIdentifier": "2e1424d4-f796-459a-8184-9c92662be6da"}]
    }
    published = rows(tmp_path / "lake")
    assert [r["op"] for r in published] == [
        "insert",
        "insert",
        "update",
        "delete",
        "insert",
        "replace",
    ]
    assert published[0]["pos"] == cluster_position(1704449700, 1)


def test_activemq_destination_key_is_read_in_either_spelling():
    _, messages = parse_event(fixture_event("amq_event.json"))

    assert [m.destination for m in messages] == ["shop.orders"] * 3


def test_redelivered_messages_are_skipped_by_message_id(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    event = fixture_event("rmq_event.json")
    mq_handler(event, None)

    again = mq_handler(copy.deepcopy(event), None)  # the broker redelivers the whole batch

    assert again["duplicates"] == 2 and again["rows"] == 0 and again["batches"] == {}
    assert len(rows(tmp_path / "lake")) == 2


def test_a_malformed_sqs_message_is_quarantined_once_and_reported_on_every_delivery(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    event = fixture_event("sqs_event.json")

    first = mq_handler(event, None)
    second = mq_handler(event, None)

    assert (
        first
        == second
        == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    )
    # no namespace can be read from it: one dead-letter object per message, rewritten in place
    (dead_letter,) = (tmp_path / "lake" / "raw" / "_mq_quarantine").iterdir()
    letter = json.loads(dead_letter.read_text())
    assert letter["message_id"] == event["Records"][1]["messageId"]
    assert "not extended JSON" in letter["reason"] and letter["raw"]["payload"] == "{not json"


def test_messages_relaying_the_change_stream_give_the_rows_capture_gives(
    tmp_path, source, make_request
):
    DemoWorkload(source, initial_documents=20).run(0)
    capture_changes(make_request(), source=source)
    start = RawZone(LocalObjectStore(tmp_path / "lake"), DB, COLL).read_checkpoint()
    DemoWorkload(source, initial_documents=20).run(60)
    capture_changes(make_request(), source=source)
    token = start.state["resume_token"]
    events = list(source.watch(DB, COLL, resume_after=token, full_document="updateLookup"))
    messages = [
        Message(f"m-{n}", "aws:sqs", "shop-orders", encode_document(event).encode())
        for n, event in enumerate(events)
    ]

    relayed = LocalObjectStore(tmp_path / "relayed")
    ingest_messages(messages, relayed)

    def stream_rows(store: LocalObjectStore) -> list[tuple]:
        return [
            (r["_id"], r["op"], r["pos"], r["event_time"], r["doc"])
            for r in batch_rows(store, DB, COLL)
            if r["op"] != "snapshot"
        ]

    assert stream_rows(relayed) == stream_rows(LocalObjectStore(tmp_path / "lake"))


def test_a_relayed_drop_event_carries_its_position_and_the_merge_keeps_newer_rows(tmp_path):
    """A drop relayed through a queue marks its batch ``dropped`` with the drop's clusterTime
    (``drop_pos``). SQS standard queues deliver in best-effort order, so a document inserted
    into the re-created collection can be merged before the drop: it must survive the drop."""

    ns = {"db": DB, "coll": COLL}

    event = partial(relayed_message, ns=ns)

    lake = tmp_path / "lake"
    store = LocalObjectStore(lake)
    ingest_messages([event(1, "insert", 100, "old"), event(3, "insert", 300, "recreated")], store)
    ingest_messages([event(2, "drop", 200)], store)  # delivered last

    zone = RawZone(store, DB, COLL)
    (drop_marker,) = [m for m in zone.manifests() if m.extra.get("dropped")]
    assert drop_marker.extra["drop_pos"] == cluster_position(200, 1)
    assert set(merged(lake)) == {record_key("recreated")}  # "old" (100 < 200) was dropped
