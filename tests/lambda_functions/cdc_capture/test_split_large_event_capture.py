"""Change events over the BSON limit through capture: split fragments reassembled, checkpoints only
at whole events, and the BSONObjectTooLarge report.

Semantics from the MongoDB Manual, "$changeStreamSplitLargeEvent (aggregation)": an event over
16 MiB comes as fragments of its top-level fields, in order, each with ``splitEvent: {fragment,
of}`` and its own token; the last fragment's token resumes at the next event; without the stage
the read fails with error 10334 (BSONObjectTooLarge). The embedded source plays the server with a
small limit (``max_event_bytes``) so the events stay small; mockupdb carries them over pymongo.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.documentdb_source import DocumentDBChangeSource
from lambda_functions.cdc_capture.large_events import OversizedChangeEventError, key_only_pipeline
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.extended_json import decode_document
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore
from tests.lambda_functions.cdc_capture.mock_documentdb import embedded_backed_server

DB, COLL = "shop", "orders"
LIMIT = 64 * 1024  # the stand-in's event size limit (16 MiB on a server)
FIELD = 40_000  # one field fits an event; a document with it twice in an update event does not
BIG = {"_id": "big", "a": "x" * FIELD, "n": 1}
UPDATED = {"_id": "big", "a": "y" * FIELD, "n": 1}


def request(lake: Path, **fields: Any) -> CaptureRequest:
    return CaptureRequest(lake_uri=str(lake), database=DB, collection=COLL, **fields)


def published(lake: Path) -> list[dict[str, Any]]:
    zone = RawZone(LocalObjectStore(lake), DB, COLL)
    return [row for m in zone.manifests() for row in zone.read_batch(m).to_pylist()]


def saved_token(lake: Path) -> Any:
    return RawZone(LocalObjectStore(lake), DB, COLL).read_checkpoint().state["resume_token"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedChangeStreamSource]:
    with EmbeddedChangeStreamSource(tmp_path / "store.db", max_event_bytes=LIMIT) as store:
        store.enable_change_streams(DB, COLL)
        store.insert_one(DB, COLL, {"_id": "small", "n": 0})
        yield store


def snapshot_then_change(store: EmbeddedChangeStreamSource, lake: Path) -> None:
    """The snapshot, then an insert, the update whose event is over the limit, an insert."""
    capture_changes(request(lake), source=store)
    store.insert_one(DB, COLL, BIG)
    store.update_one(DB, COLL, {"_id": "big"}, {"$set": {"a": "y" * FIELD}})
    store.insert_one(DB, COLL, {"_id": "after", "n": 2})


def test_the_store_splits_the_update_event_as_mongodb_does(store, tmp_path):
    token = store.current_position(DB, COLL)
    store.insert_one(DB, COLL, BIG)
    store.update_one(DB, COLL, {"_id": "big"}, {"$set": {"a": "y" * FIELD}})
    events = list(store.watch(DB, COLL, resume_after=token, full_document="updateLookup"))

    insert, first, second = events
    assert "splitEvent" not in insert
    assert first["splitEvent"] == {"fragment": 1, "of": 2}
    assert second["splitEvent"] == {"fragment": 2, "of": 2}
    assert list(first) == [
        *["_id", "splitEvent", "operationType", "clusterTime", "wallTime"],
        *["fullDocument", "ns", "documentKey"],
    ]
    assert list(second) == ["_id", "splitEvent", "updateDescription"]
    assert first["_id"] != second["_id"]


def test_split_update_is_captured_whole_and_the_checkpoint_is_the_last_fragments(store, tmp_path):
    lake = tmp_path / "lake"
    snapshot_then_change(store, lake)

    result = capture_changes(request(lake), source=store)

    rows = published(lake)[1:]  # after the snapshot's row
    assert [(r["op"], r["_id"]) for r in rows] == [
        ("insert", '"big"'),
        ("update", '"big"'),
        ("insert", '"after"'),
    ]
    assert decode_document(rows[1]["doc"]) == UPDATED
    assert result.stopped_by == "drained"
    # Resuming after the saved token yields nothing: the split event is not read again.
    assert list(store.watch(DB, COLL, resume_after=saved_token(lake))) == []


class _Deadline:
    """Plenty of time until the read has taken a first fragment, then none."""

    def __init__(self) -> None:
        self.fragment_seen = False

    def __call__(self) -> float:
        return 0.0 if self.fragment_seen else 900.0


class _WatchingSource:
    """The store, with each cursor's ``try_next`` seen by ``on_event`` (fragments included)."""

    def __init__(self, store: EmbeddedChangeStreamSource, on_event: Any) -> None:
        self._store, self._on_event = store, on_event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def watch(self, *args: Any, **kwargs: Any) -> Any:
        cursor = self._store.watch(*args, **kwargs)
        inner, on_event = cursor.try_next, self._on_event

        def try_next() -> Any:
            return on_event(inner())

        cursor.try_next = try_next
        return cursor


