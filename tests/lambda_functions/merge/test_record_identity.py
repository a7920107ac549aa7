"""Record identity on every input path: the lake keeps apart what MongoDB keeps apart, and joins
what MongoDB's ``_id`` equality joins.

Expected values come from MongoDB's semantics (manual, "Comparison/Sort Order"; a unique index on
``_id``): ``ObjectId(h)`` and the string ``h`` are two documents; ``1``, ``NumberLong(1)`` and
``1.0`` are one; embedded ``_id`` documents compare field by field in order. DMS facts: document
mode writes ``_id`` and ``_doc``; CDC rows start with ``Op`` I/U/D; key-only delete rows carry the
bare ``_id`` value (AWS DMS user guide, "Using Amazon S3 as a target", "Using Amazon DocumentDB as a
source"). SQS event shape: AWS Lambda developer guide, "Using Lambda with Amazon SQS".
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bson import Binary, Decimal128, Int64, ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from deltalake import DeltaTable, write_deltalake

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture.capture import capture_changes
from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.cdc_capture.mq_ingest import ingest_messages, parse_event
from lambda_functions.contracts import CaptureRequest, DmsIngestRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.lake.extended_json import decode_document, encode_document
from lambda_functions.lake.record_key import RECORD_KEY_APP, REKEYED_AT_APP, record_key
from lambda_functions.lake.table_layout import PARTITION_BY, TABLE_CONFIGURATION, key_buckets
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.warehouse_load.lake_changes import read_lake_changes
from tests.lambda_functions.change_events import change_event, sqs_event
from tests.lambda_functions.merge.tables import APP, stored_docs

DB, COLL = "shop", "orders"
HEX = "65a1b2c3d4e5f60718293a4b"
UUID = Binary.from_uuid(uuid.UUID("123e4567-e89b-12d3-a456-426614174000"))  # subtype 4
MIXED_IDS = [
    ObjectId(HEX),
    HEX,  # the same 24 hex digits, as a string: another document
    7,
    Int64(9_000_000_001),
    2.5,
    UUID,
    {"region": "eu", "n": 1},
    {"n": 1, "region": "eu"},  # same fields, other order: another document
]


def merge(tmp_path: Path):
    request = MergeRequest(lake_uri=str(tmp_path / "lake"), database=DB, collection=COLL)
    return merge_batches(request)


def lake_docs(tmp_path: Path) -> dict[str, dict]:
    uri, options = lake_table_location(open_store(str(tmp_path / "lake")), DB, COLL)
    return {key: decode_document(doc) for key, doc in stored_docs(uri, options).items()}


def ext(value) -> str:
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


# -- snapshot and change stream --------------------------------------------------------------------
def test_snapshot_and_stream_keep_every_mongodb_distinct_id_apart(tmp_path):
    request = CaptureRequest(
        lake_uri=str(tmp_path / "lake"),
        database=DB,
        collection=COLL,
        source_location=str(tmp_path / "source.db"),
    )
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        source.enable_change_streams(DB, COLL)
        for n, _id in enumerate(MIXED_IDS):
            source.insert_one(DB, COLL, {"_id": _id, "n": n})
        capture_changes(request, source=source)  # snapshot
        merge(tmp_path)
        assert set(lake_docs(tmp_path)) == {record_key(i) for i in MIXED_IDS}

        source.delete_one(DB, COLL, {"_id": HEX})  # the string, not the ObjectId
        source.update_one(DB, COLL, {"_id": ObjectId(HEX)}, {"$set": {"n": 100}})
        capture_changes(request, source=source)  # stream
        merge(tmp_path)

    docs = lake_docs(tmp_path)
    assert record_key(HEX) not in docs
    assert docs[HEX]["_id"] == ObjectId(HEX) and docs[HEX]["n"] == 100
    assert len(docs) == len(MIXED_IDS) - 1


# -- MQ / SQS ------------------------------------------------------------------------------------
def test_messages_with_numerically_equal_ids_of_other_types_change_one_document(tmp_path):
    """A relay may render the same _id as int32, int64 or double: MongoDB's equality joins them."""
    store = open_store(str(tmp_path / "lake"))
    events = [
        change_event("insert", 1, 100, {"_id": 1, "v": "a"}),
        change_event("insert", ObjectId(HEX), 101, {"_id": ObjectId(HEX), "v": "oid"}),
        change_event("insert", HEX, 102, {"_id": HEX, "v": "str"}),
        change_event("update", Int64(1), 103, {"_id": Int64(1), "v": "b"}),
        change_event("delete", HEX, 104),
    ]
    _, messages = parse_event(sqs_event(*events))
    ingest_messages(messages, store)
    merge(tmp_path)

    docs = lake_docs(tmp_path)
    assert set(docs) == {record_key(1), HEX}
    assert docs[record_key(1.0)]["v"] == "b"
    assert docs[HEX]["v"] == "oid"

    _, messages = parse_event(sqs_event(change_event("delete", 1.0, 105)))
    ingest_messages(messages, store)
    merge(tmp_path)
    assert set(lake_docs(tmp_path)) == {HEX}


# -- DMS -------------------------------------------------------------------------------------------
def dms_line(*fields: str) -> str:
    return ",".join('"' + f.replace('"', '""') + '"' if "," in f or '"' in f else f for f in fields)


