"""End to end through the data plane: capture (snapshot + stream) and MQ/SQS ingest, merge, DuckDB
load and the source audit, with the inputs that used to lose or merge documents.

Expected values come from the sources' semantics, not from the code: the source collection itself
(captured path), and for the message path the state MongoDB reaches by applying the change events
in ``clusterTime`` order (a change stream's order; SQS standard queues deliver at least once and
out of order, AWS SQS developer guide "Standard queues"), where a ``drop`` removes what came before
it. Record identity follows MongoDB's ``_id`` equality (see lake/record_key.py).
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from bson import Binary, Int64, ObjectId
from bson.datetime_ms import DatetimeMS
from deltalake import DeltaTable

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.mq_ingest import ingest_messages, parse_event
from lambda_functions.cdc_capture.source_audit import audit_source
from lambda_functions.contracts import (
    CaptureRequest,
    LoadRequest,
    MergeRequest,
    SourceAuditRequest,
)
from lambda_functions.lake import open_store
from lambda_functions.lake.extended_json import decode_document, encode_document
from lambda_functions.lake.record_key import record_key
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.warehouse_load.load import load_changes
from tests.lambda_functions.change_events import change_event, sqs_event

DB = "shop"
HEX = "65a1b2c3d4e5f60718293a4b"
MIXED_IDS: list[Any] = [
    ObjectId(HEX),
    HEX,  # the same hex digits as a string: a second document
    7,
    Int64(9_000_000_001),
    2.5,
    Binary.from_uuid(uuid.UUID("123e4567-e89b-12d3-a456-426614174000")),
    {"region": "eu", "n": 1},
    {"n": 1, "region": "eu"},
]
BAD_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")  # bytes a server can hold, not UTF-8
YEAR_20000 = DatetimeMS(568_024_668_800_000)  # a "never expires" sentinel, outside Python's range


class Lakehouse:
    def __init__(self, root: Path):
        self.root = root
        self.lake = str(root / "lake")
        self.warehouse = str(root / "warehouse.duckdb")

    def merge_and_load(self, collection: str) -> None:
        merge_batches(MergeRequest(lake_uri=self.lake, database=DB, collection=collection))
        load_changes(
            LoadRequest(
                lake_uri=self.lake,
                database=DB,
                collection=collection,
                warehouse_location=self.warehouse,
            )
        )

    def lake_rows(self, collection: str) -> dict[str, str]:
        uri, options = lake_table_location(open_store(self.lake), DB, collection)
        rows = DeltaTable(uri, storage_options=options).to_pyarrow_table(
            columns=["_id", "doc", "_op"]
        )
        return {
            r["_id"]: r["doc"] for r in rows.to_pylist() if r["_op"] != "delete"
        }  # tombstones are not documents

    def warehouse_rows(self, collection: str) -> dict[str, str]:
        with duckdb.connect(self.warehouse, read_only=True) as db:
            rows = db.execute(f"SELECT _id, doc::VARCHAR FROM analytics.{collection}").fetchall()
        return {key: encode_document(decode_document(doc)) for key, doc in rows}


def test_captured_collection_with_mixed_ids_and_a_poison_page_ends_equal_everywhere(tmp_path):
    house = Lakehouse(tmp_path)
    capture = CaptureRequest(
        lake_uri=house.lake,
        database=DB,
        collection="orders",
        source_location=str(tmp_path / "source.db"),
        max_rows=4,  # snapshot pages of 4: the poison document sits mid-page
    )
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        source.enable_change_streams(DB, "orders")
        for n, _id in enumerate(MIXED_IDS):
            source.insert_one(DB, "orders", {"_id": _id, "n": n})
            if n == 2:  # mid-page poison: a far date (kept exactly) and invalid UTF-8 (quarantined)
                source.insert_one(DB, "orders", {"_id": ObjectId(), "expires": YEAR_20000})
                source.insert_one(DB, "orders", {"_id": ObjectId(), "name": "x" + BAD_UTF8})
        while capture_changes(capture, source=source).phase == "snapshot":
            pass
        source.delete_one(DB, "orders", {"_id": HEX})  # the string; the ObjectId stays
        source.update_one(DB, "orders", {"_id": ObjectId(HEX)}, {"$set": {"n": 100}})
        # 7 and NumberLong(7) are one _id
        source.update_one(DB, "orders", {"_id": Int64(7)}, {"$set": {"n": 70}})
        source.insert_one(DB, "orders", {"_id": "late", "at": datetime(2024, 1, 5, tzinfo=UTC)})
        capture_changes(capture, source=source)
        house.merge_and_load("orders")

        expected = {
            record_key(d["_id"]): encode_document(d)
            for d in source.documents(DB, "orders")
            if "name" not in d  # the invalid UTF-8 one is quarantined, not loaded
        }
        assert len(expected) == len(MIXED_IDS) + 1  # one deleted; the far date and "late" added
        assert house.lake_rows("orders") == expected
        assert house.warehouse_rows("orders") == expected
        assert any(
            '"$numberLong":"568024668800000"' in doc.replace(" ", "") for doc in expected.values()
        )

        audit = SourceAuditRequest(
            lake_uri=house.lake, database=DB, collection="orders", recheck_delay_s=0
        )
        assert audit_source(audit, source=source, sleep=lambda _s: None).passed

        gone = record_key(Int64(9_000_000_001))
        uri, options = lake_table_location(open_store(house.lake), DB, "orders")
        DeltaTable(uri, storage_options=options).delete(f"_id = '{gone}'")  # a loss, by hand
        result = audit_source(audit, source=source, sleep=lambda _s: None)
        assert not result.passed and result.missing == (gone,)


# -- the message path ------------------------------------------------------------------------------
event = partial(change_event, coll="events")  # shop.events, fed only by the relay


def state_in_cluster_time_order(events: list[dict]) -> dict[str, str]:
    """What the collection holds after the events, applied in clusterTime order (MongoDB)."""
    state: dict[str, str] = {}
    for change in sorted(events, key=lambda e: (e["clusterTime"].time, e["clusterTime"].inc)):
        if change["operationType"] == "drop":
            state.clear()
        elif change["operationType"] == "delete":
            state.pop(record_key(change["documentKey"]["_id"]), None)
        else:
            state[record_key(change["documentKey"]["_id"])] = encode_document(
                change["fullDocument"]
            )
    return state


def test_out_of_order_messages_from_concurrent_ingests_end_in_mongodb_order(tmp_path):
    house = Lakehouse(tmp_path)
    store = open_store(house.lake)
    early = [
        event("insert", "old", 50, {"_id": "old", "v": "before the drop"}),
        event("insert", ObjectId(HEX), 110, {"_id": ObjectId(HEX), "v": 1}),
        event("insert", HEX, 111, {"_id": HEX, "v": "string"}),
        event("insert", 1, 112, {"_id": 1, "v": "one"}),
        event("delete", ObjectId(HEX), 130),  # delivered before the older update below
        event("insert", "kept", 200, {"_id": "kept", "v": "after the drop"}),
    ]
    late = [
        event("update", ObjectId(HEX), 120, {"_id": ObjectId(HEX), "v": 2}),  # older than delete
        event("update", 1.0, 140, {"_id": 1.0, "v": "one, as a double"}),  # the same _id as 1
        event("drop", None, 100),  # after "old", before everything else
        event("insert", "stale", 90, {"_id": "stale", "v": "before the drop"}),  # arrives late
    ]
    # Two ingests of one collection at the same time (two Lambda invocations), three rounds.
    for round_events in (early[:4], early[4:], late):
        halves = [round_events[0::2], round_events[1::2]]
        threads = [
            threading.Thread(
                target=ingest_messages,
                args=(parse_event(sqs_event(*h, queue="shop-events"))[1], store),
            )
            for h in halves
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        house.merge_and_load("events")

    expected = state_in_cluster_time_order(early + late)
    assert set(expected) == {record_key(HEX), record_key(1), record_key("kept")}
    assert house.lake_rows("events") == expected
    assert house.warehouse_rows("events") == expected