def test_the_deadline_does_not_stop_the_read_inside_a_split_event(store, tmp_path):
    lake = tmp_path / "lake"
    snapshot_then_change(store, lake)
    deadline = _Deadline()

    def on_event(event: Any) -> Any:
        if event is not None and event.get("splitEvent", {}).get("fragment") == 1:
            deadline.fragment_seen = True
        return event

    result = capture_changes(
        request(lake), source=_WatchingSource(store, on_event), deadline=deadline
    )

    assert result.stopped_by == "deadline"
    rows = published(lake)[1:]
    assert [(r["op"], r["_id"]) for r in rows] == [("insert", '"big"'), ("update", '"big"')]
    assert decode_document(rows[1]["doc"]) == UPDATED
    # The next run starts after the whole event: the insert behind it, nothing twice.
    capture_changes(request(lake), source=store)
    assert [(r["op"], r["_id"]) for r in published(lake)[3:]] == [("insert", '"after"')]


@pytest.mark.parametrize("how", ["crash", "fragments_stop_coming"])
def test_a_read_ended_mid_event_reads_the_whole_event_again(store, tmp_path, how):
    lake = tmp_path / "lake"
    snapshot_then_change(store, lake)
    cut = {"done": False}

    def on_event(event: Any) -> Any:
        if cut["done"]:
            if how == "crash":
                raise MemoryError("the run died inside a split event")
            return None
        if event is not None and event.get("splitEvent", {}).get("fragment") == 1:
            cut["done"] = True
        return event

    broken = _WatchingSource(store, on_event)
    if how == "crash":
        with pytest.raises(MemoryError):
            capture_changes(request(lake), source=broken)
        assert len(published(lake)) == 1  # nothing published past the snapshot
    else:
        capture_changes(request(lake), source=broken)
        # The insert before the event is published, the checkpoint stays at its token.
        assert [(r["op"], r["_id"]) for r in published(lake)[1:]] == [("insert", '"big"')]
        events_after = list(
            store.watch(DB, COLL, resume_after=saved_token(lake), full_document="updateLookup")
        )
        assert events_after[0]["splitEvent"] == {"fragment": 1, "of": 2}

    capture_changes(request(lake), source=store)

    rows = published(lake)[1:]
    assert [(r["op"], r["_id"]) for r in rows] == [
        ("insert", '"big"'),
        ("update", '"big"'),
        ("insert", '"after"'),
    ]
    assert decode_document(rows[1]["doc"]) == UPDATED


def test_without_the_split_stage_the_oversized_event_is_reported_by_key(store, tmp_path):
    lake = tmp_path / "lake"
    snapshot_then_change(store, lake)
    store.split_large_events = False  # a server before MongoDB 6.0.9 / DocumentDB 8.0.2

    with pytest.raises(OversizedChangeEventError) as raised:
        capture_changes(request(lake), source=store)

    message = str(raised.value)
    assert "{'_id': 'big'}" in message
    assert "BSONObjectTooLarge, code 10334" in message
    assert "$changeStreamSplitLargeEvent" not in message.split("Fix:")[1]  # known unsupported
    assert "key_only_pipeline" in message and "updateDescription" in message
    assert isinstance(raised.value.__cause__, OperationFailure)
    assert len(published(lake)) == 1  # nothing published: the next run meets it again


