"""The embedded source behaves like DocumentDB behind pymongo: event shape, types, resume, limits."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp
from pymongo.errors import DuplicateKeyError, OperationFailure

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource, parse_resume_token
from lambda_functions.lake.extended_json import encode_document
from tests.lambda_functions.cdc_capture import concurrent_workload

DB, COLL = "shop", "orders"
BEGINNING = {"_data": "82" + "0" * 32}  # a token before every event: the whole retained log


def typed_document() -> dict:
    return {
        "_id": ObjectId("65a1b2c3d4e5f60718293a4b"),
        "price": Decimal128("12.3400"),
        "created": datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "blob": b"\x00\x01raw",
        "uuid": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
        "custom_binary": Binary(b"\xff" * 3, 0x80),
        "big": Int64(2**40),
        "small": 7,
        "ratio": 0.25,
        "flag": True,
        "nothing": None,
        "nested": {"levels": [[1, 2, [3, {"deep": Int64(4)}]], {"k": [Decimal128("1E+3")]}]},
    }


def enabled(source: EmbeddedChangeStreamSource) -> EmbeddedChangeStreamSource:
    source.enable_change_streams(DB, COLL)
    return source


def test_bson_types_round_trip_through_documents_and_events(source):
    enabled(source)
    original = typed_document()
    source.insert_one(DB, COLL, original)

    stored = source.find_one(DB, COLL, original["_id"])
    (event,) = list(source.watch(DB, COLL, resume_after=BEGINNING))

    for document in (stored, event["fullDocument"]):
        assert encode_document(document) == encode_document(original)
        assert type(document["price"]) is Decimal128 and str(document["price"]) == "12.3400"
        assert type(document["big"]) is Int64 and type(document["small"]) is int
        assert document["created"] == original["created"] and document["created"].tzinfo
        assert document["uuid"] == original["uuid"] and document["uuid"].subtype == 4
        assert document["custom_binary"].subtype == 0x80
        assert document["nested"] == original["nested"]


def test_datetimes_keep_millisecond_precision_like_bson(source):
    enabled(source)
    _id = source.insert_one(DB, COLL, {"at": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)})
    assert source.find_one(DB, COLL, _id)["at"] == datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


def test_events_have_pymongo_change_stream_shape(source):
    enabled(source)
    _id = source.insert_one(DB, COLL, {"status": "new", "tags": ["a"]})
    source.update_one(DB, COLL, {"_id": _id}, {"$set": {"status": "paid"}, "$unset": {"tags": ""}})
    source.replace_one(DB, COLL, {"_id": _id}, {"status": "replaced"})
    source.delete_one(DB, COLL, {"_id": _id})

    events = list(source.watch(DB, COLL, resume_after=BEGINNING, full_document="updateLookup"))

    assert [e["operationType"] for e in events] == ["insert", "update", "replace", "delete"]
    insert, update, replace, delete = events
    common = {"_id", "operationType", "clusterTime", "wallTime", "ns", "documentKey"}
    assert set(insert) == common | {"fullDocument"}
    assert set(update) == common | {"fullDocument", "updateDescription"}
    assert set(replace) == common | {"fullDocument"}
    assert set(delete) == common
    for event in events:
        assert set(event["_id"]) == {"_data"} and int(event["_id"]["_data"], 16) >= 0
        assert isinstance(event["clusterTime"], Timestamp)
        assert event["wallTime"].tzinfo is not None and event["wallTime"].microsecond % 1000 == 0
        assert event["ns"] == {"db": DB, "coll": COLL}
        assert event["documentKey"] == {"_id": _id}
    assert update["updateDescription"] == {
        "updatedFields": {"status": "paid"},
        "removedFields": ["tags"],
        "truncatedArrays": [],
    }
    # updateLookup returns the document as it is when read: by then it has been deleted
    assert update["fullDocument"] is None
    assert replace["fullDocument"] == {"_id": _id, "status": "replaced"}


def test_update_lookup_returns_the_current_document_not_the_one_at_update_time(source):
    enabled(source)
    _id = source.insert_one(DB, COLL, {"n": 1, "items": []})
    source.update_one(DB, COLL, {"_id": _id}, {"$inc": {"n": 1}, "$push": {"items": {"sku": "a"}}})
    source.update_one(DB, COLL, {"_id": _id}, {"$set": {"customer.address.city": "Lyon"}})

    with_lookup = list(source.watch(DB, COLL, resume_after=BEGINNING, full_document="updateLookup"))
    without = list(source.watch(DB, COLL, resume_after=BEGINNING))

    latest = {
        "_id": _id,
        "n": 2,
        "items": [{"sku": "a"}],
        "customer": {"address": {"city": "Lyon"}},
    }
    assert with_lookup[1]["fullDocument"] == latest == with_lookup[2]["fullDocument"]
    assert with_lookup[1]["updateDescription"]["updatedFields"] == {"n": 2, "items.0": {"sku": "a"}}
    assert "fullDocument" not in without[1]


def test_watch_resumes_strictly_after_the_token(source):
    enabled(source)
    ids = [source.insert_one(DB, COLL, {"i": i}) for i in range(10)]
    events = list(source.watch(DB, COLL, resume_after=BEGINNING, batch_size=3))

    resumed = list(source.watch(DB, COLL, resume_after=events[3]["_id"], batch_size=3))

    assert [e["documentKey"]["_id"] for e in resumed] == ids[4:]
    assert [e["_id"] for e in resumed] == [e["_id"] for e in events[4:]]


def test_current_position_sees_only_later_changes_and_cluster_time_increases(source, clock):
    enabled(source)
    source.insert_one(DB, COLL, {"before": True})
    position = source.current_position(DB, COLL)
    later = [source.insert_one(DB, COLL, {"after": i}) for i in range(3)]
    clock.advance(2)
    later.append(source.insert_one(DB, COLL, {"after": 3}))

    events = list(source.watch(DB, COLL, resume_after=position))

    assert [e["documentKey"]["_id"] for e in events] == later
    times = [(e["clusterTime"].time, e["clusterTime"].inc) for e in events]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert events[-1]["clusterTime"].time == int(clock.now)


def test_events_of_a_transaction_share_one_cluster_time(source):
    enabled(source)
    with source.transaction():
        a = source.insert_one(DB, COLL, {"n": 1})
        source.update_one(DB, COLL, {"_id": a}, {"$inc": {"n": 1}})
    events = list(source.watch(DB, COLL, resume_after=BEGINNING))
    assert events[0]["clusterTime"] == events[1]["clusterTime"]
    assert events[0]["_id"] != events[1]["_id"]
    assert events[0]["txnNumber"] == events[1]["txnNumber"] and "lsid" in events[0]


def test_resume_from_a_purged_position_raises_capped_position_lost(tmp_path: Path, clock):
    with EmbeddedChangeStreamSource(
        tmp_path / "s.db", clock=clock, retention_seconds=3600
    ) as source:
        enabled(source)
        source.insert_one(DB, COLL, {"n": 0})
        token = source.current_position(DB, COLL)
        source.insert_one(DB, COLL, {"n": 1})  # the change the saved token still needs
        clock.advance(2 * 3600)
        source.insert_one(DB, COLL, {"n": 2})  # this write purges events older than an hour

        with pytest.raises(OperationFailure) as caught:
            source.watch(DB, COLL, resume_after=token)

    assert caught.value.code == 136
    assert caught.value.details["codeName"] == "CappedPositionLost"
    assert "7200 s" in str(caught.value)


def test_resume_stays_possible_when_only_events_before_the_token_were_purged(tmp_path, clock):
    with EmbeddedChangeStreamSource(tmp_path / "s.db", clock=clock, max_events=5) as source:
        enabled(source)
        for i in range(20):
            source.insert_one(DB, COLL, {"n": i})
        token = source.current_position(DB, COLL)
        newer = source.insert_one(DB, COLL, {"n": 20})
        assert [e["documentKey"]["_id"] for e in source.watch(DB, COLL, resume_after=token)] == [
            newer
        ]
        with pytest.raises(OperationFailure) as caught:
            source.watch(DB, COLL, resume_after=BEGINNING)
    assert caught.value.code == 136


def test_watching_a_collection_without_change_streams_fails_like_documentdb(source):
    source.insert_one(DB, COLL, {"n": 1})  # DocumentDB records nothing until streams are enabled
    with pytest.raises(OperationFailure, match="change streams are not enabled") as caught:
        source.watch(DB, COLL)
    assert "modifyChangeStreams" in str(caught.value)
    with pytest.raises(OperationFailure):
        source.current_position(DB, COLL)

    source.enable_change_streams(DB, "")  # the whole database
    assert list(source.watch(DB, COLL, resume_after=BEGINNING)) == []


def test_drop_collection_emits_drop_then_invalidate_and_ends_the_stream(source):
    enabled(source)
    source.insert_one(DB, COLL, {"n": 1})
    source.drop_collection(DB, COLL)
    source.insert_one(DB, COLL, {"n": 2})  # recreated: not part of the invalidated stream

    stream = source.watch(DB, COLL, resume_after=BEGINNING)
    events = list(stream)

    assert [e["operationType"] for e in events] == ["insert", "drop", "invalidate"]
    assert set(events[1]) == {"_id", "operationType", "clusterTime", "wallTime", "ns"}
    assert set(events[2]) == {"_id", "operationType", "clusterTime", "wallTime"}
    assert not stream.alive and stream.try_next() is None
    assert source.count_documents(DB, COLL) == 1


def test_documents_are_listed_in_object_id_byte_order_and_page_after_an_id(source):
    enabled(source)
    ids = [ObjectId() for _ in range(50)]
    source.insert_many(DB, COLL, [{"_id": i} for i in reversed(ids)])

    listed = [d["_id"] for d in source.documents(DB, COLL)]
    page = [d["_id"] for d in source.documents(DB, COLL, after_id=listed[9], limit=5)]

    assert listed == sorted(ids, key=lambda oid: oid.binary)
    assert page == listed[10:15]


def test_duplicate_id_is_rejected_and_no_event_is_written(source):
    enabled(source)
    source.insert_one(DB, COLL, {"_id": "a"})
    with pytest.raises(DuplicateKeyError):
        source.insert_one(DB, COLL, {"_id": "a"})
    assert len(list(source.watch(DB, COLL, resume_after=BEGINNING))) == 1


def test_noop_update_writes_no_event(source):
    enabled(source)
    _id = source.insert_one(DB, COLL, {"status": "paid"})
    assert source.update_one(DB, COLL, {"_id": _id}, {"$set": {"status": "paid"}}) is False
    assert len(list(source.watch(DB, COLL, resume_after=BEGINNING))) == 1


def test_demo_workload_is_deterministic_given_seed_runs_and_clock(tmp_path, clock):
    def build(name: str, seed: int) -> dict:
        with EmbeddedChangeStreamSource(tmp_path / name, clock=clock) as source:
            workload = DemoWorkload(source, seed=seed, initial_documents=100)
            workload.run(40)
            workload.run(40)
            assert workload.runs == 2
            return {str(d["_id"]): encode_document(d) for d in source.documents(DB, COLL)}

    assert build("a.db", seed=1) == build("b.db", seed=1)
    assert build("c.db", seed=2) != build("d.db", seed=1)


def test_demo_workload_seeds_realistic_orders_and_applies_the_documented_mix(source):
    workload = DemoWorkload(source, initial_documents=500)
    run = workload.run(2000)

    assert run.seeded == 500
    orders = source.documents(DB, COLL)
    months = {o["_id"].generation_time.strftime("%Y-%m") for o in orders}
    assert len(months) >= 5  # keys span several months
    order = orders[0]
    assert set(order["customer"]["address"]) == {"city", "country"}
    assert all(type(i["qty"]) is int and type(i["price"]) is Decimal128 for i in order["items"])
    assert type(order["total"]) is Decimal128
    assert any(type(o.get("loyalty_points")) is Int64 for o in orders)
    assert any("signature" in o for o in orders)
    share = {op: count / run.changes for op, count in run.ops.items()}
    assert 0.50 < share["update"] < 0.65
    assert 0.16 < share["insert"] < 0.24
    assert 0.07 < share["delete"] < 0.13
    assert 0.03 < share["replace"] < 0.07
    assert 0.03 < share["delete_after_update"] < 0.07


def test_list_collection_names_lists_written_and_enabled_collections_sorted(source):
    assert source.list_collection_names(DB) == []
    source.insert_one(DB, "orders", {"n": 1})  # change streams off: exists by its documents
    source.enable_change_streams(DB, "carts")  # enabled, nothing written yet
    enabled(source)
    source.insert_one(DB, "customers", {"n": 1})
    source.insert_one("crm", "accounts", {"n": 1})  # another database
    source.enable_change_streams("crm", "")  # database-wide: names no collection

    assert source.list_collection_names(DB) == ["carts", "customers", "orders"]
    assert source.list_collection_names("crm") == ["accounts"]
    assert source.list_collection_names("nowhere") == []


def test_list_collection_names_keeps_emptied_collections_and_drops_dropped_ones(source):
    source.enable_change_streams(DB, "")  # every collection of the database logs its events
    kept = source.insert_one(DB, "emptied", {"n": 1})
    source.delete_one(DB, "emptied", {"_id": kept})  # empty, like an emptied server collection
    source.insert_one(DB, "dropped", {"n": 1})
    source.drop_collection(DB, "dropped")
    source.insert_one(DB, "recreated", {"n": 1})
    source.drop_collection(DB, "recreated")
    source.insert_one(DB, "recreated", {"n": 2})
    enabled(source)
    source.insert_one(DB, COLL, {"n": 1})
    source.drop_collection(DB, COLL)  # enabled by name, but dropped since

    assert source.list_collection_names(DB) == ["emptied", "recreated"]
    with source.bulk():  # inside a write transaction it reads that transaction's state
        source.insert_one(DB, "dropped", {"n": 3})
        assert source.list_collection_names(DB) == ["dropped", "emptied", "recreated"]


def test_opening_a_new_file_waits_while_another_process_writes_it(tmp_path):
    """A process opening the file while another holds a write lock on it, before the file is in
    WAL mode, waits: SQLite refuses the switch to WAL at once ("database is locked") rather than
    calling the busy handler, which made parallel workers opening a new file fail at random."""
    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        with EmbeddedChangeStreamSource(path) as source:
            assert source._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            source.insert_one(DB, COLL, {"n": 1})
            assert source.list_collection_names(DB) == [COLL]
    finally:
        release.join()
        other.close()


@pytest.mark.parametrize("existing_file", [False, True], ids=["new_file", "existing_file"])
def test_workloads_on_two_collections_in_two_processes_share_one_file(tmp_path, existing_file):
    """Capture Lambdas for several collections run in parallel worker processes on one file: each
    process's writes wait for the other's instead of failing with "database is locked"."""
    path = tmp_path / "shared.db"
    if existing_file:
        EmbeddedChangeStreamSource(path).close()
    collections, runs, changes = ("orders", "invoices"), 3, 200
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(len(collections)), spawn.Queue()
    workers = [
        spawn.Process(
            target=concurrent_workload.run_workload,
            args=(str(path), name, runs, changes, start, results),
        )
        for name in collections
    ]
    for worker in workers:
        worker.start()
    outcomes = {
        name: (ops, error) for name, ops, error in (results.get(timeout=120) for _ in workers)
    }
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert {name: error for name, (_, error) in outcomes.items()} == dict.fromkeys(collections)

    with EmbeddedChangeStreamSource(path, clock=concurrent_workload.fixed_clock) as shared:
        assert shared.list_collection_names("shop") == sorted(collections)
        head = shared.current_position("shop", collections[0])
        log = []
        for name in collections:
            events = list(shared.watch("shop", name, resume_after=BEGINNING))
            assert {e["ns"]["coll"] for e in events} == {name}
            ops = outcomes[name][0]
            assert len(ops) == runs
            assert len(events) == 500 + sum(sum(run.values()) for run in ops)  # seed + changes
            log += [(parse_resume_token(e["_id"])[2], e["clusterTime"]) for e in events]
            # Each collection holds exactly what the same runs give when nothing runs beside them.
            with EmbeddedChangeStreamSource(
                tmp_path / f"alone-{name}.db", clock=concurrent_workload.fixed_clock
            ) as alone:
                workload = DemoWorkload(alone, "shop", name)
                assert [dict(workload.run(changes).ops) for _ in range(runs)] == ops
                assert source_documents(shared, name) == source_documents(alone, name)
                assert alone.read_counter(f"demo:shop.{name}:runs") == runs
            assert shared.read_counter(f"demo:shop.{name}:runs") == runs
    log.sort()
    times = [time for _, time in log]
    assert times == sorted(times) and len(set(times)) == len(times)  # one cluster clock
    assert parse_resume_token(head)[2] == log[-1][0]


def source_documents(source: EmbeddedChangeStreamSource, collection: str) -> list[str]:
    return [encode_document(d) for d in source.documents("shop", collection)]


def test_the_unique_id_index_follows_mongodb_equality(tmp_path):
    """MongoDB's unique _id index: numbers are one _id when their exact values are equal
    (1 = NumberLong(1) = 1.0), different otherwise (NumberLong(2**53 + 1) is not the double
    2**53; NumberDecimal("0.1") is not the double 0.1); embedded documents compare in order."""
    with EmbeddedChangeStreamSource(tmp_path / "s.db") as source:
        distinct = [
            Int64(2**53 + 1),
            float(2**53),
            Decimal128("0.1"),
            0.1,
            1,
            {"a": 1, "b": 2},
            {"b": 2, "a": 1},
            "1",
        ]
        for _id in distinct:
            source.insert_one("shop", "orders", {"_id": _id})
        for same in (Int64(1), 1.0, Decimal128("1.00"), {"a": 1.0, "b": Int64(2)}):
            with pytest.raises(DuplicateKeyError):
                source.insert_one("shop", "orders", {"_id": same})
        assert len(source.documents("shop", "orders")) == len(distinct)
