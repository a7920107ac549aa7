"""Capture without ``fullDocument: "updateLookup"`` (``CaptureRequest.full_document="default"``)
over the pymongo path, against mockupdb playing DocumentDB: update events then carry only
``updateDescription`` (MongoDB Manual, "Change Events" > "update Event"; DocumentDB sends "only a
partial document that contains the changes": AWS Lambda, ``DocumentDBEventSourceConfig``), and
capture publishes them as partial updates, the same rows as straight from the embedded source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.documentdb_source import DocumentDBChangeSource
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.extended_json import decode_document
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore
from tests.lambda_functions.cdc_capture.mock_documentdb import embedded_backed_server

DB, COLL = "shop", "orders"


def published(lake: Path) -> list[dict]:
    zone = RawZone(LocalObjectStore(lake), DB, COLL)
    return [row for m in zone.manifests() for row in zone.read_batch(m).to_pylist()]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedChangeStreamSource]:
    with EmbeddedChangeStreamSource(tmp_path / "store.db") as store:
        yield store


def test_pymongo_path_without_update_lookup_publishes_update_descriptions(tmp_path, store):
    store.enable_change_streams(DB, COLL)
    store.insert_one(DB, COLL, {"_id": 1, "a": {"b": 1}, "tags": ["x"]})
    with embedded_backed_server(tmp_path / "store.db") as server:
        client = MongoClient(server.uri, tls=False, serverSelectionTimeoutMS=5_000)
        wire_source = DocumentDBChangeSource(client, max_await_time_ms=10)
        try:
            for step in range(2):  # the snapshot, then the stream
                if step:
                    store.update_one(DB, COLL, {"_id": 1}, {"$set": {"a.b": 2, "tags.1": "y"}})
                    store.update_one(DB, COLL, {"_id": 1}, {"$unset": {"a": ""}})
                for lake, source in (("wire", wire_source), ("direct", store)):
                    request = CaptureRequest(
                        lake_uri=str(tmp_path / lake),
                        database=DB,
                        collection=COLL,
                        full_document="default",
                    )
                    capture_changes(request, source=source)
        finally:
            wire_source.close()
        stages = [c["pipeline"][0]["$changeStream"] for c in server.commands if "aggregate" in c]

    rows = published(tmp_path / "wire")
    assert rows == published(tmp_path / "direct")
    updates = [r for r in rows if r["op"] == "update"]
    assert [r["doc"] for r in updates] == [None, None]
    assert [decode_document(r["update_description"]) for r in updates] == [
        {"updatedFields": {"a.b": 2, "tags.1": "y"}, "removedFields": [], "truncatedArrays": []},
        {"updatedFields": {}, "removedFields": ["a"], "truncatedArrays": []},
    ]
    streams = [stage for stage in stages if "resumeAfter" in stage]  # not the position probe
    assert streams and all(stage["fullDocument"] == "default" for stage in streams)
