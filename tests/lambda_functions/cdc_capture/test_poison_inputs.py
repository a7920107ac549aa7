"""No poison pill freezes a collection: every document a server can return is captured, or
quarantined alone while the good input beside it is captured and later captures go on.

What a server can hold comes from the BSON spec (bsonspec.org): a date is a signed int64 of
milliseconds since the epoch (so years before 1 and after 9999 are legal), a string is a length
and bytes that should be UTF-8 but that servers store unchecked. Such documents are built here
as raw BSON by hand, or, for the embedded store and the mock server, with Python's lossless
surrogate escapes (PEP 383) for the bad bytes.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import bson
import pytest
from bson import Int64, ObjectId
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from mockupdb import MockupDB, OpMsg, go
from pymongo import MongoClient

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.batches import BatchRows
from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.cdc_capture.documentdb_source import DocumentDBChangeSource
from lambda_functions.cdc_capture.mq_handler import handler as mq_handler
from lambda_functions.contracts import CaptureRequest, DmsIngestRequest, InvalidRequestError
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore
from tests.lambda_functions.cdc_capture.mock_documentdb import HELLO, embedded_backed_server

DB, COLL = "shop", "orders"
NEVER_MS = 568_971_820_800_000  # 20000-01-01T00:00:00Z, a "never expires" sentinel (test below)
BEFORE_YEAR_1_MS = -62_200_000_000_000  # about 4 days before 0001-01-01T00:00:00Z
BAD_BYTES = b"\xff\xfe"  # never valid in UTF-8
BAD = BAD_BYTES.decode("utf-8", "surrogateescape")  # how Python holds them losslessly
RAW_READ = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="surrogateescape",
)


def test_the_never_expires_sentinel_is_year_20000():
    def days_in(year: int) -> int:  # the proleptic Gregorian calendar
        return 366 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 365

    assert sum(days_in(year) for year in range(1970, 20000)) * 86_400_000 == NEVER_MS


@pytest.fixture(params=["embedded", "pymongo over mockupdb"])
def sources(request, tmp_path: Path) -> Iterator[tuple[EmbeddedChangeStreamSource, object, object]]:
    """(the store the test writes, the source capture reads, the mock server or None)."""
    with EmbeddedChangeStreamSource(tmp_path / "store.db") as store:
        store.enable_change_streams(DB, COLL)
        if request.param == "embedded":
            yield store, store, None
            return
        with embedded_backed_server(tmp_path / "store.db", events_per_batch=3) as server:
            client = MongoClient(server.uri, tls=False, serverSelectionTimeoutMS=5_000)
            source = DocumentDBChangeSource(client, max_await_time_ms=10)
            try:
                yield store, source, server
            finally:
                source.close()


def capture(tmp_path: Path, source: object, **fields):
    request = CaptureRequest(
        lake_uri=str(tmp_path / "lake"), database=DB, collection=COLL, **fields
    )
    return capture_changes(request, source=source)


def rows_and_dead_letters(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    store = LocalObjectStore(tmp_path / "lake")
    zone = RawZone(store, DB, COLL)
    rows, dead = [], []
    for manifest in zone.manifests():
        rows.extend(zone.read_batch(manifest).to_pylist())
        key = manifest.extra.get("quarantine_key")
        if key:
            dead.extend(json.loads(line) for line in store.get(key).splitlines())
    return rows, dead


def raw_of(dead_letter: dict) -> dict:
    """The document a dead letter keeps as exact BSON, decoded the lossless way."""
    return bson.decode(base64.b64decode(dead_letter["raw"]["$bsonBase64"]), RAW_READ)


def test_snapshot_quarantines_undecodable_documents_alone_and_pages_past_them(tmp_path, sources):
    store, source, server = sources
    # max_rows=4: pages of 4 documents in _id order a, b, c, d<bad> | e, f<bad field>, g, h |
    # i, then a date _id after the strings (BSON type order: string < date).
    documents = [
        {"_id": "a", "v": 1},
        {"_id": "b", "expires": DatetimeMS(NEVER_MS)},
        {"_id": "c", "born": DatetimeMS(BEFORE_YEAR_1_MS)},
        {"_id": "d" + BAD, "v": 4},  # the last document of the first page
        {"_id": "e", "v": 5},
        {"_id": "f", "name": "x" + BAD},  # in the middle of the second page
        {"_id": "g", "v": 7},
        {"_id": "h", "nested": {"deep": [BAD]}},  # the last of the second page
        {"_id": "i", "v": 9},
        {"_id": DatetimeMS(NEVER_MS), "v": 10},
    ]
    store.insert_many(DB, COLL, documents)

    result = capture(tmp_path, source, max_rows=4)

    assert result.phase == "stream" and result.snapshot.complete
    rows, dead = rows_and_dead_letters(tmp_path)
    assert [row["_id"] for row in rows] == [
        '"a"',
        '"b"',
        '"c"',
        '"e"',
        '"g"',
        '"i"',
        '{"$date":{"$numberLong":"568971820800000"}}',
    ]
    docs = {row["_id"]: json.loads(row["doc"]) for row in rows}
    assert docs['"b"']["expires"] == {"$date": {"$numberLong": str(NEVER_MS)}}
    assert docs['"c"']["born"] == {"$date": {"$numberLong": str(BEFORE_YEAR_1_MS)}}
    assert docs['{"$date":{"$numberLong":"568971820800000"}}']["_id"] == {
        "$date": {"$numberLong": str(NEVER_MS)}
    }
    assert result.quarantined == 3
    assert [raw_of(d)["_id"] for d in dead] == ["d" + BAD, "f", "h"]
    assert base64.b64decode(dead[0]["raw"]["$bsonBase64"]).count(b"d" + BAD_BYTES + b"\x00") == 1
    assert "'_id'" in dead[0]["reason"] and "not valid UTF-8" in dead[0]["reason"]
    assert "insert the document again with a valid UTF-8 _id" in dead[0]["reason"]
    assert "'name'" in dead[1]["reason"] and "'nested.deep.0'" in dead[2]["reason"]
    if server is not None:  # paged past the bad _id by sending its very bytes back
        filters = [c["filter"] for c in server.commands if "find" in c and c.get("filter")]
        assert {"_id": {"$gt": "d" + BAD}} in filters

    store.insert_one(DB, COLL, {"_id": "j", "v": 11})
    after = capture(tmp_path, source, max_rows=4)
    assert after.rows == 1 and rows_and_dead_letters(tmp_path)[0][-1]["_id"] == '"j"'


def test_stream_captures_far_dates_exactly_and_quarantines_bad_utf8_while_advancing(
    tmp_path, sources
):
    store, source, _server = sources
    capture(tmp_path, source)  # the (empty) snapshot; the stream follows
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    store.insert_one(DB, COLL, {"_id": oid, "expires": DatetimeMS(NEVER_MS)})
    store.insert_one(DB, COLL, {"_id": DatetimeMS(BEFORE_YEAR_1_MS), "v": 1})
    store.insert_one(DB, COLL, {"_id": "bad field", "name": BAD})
    store.insert_one(DB, COLL, {"_id": "bad" + BAD, "v": 2})
    store.delete_one(DB, COLL, {"_id": "bad" + BAD})
    store.insert_one(DB, COLL, {"_id": "good", "v": 3})

    result = capture(tmp_path, source)

    rows, dead = rows_and_dead_letters(tmp_path)
    assert [(row["op"], row["_id"]) for row in rows] == [
        ("insert", "65a1b2c3d4e5f60718293a4b"),
        ("insert", '{"$date":{"$numberLong":"-62200000000000"}}'),
        ("insert", '"good"'),
    ]
    assert json.loads(rows[0]["doc"])["expires"] == {"$date": {"$numberLong": str(NEVER_MS)}}
    assert result.quarantined == 3  # the bad field's insert, the bad _id's insert and delete
    assert ["'name'" in d["reason"] for d in dead] == [True, False, False]
    assert all("not valid UTF-8" in d["reason"] for d in dead)
    events = [raw_of(d) for d in dead]
    assert [e["operationType"] for e in events] == ["insert", "insert", "delete"]
    assert events[2]["documentKey"]["_id"] == "bad" + BAD

    store.insert_one(DB, COLL, {"_id": "later", "v": 4})
    after = capture(tmp_path, source)
    assert (after.rows, after.quarantined) == (1, 0)  # the stream moved past the poison


# -- MQ / SQS ---------------------------------------------------------------------------------------
def change_event(_id: str, **document) -> dict:
    """A change event as a relay sends it: canonical extended JSON text of pymongo's shape."""
    return {
        "_id": {"_data": f"82{_id}"},
        "operationType": "insert",
        "clusterTime": {"$timestamp": {"t": 1_704_449_700, "i": 1}},
        "ns": {"db": DB, "coll": COLL},
        "documentKey": {"_id": _id},
        "fullDocument": {"_id": _id, **document},
    }