def test_one_field_over_the_limit_is_reported_even_with_the_split_stage(store, tmp_path):
    lake = tmp_path / "lake"
    capture_changes(request(lake), source=store)
    store.insert_one(DB, COLL, {"_id": "huge", "a": "z" * (LIMIT + 10)})  # MongoDB: not split

    with pytest.raises(OversizedChangeEventError) as raised:
        capture_changes(request(lake), source=store)

    message = str(raised.value)
    assert "{'_id': 'huge'}" in message
    assert "one top-level field is over 16 MiB alone" in message
    assert "add {$changeStreamSplitLargeEvent" not in message  # it is already there


# -- over pymongo (mockupdb playing the server) ----------------------------------------------------
def wire_capture(tmp_path: Path, store: EmbeddedChangeStreamSource, **server: Any) -> Any:
    """Snapshot and changes captured over the wire; (lake, server commands, source)."""
    lake = tmp_path / "wire"
    with embedded_backed_server(tmp_path / "store.db", max_event_bytes=LIMIT, **server) as mock:
        client = MongoClient(mock.uri, tls=False, serverSelectionTimeoutMS=5_000)
        source = DocumentDBChangeSource(client, max_await_time_ms=10)
        try:
            capture_changes(request(lake), source=source)
            store.insert_one(DB, COLL, BIG)
            store.update_one(DB, COLL, {"_id": "big"}, {"$set": {"a": "y" * FIELD}})
            store.insert_one(DB, COLL, {"_id": "after", "n": 2})
            error = None
            try:
                capture_changes(request(lake), source=source)
            except OversizedChangeEventError as oversized:
                error = oversized
        finally:
            source.close()
        return lake, mock.commands, source, error


def stream_pipelines(commands: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [
        c["pipeline"][1:]
        for c in commands
        if "aggregate" in c and "resumeAfter" in c["pipeline"][0]["$changeStream"]
    ]


@pytest.mark.parametrize("events_per_batch", [None, 1])  # 1: each fragment in its own getMore
def test_pymongo_path_asks_for_fragments_on_mongodb_7_and_captures_the_event(
    store, tmp_path, events_per_batch
):
    lake, commands, source, error = wire_capture(
        tmp_path, store, version="7.0.12", events_per_batch=events_per_batch
    )

    assert error is None and source.split_large_events is True
    pipelines = stream_pipelines(commands)
    assert pipelines and all(p == [{"$changeStreamSplitLargeEvent": {}}] for p in pipelines)
    rows = published(lake)[1:]
    assert [(r["op"], r["_id"]) for r in rows] == [
        ("insert", '"big"'),
        ("update", '"big"'),
        ("insert", '"after"'),
    ]
    assert decode_document(rows[1]["doc"]) == UPDATED


def test_pymongo_path_falls_back_when_the_server_refuses_the_stage(store, tmp_path):
    lake, commands, source, error = wire_capture(
        tmp_path, store, version="8.0.0", split_stage=False
    )

    assert source.split_large_events is False
    pipelines = stream_pipelines(commands)
    # Refused once (40324), asked again without it and never asked again; the last stream is
    # the key-only read that found the key.
    assert pipelines == [[{"$changeStreamSplitLargeEvent": {}}], [], [], key_only_pipeline([])]
    assert isinstance(error, OversizedChangeEventError)
    assert "{'_id': 'big'}" in str(error)
    assert len(published(lake)) == 1


def test_pymongo_path_on_documentdb_5_reports_the_key(store, tmp_path):
    lake, commands, source, error = wire_capture(tmp_path, store)  # buildInfo 5.0.0

    assert source.split_large_events is False
    assert all("$changeStreamSplitLargeEvent" not in str(p) for p in stream_pipelines(commands))
    assert isinstance(error, OversizedChangeEventError)
    assert "{'_id': 'big'}" in str(error) and "BSONObj size:" not in str(error)
    assert " bytes for the document with key {'_id': 'big'}" in str(error)  # size said
    assert len(published(lake)) == 1
