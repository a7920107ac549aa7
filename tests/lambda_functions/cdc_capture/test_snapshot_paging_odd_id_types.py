"""The pymongo snapshot pages through every ``_id`` type MongoDB accepts, to the last document.

``find({"_id": {"$gt": x}})`` compares within ``x``'s type only (MongoDB manual, "Comparison/Sort
Order": "comparison operators only perform comparisons on fields where the BSON type matches"),
so paging must move on to the types that sort after ``x``. The server's type order
(``canonicalizeBSONType`` in ``bsontypes.cpp``) puts, after regular expressions, DBPointer (55),
JavaScript (60) and JavaScript with scope (65), then MaxKey: types the manual's short list leaves
out but that are legal ``_id`` values (only arrays, regexes and undefined are refused).

The fake collection below answers ``find`` the way the server does, from that order; it is
written from the server's rules, not from the code under test.
"""

from __future__ import annotations

from typing import Any

import bson
from bson import Code, DBRef, MaxKey, ObjectId
from bson.raw_bson import RawBSONDocument

from lambda_functions.cdc_capture.batches import paging_id
from lambda_functions.cdc_capture.documentdb_source import DocumentDBChangeSource
from lambda_functions.lake.extended_json import (
    RAW_DOCUMENT_OPTIONS,
    decode_document,
    encode_value,
)

# BSON element type byte -> MongoDB's canonical type order
CANONICAL = {
    0xFF: -1, 0x0A: 5, 0x01: 10, 0x10: 10, 0x12: 10, 0x13: 10, 0x02: 15, 0x0E: 15, 0x03: 20,
    0x04: 25, 0x05: 30, 0x07: 35, 0x08: 40, 0x09: 45, 0x11: 47, 0x0B: 50, 0x0C: 55, 0x0D: 60,
    0x0F: 65, 0x7F: 127,
}  # fmt: skip
ALIASES = {  # $type aliases (manual, "$type")
    "minKey": 0xFF, "null": 0x0A, "double": 0x01, "int": 0x10, "long": 0x12, "decimal": 0x13,
    "string": 0x02, "symbol": 0x0E, "object": 0x03, "array": 0x04, "binData": 0x05,
    "objectId": 0x07, "bool": 0x08, "date": 0x09, "timestamp": 0x11, "regex": 0x0B,
    "dbPointer": 0x0C, "javascript": 0x0D, "javascriptWithScope": 0x0F, "maxKey": 0x7F,
}  # fmt: skip


def id_type(raw: bytes) -> int:
    """The BSON type byte of a document's first element (``_id`` leads every document here)."""
    assert raw[5:9] == b"_id\x00"
    return raw[4]


def sort_value(doc: RawBSONDocument) -> tuple[int, Any]:
    value = doc["_id"]
    if isinstance(value, Code):
        value = (str(value), bson.encode(value.scope or {}))
    elif isinstance(value, MaxKey):
        value = 0
    elif isinstance(value, RawBSONDocument):  # embedded documents: by their bytes (enough here)
        value = value.raw
    return CANONICAL[id_type(doc.raw)], value


class FakeCollection:
    def __init__(self, documents: list[dict]):
        raw = [RawBSONDocument(bson.encode(d), RAW_DOCUMENT_OPTIONS) for d in documents]
        self.documents = sorted(raw, key=sort_value)

    def find(self, query, sort=None, limit=0, batch_size=0):
        condition = dict(query).get("_id", {})
        if isinstance(condition, RawBSONDocument):
            condition = dict(condition)
        if "$gt" in condition:
            probe = RawBSONDocument(bson.encode({"_id": condition["$gt"]}), RAW_DOCUMENT_OPTIONS)
            bracket, floor = sort_value(probe)
            found = [
                d
                for d in self.documents
                if sort_value(d)[0] == bracket and sort_value(d)[1] > floor
            ]
        elif "$type" in condition:
            wanted = {CANONICAL[ALIASES[a]] for a in condition["$type"]}
            found = [d for d in self.documents if CANONICAL[id_type(d.raw)] in wanted]
        else:
            found = list(self.documents)
        return found[:limit] if limit else found


class FakeClient:
    def __init__(self, collection: FakeCollection):
        self.collection = collection

    def __getitem__(self, _name: str) -> FakeClient:
        return self

    def get_collection(self, _name: str, codec_options=None) -> FakeCollection:
        return self.collection


def snapshot_ids(documents: list[dict], page: int) -> list[Any]:
    """Page like capture does: after each page, the last ``_id`` goes through the checkpoint's
    JSON (``encode_value``/``decode_document``) and is the next page's ``after_id``."""
    source = DocumentDBChangeSource(FakeClient(FakeCollection(documents)))
    after, seen = None, []
    for _ in range(100):
        docs = source.documents("shop", "orders", after_id=after, limit=page)
        seen.extend(d["_id"] for d in docs)
        if len(docs) < page:
            return seen
        _found, last = paging_id(docs[-1])
        after = decode_document(encode_value(last))
    raise AssertionError(f"the snapshot never ends: {seen[:20]}")


def test_a_snapshot_reaches_javascript_ids_after_the_last_objectid():
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    documents = [
        {"_id": 1},
        {"_id": "a"},
        {"_id": oid},
        {"_id": Code("function () {}")},
        {"_id": Code("x", {"n": 1})},
        {"_id": MaxKey()},
    ]
    for page in (1, 2, 3):
        ids = snapshot_ids(documents, page)
        assert len(ids) == len(documents), (page, ids)
        assert [type(i).__name__ for i in ids] == [
            "int",
            "str",
            "ObjectId",
            "Code",
            "Code",
            "MaxKey",
        ]


def test_a_page_ending_in_a_dbref_id_goes_on_to_the_later_types():
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    documents = [
        {"_id": DBRef("customers", 1)},
        {"_id": DBRef("customers", 2)},
        {"_id": oid},
        {"_id": MaxKey()},
    ]
    ids = snapshot_ids(documents, 2)
    assert len(ids) == 4 and ids[2] == oid
