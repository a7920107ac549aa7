"""How the lake table is laid out: columns, partition bucket of a key, table and writer settings.

Shared by every stage that writes or reads the lake table (merge, warehouse load, source audit),
so none of them imports another stage for it.

- **Partition ``_bucket``** is derived from the key alone: the month of an ObjectId's timestamp
  (which never changes for a document and is known for delete events too), else one of 16 hash
  buckets. A key therefore lives in exactly one partition forever, which is what lets a merge read
  only the partitions a batch touches.
- **Rows sorted by ``_id``** when a file is first written, so a file covers a narrow key range and
  its ``_id`` statistics prune it from merges whose keys fall outside it.
- **File size**: ``delta.targetFileSize`` of 32 MB. Copy-on-write merges rewrite whole files, so
  smaller files make a merge's cost follow its change more closely; 32 MB keeps the file count
  reasonable for Athena/Redshift Spectrum readers. Compaction restores it for cold partitions.
- **Writer**: zstd level 1 (about 40% smaller than snappy here, at the same speed), no dictionary
  for the unique columns ``_id`` and ``doc`` (a dictionary of unique values only costs time), no
  Parquet statistics for ``doc``.
- **Statistics** only on the small columns: the JSON ``doc`` would put two whole documents per
  file into the Delta log and slow every table load.
- **Tombstones.** A deleted document stays in the table for a while as a tombstone: a row with
  ``_op = 'delete'``, a null ``doc`` and null typed columns, carrying the delete's ``_pos``,
  ``_event_time``, ``_batch`` and ``_seq``. It lives where the key lives (same partition, same
  file range), so the merge's rule "a change applies only if its ``_pos`` is ``>=`` the stored
  one" refuses an older change delivered late, and maintenance expires it after the tombstone
  retention. **Every reader filters them out**: ``LIVE_ROWS`` (SQL: Athena, Spark, Redshift
  Spectrum) or ``live_rows`` (Arrow). ``'delete'`` is the smallest ``_op`` value, so a file's
  ``_op`` statistics say whether it holds tombstones (min is ``'delete'``) or only tombstones
  (max is ``'delete'``) without reading it.
- **Stream order** (``stream_order``): changes order by ``_pos``; at equal ``_pos`` (the events of
  one MongoDB transaction share a ``clusterTime``) a ``_seq`` from the event's resume token
  (``TOKEN_ORDER_BASE`` and up, ``cdc_capture.positions.token_order``) decides, and it is
  comparable between batches, so a queue that delivers a transaction's events out of order does
  not change the result. Rows without one (DMS, snapshots, DocumentDB) order as before: by
  ``_batch``, then ``_seq`` (the delivery order), and before token-ordered rows of their ``_pos``.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import ColumnProperties, WriterProperties

from lambda_functions.lake.raw_manifest import TOKEN_ORDER_BASE

# Columns every lake table has, in order. Typed columns captured from the documents may follow.
TABLE_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("_bucket", pa.string(), nullable=False),
        pa.field("doc", pa.string()),
        pa.field("_op", pa.string(), nullable=False),
        pa.field("_pos", pa.int64(), nullable=False),
        pa.field("_batch", pa.int64(), nullable=False),
        pa.field("_seq", pa.int64(), nullable=False),
        pa.field("_event_time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
PARTITION_BY = ["_bucket"]
TARGET_FILE_SIZE = 32 * 1024 * 1024
TABLE_CONFIGURATION = {
    "delta.enableChangeDataFeed": "true",
    "delta.targetFileSize": str(TARGET_FILE_SIZE),
    "delta.dataSkippingStatsColumns": "_id,_op,_pos,_batch,_seq,_event_time",
}
WRITER_PROPERTIES = WriterProperties(
    compression="ZSTD",
    compression_level=1,
    column_properties={
        "_id": ColumnProperties(dictionary_enabled=False),
        # Page statistics of whole JSON documents help no reader and cost write time.
        "doc": ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE"),
    },
)

HASH_BUCKETS = 16

# The lake table's live rows, as a SQL predicate for external readers and Delta predicates:
# tombstones (see the module docstring) are rows of deleted documents, never data.
TOMBSTONE_OP = "delete"
LIVE_ROWS = f"_op <> '{TOMBSTONE_OP}'"


def is_tombstone(rows: pa.Table) -> pa.ChunkedArray:
    """Per row: True for a tombstone (``_op = 'delete'``)."""
    return pc.equal(rows.column("_op").cast(pa.string()), TOMBSTONE_OP)


def live_rows(rows: pa.Table) -> pa.Table:
    """``rows`` without tombstones: what every reader of the lake table must see (Arrow's
    ``LIVE_ROWS``). ``rows`` needs the ``_op`` column."""
    return rows.filter(pc.invert(is_tombstone(rows)))


def live_changes(feed: pa.Table) -> pa.Table:
    """A Delta change data feed (with ``_change_type``, ``_commit_version``, ``_id``, ``_op``)
    as changes of live rows only: what the feed means once tombstones are read as "no document".

    The rewrite writes such a feed itself; delta-rs (MERGE, DELETE) and commits without change
    files treat tombstones as rows. Per commit and key: a tombstone ``insert`` or ``delete``
    is dropped; an update from a live row to a tombstone becomes a ``delete`` of the live row;
    from a tombstone to a live row, an ``insert`` of the live row; from a tombstone to a
    tombstone, nothing. Updates between live rows are kept. Row order is not kept.
    """
    dead = is_tombstone(feed)
    if not pc.any(dead).as_py():
        return feed
    feed = feed.cast(  # delta-rs reads strings as string_view, which Arrow's join cannot take
        pa.schema(
            pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f
            for f in feed.schema
        )
    )
    kind = feed.column("_change_type").cast(pa.string())
    keys = ["_commit_version", "_id"]

    def image(change_type: str, name: str) -> pa.Table:
        mask = pc.equal(kind, change_type)
        return feed.select(keys).filter(mask).append_column(name, dead.filter(mask))

    paired = feed.append_column("_dead", dead)
    paired = paired.join(image("update_preimage", "_dead_before"), keys, join_type="left outer")
    paired = paired.join(image("update_postimage", "_dead_after"), keys, join_type="left outer")
    kind = paired.column("_change_type").cast(pa.string())
    before = pc.fill_null(paired.column("_dead_before"), False)
    after = pc.fill_null(paired.column("_dead_after"), False)
    is_pre, is_post = pc.equal(kind, "update_preimage"), pc.equal(kind, "update_postimage")
    renamed = pc.if_else(
        pc.and_(is_pre, after), "delete", pc.if_else(pc.and_(is_post, before), "insert", kind)
    )
    keep = pc.invert(paired.column("_dead"))
    paired = paired.set_column(
        paired.schema.get_field_index("_change_type"),
        "_change_type",
        renamed.cast(feed.schema.field("_change_type").type),
    )
    return paired.filter(keep).drop_columns(["_dead", "_dead_before", "_dead_after"])


def key_bucket(key: str) -> str:
    """The partition of a key: the month of an ObjectId's timestamp, else one of 16 hash buckets."""
    if len(key) == 24:
        try:
            seconds = int(key[:8], 16)
        except ValueError:
            pass
        else:
            return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m")
    return f"h{zlib.crc32(key.encode()) % HASH_BUCKETS:02d}"


