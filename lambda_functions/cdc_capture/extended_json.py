"""MongoDB extended JSON as the lake stores it: canonical for documents, relaxed for people.

Canonical extended JSON keeps every BSON type distinguishable (Int32 vs Int64 vs double, Decimal128,
ObjectId, datetime in milliseconds, Binary with its subtype), so a document read back from the raw
zone equals the one the database held. Relaxed JSON is only for dead-letter lines meant to be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

import bson
from bson import ObjectId, json_util
from bson.errors import InvalidDocument
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS

# Decoding gives timezone-aware UTC datetimes (as pymongo with tz_aware=True, tzinfo=UTC);
# encoding is the same canonical text for aware and naive (UTC) datetimes.
JSON_OPTIONS = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC)


def encode_document(document: Mapping[str, Any]) -> str:
    """Canonical extended JSON of a BSON document; ``InvalidDocument`` if BSON cannot hold it.

    ``bson.encode`` runs first because ``json_util`` is laxer than BSON (it accepts sets, tuples,
    non-string keys): a document the server would refuse is refused here too.
    """
    try:
        bson.encode(document)
    except (InvalidDocument, OverflowError, TypeError, ValueError) as error:
        raise InvalidDocument(f"cannot encode document as BSON: {error}") from error
    return json_util.dumps(document, json_options=CANONICAL_JSON_OPTIONS)


def decode_document(text: str) -> Any:
    return json_util.loads(text, json_options=JSON_OPTIONS)


def encode_value(value: Any) -> str:
    """Canonical extended JSON of a single value (an ``_id``), e.g. ``{"$oid": "..."}``."""
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def key_string(value: Any) -> str:
    """The raw zone's ``_id`` column: ObjectId as 24 hex digits, a string as itself, anything
    else as canonical extended JSON (so ``1``, ``Int64(1)`` and ``"1"`` stay distinct)."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value
    return encode_value(value)


def relaxed_json(value: Any) -> str:
    """Relaxed extended JSON for dead letters; values JSON cannot hold are written as their repr,
    so a dead letter is never lost to the very encoding problem it records."""
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
