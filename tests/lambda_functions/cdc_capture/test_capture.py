"""capture_changes: initial load, streaming, crash safety, dead letters and errors that say the fix."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
from bson import Binary, Decimal128, Int64, ObjectId
from pymongo.errors import OperationFailure

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import (
    ChangeStreamsDisabledError,
    ConcurrentCaptureError,
    ResumeTokenExpiredError,
    capture_changes,
    open_source,
    token_position,
)
from lambda_functions.cdc_capture.errors import SourceConnectionError
from lambda_functions.contracts import InvalidRequestError
from lambda_functions.lake.extended_json import decode_document, encode_document
from lambda_functions.lake.raw_zone import RawZone
from tests.lambda_functions.cdc_capture.conftest import batch_rows

DB, COLL = "shop", "orders"


def zone(store) -> RawZone:
    return RawZone(store, DB, COLL)


def captured_then_changed(source, make_request, *, documents: int, changes: int) -> DemoWorkload:
    """Seed ``documents`` orders, capture them (the snapshot), then make ``changes`` changes."""
    workload = DemoWorkload(source, initial_documents=documents)
    workload.run(0)
    capture_changes(make_request(), source=source)
    workload.run(changes)
    return workload


class MutatingSource:
    """The application keeps writing while capture runs: right after the position is recorded and
    after every snapshot page."""

    def __init__(self, inner: EmbeddedChangeStreamSource, workload: DemoWorkload, changes: int):
        self.inner, self.workload, self.changes = inner, workload, changes

    def current_position(self, database, collection):
        token = self.inner.current_position(database, collection)
        self.workload.run(self.changes)
        return token

    def documents(self, database, collection, after_id=None, limit=None):
        page = self.inner.documents(database, collection, after_id=after_id, limit=limit)
        self.workload.run(self.changes)
        return page

    def watch(self, database, collection, **options):
        return self.inner.watch(database, collection, **options)

    def close(self):
        self.inner.close()


def test_bson_types_survive_capture_into_a_batch(source, lake, make_request):
    source.enable_change_streams(DB, COLL)
    typed = {
        "_id": ObjectId(),
        "price": Decimal128("0.10"),
        "at": datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
        "raw": b"\x00\xff",
        "uuid": Binary(uuid.uuid4().bytes, 4),
        "count": Int64(9_007_199_254_740_993),  # not representable as a double
        "lines": [{"sku": "a", "dims": [1, 2.5, [Decimal128("3")]]}],
    }
    source.insert_one(DB, COLL, typed)
    capture_changes(make_request(), source=source)  # snapshot
    changed = typed | {"_id": "order-7", "price": Decimal128("1E-7")}
    source.insert_one(DB, COLL, changed)
    source.insert_one(DB, COLL, {"_id": 42})
    capture_changes(make_request(), source=source)  # stream

    rows = {row["_id"]: row for row in batch_rows(lake)}

    assert rows[str(typed["_id"])]["op"] == "snapshot"
    # Record keys (lake/record_key.py): a string is JSON-quoted, a number normalised by value.
    assert rows['"order-7"']["op"] == "insert"
    assert '{"$numberLong":"42"}' in rows
    for key, original in ((str(typed["_id"]), typed), ('"order-7"', changed)):
        assert rows[key]["doc"] == encode_document(original)
        document = decode_document(rows[key]["doc"])
        assert type(document["count"]) is Int64 and document["count"] == 9_007_199_254_740_993
        assert type(document["price"]) is Decimal128 and document["uuid"].subtype == 4
        assert document["at"] == original["at"] and document["lines"] == original["lines"]


def test_first_capture_snapshots_once_and_replays_changes_made_during_it(
    source, lake, make_request, reconstruct, source_state
):
    workload = DemoWorkload(source, initial_documents=300)
    workload.run(0)
    mutating = MutatingSource(source, workload, changes=15)

    first = capture_changes(make_request(max_rows=70), source=mutating)
    while capture_changes(make_request(max_rows=70), source=source).stopped_by != "drained":
        pass  # the replay of what changed meanwhile takes more than one batch of 70

    rows = batch_rows(lake)
    snapshot_ids = Counter(r["_id"] for r in rows if r["op"] == "snapshot")
    assert len(first.batches) >= 5 and first.phase == "stream"
    assert max(snapshot_ids.values()) == 1  # each document snapshotted once
    (start,) = {r["pos"] for r in rows if r["op"] == "snapshot"}
    assert all(r["pos"] > start for r in rows if r["op"] != "snapshot")
    assert {r["op"] for r in rows} >= {"snapshot", "insert", "update", "delete"}
    assert reconstruct(lake) == source_state(source)

    workload.run(200)
    capture_changes(make_request(), source=source)
    assert reconstruct(lake) == source_state(source)


def test_snapshot_larger_than_max_rows_resumes_after_the_last_chunk_when_a_run_crashes(
    source, lake, make_request, failing_store, reconstruct, source_state
):
    DemoWorkload(source, initial_documents=450).run(0)
    request = make_request(max_rows=100)

    # each chunk is 2 writes (data file, manifest) + 1 checkpoint: die inside the third chunk
    with pytest.raises(OSError, match="injected"):
        capture_changes(request, source=source, store=failing_store(puts_allowed=7))
    crashed_batches = zone(lake).batch_numbers()
    resumed = capture_changes(request, source=source)

    assert crashed_batches == [1, 2]
    assert resumed.batches == (3, 4, 5)
    snapshot_ids = Counter(r["_id"] for r in batch_rows(lake) if r["op"] == "snapshot")
    assert len(snapshot_ids) == 450 and set(snapshot_ids.values()) == {1}
    assert zone(lake).read_manifest(4).state["phase"] == "snapshot"
    final_state = zone(lake).read_manifest(5).state
    assert final_state["phase"] == "stream"
    assert final_state["resume_token"] == zone(lake).read_manifest(1).state["start_token"]
    assert reconstruct(lake) == source_state(source)


def test_crash_between_manifest_and_checkpoint_does_not_capture_twice(
    source, lake, make_request, failing_store, reconstruct, source_state
):
    captured_then_changed(source, make_request, documents=50, changes=30)
    checkpoint_writes = failing_store(fail_on=lambda key: key.endswith("_checkpoint.json"))

    with pytest.raises(OSError, match="injected"):
        capture_changes(make_request(), source=source, store=checkpoint_writes)
    again = capture_changes(make_request(), source=source)

    assert again.batch is None  # the manifest was published: its state is rolled forward
    assert zone(lake).read_checkpoint().batch == 2
    stream_rows = [r for r in batch_rows(lake) if r["op"] != "snapshot"]
    assert len({(r["_id"], r["pos"]) for r in stream_rows}) == len(stream_rows)
    assert reconstruct(lake) == source_state(source)


def test_nothing_new_publishes_no_batch_and_keeps_the_checkpoint(source, lake, make_request):
    DemoWorkload(source, initial_documents=20).run(0)
    capture_changes(make_request(), source=source)
    before = zone(lake).read_checkpoint()

    result = capture_changes(make_request(), source=source)

    assert result.batch is None and result.batches == () and result.rows == 0
    assert result.stopped_by == "drained" and result.cdc_lag_seconds == 0.0
    assert zone(lake).read_checkpoint() == before
    assert result.checkpoint_batch == before.batch


def test_stream_batch_maps_events_to_rows_in_stream_order(source, lake, make_request):
    source.enable_change_streams(DB, COLL)
    capture_changes(make_request(), source=source)  # empty collection: publishes the start state
    a = source.insert_one(DB, COLL, {"n": 1})
    with source.transaction():
        source.update_one(DB, COLL, {"_id": a}, {"$inc": {"n": 1}})
        b = source.insert_one(DB, COLL, {"n": 10})
    source.replace_one(DB, COLL, {"_id": b}, {"n": 11})
    source.delete_one(DB, COLL, {"_id": a})

    result = capture_changes(make_request(), source=source)

    rows = zone(lake).read_batch(zone(lake).read_manifest(result.batch)).to_pylist()
    assert [(r["_id"], r["op"]) for r in rows] == [
        (str(a), "insert"),
        (str(b), "insert"),
        (str(b), "replace"),
        (str(a), "delete"),
    ]
    assert [r["seq"] for r in rows] == [0, 1, 2, 3]
    events = [
        e
        for e in source.watch(DB, COLL, resume_after={"_data": "82" + "0" * 32})
        if e["operationType"] != "update"  # the skipped update of a deleted document
    ]
    assert [r["pos"] for r in rows] == [
        (e["clusterTime"].time << 32) | e["clusterTime"].inc for e in events
    ]
    assert [r["event_time"] for r in rows] == [e["wallTime"] for e in events]
    assert rows[-1]["doc"] is None and decode_document(rows[2]["doc"]) == {"_id": b, "n": 11}
    assert result.skipped == {"update_of_deleted_document": 1}  # its delete follows
    assert result.rows_by_op == {"insert": 2, "replace": 1, "delete": 1}
    state = zone(lake).read_checkpoint().state
    assert state["phase"] == "stream" and token_position(state["resume_token"]) == rows[-1]["pos"]
    assert result.resume_position == rows[-1]["pos"]


def test_events_of_one_transaction_keep_their_order_through_seq(source, lake, make_request):
    source.enable_change_streams(DB, COLL)
    capture_changes(make_request(), source=source)
    with source.transaction():
        a = source.insert_one(DB, COLL, {"v": 1})
        source.update_one(DB, COLL, {"_id": a}, {"$set": {"v": 2}})
        source.update_one(DB, COLL, {"_id": a}, {"$set": {"v": 3}})

    capture_changes(make_request(), source=source)

    rows = [r for r in batch_rows(lake) if r["_id"] == str(a)]
    assert len({r["pos"] for r in rows}) == 1
    assert [(r["op"], r["seq"]) for r in rows] == [("insert", 0), ("update", 1), ("update", 2)]


def test_stream_stops_at_max_rows_and_the_next_run_continues(
    source, lake, make_request, reconstruct, source_state
):
    captured_then_changed(source, make_request, documents=30, changes=120)

    runs = []
    while (result := capture_changes(make_request(max_rows=25), source=source)).batch:
        runs.append(result)

    assert all(r.rows <= 25 for r in runs) and len(runs) >= 4
    assert runs[0].stopped_by == "max_rows" and runs[-1].stopped_by == "drained"
    assert reconstruct(lake) == source_state(source)


def test_stream_stops_with_a_reserve_of_time_before_the_deadline(
    source, lake, make_request, reconstruct, source_state
):
    captured_then_changed(source, make_request, documents=30, changes=100)
    calls = []

    def remaining() -> float:  # 100 s at the start, then time runs out after 40 reads
        calls.append(1)
        return 100.0 if len(calls) <= 40 else 9.0  # reserve = max(5 s, 10% of 100 s)

    stopped = capture_changes(make_request(), source=source, deadline=remaining)
    rest = capture_changes(make_request(), source=source, deadline=lambda: 100.0)

    assert stopped.stopped_by == "deadline" and stopped.batch is not None
    assert stopped.cdc_lag_seconds >= 0 and rest.stopped_by == "drained"
    assert reconstruct(lake) == source_state(source)


class QuarantineSource:
    """Feeds capture what DocumentDB never would but DMS/MQ inputs and bugs can: a document
    without ``_id``, values BSON cannot encode, an event without a documentKey."""

    def __init__(self, inner: EmbeddedChangeStreamSource):
        self.inner = inner

    def current_position(self, database, collection):
        return self.inner.current_position(database, collection)

    def documents(self, database, collection, after_id=None, limit=None):
        page = self.inner.documents(database, collection, after_id=after_id, limit=limit)
        if after_id is None:
            page = [{"name": "no id"}, *page, {"_id": "bad", "tags": {"a", "b"}}]
        return page

    def watch(self, database, collection, **options):
        return BrokenEvents(self.inner.watch(database, collection, **options))

    def close(self):
        self.inner.close()


class BrokenEvents:
    def __init__(self, inner):
        self.inner = inner

    def try_next(self):
        event = self.inner.try_next()
        if event is None:
            return None
        n = event["fullDocument"].get("n") if event.get("fullDocument") else None
        if n == 1:
            event = {k: v for k, v in event.items() if k != "documentKey"}
        elif n == 2:
            event["fullDocument"]["when"] = 1j
        return event

    def close(self):
        self.inner.close()


def test_malformed_documents_and_events_are_quarantined_and_counted(source, lake, make_request):
    source.enable_change_streams(DB, COLL)
    source.insert_many(DB, COLL, [{"_id": i} for i in range(5)])
    broken = QuarantineSource(source)

    snapshot = capture_changes(make_request(), source=broken)
    for n in range(4):
        source.insert_one(DB, COLL, {"n": n})
    stream = capture_changes(make_request(), source=broken)

    assert (snapshot.rows, snapshot.quarantined) == (5, 2)
    assert (stream.rows, stream.quarantined) == (2, 2)
    assert zone(lake).read_manifest(stream.batch).quarantined == 2
    lines = [
        json.loads(line)
        for batch in (snapshot.batch, stream.batch)
        for line in lake.get(zone(lake).read_manifest(batch).extra["quarantine_key"]).splitlines()
    ]
    reasons = [line["reason"] for line in lines]
    assert reasons[0] == "document has no _id" and lines[0]["raw"] == {"name": "no id"}
    assert "cannot be encoded" in reasons[1] and lines[1]["raw"]["_id"] == "bad"
    assert reasons[2] == "insert event has no documentKey._id"
    assert "cannot be encoded" in reasons[3]
    assert lines[3]["raw"]["fullDocument"]["when"] == {"$unencodable": "1j"}


def test_expired_resume_token_raises_an_error_naming_the_fix_and_reset_recovers(
    tmp_path, lake, make_request, reconstruct
):
    with EmbeddedChangeStreamSource(tmp_path / "source.db", max_events=40) as source:
        # more changes than the log keeps
        captured_then_changed(source, make_request, documents=60, changes=100)

        with pytest.raises(ResumeTokenExpiredError) as caught:
            capture_changes(make_request(), source=source)
        recovered = capture_changes(make_request(), source=source, reset=True)
        expected = {str(d["_id"]): encode_document(d) for d in source.documents(DB, COLL)}

    message = str(caught.value)
    assert isinstance(caught.value.__cause__, OperationFailure)
    assert caught.value.__cause__.code == 136
    assert "shop.orders" in message and "s old" in message
    assert "re-snapshot" in message and "reset" in message
    assert "change_stream_log_retention_duration" in message
    assert zone(lake).read_manifest(recovered.batches[0]).extra["dropped"] is True
    assert recovered.phase == "stream" and recovered.rows_by_op == {"snapshot": len(expected)}
    assert reconstruct(lake) == expected


def test_history_lost_from_mongodb_is_treated_as_an_expired_token(lake, make_request):
    class HistoryLost:
        def current_position(self, database, collection):
            return {"_data": "82" + "0" * 32}

        def documents(self, database, collection, after_id=None, limit=None):
            return []

        def watch(self, database, collection, **options):
            raise OperationFailure(
                "Resume of change stream was not possible",
                code=286,
                details={"code": 286, "codeName": "ChangeStreamHistoryLost"},
            )

    with pytest.raises(ResumeTokenExpiredError, match="re-snapshot"):
        capture_changes(make_request(), source=HistoryLost())


def test_disabled_change_streams_raise_an_error_with_the_enabling_command(source, make_request):
    source.insert_one(DB, COLL, {"n": 1})

    with pytest.raises(ChangeStreamsDisabledError) as caught:
        capture_changes(make_request(), source=source)

    assert (
        "db.adminCommand({modifyChangeStreams: 1, database: 'shop', collection: 'orders', "
        "enable: true})" in str(caught.value)
    )


def test_dropped_collection_ends_the_batch_and_the_next_run_snapshots_again(
    source, lake, make_request, reconstruct, source_state
):
    workload = DemoWorkload(source, initial_documents=20)
    workload.run(0)
    capture_changes(make_request(), source=source)
    before_drop = source.insert_one(DB, COLL, {"n": "before drop"})
    source.drop_collection(DB, COLL)
    recreated = source.insert_one(DB, COLL, {"n": "after drop"})

    dropped = capture_changes(make_request(), source=source)
    resnapshot = capture_changes(make_request(), source=source)

    manifest = zone(lake).read_manifest(dropped.batch)
    assert dropped.dropped and dropped.stopped_by == "dropped" and dropped.phase == "snapshot"
    assert manifest.extra["dropped"] is True and manifest.ops == {"insert": 1}
    assert manifest.state["phase"] == "snapshot" and manifest.state["last_id"] is None
    assert [r["_id"] for r in batch_rows(lake) if r["batch"] == dropped.batch] == [str(before_drop)]
    # The drop event's clusterTime travels as drop_pos (the merge drops by position): after the
    # rows captured before it, at or before the new snapshot's rows (taken after the drop).
    positions = {r["batch"]: r["pos"] for r in batch_rows(lake)}
    assert positions[dropped.batch] < manifest.extra["drop_pos"] <= positions[resnapshot.batch]
    assert resnapshot.rows_by_op == {"snapshot": 1} and resnapshot.phase == "stream"
    assert (
        reconstruct(lake)
        == source_state(source)
        == {str(recreated): encode_document({"_id": recreated, "n": "after drop"})}
    )


def test_result_metadata_is_typed_for_dagster_pipes(source, make_request):
    DemoWorkload(source, initial_documents=10).run(0)
    result = capture_changes(make_request(max_rows=4), source=source)

    metadata = result.metadata()

    assert metadata["dagster/row_count"] == {"raw_value": result.rows, "type": "int"}
    assert metadata["batch"] == {"raw_value": result.batch, "type": "int"}
    assert metadata["rows_by_op"] == {"raw_value": {"snapshot": 10}, "type": "json"}
    assert metadata["phase"]["type"] == "text" and metadata["cdc_lag_seconds"]["type"] == "float"
    assert metadata["snapshot_progress"]["raw_value"]["documents"] == 10
    assert metadata["snapshot_progress"]["raw_value"]["complete"] is True
    assert json.loads(json.dumps(result.summary()))["batches"] == list(result.batches)


def test_snapshot_chunks_also_respect_max_bytes(
    source, lake, make_request, reconstruct, source_state
):
    DemoWorkload(source, initial_documents=120).run(0)

    result = capture_changes(make_request(max_bytes=20_000), source=source)

    chunks = [zone(lake).read_batch(zone(lake).read_manifest(b)) for b in result.batches]
    assert len(chunks) >= 3 and result.rows == 120
    assert all(sum(len(d) for d in chunk["doc"].to_pylist()) < 20_000 + 2_000 for chunk in chunks)
    assert reconstruct(lake) == source_state(source)


def test_a_concurrent_capture_that_published_first_makes_this_one_fail_without_publishing(
    source, lake, make_request
):
    DemoWorkload(source, initial_documents=10).run(0)
    capture_changes(make_request(), source=source)
    source.insert_one(DB, COLL, {"n": 1})

    class RacedSource:
        """Another capture publishes batch N+1 while this one reads the stream."""

        def __getattr__(self, name):
            return getattr(source, name)

        def watch(self, database, collection, **options):
            rival = zone(lake)
            rival.write_batch([], after=rival.read_checkpoint(), state={"phase": "stream"})
            return source.watch(database, collection, **options)

    with pytest.raises(ConcurrentCaptureError, match="one capture per collection"):
        capture_changes(make_request(), source=RacedSource())
    assert zone(lake).read_checkpoint().state == {"phase": "stream"}  # the rival's, untouched


def test_open_source_names_what_is_missing(make_request, monkeypatch):
    monkeypatch.delenv("DOCDB_URI_FOR_TEST", raising=False)
    with pytest.raises(SourceConnectionError, match="DOCDB_URI_FOR_TEST"):
        open_source(make_request(source_kind="documentdb", source_location="DOCDB_URI_FOR_TEST"))
    with pytest.raises(InvalidRequestError, match="source_location"):
        open_source(make_request(source_location=""))


def test_a_long_snapshot_read_reports_how_far_it_got_at_a_steady_interval(
    source, lake, make_request, monkeypatch
):
    """Issue 12: reading a long snapshot logged nothing until its batch was published."""
    import lambda_functions.cdc_capture.capture as capture_module
    import lambda_functions.cdc_capture.snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "SNAPSHOT_PAGE_ROWS", 50)
    monkeypatch.setattr(capture_module, "REPORT_EVERY_S", 0.0)  # a line per page, for the test
    DemoWorkload(source, initial_documents=200).run(0)
    lines: list[str] = []
    capture_changes(make_request(), source=source, on_progress=lines.append)
    waiting = [line for line in lines if line.startswith("waiting for the snapshot")]
    assert len(waiting) >= 4
    assert waiting[0].startswith("waiting for the snapshot of shop.orders (batch 1): ")
    assert "50 documents read" in waiting[0] and "200 documents read" in waiting[3]
    assert "s so far" in waiting[0]
