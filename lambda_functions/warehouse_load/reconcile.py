"""Warehouse vs lake table at the loaded version: row count, duplicate keys, and the key set.

The key set is compared by hashed buckets so that Redshift never has to ship its keys: each
warehouse answers one GROUP BY (256 buckets by the first byte of md5(``_id``): rows, distinct keys
and the sum of a 32-bit slice of md5(``_id:_pos``)), and the lake side answers the very same query
(DuckDB dialect) over the lake's Arrow rows, in process. MD5 of the UTF-8 text is the same function
in DuckDB, Redshift and Python (``warehouse_sql.key_bucket``/``version_hash``, checked by the tests);
DuckDB does it vectorized, about six times faster than a Python loop on 2M keys. Including ``_pos``
means a row holding an older version of a document is caught, not only a missing or extra key.
When buckets differ, the rows of a few of them are read back on both sides to name the missing,
extra and stale keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from lambda_functions.warehouse_load.set_aside import warehouse_key
from lambda_functions.warehouse_sql import (
    DUCKDB,
    Dialect,
    Statement,
    TargetTable,
    bucket_rows_query,
    reconciliation_query,
)

SAMPLE_BUCKETS = 4
SAMPLE_KEYS = 10


class Readable(Protocol):
    dialect: Dialect

    def query(self, statement: Statement) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class BucketDifference:
    bucket: int
    lake_rows: int
    warehouse_rows: int
    lake_hash: int
    warehouse_hash: int


@dataclass(frozen=True)
class Reconciliation:
    warehouse_rows: int
    lake_rows: int
    duplicate_keys: int
    buckets_compared: int
    differing_buckets: list[BucketDifference] = field(default_factory=list)  # first few
    buckets_differing: int = 0
    missing_keys: list[str] = field(default_factory=list)  # in the lake, not in the warehouse
    extra_keys: list[str] = field(default_factory=list)  # in the warehouse, not in the lake
    stale_keys: list[str] = field(default_factory=list)  # in both, at another change position
    # Lake rows the warehouse cannot hold (``set_aside``): left out of the comparison, counted.
    documents_set_aside: int = 0
    set_aside_keys: list[str] = field(default_factory=list)  # first few, with their reasons
    set_aside_reasons: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        """The warehouse holds every lake row except those set aside, and nothing else."""
        return (
            self.warehouse_rows + self.documents_set_aside == self.lake_rows
            and not self.duplicate_keys
            and not self.buckets_differing
        )

    @property
    def complete(self) -> bool:
        """``matches`` and no document set aside: the warehouse holds every lake row."""
        return self.matches and not self.documents_set_aside

    def metadata(self) -> dict[str, Any]:
        """JSON-able figures for the asset check."""
        return {
            "warehouse_rows": self.warehouse_rows,
            "lake_rows": self.lake_rows,
            "duplicate_keys": self.duplicate_keys,
            "buckets_compared": self.buckets_compared,
            "buckets_differing": self.buckets_differing,
            "differing_buckets": [dataclasses.asdict(b) for b in self.differing_buckets],
            "missing_keys_sample": self.missing_keys,
            "extra_keys_sample": self.extra_keys,
            "stale_keys_sample": self.stale_keys,
            "documents_set_aside": self.documents_set_aside,
            "set_aside_keys_sample": self.set_aside_keys,
            "set_aside_reasons_sample": self.set_aside_reasons,
        }


@contextmanager
def _lake_side(lake: pa.Table) -> Iterator[_LakeRows]:
    """The lake rows (``_id``, ``_pos``) as a DuckDB relation named like a warehouse table."""
    db = duckdb.connect()
    try:
        db.register("lake_rows", lake.select(["_id", "_pos"]))
        db.execute('CREATE SCHEMA "lake"')
        db.execute('CREATE VIEW "lake"."rows" AS SELECT * FROM lake_rows')
        yield _LakeRows(db)
    finally:
        db.close()


class _LakeRows:
    dialect: Dialect = DUCKDB
    table = TargetTable("lake", "rows")

    def __init__(self, db: duckdb.DuckDBPyConnection):
        self.db = db

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        return self.db.execute(statement.sql).fetchall()


def _buckets(side: Readable, target: TargetTable) -> tuple[dict[int, tuple[int, int]], int]:
    """bucket -> (rows, hash sum), and the number of duplicate keys, from one GROUP BY."""
    buckets: dict[int, tuple[int, int]] = {}
    duplicates = 0
    for bucket, row_count, key_count, hash_sum in side.query(
        reconciliation_query(side.dialect, target)
    ):
        buckets[int(bucket)] = (int(row_count), int(hash_sum or 0))
        duplicates += int(row_count) - int(key_count)
    return buckets, duplicates


def lake_buckets(lake: pa.Table) -> dict[int, tuple[int, int]]:
    """bucket -> (rows, sum of version hashes) for the lake rows (``_id``, ``_pos``)."""
    with _lake_side(lake) as side:
        return _buckets(side, side.table)[0]


def reconcile(
    warehouse: Readable,
    target: TargetTable,
    lake: pa.Table,
    set_aside: Sequence[tuple[Any, ...]] = (),
) -> Reconciliation:
    """Compare ``target`` with the lake rows at the loaded version, by key-hash bucket.

    Read-only on both sides; one GROUP BY on the warehouse (256 buckets), the same query on the
    lake rows in process, then the rows of at most a few differing buckets to name keys.

    Args:
        warehouse: an executor able to run reads (``query``) with its ``dialect``.
        target: the loaded table.
        lake: the lake rows at the loaded version: an Arrow table with ``_id`` (record key
            text) and ``_pos`` (change position, int64), one row per live key.
        set_aside: ``(key, pos, reason)`` rows of ``set_aside_query``: keys the warehouse cannot
            hold, left out of the comparison and counted instead.

    Returns:
        A ``Reconciliation``: ``matches`` when the warehouse holds every lake row except those
        set aside, each once at its lake position, and nothing else.
    """
    lake_rows = lake.num_rows
    if set_aside:
        aside = pa.array(sorted({str(row[0]) for row in set_aside}), pa.string())
        keys = lake.column("_id")
        limit = warehouse.dialect.max_key_bytes
        if limit and pc.any(pc.greater(pc.binary_length(keys), limit)).as_py():
            # Keys over the limit are recorded by their stand-in (``set_aside.warehouse_key``).
            keys = pa.array(
                [warehouse_key(k, warehouse.dialect) for k in keys.to_pylist()], pa.string()
            )
        lake = lake.filter(pc.invert(pc.is_in(keys, value_set=aside)))
    ours, duplicates = _buckets(warehouse, target)
    with _lake_side(lake) as side:
        theirs, _ = _buckets(side, side.table)
        compared = ours.keys() | theirs.keys()
        differing = sorted(b for b in compared if ours.get(b) != theirs.get(b))
        sampled = differing[:SAMPLE_BUCKETS]
        expected = _rows_in(side, side.table, sampled) if sampled else {}
    stored = _rows_in(warehouse, target, sampled) if sampled else {}
    stale = (k for k in expected.keys() & stored.keys() if stored[k] != expected[k])
    return Reconciliation(
        warehouse_rows=sum(rows for rows, _ in ours.values()),
        lake_rows=lake_rows,
        duplicate_keys=duplicates,
        buckets_compared=len(compared),
        differing_buckets=[
            BucketDifference(
                bucket=b,
                lake_rows=theirs.get(b, (0, 0))[0],
                warehouse_rows=ours.get(b, (0, 0))[0],
                lake_hash=theirs.get(b, (0, 0))[1],
                warehouse_hash=ours.get(b, (0, 0))[1],
            )
            for b in sampled
        ],
        buckets_differing=len(differing),
        missing_keys=sorted(expected.keys() - stored.keys())[:SAMPLE_KEYS],
        extra_keys=sorted(stored.keys() - expected.keys())[:SAMPLE_KEYS],
        stale_keys=sorted(stale)[:SAMPLE_KEYS],
        documents_set_aside=lake_rows - lake.num_rows,
        set_aside_keys=[str(row[0]) for row in sorted(set_aside)[:SAMPLE_KEYS]],
        set_aside_reasons=[str(row[2]) for row in sorted(set_aside)[:SAMPLE_KEYS]],
    )


def _rows_in(side: Readable, target: TargetTable, buckets: Sequence[int]) -> dict[str, set[int]]:
    rows: dict[str, set[int]] = {}
    for key, pos in side.query(bucket_rows_query(side.dialect, target, buckets)):
        rows.setdefault(key, set()).add(int(pos) if pos is not None else -1)
    return rows
