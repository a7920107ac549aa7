"""The record key against MongoDB's ``_id`` equality.

The oracle ``mongo_equal`` below is written from the MongoDB manual, not from the code under test:
"Comparison/Sort Order" (https://www.mongodb.com/docs/manual/reference/bson-type-comparison-order/):
values of different type brackets are never equal; numeric types (int32, int64, double, decimal)
are converted before comparison, so they compare by exact value (the double 0.1 is
0.1000000000000000055511151231257827…, not the decimal 0.1; NaN equals NaN); embedded documents
compare field names and values in order; binary data compares by length, subtype and bytes; dates
by milliseconds; timestamps by (t, i). A unique index on ``_id`` treats two values as one document
exactly when they compare equal, so the key must be equal exactly when the oracle says so.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import bson
import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument

from lambda_functions.lake.record_key import (
    InvalidRecordKeyError,
    bare_key_candidates,
    key_value,
    raw_record_key,
    record_key,
)

HEX = "65a1b2c3d4e5f60718293a4b"


# -- the oracle, from the manual ---------------------------------------------------------------
def _bracket(value: Any) -> str:
    if isinstance(value, MinKey):
        return "minKey"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | Decimal128):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Binary | bytes | uuid.UUID):
        return "binData"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, datetime | DatetimeMS):
        return "date"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, MaxKey):
        return "maxKey"
    raise TypeError(type(value))


def _exact(value: int | float | Decimal128) -> Fraction | str:
    """The exact value of a number, or "nan" / "inf" / "-inf"."""
    if isinstance(value, Decimal128):
        value = value.to_decimal()
        if value.is_nan():
            return "nan"
        if value.is_infinite():
            return "inf" if value > 0 else "-inf"
        return Fraction(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return Fraction(value)


def _binary(value: Any) -> tuple[int, bytes]:
    if isinstance(value, uuid.UUID):
        return 4, value.bytes
    if isinstance(value, Binary):
        return value.subtype, bytes(value)
    return 0, bytes(value)


def _ms(value: datetime | DatetimeMS) -> int:
    if isinstance(value, DatetimeMS):
        return int(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round((value - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000)


def mongo_equal(a: Any, b: Any) -> bool:
    kind = _bracket(a)
    if kind != _bracket(b):
        return False
    if kind == "number":
        return _exact(a) == _exact(b)
    if kind == "object":
        return list(a) == list(b) and all(mongo_equal(a[k], b[k]) for k in a)
    if kind == "array":
        return len(a) == len(b) and all(mongo_equal(x, y) for x, y in zip(a, b, strict=True))
    if kind == "binData":
        return _binary(a) == _binary(b)
    if kind == "date":
        return _ms(a) == _ms(b)
    if kind in ("minKey", "maxKey", "null"):
        return True
    return a == b


# -- values --------------------------------------------------------------------------------------
POOL: list[Any] = [
    ObjectId(HEX),
    HEX,
    ObjectId("65a1b2c3d4e5f60718293a4c"),
    "",
    "1",
    "order-7",
    '"order-7"',
    '{"$numberLong":"1"}',
    "true",
    "null",
    "héllo wörld",
    "e\u0301",  # NFD é: a different string from the NFC one (no normalisation)
    "\u00e9",
    1,
    Int64(1),
    1.0,
    Decimal128("1"),
    Decimal128("1.000"),
    Decimal128("1E0"),
    0,
    -0.0,
    Decimal128("-0"),
    Decimal128("0E+10"),
    0.1,
    Decimal128("0.1"),
    0.5,
    Decimal128("0.5"),
    Decimal128("0.50"),
    42,
    Int64(9_000_000_001),
    9_000_000_001.0,
    Int64(2**53 + 1),
    float(2**53),
    Int64(2**63 - 1),
    2.0**63,
    Decimal128("9223372036854775808"),
    -(2**63),
    1e20,
    Decimal128("1E+20"),
    Decimal128("100000000000000000000"),
    Decimal128("1.234567890123456789012345678901234E+6000"),
    float("nan"),
    Decimal128("NaN"),
    Decimal128("-NaN"),
    float("inf"),
    Decimal128("Infinity"),
    float("-inf"),
    Decimal128("-Infinity"),
    True,
    False,
    None,
    MinKey(),
    MaxKey(),
    {"a": 1, "b": 2},
    {"b": 2, "a": 1},
    {"a": 1.0, "b": Int64(2)},
    {"a": {"x": [1, 2.0]}, "b": "s"},
    {"a": {"x": [1.0, 2]}, "b": "s"},
    {"a": {"x": [2, 1]}, "b": "s"},
    {},
    uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
    Binary(uuid.UUID("123e4567-e89b-12d3-a456-426614174000").bytes, 4),
    Binary(uuid.UUID("123e4567-e89b-12d3-a456-426614174000").bytes, 3),
    Binary(b"\x00\xff", 0),
    b"\x00\xff",
    Binary(b"\x00\xff", 128),
    datetime(2024, 1, 5, 10, 0, 0, 123000, tzinfo=UTC),
    datetime(2024, 1, 5, 10, 0, 0, 123000),  # naive: UTC, as in BSON
    DatetimeMS(1_704_448_800_123),
    1_704_448_800_123,
    DatetimeMS(568_024_668_800_000),  # year 20000: a "never expires" sentinel
    DatetimeMS(-62_198_755_200_000),  # a negative year
    Timestamp(1_704_448_800, 1),
    Timestamp(1_704_448_800, 2),
]


def test_record_keys_are_equal_exactly_when_mongodb_says_the_ids_are_equal():
    keys = [record_key(v) for v in POOL]
    for (a, key_a), (b, key_b) in itertools.combinations(zip(POOL, keys, strict=True), 2):
        assert (key_a == key_b) == mongo_equal(a, b), (a, b, key_a, key_b)


def test_random_numbers_of_every_numeric_type_key_by_value():
    """Random values as int32, int64, double and decimal128: equal keys exactly when the exact
    values are equal (MongoDB: "numeric types undergo conversion before comparison")."""
    rng = random.Random(10)
    values: list[Any] = []
    for _ in range(400):
        n = rng.choice([rng.randint(-5, 5), rng.randint(-(2**62), 2**62), rng.randint(0, 2**54)])
        values += [n, Int64(n), float(n), Decimal128(str(n)) if abs(n) < 10**33 else float(n)]
        f = rng.uniform(-1e6, 1e6)
        values += [f, Decimal128(repr(f)), Decimal128(str(Decimal(f))[:35].rstrip("0") or "0")]
    keys = {}
    for value in values:
        keys.setdefault(record_key(value), []).append(value)
    for key, same in keys.items():
        assert all(mongo_equal(same[0], other) for other in same), key
    groups = list(keys.values())
    for first, second in itertools.combinations(groups[:300], 2):
        assert not mongo_equal(first[0], second[0])


@pytest.mark.parametrize("value", POOL, ids=lambda v: type(v).__name__)
def test_a_key_reads_back_as_an_equal_id(value):
    key = record_key(value)
    assert mongo_equal(key_value(key), value)
    assert record_key(key_value(key)) == key


def test_an_objectid_and_the_string_of_its_hex_digits_are_two_records():
    assert record_key(ObjectId(HEX)) == HEX  # the common case stays 24 hex digits
    assert record_key(HEX) == f'"{HEX}"'


def test_keys_of_raw_documents_match_the_decoded_id():
    """The snapshot reads raw BSON: its fast path must give the same key as the decoded _id."""
    for value in [ObjectId(HEX), HEX, "", 'é"\\\n', "x" * 1000, 1, 1.5, {"a": 1}, None]:
        data = bson.encode({"_id": value, "n": 1})
        expected = record_key(value)
        assert raw_record_key(data) in (expected, None)
        if isinstance(value, ObjectId | str):
            assert raw_record_key(data) == expected
    body = b"\x10n\x00" + (1).to_bytes(4, "little") + b"\x07_id\x00" + ObjectId(HEX).binary
    not_first = (len(body) + 5).to_bytes(4, "little") + body + b"\x00"  # bson.encode puts _id first
    assert RawBSONDocument(not_first)["_id"] == ObjectId(HEX)
    assert raw_record_key(not_first) is None  # the caller decodes the _id


def test_out_of_range_dates_are_keyed_by_their_milliseconds():
    options = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
    year_20000 = DatetimeMS(568_024_668_800_000)
    decoded = bson.decode(bson.encode({"_id": year_20000}), options)["_id"]
    assert record_key(decoded) == '{"$date":{"$numberLong":"568024668800000"}}'


@pytest.mark.parametrize(
    "value",
    [[1, 2], (1,), Regex("^a"), "bad \udcff utf-8"],
    ids=["array", "tuple", "regex", "utf8"],
)
def test_values_mongodb_refuses_as_id_are_refused(value):
    with pytest.raises(InvalidRecordKeyError):
        record_key(value)


def test_a_bare_dms_id_lists_every_key_it_may_be():
    """DMS writes the ``_id`` column without its type: each reading is a candidate."""
    assert bare_key_candidates("42") == [
        record_key(42),
        record_key(DatetimeMS(42)),
        record_key("42"),
    ]
    assert bare_key_candidates(HEX)[0] == record_key(ObjectId(HEX))
    assert record_key(HEX) in bare_key_candidates(HEX)
    assert record_key(Decimal128("0.1")) in bare_key_candidates("0.1")
    assert record_key(0.1) in bare_key_candidates("0.1")
    assert record_key(uuid.UUID("123e4567-e89b-12d3-a456-426614174000")) in bare_key_candidates(
        "123e4567-e89b-12d3-a456-426614174000"
    )
    assert bare_key_candidates("order-7") == [record_key("order-7")]
