"""Range planning for a parallel snapshot: split a collection's ``_id`` space into half-open ranges.

A plan is a list of ``IdRange`` ``[lower, upper)`` in MongoDB's BSON comparison order (MongoDB
manual, "Comparison/Sort Order": MinKey < null < numbers < strings < objects < arrays < binary <
ObjectId < bool < date < timestamp < regex < MaxKey). The first range is open below and the last
open above, and every range is read by paging in ``_id`` order *across* type brackets
(``ChangeSource.documents`` continues with the types that sort after the last one), so a plan
covers every ``_id`` type present even though ``$gte``/``$lt`` on ``_id`` match only values of
their own type bracket (MongoDB manual, "Query type bracketing"): a boundary of one type never
leaves another type's documents out, and each document falls in exactly one range.

Boundaries come from the first step of this chain that the server answers (never from
``skip``/``limit`` paging, which reads every skipped document again for every range):

1. ``splitVector`` (the sharding metadata command, MongoDB manual "splitVector"): MongoDB, Atlas
   included, with its privilege (e.g. the ``clusterManager`` role). Not DocumentDB: internal
   commands are not supported and it is not in "Supported MongoDB APIs, operations, and data
   types in Amazon DocumentDB".
2. ``$bucketAuto`` grouped by ``_id`` (``allowDiskUse``): MongoDB; DocumentDB "New from version
   8.0.2" (Amazon DocumentDB Developer Guide, "$bucketAuto").
3. ``$sample`` quantiles: MongoDB; DocumentDB 3.6, 4.0, 5.0 and 8.0.
4. ObjectId time ranges between the smallest and largest ObjectId ``_id`` (two ``find``s sorted
   on ``_id``): everywhere; one range when there are no ObjectId ``_id``s.

A refused step (``OperationFailure``: MongoDB 59 ``CommandNotFound`` or an authorization error,
DocumentDB 303 "Feature not supported") moves on to the next.

The embedded stand-in answers the first step itself (``split_keys``: exact quantiles of its
``_id`` index), so local runs and tests plan the way ``splitVector`` would. ``$sample`` and the
ObjectId step give approximate boundaries: ranges are then uneven in size, never wrong.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import bson
from bson import Binary, Decimal128, ObjectId
from bson.datetime_ms import DatetimeMS
from pymongo.errors import OperationFailure

from lambda_functions.cdc_capture.documentdb_source import _type_bracket
from lambda_functions.cdc_capture.positions import millis
from lambda_functions.lake.extended_json import decode_document, encode_value
from lambda_functions.lake.record_key import record_key

PLAN_FORMAT_VERSION = 1
SAMPLES_PER_RANGE = 20  # $sample draws this many _ids per planned range
MAX_RANGES = 256

__all__ = [
    "IdRange",
    "RangePlan",
    "bson_order_key",
    "plan_boundaries",
    "ranges_from_boundaries",
]


def bson_order_key(value: Any) -> bytes:
    """Bytes that sort like MongoDB's BSON comparison order for ``_id`` values.

    The type bracket first (``documentdb_source.TYPE_BRACKETS``' order), then the value: exact
    for ObjectId, strings (their UTF-8 bytes, surrogate escapes giving back the original
    bytes), booleans and dates; numbers by value as a double, ties broken by the exact value's
    record key (so 1 = NumberLong(1) = 1.0 are one key); binary by length, subtype, bytes;
    embedded documents by their record key; other types by their BSON encoding within their
    bracket. The same order as the embedded stand-in's ``_id`` index.
    """
    bracket = _type_bracket(value)
    head = bytes([bracket if bracket is not None else 255])
    if isinstance(value, ObjectId):
        return head + value.binary
    if isinstance(value, bool):
        return head + bytes([value])
    if isinstance(value, str):
        return head + value.encode("utf-8", "surrogateescape")
    if isinstance(value, int | float | Decimal128):
        number = float(value.to_decimal() if isinstance(value, Decimal128) else value)
        (bits,) = struct.unpack(">Q", struct.pack(">d", number))
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
        return head + struct.pack(">Q", bits) + record_key(value).encode()
    if value is None:
        return head
    if isinstance(value, datetime | DatetimeMS):
        return head + struct.pack(">Q", millis(value) + (1 << 63))
    if isinstance(value, bytes):
        subtype = value.subtype if isinstance(value, Binary) else 0
        return head + struct.pack(">IB", len(value), subtype) + bytes(value)
    if isinstance(value, Mapping):
        return head + record_key(value).encode()
    return head + bson.encode({"v": value})


@dataclass(frozen=True)
class IdRange:
    """One range ``[lower, upper)`` of ``_id`` values in BSON order.

    Attributes:
        index: 0-based place in the plan (ranges are in ``_id`` order).
        lower: canonical extended JSON of the first ``_id`` the range holds (inclusive);
            ``None``: open below (from the lowest BSON type).
        upper: canonical extended JSON of the first ``_id`` of the next range (exclusive);
            ``None``: open above (up to MaxKey).
    """

    index: int
    lower: str | None
    upper: str | None

    def lower_id(self) -> Any:
        """The lower bound's ``_id`` value (``None`` when open below)."""
        return _decoded(self.lower)

    def upper_id(self) -> Any:
        """The upper bound's ``_id`` value (``None`` when open above)."""
        return _decoded(self.upper)

    def holds(self, value: Any) -> bool:
        """``value`` is in ``[lower, upper)`` in BSON order."""
        key = bson_order_key(value)
        lower, upper = self.lower_id(), self.upper_id()
        if self.lower is not None and key < bson_order_key(lower):
            return False
        return self.upper is None or key < bson_order_key(upper)


@dataclass(frozen=True)
class RangePlan:
    """A parallel snapshot's plan: one generation of a collection, its ranges and where the
    stream resumes once every range is published.

    Attributes:
        generation: the generation id (``g<start_pos>-<8 hex>``), naming the objects of this
            snapshot in the raw zone.
        namespace: ``"database.collection"``.
        method: the planning step that answered (``splitVector``, ``$bucketAuto``, ``$sample``,
            ``objectid_time``, ``embedded_split_keys``, ``single``).
        ranges: the ranges, in ``_id`` order, covering every ``_id``.
        start_token: the stream position recorded *before* planning (``storable_token`` form).
        start_pos: that position as a ``pos`` (cluster time ``t << 32 | i``; 0 when unknown).
        start_time: epoch seconds when the position was recorded.
        after_batch: the raw-zone batch the generation's manifest follows (it is published as
            ``after_batch + 1``; a plan whose ``after_batch`` is no longer the newest is stale).
        estimated_documents: the source's document count when planned (``None``: unknown).
        created_at: ISO-8601 UTC time of planning.
    """

    generation: str
    namespace: str
    method: str
    ranges: tuple[IdRange, ...]
    start_token: dict[str, Any]
    start_pos: int
    start_time: float
    after_batch: int
    estimated_documents: int | None
    created_at: str
    format_version: int = PLAN_FORMAT_VERSION

    @staticmethod
    def new_generation(start_pos: int) -> str:
        return f"g{start_pos}-{uuid.uuid4().hex[:8]}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RangePlan:
        raw = json.loads(data)
        raw["ranges"] = tuple(IdRange(**r) for r in raw["ranges"])
        return cls(**raw)

    def summary(self) -> list[dict[str, Any]]:
        """The ranges as JSON-able rows (``index``, ``lower``, ``upper``) for metadata."""
        return [asdict(r) for r in self.ranges]


def ranges_from_boundaries(boundaries: Sequence[Any]) -> tuple[IdRange, ...]:
    """Half-open ranges split at ``boundaries`` (``_id`` values in any order, duplicates allowed).

    Returns ``len(distinct boundaries) + 1`` ranges: ``[None, b1), [b1, b2), ..., [bn, None)``,
    sorted in BSON order; no boundaries gives one range holding every ``_id``.
    """
    distinct: dict[bytes, Any] = {}
    for value in boundaries:
        distinct.setdefault(bson_order_key(value), value)
    ordered = [distinct[key] for key in sorted(distinct)]
    bounds: list[str | None] = [None, *(encode_value(v) for v in ordered), None]
    return tuple(IdRange(i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1))


def plan_boundaries(
    source: Any, database: str, collection: str, count: int
) -> tuple[str, list[Any], int | None]:
    """Boundaries splitting ``database.collection`` into about ``count`` ranges.

    Args:
        source: a ``DocumentDBChangeSource`` (pymongo: the fallback chain of the module
            docstring), a source with ``split_keys`` (the embedded stand-in), or any other
            ``ChangeSource`` (one range).
        database, collection: the collection.
        count: ranges wanted, 1 to ``MAX_RANGES``.

    Returns:
        ``(method, boundaries, estimated documents)``: the step that answered, at most
        ``count - 1`` ``_id`` values (unordered), and the document count when known.

    Raises:
        ValueError: ``count`` outside 1..``MAX_RANGES``.
        pymongo.errors.PyMongoError: the server failed in a way no fallback answers (network,
            authentication): the caller translates it.
    """
    if not 1 <= count <= MAX_RANGES:
        raise ValueError(f"count must be 1 to {MAX_RANGES}, not {count}")
    if count == 1:
        return "single", [], None
    client = getattr(source, "client", None)
    if client is not None:
        return _pymongo_boundaries(client[database], collection, count)
    split_keys = getattr(source, "split_keys", None)
    if split_keys is not None:
        keys, total = split_keys(database, collection, count)
        return "embedded_split_keys", list(keys), total
    return "single", [], None


# -- the pymongo chain ------------------------------------------------------------------------------
def _pymongo_boundaries(db: Any, collection: str, count: int) -> tuple[str, list[Any], int | None]:
    total, size = _collection_size(db, collection)
    steps = (
        ("splitVector", _split_vector),
        ("$bucketAuto", _bucket_auto),
        ("$sample", _sample),
        ("objectid_time", _objectid_time),
    )
    for method, step in steps:
        try:
            boundaries = step(db, collection, count, total, size)
        except OperationFailure:
            continue  # not supported or not allowed here: the next step
        if boundaries is not None:
            return method, _evenly(boundaries, count - 1), total
    return "single", [], total


def _collection_size(db: Any, collection: str) -> tuple[int | None, int | None]:
    """(documents, bytes) from ``collStats`` (MongoDB and DocumentDB); ``None`` when refused."""
    try:
        stats = db.command("collStats", collection)
    except OperationFailure:
        return None, None
    return int(stats.get("count", 0)), int(stats.get("size", 0))


def _split_vector(db: Any, collection: str, count: int, total: int | None, size: int | None):
    """MongoDB's ``splitVector`` (the chunk splitter's own command): split points of the
    ``_id`` index, each chunk at most ``size / count`` bytes."""
    chunk_bytes = max(1, math.ceil((size or 0) / count)) if size else 1 << 20
    command: dict[str, Any] = {
        "splitVector": f"{db.name}.{collection}",
        "keyPattern": {"_id": 1},
        "maxChunkSizeBytes": chunk_bytes,
    }
    if total:
        command["maxChunkObjects"] = max(1, math.ceil(total / count))
    reply = db.command(command)
    return [key["_id"] for key in reply.get("splitKeys", [])]


def _bucket_auto(db: Any, collection: str, count: int, total: int | None, size: int | None):
    """``$bucketAuto`` on ``_id``: ``count`` buckets of about equal size; each bucket's ``min``
    after the first is a boundary (a BSON-ordered sort of every ``_id``, so ``allowDiskUse``)."""
    pipeline = [{"$bucketAuto": {"groupBy": "$_id", "buckets": count}}]
    buckets = list(db[collection].aggregate(pipeline, allowDiskUse=True))
    return [bucket["_id"]["min"] for bucket in buckets[1:]]


def _sample(db: Any, collection: str, count: int, total: int | None, size: int | None):
    """``$sample`` of ``SAMPLES_PER_RANGE * count`` ``_id``s; their quantiles are boundaries."""
    pipeline = [{"$sample": {"size": SAMPLES_PER_RANGE * count}}, {"$project": {"_id": 1}}]
    ids = [doc["_id"] for doc in db[collection].aggregate(pipeline)]
    if not ids:
        return None
    ids.sort(key=bson_order_key)
    return [ids[len(ids) * i // count] for i in range(1, count)]


def _objectid_time(db: Any, collection: str, count: int, total: int | None, size: int | None):
    """ObjectIds made at even steps between the smallest and largest ObjectId ``_id``'s
    creation time (``find`` sorted on ``_id``, one document each way); ``None`` without
    ObjectId ``_id``s."""
    only_oids = {"_id": {"$type": "objectId"}}
    coll = db[collection]
    low = list(coll.find(only_oids, {"_id": 1}, sort=[("_id", 1)], limit=1))
    high = list(coll.find(only_oids, {"_id": 1}, sort=[("_id", -1)], limit=1))
    if not low or not high:
        return None
    start = low[0]["_id"].generation_time.timestamp()
    end = high[0]["_id"].generation_time.timestamp() + 1
    step = (end - start) / count
    return [
        ObjectId.from_datetime(datetime.fromtimestamp(start + step * i, UTC))
        for i in range(1, count)
    ]


def _evenly(values: Sequence[Any], wanted: int) -> list[Any]:
    """At most ``wanted`` of ``values`` (in BSON order), evenly spaced."""
    ordered = sorted(values, key=bson_order_key)
    if len(ordered) <= wanted:
        return ordered
    return [ordered[(len(ordered) * (i + 1)) // (wanted + 1)] for i in range(wanted)]


def _decoded(ejson: str | None) -> Any:
    return None if ejson is None else decode_document(ejson)


def range_metadata(plan: RangePlan) -> dict[str, Any]:
    """The plan's figures for Dagster metadata (plain values; ``typed_metadata`` types them)."""
    return {
        "range_generation": plan.generation,
        "range_method": plan.method,
        "range_count": len(plan.ranges),
        "range_plan": plan.summary(),
        "range_start_position": plan.start_pos,
    }