_HEX_VALUE = np.full(256, -1, np.int8)  # ASCII byte -> hex digit value, -1 if not a digit
for _digit, _char in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_char] = _HEX_VALUE[ord(chr(_char).upper())] = _digit


def key_buckets(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``key_bucket`` of every key, vectorised: keys shaped like an ObjectId (24 characters, the
    first 8 hex digits) in numpy, any other key through ``key_bucket`` itself, so the two always
    agree (a key's partition must never change)."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    keys = keys.cast(pa.string())
    n = len(keys)
    shaped = np.flatnonzero(pc.fill_null(pc.equal(pc.utf8_length(keys), 24), False))
    # The first 8 bytes; a non-ASCII byte is not a hex digit, so such keys take the slow path.
    prefix = pc.binary_slice(keys.take(shaped).cast(pa.binary()), 0, 8).cast(pa.binary(8))
    raw = np.frombuffer(prefix.buffers()[1], np.uint8, 8 * len(prefix), 8 * prefix.offset)
    digits = _HEX_VALUE[raw].reshape(-1, 8)
    hexadecimal = digits.min(axis=1) >= 0 if len(digits) else np.zeros(0, bool)
    fast = shaped[hexadecimal]
    digits = digits[hexadecimal].astype(np.uint8)
    seconds = ((digits[:, 0::2] << 4) | digits[:, 1::2]).copy().view(">u4").ravel()
    months = seconds.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    first = int(months.min()) if len(months) else 0
    span = int(months.max()) - first + 1 if len(months) else 0
    names = pa.array(np.arange(first, first + span).astype("datetime64[M]").astype(str))
    labels = names.take(pa.array(months - first)).cast(pa.string())
    slow = np.setdiff1d(np.arange(n), fast, assume_unique=True)
    values = pa.concat_arrays(
        [labels, pa.array([key_bucket(keys[int(i)].as_py()) for i in slow], pa.string())]
    )
    order = np.empty(n, np.int64)
    order[fast] = np.arange(len(fast))
    order[slow] = len(fast) + np.arange(len(slow))
    return values.take(pa.array(order))


_TOKEN_ORDER = "_token_order"  # transient sort column of ``stream_order``

# SQL (delta-rs MERGE, source ``s`` and target ``t``): the change ``s`` is not older than the
# stored row ``t`` in stream order; the stored row is from an earlier batch (``change_wins``).
CHANGE_WINS_SQL = (
    f"(s._pos > t._pos OR (s._pos = t._pos AND (t._seq < {TOKEN_ORDER_BASE} OR s._seq >= t._seq)))"
)


def token_order(seqs: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Per ``_seq``: itself when it is a resume-token order (``>= TOKEN_ORDER_BASE``), else 0."""
    return pc.if_else(pc.greater_equal(seqs, TOKEN_ORDER_BASE), seqs, 0)


def stream_order(rows: pa.Table, *, by_key: bool = False) -> pa.Table:
    """``rows`` (with ``_pos``, ``_batch``, ``_seq``) sorted in stream order: ``_pos``, then the
    resume-token order (``token_order``: 0 for rows without one), then ``_batch`` and ``_seq``;
    by ``_id`` first when ``by_key``. Stable: equal rows keep their order.

    Events of one transaction share ``_pos``; their tokens order them in the stream (MongoDB
    Manual, "Change Streams" > "Resume Tokens from Change Events": tokens compare in stream
    order), whatever batch a queue delivered them in. Rows without a token keep the order of
    delivery (``_batch``, ``_seq``), as DMS files and snapshots always have."""
    keyed = rows.append_column(_TOKEN_ORDER, token_order(rows.column("_seq")))
    keys = [("_id", "ascending")] if by_key else []
    keys += [
        ("_pos", "ascending"),
        (_TOKEN_ORDER, "ascending"),
        ("_batch", "ascending"),
        ("_seq", "ascending"),
    ]
    return keyed.sort_by(keys).drop_columns([_TOKEN_ORDER])


def change_wins(change_pos: Any, change_seq: Any, stored_pos: Any, stored_seq: Any) -> Any:
    """Whether a change replaces the stored row of its key (ints or numpy arrays, elementwise):
    it is not older in stream order (``stream_order``; the stored row is from an earlier batch).
    At equal ``_pos`` the change wins unless the stored row has a resume-token order the
    change's does not reach: a late event of a transaction is refused like an older change."""
    same = change_pos == stored_pos
    return (change_pos > stored_pos) | (
        same & ((stored_seq < TOKEN_ORDER_BASE) | (change_seq >= stored_seq))
    )


def precombine(changes: pa.Table) -> pa.Table:
    """One row per ``_id``: the latest change in ``stream_order`` (``_pos``, the resume-token
    order, ``_batch``, ``_seq``), deterministically (Hudi's precombine: ties on position go to
    the later event of the transaction, then the later batch, then the later row of the batch)."""
    ordered = stream_order(changes, by_key=True)
    ids = ordered.column("_id").combine_chunks()
    if len(ids) == 0:
        return ordered
    is_last = pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1))
    mask = pa.concat_arrays([is_last, pa.array([True])])
    return ordered.filter(mask)
