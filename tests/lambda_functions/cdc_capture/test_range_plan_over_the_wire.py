"""Range planning and a whole range snapshot through pymongo, over the wire (mockupdb).

The server answers from an embedded store, playing one of four engines:

- ``mongodb``: ``splitVector`` answers (MongoDB's chunk splitter; needs the privilege);
- ``documentdb-8.0``: ``splitVector`` refused (not among DocumentDB's supported commands),
  ``$bucketAuto`` answers (DocumentDB 8.0.2+);
- ``documentdb-5.0``: ``splitVector`` and ``$bucketAuto`` refused, ``$sample`` answers;
- ``no-sample``: ``$sample`` refused too: ObjectId time ranges from the min and max ObjectId.

Refusals use the servers' codes (MongoDB 59 ``CommandNotFound``; DocumentDB 303 "Feature not
supported"). Every command is recorded, so the tests show the planner's commands and fallbacks,
and that no read pages with ``skip``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo import MongoClient

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import DocumentDBChangeSource
from lambda_functions.cdc_capture.range_plan import bson_order_key, plan_boundaries
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.store import LocalObjectStore
from tests.lambda_functions.cdc_capture.conftest import batch_rows
from tests.lambda_functions.cdc_capture.mock_documentdb import (
    EmbeddedBackedServer,
    embedded_backed_server,
)
from tests.lambda_functions.cdc_capture.range_runs import mixed_documents, run_all_ranges

DOCUMENTS = 3_000
ENGINES = ("mongodb", "documentdb-8.0", "documentdb-5.0", "no-sample")
METHOD = {
    "mongodb": "splitVector",
    "documentdb-8.0": "$bucketAuto",
    "documentdb-5.0": "$sample",
    "no-sample": "objectid_time",
}


class PlannerCommands:
    """The planning commands of one engine, added to an ``EmbeddedBackedServer``."""

    def __init__(self, server: EmbeddedBackedServer, engine: str):
        self.server, self.engine = server, engine
        self.change_streams = server.handlers["aggregate"]
        self.plain_find = server.handlers["find"]
        server.handlers |= {
            "collStats": self.coll_stats,
            "splitVector": self.split_vector,
            "aggregate": self.aggregate,
            "find": self.find,
        }

    def ids(self, command: dict[str, Any]) -> list[Any]:
        return self.server.store.document_ids(command["$db"], command.get("aggregate") or "orders")

    def refuse(self, request: Any, what: str) -> bool:
        if self.engine == "mongodb":
            return request.command_err(code=59, errmsg=f"no such command: '{what}'")
        return request.command_err(code=303, errmsg=f"Feature not supported: {what}")

    def coll_stats(self, request: Any) -> bool:
        command = self.server._record(request)
        count = self.server.store.count_documents(command["$db"], command["collStats"])
        return request.ok(count=count, size=count * 120, avgObjSize=120)

    def split_vector(self, request: Any) -> bool:
        command = self.server._record(request)
        if self.engine != "mongodb":
            return self.refuse(request, "splitVector")
        database, collection = command["splitVector"].split(".", 1)
        total = self.server.store.count_documents(database, collection)
        per_chunk = int(command.get("maxChunkObjects") or total)
        keys, _ = self.server.store.split_keys(database, collection, max(1, total // per_chunk))
        return request.ok(splitKeys=[{"_id": key} for key in keys])

    def aggregate(self, request: Any) -> bool:
        stage = next(iter(request.doc["pipeline"][0]))
        if stage == "$changeStream":
            return self.change_streams(request)
        command = self.server._record(request)
        ns = f"{command['$db']}.{command['aggregate']}"
        ids = sorted(self.ids(command), key=bson_order_key)
        if stage == "$bucketAuto":
            if self.engine not in ("mongodb", "documentdb-8.0"):
                return self.refuse(request, "$bucketAuto")
            buckets = command["pipeline"][0]["$bucketAuto"]["buckets"]
            size = -(-len(ids) // buckets)
            batch = [
                {"_id": {"min": ids[i], "max": ids[min(i + size, len(ids) - 1)]}, "count": size}
                for i in range(0, len(ids), size)
            ]
        elif stage == "$sample":
            if self.engine == "no-sample":
                return self.refuse(request, "$sample")
            wanted = command["pipeline"][0]["$sample"]["size"]
            batch = [{"_id": i} for i in random.Random(7).sample(ids, min(wanted, len(ids)))]
        else:
            return request.command_err(code=40324, errmsg=f"Unrecognized pipeline stage {stage}")
        return request.ok(cursor={"id": Int64(0), "ns": ns, "firstBatch": batch})

    def find(self, request: Any) -> bool:
        command = request.doc
        if command.get("filter", {}).get("_id") != {"$type": "objectId"}:
            return self.plain_find(request)
        self.server._record(request)
        oids = [i for i in self.ids(command) if isinstance(i, ObjectId)]
        pick = max if command.get("sort", {}).get("_id") == -1 else min
        batch = [{"_id": pick(oids)}] if oids else []
        ns = f"{command['$db']}.{command['find']}"
        return request.ok(cursor={"id": Int64(0), "ns": ns, "firstBatch": batch})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedChangeStreamSource]:
    with EmbeddedChangeStreamSource(tmp_path / "store.db") as store:
        store.enable_change_streams("shop", "orders")
        with store.bulk():
            store.insert_many("shop", "orders", mixed_documents(DOCUMENTS))
        yield store


def over_the_wire(tmp_path: Path, engine: str):
    server_context = embedded_backed_server(tmp_path / "store.db")
    server = server_context.__enter__()
    PlannerCommands(server, engine)
    client = MongoClient(server.uri, tls=False, serverSelectionTimeoutMS=5_000)
    return server_context, server, DocumentDBChangeSource(client, max_await_time_ms=10)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_planner_falls_back_engine_by_engine(tmp_path, store, engine):
    context, server, source = over_the_wire(tmp_path, engine)
    try:
        method, boundaries, total = plan_boundaries(source, "shop", "orders", 8)
    finally:
        source.close()
        context.__exit__(None, None, None)
    assert method == METHOD[engine]
    assert total == DOCUMENTS
    assert 1 <= len(boundaries) <= 7
    names = server.names()
    asked = {
        "mongodb": ["collStats", "splitVector"],
        "documentdb-8.0": ["collStats", "splitVector", "aggregate"],
        "documentdb-5.0": ["collStats", "splitVector", "aggregate", "aggregate"],
        "no-sample": ["collStats", "splitVector", "aggregate", "aggregate", "find", "find"],
    }[engine]
    assert names == asked
    if engine == "mongodb":
        assert server.commands[1]["keyPattern"] == {"_id": 1}
        assert server.commands[1]["maxChunkObjects"] == DOCUMENTS // 8
    if engine == "no-sample":
        assert all(isinstance(b, ObjectId) for b in boundaries)
    assert not any("skip" in command for command in server.commands)


@pytest.mark.parametrize("engine", ["mongodb", "documentdb-5.0"])
def test_a_range_snapshot_over_the_wire_equals_the_embedded_one(tmp_path, store, engine):
    context, server, source = over_the_wire(tmp_path, engine)
    try:
        request = CaptureRequest(
            lake_uri=str(tmp_path / "wire"),
            database="shop",
            collection="orders",
            source_kind="documentdb",
            max_rows=700,
            snapshot_ranges=4,
        )
        status = run_all_ranges(request, source)
    finally:
        source.close()
        context.__exit__(None, None, None)
    assert status.step == "published" and status.plan.method == METHOD[engine]
    local = CaptureRequest(
        lake_uri=str(tmp_path / "local"), database="shop", collection="orders", max_rows=700
    )
    from lambda_functions.cdc_capture import capture_changes

    while capture_changes(local, source=store).phase != "stream":
        pass
    wire = [(r["_id"], r["doc"]) for r in batch_rows(LocalObjectStore(tmp_path / "wire"))]
    embedded = [(r["_id"], r["doc"]) for r in batch_rows(LocalObjectStore(tmp_path / "local"))]
    assert len(wire) == len(set(wire)) == DOCUMENTS
    assert sorted(wire) == sorted(embedded)
    finds = [c for c in server.commands if "find" in c]
    assert finds and not any("skip" in c for c in finds)