def sqs_event(bodies: dict[str, str]) -> dict:
    """An SQS event (Lambda's ``Records`` shape) with one record per message id."""
    return {
        "Records": [
            {
                "messageId": message_id,
                "receiptHandle": f"handle-{message_id}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:shop-orders",
            }
            for message_id, body in bodies.items()
        ]
    }


BAD_WRAPPERS = {
    "bad-oid": ("$oid", {"ref": {"$oid": "zz" * 12}}),
    "decimal-comma": ("$numberDecimal", {"price": {"$numberDecimal": "1,5"}}),
    "malformed-date": ("$date", {"at": {"$date": "yesterday"}}),
    "date-beyond-int64": ("$date", {"at": {"$date": {"$numberLong": "9" * 20}}}),
    "bad-base64": ("$binary", {"blob": {"$binary": {"base64": "!!not base64!!", "subType": "00"}}}),
    "long-with-letters": ("$numberLong", {"n": {"$numberLong": "12ab"}}),
}


def test_sqs_messages_with_invalid_type_wrappers_fail_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    bodies = {"good-1": json.dumps(change_event("g1", v=1))}
    bodies |= {
        name: json.dumps(change_event(name, **doc)) for name, (_, doc) in BAD_WRAPPERS.items()
    }
    bodies["good-2"] = json.dumps(
        change_event("g2", expires={"$date": {"$numberLong": str(NEVER_MS)}})
    )

    response = mq_handler(sqs_event(bodies), None)

    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        BAD_WRAPPERS
    )
    rows, dead = rows_and_dead_letters(tmp_path)
    assert [row["_id"] for row in rows] == ['"g1"', '"g2"']
    assert json.loads(rows[1]["doc"])["expires"] == {"$date": {"$numberLong": str(NEVER_MS)}}
    reasons = {d["raw"]["message_id"]: d["reason"] for d in dead}
    assert set(reasons) == set(BAD_WRAPPERS)
    for name, (wrapper, _doc) in BAD_WRAPPERS.items():
        assert f"not a valid {wrapper} wrapper" in reasons[name], reasons[name]
    assert "!!not base64!!" in reasons["bad-base64"] and "1,5" in reasons["decimal-comma"]


