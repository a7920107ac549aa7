"""MongoDB extended JSON as the lake stores it: canonical for documents, relaxed for people.

Canonical extended JSON keeps every BSON type distinguishable (Int32 vs Int64 vs double, Decimal128,
ObjectId, datetime in milliseconds, Binary with its subtype), so a document read back from the raw
zone equals the one the database held. Relaxed JSON is only for dead-letter lines meant to be read.

The encoder is libbson's, through ``python-bsonjs`` (MongoDB's own C binding): it turns BSON bytes
straight into canonical extended JSON, about 4x faster than ``bson.json_util`` on decoded documents
and without decoding at all when the driver hands over raw BSON (``RawBSONDocument``), which is how
the snapshot reads DocumentDB. Every path (snapshot, change stream, DMS, MQ, the embedded source,
and the merge when it applies a partial update) encodes through ``encode_document``/``encode_raw``,
so the same document always gives the same text. It lives in ``lake`` because it is the lake's
document format, shared by capture and merge (no stage imports another).
Its layout differs from ``json_util.dumps`` only cosmetically (``{ "a" : ... }`` spacing; doubles
printed with 20 significant digits, e.g. ``0.1`` as ``"0.10000000000000000555"``), and
``json_util.loads`` reads it back to exactly the same values (a randomized test checks every type).

Everything BSON can hold is read without raising (``RAW_DOCUMENT_OPTIONS``, ``JSON_OPTIONS``):

- **dates outside Python's years 1-9999** (a "never expires" year 20000, a negative year) are
  legal BSON (int64 milliseconds, BSON spec): they decode as ``bson.datetime_ms.DatetimeMS``
  (``DatetimeConversion.DATETIME_AUTO``) and encode back as ``{"$date": {"$numberLong": "…"}}``,
  so they are kept exactly;
- **strings that are not valid UTF-8** (BSON requires UTF-8, but a server stores what a driver
  sends) decode with ``surrogateescape`` (PEP 383: each bad byte a lone surrogate U+DC80-U+DCFF,
  losslessly reversible). Encoding such a document as BSON/JSON for the lake refuses it
  (``InvalidDocument`` naming the field), so it is quarantined alone; ``raw_bson_document``
  writes the original bytes back (the snapshot's paging filter, dead letters).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

import bson
import bsonjs
from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON, InvalidDocument
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument

from lambda_functions.errors import TerminalError

# Decoding gives timezone-aware UTC datetimes (as pymongo with tz_aware=True, tzinfo=UTC), and
# DatetimeMS for dates outside years 1-9999; encoding is the same canonical text for aware and
# naive (UTC) datetimes.
JSON_OPTIONS = CANONICAL_JSON_OPTIONS.with_options(
    tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO
)
# How raw BSON from a server is read (pymongo's codec options): nothing legal raises.
RAW_DOCUMENT_OPTIONS = CodecOptions(
    document_class=RawBSONDocument,
    tz_aware=True,
    tzinfo=UTC,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="surrogateescape",
)
_CANONICAL = bsonjs.CANONICAL


class InvalidExtendedJSONError(TerminalError, ValueError):
    """JSON whose type wrapper (``{"$oid": …}``, ``{"$date": …}``, …) is not valid extended JSON;
    the message quotes the wrapper."""


def encode_document(document: Mapping[str, Any]) -> str:
    """Canonical extended JSON of a BSON document; ``InvalidDocument`` if BSON cannot hold it.

    The document goes through ``bson.encode`` first, so what BSON (and the server) would refuse
    (sets, non-string keys, out-of-range integers) is refused here too.
    """
    if isinstance(document, RawBSONDocument):
        return encode_raw(document.raw)
    try:
        data = bson.encode(document)
    except (InvalidDocument, OverflowError, TypeError, ValueError) as error:
        bad = invalid_utf8_path(document)
        if bad is not None:
            raise InvalidDocument(not_utf8_reason(bad)) from None
        raise InvalidDocument(f"cannot encode document as BSON: {error}") from error
    return bsonjs.dumps(data, mode=_CANONICAL)


def encode_raw(data: bytes | memoryview) -> str:
    """Canonical extended JSON of one BSON document given as bytes (no decoding in Python).

    ``data`` may be a ``memoryview`` (pymongo hands out views of large replies as ``raw``).
    Raises ``InvalidDocument`` for bytes that are not a valid BSON document (e.g. bad UTF-8).
    """
    if not isinstance(data, bytes):
        data = bytes(data)  # bsonjs takes bytes only
    try:
        return bsonjs.dumps(data, mode=_CANONICAL)
    except ValueError as error:
        bad = invalid_utf8_path(RawBSONDocument(data, RAW_DOCUMENT_OPTIONS))
        if bad is not None:
            raise InvalidDocument(not_utf8_reason(bad)) from None
        raise InvalidDocument(f"cannot encode document as JSON: {error}") from error


def not_utf8_reason(path: str) -> str:
    """Why a document whose field ``path`` holds invalid UTF-8 is quarantined, and the fix."""
    fix = (
        "an _id cannot be updated: insert the document again with a valid UTF-8 _id and "
        "delete this one"
        if path == "_id" or path.startswith("_id.")
        else "rewrite the value as valid UTF-8 in the source; the next change to the document "
        "is captured"
    )
    return (
        f"field {path!r} holds a string that is not valid UTF-8 (BSON strings must be UTF-8; "
        "the server kept bytes a client sent unchecked): the document is quarantined alone, "
        f"with its exact BSON as $bsonBase64; fix: {fix}"
    )


def decode_document(text: str | bytes) -> Any:
    """The value of canonical or relaxed extended JSON (``JSON_OPTIONS``).

    Raises:
        json.JSONDecodeError: the text is not JSON.
        InvalidExtendedJSONError: a type wrapper is invalid (bad ObjectId hex, a decimal with a
            comma, a malformed or out-of-int64 ``$date``, ``$binary`` that is not base64, a
            ``$numberLong`` with letters, …); the message quotes the wrapper.
    """
    return json.loads(text, object_hook=_checked_wrapper)


def _checked_wrapper(document: dict[str, Any]) -> Any:
    try:
        if "$binary" in document:
            _check_base64(document)
        return json_util.object_hook(document, JSON_OPTIONS)
    except Exception as error:  # json_util raises ValueError, TypeError, KeyError, InvalidId, …
        wrapper = json.dumps(document, default=str)
        name = next(iter(document), "{}")
        raise InvalidExtendedJSONError(
            f"{wrapper} is not a valid {name} wrapper ({type(error).__name__}: {error}); "
            "write canonical extended JSON (MongoDB Extended JSON v2, e.g. bson.json_util.dumps "
            "with CANONICAL_JSON_OPTIONS)"
        ) from None


def _check_base64(document: Mapping[str, Any]) -> None:
    """``json_util`` decodes base64 leniently (invalid characters are dropped, so bad input
    silently becomes other bytes); the extended JSON spec requires base64."""
    value = document.get("$binary")
    text = value.get("base64") if isinstance(value, Mapping) else value
    if isinstance(text, str):
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"{text!r} is not base64: {error}") from None


def encode_value(value: Any) -> str:
    """Canonical extended JSON of a single value (an ``_id``), e.g. ``{"$oid": "..."}``."""
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def relaxed_json(value: Any) -> str:
    """Relaxed extended JSON for dead letters, so a dead letter is never lost to the very
    encoding problem it records: a document holding bytes that are not valid UTF-8 is written as
    its exact BSON, ``{"$bsonBase64": "<base64>"}`` (``base64.b64decode`` then ``bson.decode``
    with ``unicode_decode_error_handler="surrogateescape"`` reads it); other values JSON cannot
    hold are written as their repr."""
    if isinstance(value, RawBSONDocument):
        try:
            return bsonjs.dumps(bytes(value.raw), mode=bsonjs.RELAXED)
        except ValueError:
            return json.dumps({"$bsonBase64": base64.b64encode(value.raw).decode()})
    if isinstance(value, Mapping) and invalid_utf8_path(value) is not None:
        try:
            raw = raw_bson_document(value).raw
        except (InvalidDocument, ValueError, TypeError, OverflowError):
            pass
        else:
            return json.dumps({"$bsonBase64": base64.b64encode(raw).decode()})
    try:
        return json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS)
    except (TypeError, ValueError, OverflowError):
        return json_util.dumps(_printable(value), json_options=RELAXED_JSON_OPTIONS)


def _printable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    try:
        json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS)
    except (TypeError, ValueError, OverflowError):
        return {"$unencodable": repr(value)}
    return value


def invalid_utf8_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string or field name in ``value`` that holds bytes that were
    not valid UTF-8 (surrogate escapes, see the module docstring), or ``None``."""
    if isinstance(value, str):
        return path or "(value)" if _has_surrogates(value) else None
    if isinstance(value, RawBSONDocument):
        try:
            value = RawBSONDocument(value.raw, RAW_DOCUMENT_OPTIONS)
            items = list(value.items())
        except (InvalidBSON, ValueError):
            return path or "(document)"
    elif isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return None
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and _has_surrogates(key):
            return where
        found = invalid_utf8_path(item, where)
        if found is not None:
            return found
    return None


