"""What a merge commit changed, counted from the commit itself: its change data files (or the
files it removed and added), as the Delta protocol defines the change data feed ("Change Data
Files", "Add CDC File"). Used for the commit paths whose writer (delta-rs MERGE, DELETE) does
not count live rows and tombstones apart.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_functions.lake.lake_table import TableLocation
from lambda_functions.lake.table_layout import is_tombstone
from lambda_functions.merge import copy_on_write
from lambda_functions.merge.results import MergeCounts


def feed_counts(where: TableLocation, version: int) -> MergeCounts:
    """What the commit ``version`` did to live rows, from its change data, in which delta-rs
    writes tombstones like any row (a tombstone written over a live row is an update from the
    live row to the tombstone). Reads only that commit's change files."""
    feed = commit_feed(where, version)
    kinds = feed.column("_change_type").to_pylist()
    tombstone = is_tombstone(feed).to_pylist()
    ids = feed.column("_id").to_pylist()
    before: dict[str, bool] = {}  # _id -> the preimage is a tombstone
    after: dict[str, bool] = {}  # _id -> the postimage is a tombstone
    inserted = deleted = tombstones = 0
    for key, kind, dead in zip(ids, kinds, tombstone, strict=True):
        if kind == "insert":
            inserted += not dead
            tombstones += dead
        elif kind == "delete":
            deleted += not dead  # removing a tombstone changes no live row
        elif kind == "update_preimage":
            before[key] = dead
        elif kind == "update_postimage":
            after[key] = dead
    updated = 0
    for key, dead_after in after.items():
        dead_before = before.get(key, False)
        tombstones += dead_after
        if not dead_before and not dead_after:
            updated += 1
        elif not dead_before:
            deleted += 1
        elif not dead_after:
            inserted += 1
    return MergeCounts(
        inserted=inserted, updated=updated, deleted=deleted, tombstones_written=tombstones
    )


def commit_feed(where: TableLocation, version: int) -> pa.Table:
    """(``_id``, ``_op``, ``_change_type``) of the rows commit ``version`` changed: its change
    data files, or, for a commit without any, the rows of the files it removed (``delete``) and
    added (``insert``), as the Delta protocol defines the change feed. Read from the log entry
    and the files themselves (``DeltaTable.load_cdf`` stalls on S3 emulators)."""
    entry = where.store.get(f"{where.key}/_delta_log/{version:020d}.json").decode()
    actions = [json.loads(line) for line in entry.splitlines() if line.strip()]
    changed = [(a["cdc"]["path"], None) for a in actions if "cdc" in a]
    if not changed:
        changed = [
            (a[kind]["path"], "delete" if kind == "remove" else "insert")
            for a in actions
            for kind in ("remove", "add")
            if kind in a and a[kind].get("dataChange", True)
        ]
    fs, root = copy_on_write.pyarrow_filesystem(where.uri, where.options)
    parts = []
    for path, kind in changed:
        columns = ["_id", "_op"] + (["_change_type"] if kind is None else [])
        rows = pq.read_table(f"{root}/{unquote(path)}", columns=columns, filesystem=fs)
        if kind is not None:
            rows = rows.append_column("_change_type", pa.array([kind] * rows.num_rows))
        parts.append(rows.cast(pa.schema([(n, pa.string()) for n in rows.column_names])))
    if not parts:
        return pa.table({n: pa.array([], pa.string()) for n in ("_id", "_op", "_change_type")})
    return pa.concat_tables(parts)
