"""The canonical extended JSON encoder (libbson through python-bsonjs) round-trips every BSON type.

Randomized documents (seeded, so a failure reproduces) go BSON -> canonical JSON ->
``json_util.loads`` -> BSON, and the bytes must be identical: the strictest equality there is
(types, values, key order, -0.0, NaN payloads, Decimal128 exponents).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import bson
import pytest
from bson import (
    Binary,
    Code,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument

from lambda_functions.lake.extended_json import (
    decode_document,
    encode_document,
    encode_raw,
)
from lambda_functions.lake.record_key import raw_record_key, record_key

SPECIAL_DOUBLES = [
    0.0,
    -0.0,
    0.1,
    1 / 3,
    1e300,
    -1e-300,
    5e-324,
    2.0**53 + 2,
    float("inf"),
    float("-inf"),
    float("nan"),
    123456789.0,
    1e21,
]
SPECIAL_DECIMALS = [
    "0",
    "-0",
    "0.10",
    "1E+6144",
    "-1E-6176",
    "NaN",
    "Infinity",
    "-Infinity",
    "9999999999999999999999999999999999",
    "12.3400",
]
TEXT = [
    "",
    "plain",
    'quote " and \\ backslash',
    "tab\tnewline\ncontrol\x01\x1f",
    "é ü ß",
    "😀 emoji",
    "\u2028\u2029",
    "null\x00inside"[:4],
]


def random_value(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(20 if depth < 3 else 16)
    if kind == 0:
        return rng.randint(-(2**31), 2**31 - 1)
    if kind == 1:
        return Int64(rng.randint(-(2**63), 2**63 - 1))
    if kind == 2:
        return rng.choice(SPECIAL_DOUBLES) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9)
    if kind == 3:
        return Decimal128(rng.choice(SPECIAL_DECIMALS))
    if kind == 4:
        return rng.choice(TEXT) + str(rng.random())
    if kind == 5:
        return rng.random() < 0.5
    if kind == 6:
        return None
    if kind == 7:
        millis = rng.randint(-62135596800000, 253402300799999)  # years 1..9999
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)
    if kind == 8:
        return ObjectId(rng.randbytes(12))
    if kind == 9:
        return Binary(rng.randbytes(rng.randrange(40)), rng.choice([0, 1, 2, 3, 5, 6, 0x80]))
    if kind == 10:
        return Binary(uuid.UUID(int=rng.getrandbits(128)).bytes, 4)
    if kind == 11:
        return Regex(rng.choice(["^a.*b$", "x+", "[\\d]{2}"]), rng.choice(["", "i", "imsux"]))
    if kind == 12:
        return Timestamp(rng.randint(0, 2**32 - 1), rng.randint(0, 2**32 - 1))
    if kind == 13:
        return rng.choice([MinKey(), MaxKey()])
    if kind == 14:
        return Code("function () { return 1; }", {"x": 1} if rng.random() < 0.5 else None)
    if kind == 15:
        return DBRef("other", ObjectId(rng.randbytes(12)))
    if kind in (16, 17):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return random_document(rng, depth + 1)


def random_document(rng: random.Random, depth: int = 0) -> dict:
    keys = ["a", "b.c", "ключ", "$not_first"[1:], "k" * 40, "spaces in key", "0"]
    return {f"{rng.choice(keys)}{i}": random_value(rng, depth) for i in range(rng.randrange(8))}


@pytest.mark.parametrize("seed", range(40))
def test_random_documents_round_trip_byte_for_byte(seed):
    rng = random.Random(seed)
    for _ in range(25):
        _id = rng.choice([ObjectId(rng.randbytes(12)), f"order-{rng.random()}", rng.randint(0, 9)])
        document = {"_id": _id, **random_document(rng)}
        data = bson.encode(document)

        text = encode_document(document)

        assert bson.encode(decode_document(text)) == data
        assert encode_raw(data) == text
        assert encode_document(RawBSONDocument(data)) == text
        assert raw_record_key(data) in (record_key(_id), None)
        if isinstance(_id, ObjectId | str):
            assert raw_record_key(data) == record_key(_id)


def test_documents_bson_refuses_are_refused_and_bad_bytes_raise_invalid_document():
    with pytest.raises(InvalidDocument):
        encode_document({"_id": 1, "tags": {"a", "b"}})
    bad_utf8 = bson.encode({"_id": "x", "s": "abc"}).replace(b"abc", b"\xff\xfe\xfd")
    with pytest.raises(InvalidDocument):
        encode_raw(bad_utf8)
