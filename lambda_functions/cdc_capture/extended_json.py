"""MongoDB extended JSON as the lake stores it: canonical for documents, relaxed for people.

Canonical extended JSON keeps every BSON type distinguishable (Int32 vs Int64 vs double, Decimal128,
ObjectId, datetime in milliseconds, Binary with its subtype), so a document read back from the raw
zone equals the one the database held. Relaxed JSON is only for dead-letter lines meant to be read.

The encoder is libbson's, through ``python-bsonjs`` (MongoDB's own C binding): it turns BSON bytes
straight into canonical extended JSON, about 4x faster than ``bson.json_util`` on decoded documents
and without decoding at all when the driver hands over raw BSON (``RawBSONDocument``), which is how
the snapshot reads DocumentDB. Every path (snapshot, change stream, DMS, MQ, the embedded source)
encodes through ``encode_document``/``encode_raw``, so the same document always gives the same text.
Its layout differs from ``json_util.dumps`` only cosmetically (``{ "a" : ... }`` spacing; doubles
printed with 20 significant digits, e.g. ``0.1`` as ``"0.10000000000000000555"``), and
``json_util.loads`` reads it back to exactly the same values (a randomized test checks every type).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

import bson
import bsonjs
from bson import json_util
from bson.errors import InvalidDocument
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument

# Decoding gives timezone-aware UTC datetimes (as pymongo with tz_aware=True, tzinfo=UTC);
# encoding is the same canonical text for aware and naive (UTC) datetimes.
JSON_OPTIONS = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC)
_CANONICAL = bsonjs.CANONICAL


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
        raise InvalidDocument(f"cannot encode document as BSON: {error}") from error
    return bsonjs.dumps(data, mode=_CANONICAL)


def encode_raw(data: bytes) -> str:
    """Canonical extended JSON of one BSON document given as bytes (no decoding in Python).

    Raises ``InvalidDocument`` for bytes that are not a valid BSON document (e.g. bad UTF-8).
    """
    try:
        return bsonjs.dumps(data, mode=_CANONICAL)
    except ValueError as error:
        raise InvalidDocument(f"cannot encode document as JSON: {error}") from error


def decode_document(text: str) -> Any:
    return json_util.loads(text, json_options=JSON_OPTIONS)


def encode_value(value: Any) -> str:
    """Canonical extended JSON of a single value (an ``_id``), e.g. ``{"$oid": "..."}``."""
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def relaxed_json(value: Any) -> str:
    """Relaxed extended JSON for dead letters; values JSON cannot hold are written as their repr,
    so a dead letter is never lost to the very encoding problem it records."""
    if isinstance(value, RawBSONDocument):
        try:
            return bsonjs.dumps(value.raw, mode=bsonjs.RELAXED)
        except ValueError:
            return json_util.dumps({"$unencodable": repr(value.raw)})
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
