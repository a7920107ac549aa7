"""How the lake table is laid out: columns, partition bucket of a key, table and writer settings.

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
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import ColumnProperties, WriterProperties

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