def test_an_array_body_with_one_bad_event_fails_as_a_whole_message(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    array = [change_event("a1"), change_event("a2", ref={"$oid": "not hex"}), change_event("a3")]
    event = sqs_event({"array": json.dumps(array), "single": json.dumps(change_event("s1"))})

    first = mq_handler(event, None)
    again = mq_handler(event, None)  # SQS redelivers the failed message

    assert first == again == {"batchItemFailures": [{"itemIdentifier": "array"}]}
    rows, dead = rows_and_dead_letters(tmp_path)
    assert sorted(row["_id"] for row in rows) == ['"a1"', '"a3"', '"s1"']  # published once
    (letter,) = dead
    assert "event 1:" in letter["reason"] and "$oid" in letter["reason"]
    assert json.loads(letter["raw"]["payload"]) == array  # the whole message is kept


def test_a_dotted_collection_is_quarantined_naming_the_unsupported_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("LAKEHOUSE_MQ_DEFAULT_COLLECTION", f"{DB}.{COLL}")
    gridfs = change_event("f1") | {"ns": {"db": DB, "coll": "fs.files"}}

    response = mq_handler(sqs_event({"gridfs": json.dumps(gridfs)}), None)

    assert response == {"batchItemFailures": [{"itemIdentifier": "gridfs"}]}
    (path,) = (tmp_path / "lake" / "raw" / "_mq_quarantine").iterdir()
    reason = json.loads(path.read_text())["reason"]
    assert "collection name 'fs.files'" in reason and "legal MongoDB name" in reason
    assert "dots" in reason and "Exclude it from the relay" in reason
    assert "no ns" not in reason
    assert not (tmp_path / "lake" / "raw" / DB / COLL).exists()  # not routed to the default


# -- DMS CsvDelimiter -------------------------------------------------------------------------------
# A CDC file as DMS writes it with the S3 endpoint setting CsvDelimiter=';' (document mode,
# TimestampColumnName, Op first; _doc quoted with doubled quotes as in every DMS CSV).
SEMICOLON_CDC = (
    'I;2024-01-05 10:14:40.000000;65a1b2c3d4e5f60718293a4d;"{""_id"": {""$oid"": '
    '""65a1b2c3d4e5f60718293a4d""}, ""status"": ""paid"", ""n"": 1}"\n'
    'U;2024-01-05 10:14:41.000000;65a1b2c3d4e5f60718293a4d;"{""_id"": {""$oid"": '
    '""65a1b2c3d4e5f60718293a4d""}, ""status"": ""sent"", ""n"": 2}"\n'
    "D;2024-01-05 10:14:42.000000;65a1b2c3d4e5f60718293a4e;\n"
)


def semicolon_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dms" / DB / COLL
    folder.mkdir(parents=True)
    (folder / "20240105-101500123.csv").write_text(SEMICOLON_CDC)
    return folder


def test_dms_files_split_at_the_configured_csv_delimiter(tmp_path):
    request = DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"),
        database=DB,
        collection=COLL,
        dms_uri=str(semicolon_folder(tmp_path)),
        csv_delimiter=";",
    )

    result = ingest_dms_files(request)

    assert result.quarantined == 0
    rows, _dead = rows_and_dead_letters(tmp_path)
    assert [(row["op"], row["_id"]) for row in rows] == [
        ("insert", "65a1b2c3d4e5f60718293a4d"),
        ("update", "65a1b2c3d4e5f60718293a4d"),
        ("delete", "65a1b2c3d4e5f60718293a4e"),
    ]
    assert json.loads(rows[1]["doc"])["status"] == "sent"


