"""The data files of one version of the lake table, read from its add actions (no data is read).

The merge uses them to decide how to apply a batch (how much of the table the batch would rewrite)
and to report what a commit rewrote: Delta merges are copy-on-write, so the files and bytes a
commit replaced are its cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lambda_functions.lake.table_layout import TOMBSTONE_OP


@dataclass(frozen=True)
class TableFiles:
    """Path -> (bucket, bytes, rows, min ``_id``, max ``_id``) of every live data file."""

    files: dict[str, tuple[str, int, int, str | None, str | None]]

    @classmethod
    def of(cls, table: DeltaTable) -> TableFiles:
        actions = pa.table(table.get_add_actions(flatten=True))
        names = actions.column_names

        def column(name: str) -> list:
            return actions.column(name).to_pylist() if name in names else [None] * len(actions)

        return cls(
            {
                path: (bucket or "", size, rows or 0, low, high)
                for path, bucket, size, rows, low, high in zip(
                    column("path"),
                    column("partition._bucket"),
                    column("size_bytes"),
                    column("num_records"),
                    column("min._id"),
                    column("max._id"),
                    strict=True,
                )
            }
        )

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def bytes(self) -> int:
        return sum(f[1] for f in self.files.values())

    @property
    def rows(self) -> int:
        return sum(f[2] for f in self.files.values())

    @property
    def buckets(self) -> set[str]:
        return {f[0] for f in self.files.values()}

    def touched_by(self, changes: pa.Table) -> TableFiles:
        """The files a merge of ``changes`` reads and rewrites: those in the changes' buckets
        whose ``_id`` range overlaps the changes' range in that bucket (the pruning delta-rs
        does with ``streamed_exec=False``). A file without statistics counts as touched."""
        ranges = _key_ranges(changes)
        touched = {}
        for path, (bucket, size, rows, low, high) in self.files.items():
            if bucket not in ranges:
                continue
            first, last = ranges[bucket]
            if low is None or high is None or (low <= last and high >= first):
                touched[path] = (bucket, size, rows, low, high)
        return TableFiles(touched)

    def minus(self, other: TableFiles) -> TableFiles:
        """Files here and not in ``other``: after a commit, ``before.minus(after)`` is what it
        removed (rewrote) and ``after.minus(before)`` what it wrote."""
        return TableFiles({p: f for p, f in self.files.items() if p not in other.files})


def _key_ranges(changes: pa.Table) -> dict[str, tuple[str, str]]:
    """Bucket -> (smallest key, largest key) of the changes."""
    if changes.num_rows == 0:
        return {}
    grouped = (
        changes.select(["_bucket", "_id"])
        .group_by("_bucket")
        .aggregate([("_id", "min"), ("_id", "max")])
    )
    return {
        bucket: (low, high)
        for bucket, low, high in zip(
            grouped.column("_bucket").to_pylist(),
            pc.cast(grouped.column("_id_min"), pa.string()).to_pylist(),
            pc.cast(grouped.column("_id_max"), pa.string()).to_pylist(),
            strict=True,
        )
    }


def tombstone_count(table: DeltaTable) -> int:
    """Tombstones in ``table`` (see ``lake.table_layout``). ``'delete'`` is the smallest ``_op``, so the
    files' ``_op`` statistics answer for files with none (min above it) or only tombstones (max
    equal to it); only files that mix both have their ``_op`` column read (a small,
    dictionary-encoded column chunk each)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    names = actions.column_names

    def column(name: str) -> list:
        return actions.column(name).to_pylist() if name in names else [None] * len(actions)

    count, mixed = 0, set()
    for path, rows, low, high in zip(
        column("path"), column("num_records"), column("min._op"), column("max._op"), strict=True
    ):
        if low is None or high is None or rows is None:
            mixed.add(path)  # no statistics: read it
        elif low != TOMBSTONE_OP:
            continue
        elif high == TOMBSTONE_OP:
            count += rows
        else:
            mixed.add(path)
    if mixed:
        names = {path.rsplit("/", 1)[-1] for path in mixed}  # unique (uuid) file names
        for fragment in table.to_pyarrow_dataset().get_fragments():
            if fragment.path.rsplit("/", 1)[-1] in names:
                ops = fragment.to_table(columns=["_op"]).column("_op").cast(pa.string())
                count += pc.sum(pc.equal(ops, TOMBSTONE_OP)).as_py() or 0
    return count