DMS_TYPED_IDS = {
    "int": (42, "42"),
    "long": (Int64(9_000_000_001), "9000000001"),
    "double": (2.5, "2.5"),
    "decimal": (Decimal128("0.1"), "0.1"),
    "date": (datetime(2024, 1, 5, 10, 0, tzinfo=UTC), "2024-01-05T10:00:00Z"),
    "binary": (Binary(b"\x00\xff\x10", 0), base64.b64encode(b"\x00\xff\x10").decode()),
    "uuid": (UUID, str(UUID.as_uuid())),
    "objectid": (ObjectId(HEX), HEX),
    "string": ("order-7", "order-7"),
}


@pytest.mark.parametrize("kind", list(DMS_TYPED_IDS))
def test_a_dms_key_only_delete_hits_the_row_loaded_from_its_document(tmp_path, kind):
    _id, bare = DMS_TYPED_IDS[kind]
    keep = ObjectId("65a1b2c3d4e5f60718293a4c")
    folder = tmp_path / "dms" / DB / COLL
    folder.mkdir(parents=True)
    (folder / "LOAD00000001.csv").write_text(
        dms_line(bare, ext({"_id": _id, "n": 1}))
        + "\n"
        + dms_line(str(keep), ext({"_id": keep, "n": 2}))
        + "\n"
    )
    (folder / "20240105-101500123.csv").write_text(
        "Op,dms_commit_ts,_id,_doc\n" + f"D,2024-01-05 10:15:00.000000,{dms_line(bare)},\n"
    )
    request = DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"), database=DB, collection=COLL, dms_uri=str(folder)
    )
    ingest_dms_files(request)
    result = merge(tmp_path)

    assert set(lake_docs(tmp_path)) == {record_key(keep)}
    assert result.ambiguous_deletes == []


def test_a_dms_delete_that_could_mean_two_live_documents_deletes_neither(tmp_path):
    """The collection holds both 42 and "42"; a bare "42" delete cannot say which."""
    folder = tmp_path / "dms" / DB / COLL
    folder.mkdir(parents=True)
    (folder / "LOAD00000001.csv").write_text(
        dms_line("42", ext({"_id": 42})) + "\n" + dms_line("42", ext({"_id": "42"})) + "\n"
    )
    (folder / "20240105-101500123.csv").write_text("D,2024-01-05 10:15:00.000000,42,\n")
    request = DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"), database=DB, collection=COLL, dms_uri=str(folder)
    )
    ingest_dms_files(request)
    result = merge(tmp_path)

    assert set(lake_docs(tmp_path)) == {record_key(42), record_key("42")}
    assert result.ambiguous_deletes == [f"{record_key(42)}, {record_key('42')}"]


# -- tables and batches written with the old key form -----------------------------------------------
def v1_key(value) -> str:
    """The key text format 1 wrote: ObjectId hex, a string itself, else canonical JSON."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value
    return ext(value)


def test_a_table_written_with_the_old_key_form_is_rekeyed_once(tmp_path):
    import pyarrow as pa

    from lambda_functions.lake.table_layout import TABLE_SCHEMA

    store = open_store(str(tmp_path / "lake"))
    uri, options = lake_table_location(store, DB, COLL)
    ids = [ObjectId(HEX), "order-7", 1, 1.0, UUID]  # format 1 kept 1 and 1.0 apart
    keys = [v1_key(i) for i in ids]
    now = datetime.now(UTC)
    rows = pa.table(
        {
            "_id": keys,
            "_bucket": key_buckets(pa.array(keys)),
            "doc": [encode_document({"_id": i, "pos": p}) for p, i in enumerate(ids)],
            "_op": ["insert"] * len(ids),
            "_pos": list(range(len(ids))),
            "_batch": [1] * len(ids),
            "_seq": list(range(len(ids))),
            "_event_time": [now] * len(ids),
        },
        schema=TABLE_SCHEMA,
    )
    from deltalake import CommitProperties, Transaction

    write_deltalake(
        uri,
        rows,
        partition_by=PARTITION_BY,
        configuration=TABLE_CONFIGURATION,
        storage_options=options,
        commit_properties=CommitProperties(app_transactions=[Transaction(APP, 1)]),
    )
    zone = RawZone(store, DB, COLL)
    # A batch captured before the upgrade: its manifest has no key_format (format 1).
    from tests.lambda_functions.raw_batches import publish

    assert publish(zone, []) == 1  # the batch the old table already holds
    number = publish(zone, [("order-7", "update", 10, encode_document({"_id": "order-7", "v": 2}))])
    manifest = zone.manifest_key(number)
    raw = json.loads(store.get(manifest))
    del raw["key_format"]
    store.put(manifest, json.dumps(raw).encode())
    table = DeltaTable(uri, storage_options=options)
    before = table.version()

    result = merge(tmp_path)

    docs = lake_docs(tmp_path)
    assert set(docs) == {HEX, record_key("order-7"), record_key(1), record_key(UUID)}
    assert docs[record_key(1)]["pos"] == 3  # 1 and 1.0 are one _id: the latest change kept
    assert docs[record_key("order-7")] == {"_id": "order-7", "v": 2}
    table = DeltaTable(uri, storage_options=options)
    assert table.transaction_version(RECORD_KEY_APP) == 2
    assert table.transaction_version(REKEYED_AT_APP) == before + 1
    assert table.transaction_version(APP) == number == result.last_applied_batch
    # The warehouse reads the table in full once: the re-key commit's feed cannot be reduced.
    changes = read_lake_changes(table, since_version=before, since_table_id=table.metadata().id)
    assert changes.full and "re-encoded" in changes.reason
    later = read_lake_changes(
        table, since_version=table.version(), since_table_id=table.metadata().id
    )
    assert not later.full

    merge(tmp_path)  # nothing pending and nothing to re-key: no new commit
    assert DeltaTable(uri, storage_options=options).version() == table.version()