def raw_bson_document(document: Mapping[str, Any]) -> RawBSONDocument:
    """BSON of a document whose strings may hold surrogate escapes, with the original bytes
    written back (what the server stored); other values are encoded by ``bson.encode``, so
    what BSON cannot hold is still refused (``InvalidDocument``)."""
    if isinstance(document, RawBSONDocument):
        return document
    try:
        return RawBSONDocument(bson.encode(document), RAW_DOCUMENT_OPTIONS)
    except (InvalidDocument, UnicodeEncodeError):
        return RawBSONDocument(_document_bytes(document), RAW_DOCUMENT_OPTIONS)


def _document_bytes(document: Mapping[str, Any] | Sequence[Any]) -> bytes:
    if isinstance(document, Mapping):
        items = list(document.items())
    else:
        items = [(str(i), v) for i, v in enumerate(document)]
    body = b"".join(_element(key, value) for key, value in items)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _element(key: Any, value: Any) -> bytes:
    if not isinstance(key, str):
        raise InvalidDocument(f"documents must have only string keys, key was {key!r}")
    name = key.encode("utf-8", "surrogateescape")
    if b"\x00" in name:
        raise InvalidDocument(f"key {key!r} must not contain a NUL character")
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        return b"\x02" + name + b"\x00" + struct.pack("<i", len(data) + 1) + data + b"\x00"
    if isinstance(value, RawBSONDocument):
        return b"\x03" + name + b"\x00" + value.raw
    if isinstance(value, Mapping):
        return b"\x03" + name + b"\x00" + _document_bytes(value)
    if isinstance(value, list | tuple):
        return b"\x04" + name + b"\x00" + _document_bytes(value)
    element = bson.encode({"v": value})[4:-1]  # type byte, b"v\0", value
    return element[:1] + name + b"\x00" + element[3:]


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