def test_a_file_with_another_delimiter_names_the_setting_in_its_dead_letters(tmp_path):
    request = DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"),
        database=DB,
        collection=COLL,
        dms_uri=str(semicolon_folder(tmp_path)),
    )

    result = ingest_dms_files(request)

    rows, dead = rows_and_dead_letters(tmp_path)
    assert rows == [] and result.quarantined == 3 and len(dead) == 3
    for letter in dead:
        assert "does not parse with CsvDelimiter ','" in letter["reason"]
        assert "(found ';'" in letter["reason"]
        assert "set LAKEHOUSE_DMS_CSV_DELIMITER" in letter["reason"]


def test_the_csv_delimiter_is_one_character():
    fields = {"lake_uri": "/tmp/lake", "database": DB, "collection": COLL, "dms_uri": "/tmp/dms"}
    for bad in ("", ";;", '"', "\n"):
        with pytest.raises(InvalidRequestError, match="CsvDelimiter"):
            DmsIngestRequest(**fields, csv_delimiter=bad).validate()
    DmsIngestRequest(**fields, csv_delimiter="\t").validate()


# -- the wire, byte for byte ------------------------------------------------------------------------
def bson_string(name: bytes, data: bytes) -> bytes:
    """A BSON string element (spec: 0x02 e_name int32-length bytes 0x00), bytes as given."""
    return b"\x02" + name + b"\x00" + struct.pack("<i", len(data) + 1) + data + b"\x00"


def bson_document(*elements: bytes) -> RawBSONDocument:
    """A BSON document of the elements (its repr, which mockupdb logs, reads them leniently)."""
    body = b"".join(elements)
    lenient = CodecOptions(document_class=RawBSONDocument, unicode_decode_error_handler="replace")
    return RawBSONDocument(struct.pack("<i", len(body) + 5) + body + b"\x00", lenient)


def test_a_page_ending_in_an_invalid_utf8_id_pages_on_with_the_same_bytes():
    server = MockupDB(auto_ismaster=HELLO, verbose=False, request_timeout=10)
    server.run()
    client = MongoClient(f"{server.uri}/?directConnection=true", serverSelectionTimeoutMS=5_000)
    source = DocumentDBChangeSource(client, max_await_time_ms=10)
    try:
        first = go(source.documents, DB, COLL, limit=3)
        server.receives(OpMsg("find", COLL), timeout=10).ok(
            cursor={
                "id": Int64(0),
                "ns": f"{DB}.{COLL}",
                "firstBatch": [
                    bson_document(bson_string(b"_id", b"a")),
                    bson_document(bson_string(b"_id", b"b")),
                    bson_document(bson_string(b"_id", b"c" + BAD_BYTES)),
                ],
            }
        )
        rows = BatchRows()
        taken, last_id = rows.add_snapshot_page(first(), 0, 0, 1 << 30)
        assert (taken, rows.ids, len(rows.dead_letters)) == (3, ['"a"', '"b"'], 1)

        second = go(source.documents, DB, COLL, after_id=last_id, limit=3)
        find = server.receives(OpMsg("find", COLL), timeout=10)
        sent = find.doc["filter"]["_id"]["$gt"]  # mockupdb reads it with surrogate escapes
        assert sent.encode("utf-8", "surrogateescape") == b"c" + BAD_BYTES
        find.ok(cursor={"id": Int64(0), "ns": f"{DB}.{COLL}", "firstBatch": []})
        later = server.receives(OpMsg("find", COLL), timeout=10)  # the _id types after strings
        assert "date" in later.doc["filter"]["_id"]["$type"]
        later.ok(cursor={"id": Int64(0), "ns": f"{DB}.{COLL}", "firstBatch": []})
        assert second() == []
    finally:
        client.close()
        server.stop()
