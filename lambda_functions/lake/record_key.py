"""The record key: MongoDB's ``_id`` equality written as text, one text per ``_id``.

Every input path (snapshot, change stream, DMS files, MQ/SQS messages), the merge, the warehouse
and the source audit identify a document by ``record_key(_id)``. The function is *injective on
MongoDB's equality*: two ``_id`` values get the same text exactly when a unique index on ``_id``
says they are the same document. The rules follow MongoDB's comparison semantics (manual,
"Comparison/Sort Order", https://www.mongodb.com/docs/manual/reference/bson-type-comparison-order/):

- **Different BSON types are different records**: ``ObjectId("65a1…")`` and the string
  ``"65a1…"`` are two documents.
- **Numbers compare by value** across int32, int64, double and decimal128 ("numeric types undergo
  conversion before comparison"): ``1``, ``NumberLong(1)``, ``1.0`` and ``NumberDecimal("1.00")``
  are one ``_id``. The comparison is exact: the double ``0.1`` (exactly
  0.1000000000000000055511151231257827…) is not ``NumberDecimal("0.1")``. ``-0`` equals ``0``;
  every NaN equals every NaN; ``Infinity`` of a double equals that of a decimal.
- **Embedded documents** compare field by field, in order: ``{a: 1, b: 2}`` differs from
  ``{b: 2, a: 1}``; their values follow these same rules (``{a: 1}`` equals ``{a: 1.0}``).
- Strings compare by their code points (no collation: the ``_id`` index uses the simple
  binary comparison unless the collection was created with a collation, which this product
  does not support). A deprecated BSON symbol compares as the string it holds. JavaScript
  code (with or without scope) is a BSON type of its own: ``Code("x")`` is not the string
  ``"x"`` (pymongo's ``Code`` is a ``str`` subclass, so it is checked first). A DBRef
  (``{$ref, $id[, $db]}``, which MongoDB accepts as an ``_id``) is the embedded document it is.
- Binary data compares by subtype and bytes (a UUID is subtype 4; legacy UUIDs subtype 3 are
  other values); dates by their milliseconds since the epoch, including dates outside Python's
  years 1-9999; timestamps by (t, i); MinKey and MaxKey are single values.

The text (version ``RECORD_KEY_FORMAT``):

- an **ObjectId** is its 24 lowercase hexadecimal digits (the common case, and what the layout's
  month partition reads);
- **anything else** is compact JSON (``,``/``:`` separators, no spaces, non-ASCII kept) of the
  value in canonical extended JSON with the numbers normalised, so it starts with ``"`` (a
  string), ``{`` (a number, date, binary, document, ...) or is ``true``/``false``/``null``.
  Numbers: an integral value in the int64 range is ``{"$numberLong":"N"}``; another value that
  a double holds exactly is ``{"$numberDouble":"<repr>"}`` (also ``NaN``, ``Infinity``,
  ``-Infinity``); any other decimal is ``{"$numberDecimal":"<digits without trailing zeros>"}``.

No JSON text is 24 hexadecimal digits (a bare JSON number never occurs: numbers are wrapped), so
the two forms cannot meet, and a key text parses back (``key_value``) to an ``_id`` equal to the
original under MongoDB's rules.

Version 1 (tables written before this module) wrote a string as itself and other types as
``json_util`` canonical JSON, which merged ``ObjectId(h)`` with the string ``h`` and kept ``1``
apart from ``1.0``; ``lambda_functions.merge.rekey`` upgrades such tables once.
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bson import (
    Binary,
    Code,
    DBRef,
    Decimal128,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
    json_util,
)
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS, DatetimeConversion

from lambda_functions.errors import TerminalError

__all__ = [
    "KEY_CANDIDATES",
    "RECORD_KEY_APP",
    "RECORD_KEY_FORMAT",
    "REKEYED_AT_APP",
    "InvalidRecordKeyError",
    "bare_key_candidates",
    "document_record_key",
    "key_value",
    "raw_record_key",
    "record_key",
    "v1_key_value",
]

RECORD_KEY_FORMAT = 2
# A lake table records the key format it is written in as a Delta app transaction (Delta keeps
# a ``txn`` per app id across commits, and delta-rs refuses unknown table properties):
# ``transaction_version(RECORD_KEY_APP)`` is ``RECORD_KEY_FORMAT``; absent means version 1.
RECORD_KEY_APP = "lakehouse-record-key-format"
# The table version whose commit re-encoded every key (a reader that loaded an older version
# must read the table in full: the change feed of that commit deletes and inserts one key text).
REKEYED_AT_APP = "lakehouse-record-key-rewritten-at"
# A delete whose ``_id`` came without its type (DMS key-only delete rows) carries, in place of
# its document, ``{"$keyCandidates": [key, ...]}``: the keys it may mean, the likeliest first.
# The merge resolves it against the keys the table holds (``merge.key_candidates``).
KEY_CANDIDATES = "$keyCandidates"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
_OBJECT_ID_ELEMENT = b"\x07_id\x00"  # a raw document whose first element is an ObjectId _id
_STRING_ELEMENT = b"\x02_id\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEY_OPTIONS = CANONICAL_JSON_OPTIONS.with_options(
    tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO
)


class InvalidRecordKeyError(TerminalError, ValueError):
    """A value that cannot be a MongoDB ``_id`` (an array, a regex or undefined at the top level,
    or a string that is not valid Unicode); the message names the value's type. Terminal: the
    same value fails the same way however often it is retried."""


def record_key(value: Any) -> str:
    """The record key text of an ``_id`` value (see the module docstring for the rules).

    Args:
        value: a decoded BSON ``_id`` as pymongo returns it: ``ObjectId``, ``str``, ``int``/
            ``Int64``, ``float``, ``Decimal128``, ``datetime``/``DatetimeMS``, ``Binary``/``bytes``/
            ``uuid.UUID``, ``Timestamp``, ``bool``, ``None``, ``MinKey``/``MaxKey``, ``Code``,
            ``DBRef``, or a mapping (an embedded document, field order kept).

    Returns:
        The key text: 24 hex digits for an ObjectId, else compact canonical JSON.

    Raises:
        InvalidRecordKeyError: for values MongoDB refuses as ``_id`` (an array, a regex, or
            undefined; MongoDB manual, "Documents" > "Field Names" > ``_id``), and for strings
            holding lone surrogates (bytes that were not valid UTF-8).
    """
    if type(value) is ObjectId:
        return str(value)
    if isinstance(value, list | tuple | Regex | re.Pattern):
        raise InvalidRecordKeyError(
            f"an _id cannot be {'an array' if isinstance(value, list | tuple) else 'a regex'}"
            " (MongoDB refuses arrays, regular expressions and undefined as _id)"
        )
    return _dumps(_normal(value))


def raw_record_key(data: bytes) -> str | None:
    """``record_key`` of a raw BSON document's ``_id`` read from its bytes, when ``_id`` is the
    first element and an ObjectId or a valid UTF-8 string (what servers store); ``None``
    otherwise, and the caller decodes the ``_id`` the slow way.

    Args:
        data: one BSON document (``RawBSONDocument.raw``).
    """
    head = data[4:9]
    if head == _OBJECT_ID_ELEMENT:
        return data[9:21].hex()
    if head == _STRING_ELEMENT:
        length = int.from_bytes(data[9:13], "little")
        try:
            text = data[13 : 13 + length - 1].decode()
        except UnicodeDecodeError:
            return None
        return json.dumps(text, ensure_ascii=False)
    return None


def key_value(key: str) -> Any:
    """The ``_id`` a record key text stands for (equal to the original under MongoDB's rules;
    numbers come back as ``Int64``, ``float`` or ``Decimal128``, dates outside years 1-9999 as
    ``DatetimeMS``).

    Raises:
        InvalidRecordKeyError: if ``key`` is not a record key text.
    """
    if _OBJECT_ID.match(key):
        return ObjectId(key)
    try:
        return json_util.loads(key, json_options=_KEY_OPTIONS)
    except (ValueError, TypeError) as error:
        raise InvalidRecordKeyError(f"{key!r} is not a record key: {error}") from None


def document_record_key(document_json: str) -> str:
    """``record_key`` of the ``_id`` of a document given as extended JSON (the lake's ``doc``).

    Raises:
        InvalidRecordKeyError: if the text is not a JSON document with an ``_id``.
    """
    try:
        document = json_util.loads(document_json, json_options=_KEY_OPTIONS)
    except (ValueError, TypeError) as error:
        raise InvalidRecordKeyError(f"document is not extended JSON: {error}") from None
    if not isinstance(document, Mapping) or "_id" not in document:
        raise InvalidRecordKeyError("document has no _id")
    return record_key(document["_id"])


def v1_key_value(key: str) -> Any:
    """The ``_id`` a version-1 key text most likely stood for: 24 hex digits an ObjectId (the
    string of those digits wrote the same text), ``{...}`` canonical extended JSON, anything
    else the string itself."""
    if _OBJECT_ID.match(key):
        return ObjectId(key)
    if key.startswith("{"):
        try:
            return json_util.loads(key, json_options=_KEY_OPTIONS)
        except (ValueError, TypeError):
            return key
    return key


_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DATE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:?[0-9]{2})?$"
)
_HEX_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_NON_FINITE = frozenset({"nan", "inf", "infinity"})
# Binary subtypes a bare base64 _id may carry: the standard ones (0 generic, 1 function, 2 old,
# 3/4 UUID, 5 MD5, 6 encrypted, 7 column, 8 sensitive, 9 vector) and the first user-defined.
_BINARY_SUBTYPES = (*range(10), 0x80)
_BASE64 = re.compile(r"^(?=.)(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")


def bare_key_candidates(text: str) -> list[str]:
    """The record keys an ``_id`` printed without its type may be, the likeliest first.

    AWS DMS writes the ``_id`` column of its S3 output as the bare value: an ObjectId as its 24
    hex digits, a number as its digits, a string as itself (DMS user guide, "Using Amazon
    DocumentDB as a source": document mode writes ``_id`` and ``_doc``). Key-only delete rows
    carry nothing else, so the type is lost; the merge picks the candidate the table holds.

    Args:
        text: the bare value as written in the file.

    Returns:
        Distinct key texts: a typed reading first (ObjectId for 24 hex digits; the number, also
        ``NaN``/``Infinity``; a date in milliseconds or ISO 8601; a UUID; base64 binary of each
        standard subtype and 0x80; ``true``/``false``/``null``), the string reading last.
    """
    readings: list[Any] = []
    if _HEX_ID.match(text):
        readings.append(ObjectId(text.lower()))
    if _INTEGER.match(text):
        readings.append(int(text))
    if _DECIMAL.match(text) and not _INTEGER.match(text):
        readings.append(Decimal128(text) if _fits_decimal128(text) else float(text))
        readings.append(float(text))
    if text.lower().lstrip("+-") in _NON_FINITE:
        readings.append(float(text))  # a double's or a decimal's NaN/Infinity (one key)
    if _INTEGER.match(text) and _INT64_MIN <= int(text) <= _INT64_MAX:
        readings.append(DatetimeMS(int(text)))
    if _DATE.match(text):
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            readings.append(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    if _UUID.match(text):
        readings.append(uuid.UUID(text))
        readings.append(Binary(uuid.UUID(text).bytes, 3))
    if text in ("true", "false"):
        readings.append(text == "true")
    if text == "null":
        readings.append(None)
    if _BASE64.match(text) and not _INTEGER.match(text):
        data = base64.b64decode(text)  # the subtype is not written: any standard one
        readings.extend(Binary(data, subtype) for subtype in _BINARY_SUBTYPES)
    readings.append(text)
    keys: list[str] = []
    for reading in readings:
        try:
            key = record_key(reading)
        except (InvalidRecordKeyError, OverflowError, ValueError):
            continue
        if key not in keys:
            keys.append(key)
    return keys


def _fits_decimal128(text: str) -> bool:
    try:
        Decimal128(text)
    except Exception:  # decimal.Inexact / InvalidOperation: more than 34 digits
        return False
    return True


# -- normalisation -------------------------------------------------------------------------------
def _normal(value: Any) -> Any:
    """``value`` as plain JSON data in canonical extended JSON, numbers normalised."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Code):  # a str subclass, but another BSON type than a string
        _check_unicode(value)
        if value.scope is None:
            return {"$code": str(value)}
        return {"$code": str(value), "$scope": _normal(value.scope)}
    if isinstance(value, str):
        _check_unicode(value)
        return value
    if isinstance(value, DBRef):  # an embedded document {$ref, $id[, $db, ...]} (pymongo's type)
        return _normal(value.as_doc())
    if isinstance(value, int | float | Decimal128 | Decimal):
        return _number(value)
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    if isinstance(value, Mapping):
        return {_field(name): _normal(item) for name, item in value.items()}
    if isinstance(value, list | tuple):  # inside an embedded document: allowed
        return [_normal(item) for item in value]
    if isinstance(value, datetime | DatetimeMS):
        return {"$date": {"$numberLong": str(_millis(value))}}
    if isinstance(value, uuid.UUID):
        return _binary(value.bytes, 4)
    if isinstance(value, Binary):
        return _binary(bytes(value), value.subtype)
    if isinstance(value, bytes):
        return _binary(value, 0)
    if isinstance(value, Timestamp):
        return {"$timestamp": {"t": value.time, "i": value.inc}}
    if isinstance(value, MinKey):
        return {"$minKey": 1}
    if isinstance(value, MaxKey):
        return {"$maxKey": 1}
    if isinstance(value, Regex | re.Pattern):  # inside an embedded document
        return json.loads(json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS))
    raise InvalidRecordKeyError(f"an _id of type {type(value).__name__} has no BSON equivalent")


def _number(value: int | float | Decimal128 | Decimal) -> dict[str, str]:
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, float):
        if math.isnan(value):
            return {"$numberDouble": "NaN"}
        if math.isinf(value):
            return {"$numberDouble": "Infinity" if value > 0 else "-Infinity"}
        exact = Decimal(value)  # exact: every double is a finite decimal
    elif isinstance(value, int):  # int, Int64 (bool was handled before)
        exact = Decimal(int(value))
    else:
        if value.is_nan():
            return {"$numberDouble": "NaN"}
        if value.is_infinite():
            return {"$numberDouble": "Infinity" if value > 0 else "-Infinity"}
        exact = value
    if exact == exact.to_integral_value():
        integral = int(exact)
        if _INT64_MIN <= integral <= _INT64_MAX:
            return {"$numberLong": str(integral)}
    as_double = float(exact)  # correctly rounded
    if math.isfinite(as_double) and Decimal(as_double) == exact:
        return {"$numberDouble": repr(as_double)}
    return {"$numberDecimal": _decimal_text(exact)}


def _decimal_text(exact: Decimal) -> str:
    """One text per decimal value: the coefficient without trailing zeros."""
    sign, digits, exponent = exact.as_tuple()
    assert isinstance(exponent, int)
    digits_list = list(digits)
    while len(digits_list) > 1 and digits_list[-1] == 0:
        digits_list.pop()
        exponent += 1
    return str(Decimal((sign, tuple(digits_list), exponent)))


def _binary(data: bytes, subtype: int) -> dict[str, dict[str, str]]:
    return {"$binary": {"base64": base64.b64encode(data).decode(), "subType": f"{subtype:02x}"}}


def _millis(value: datetime | DatetimeMS) -> int:
    if isinstance(value, DatetimeMS):
        return int(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _field(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidRecordKeyError(f"an embedded _id has a field name of type {type(name)}")
    _check_unicode(name)
    return name


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecordKeyError(
            "an _id string is not valid UTF-8 (it holds undecodable bytes); the document is "
            "quarantined: fix the _id in the source"
        ) from None


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
