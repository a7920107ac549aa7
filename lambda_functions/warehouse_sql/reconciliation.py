"""Reads that reconcile the warehouse with the lake: key buckets, their rows, the set-aside keys.

Key-set reconciliation: 256 buckets by the first byte of md5(_id), each with the row count and the
sum of a 32-bit slice of md5("_id:_pos") (order-free, so SQL and Python agree: ``key_bucket`` and
``version_hash`` compute in Python what the queries compute in SQL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lambda_functions.warehouse_sql.literals import sql_integer
from lambda_functions.warehouse_sql.statements import Statement, TargetTable

if TYPE_CHECKING:
    from lambda_functions.warehouse_sql.dialects import Dialect

BUCKET_HEX_DIGITS = 2


def set_aside_query(dialect: Dialect, target: TargetTable) -> Statement:
    """The keys of ``target`` set aside because the warehouse cannot hold their documents."""
    return target.bookkeeping_rows(
        "set_aside_keys", dialect, target.set_aside, ["_id", "_pos", "reason"]
    )


def reconciliation_query(dialect: Dialect, target: TargetTable) -> Statement:
    """Per key bucket: rows, distinct keys and the sum of a 32-bit hash of ``_id:_pos``."""
    d = dialect
    bucket = d.hex_to_int(f'SUBSTRING(MD5("_id"), 1, {BUCKET_HEX_DIGITS})')
    row_hash = d.hex_to_int("""SUBSTRING(MD5("_id" || ':' || CAST("_pos" AS VARCHAR)), 1, 8)""")
    return Statement(
        "reconcile_buckets",
        f'SELECT {bucket} AS "bucket", COUNT(*) AS "row_count", '
        f'COUNT(DISTINCT "_id") AS "key_count", SUM({row_hash}) AS "hash_sum" '
        f"FROM {target.qualified} GROUP BY 1 ORDER BY 1",
    )


def bucket_rows_query(dialect: Dialect, target: TargetTable, buckets: Sequence[int]) -> Statement:
    """Keys and positions of the warehouse rows in a few buckets (to name what differs)."""
    bucket = dialect.hex_to_int(f'SUBSTRING(MD5("_id"), 1, {BUCKET_HEX_DIGITS})')
    listed = ", ".join(sql_integer(b) for b in buckets)
    return Statement(
        "bucket_rows",
        f'SELECT "_id", "_pos" FROM {target.qualified} WHERE {bucket} IN ({listed})',
    )


def key_bucket(key: str) -> int:
    """The bucket of ``key``, as ``reconciliation_query`` computes it in SQL (the first
    ``BUCKET_HEX_DIGITS`` hex digits of md5 are its first byte)."""
    return hashlib.md5(key.encode()).digest()[0]


def version_hash(key: str, pos: int) -> int:
    """The per-row hash summed by ``reconciliation_query`` (8 hex digits = the first 4 bytes)."""
    return int.from_bytes(hashlib.md5(f"{key}:{pos}".encode()).digest()[:4], "big")
