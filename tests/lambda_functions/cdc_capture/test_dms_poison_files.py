"""DMS files with the documents and ``_id``s a DocumentDB/MongoDB collection may hold.

Expected values come from the sources' documented semantics: a MongoDB document may be up to
16 MB of BSON (manual, "BSON Document Size Limit"), and DMS document mode writes it whole in the
``_doc`` column; BSON strings are bytes a server stores unchecked, so a file may carry bytes that
are not UTF-8: that row alone is quarantined. Key-only delete rows carry the bare ``_id`` (its type
is not written), so the delete must reach the document whatever its type: a string ``_id`` that
happens to start with ``{``, binary of any standard subtype, a NaN or infinite number.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from bson import Binary, Decimal128, ObjectId

from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.contracts import DmsIngestRequest
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.lake.store import LocalObjectStore
from tests.lambda_functions.merge.test_record_identity import dms_line, ext, lake_docs, merge

DB, COLL = "shop", "orders"
KEEP = ObjectId("65a1b2c3d4e5f60718293a4c")
KEEP_LINE = dms_line(str(KEEP), ext({"_id": KEEP, "n": 2})) + "\n"
CDC = "20240105-101500123.csv"


def ingest(tmp_path: Path, load: bytes, cdc: bytes | None = None):
    folder = tmp_path / "dms" / DB / COLL
    folder.mkdir(parents=True)
    (folder / "LOAD00000001.csv").write_bytes(load)
    if cdc is not None:
        (folder / CDC).write_bytes(cdc)
    request = DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"), database=DB, collection=COLL, dms_uri=str(folder)
    )
    return ingest_dms_files(request)


def dead_letters(tmp_path: Path) -> list[dict]:
    store = LocalObjectStore(tmp_path / "lake")
    letters = []
    for manifest in RawZone(store, DB, COLL).manifests():
        key = manifest.extra.get("quarantine_key")
        if key:
            letters.extend(json.loads(line) for line in store.get(key).splitlines())
    return letters


def test_a_document_larger_than_the_csv_field_limit_is_captured_with_its_file(tmp_path):
    big = {"_id": 1, "text": "x" * 1_000_000}  # 1 MB: far under MongoDB's 16 MB
    result = ingest(tmp_path, (dms_line("1", ext(big)) + "\n" + KEEP_LINE).encode())
    merge(tmp_path)

    assert result.quarantined == 0
    docs = lake_docs(tmp_path)
    assert set(docs) == {record_key(1), record_key(KEEP)}
    assert docs[record_key(1)]["text"] == big["text"]


def test_bytes_that_are_not_utf8_quarantine_their_row_alone(tmp_path):
    bad_row = b'2,"{""_id"": 2, ""name"": ""caf\xe9""}"\n'  # Latin-1 bytes in a string
    bad_delete = b"D,2024-01-05 10:15:00.000000,caf\xe9,\n"
    result = ingest(
        tmp_path,
        dms_line("1", ext({"_id": 1})).encode() + b"\n" + bad_row + KEEP_LINE.encode(),
        b"D,2024-01-05 10:15:00.000000,1,\n" + bad_delete,
    )
    merge(tmp_path)

    assert set(lake_docs(tmp_path)) == {record_key(KEEP)}  # 1 loaded, then deleted
    assert result.quarantined == 2
    reasons = [letter["reason"] for letter in dead_letters(tmp_path)]
    assert "row 2" in reasons[0] and "not valid UTF-8" in reasons[0]
    assert CDC in reasons[1] and "row 2" in reasons[1]


@pytest.mark.parametrize("text", ["{abc}", '{"a": 1}', '{"$oid": "65a1b2c3d4e5f60718293a4b"}'])
def test_a_delete_reaches_a_string_id_that_starts_with_a_brace(tmp_path, text):
    ingest(
        tmp_path,
        (dms_line(text, ext({"_id": text})) + "\n" + KEEP_LINE).encode(),
        f"D,2024-01-05 10:15:00.000000,{dms_line(text)},\n".encode(),
    )
    result = merge(tmp_path)

    assert set(lake_docs(tmp_path)) == {record_key(KEEP)}
    assert result.ambiguous_deletes == []


def test_a_delete_of_json_text_still_reaches_the_embedded_document_it_spells(tmp_path):
    ingest(
        tmp_path,
        (dms_line('{"a": 1}', ext({"_id": {"a": 1}})) + "\n" + KEEP_LINE).encode(),
        ("D,2024-01-05 10:15:00.000000," + dms_line('{"a": 1}') + ",\n").encode(),
    )
    merge(tmp_path)

    assert set(lake_docs(tmp_path)) == {record_key(KEEP)}


PAYLOAD = b"\x00\xff\x10"
UUID_BYTES = bytes(range(16))
BARE_IDS = {
    "binary-subtype-3": (Binary(UUID_BYTES, 3), base64.b64encode(UUID_BYTES).decode()),
    "binary-subtype-4-as-base64": (Binary(UUID_BYTES, 4), base64.b64encode(UUID_BYTES).decode()),
    "binary-subtype-5-md5": (Binary(PAYLOAD, 5), base64.b64encode(PAYLOAD).decode()),
    "binary-user-defined-0x80": (Binary(PAYLOAD, 0x80), base64.b64encode(PAYLOAD).decode()),
    "double-nan": (float("nan"), "NaN"),
    "decimal-nan": (Decimal128("NaN"), "NaN"),
    "double-infinity": (float("inf"), "Infinity"),
    "decimal-minus-infinity": (Decimal128("-Infinity"), "-Infinity"),
}


@pytest.mark.parametrize("kind", list(BARE_IDS))
def test_a_key_only_delete_reaches_the_row_loaded_from_its_document(tmp_path, kind):
    _id, bare = BARE_IDS[kind]
    ingest(
        tmp_path,
        (dms_line(bare, ext({"_id": _id, "n": 1})) + "\n" + KEEP_LINE).encode(),
        f"D,2024-01-05 10:15:00.000000,{dms_line(bare)},\n".encode(),
    )
    result = merge(tmp_path)

    assert set(lake_docs(tmp_path)) == {record_key(KEEP)}
    assert result.ambiguous_deletes == []


def test_a_headerless_row_reads_its_op_as_a_headed_one_does(tmp_path):
    """With AddColumnName the Op column is read stripped; without it, the same."""
    ingest(
        tmp_path,
        (dms_line("5", ext({"_id": 5})) + "\n" + KEEP_LINE).encode(),
        b" D ,2024-01-05 10:15:00.000000,5,\n",
    )
    merge(tmp_path)

    assert set(lake_docs(tmp_path)) == {record_key(KEEP)}
