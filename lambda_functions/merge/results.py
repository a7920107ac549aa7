"""What a merge did: ``MergeCounts`` (the counters one commit adds to a run) and ``MergeResult``
(a run's counters plus the table's state after it).

Each counter is declared once, with the name (or names) under which the handler reports it as
Dagster metadata, so the merge, its result and the handler's metadata cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

__all__ = ["MergeCounts", "MergeResult"]

# Field metadata key: metadata name -> how the field's value is reported under it. A field
# without it is reported under its own name, as is; ``{}`` means not reported.
_REPORT = "report"


def _as_is(value: Any) -> Any:
    return value


def _joined(separator: str) -> Callable[[list[str]], str]:
    return lambda values: separator.join(values) or "none"


_joined_paths = _joined("+")


def _as(report: str | dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """Field metadata: reported under the name ``report`` as is, or under each name of the
    ``report`` mapping converted by its function (``{}``: not reported)."""
    return {_REPORT: {report: _as_is} if isinstance(report, str) else report}


@dataclass(frozen=True)
class MergeCounts:
    """What commits applied: one commit's, or a run's (the sum of its commits', with ``+``).

    Every field is a count or a list, and both add up with ``+``. A segment that a concurrent
    merge applied counts only its ``commit_attempts``.
    """

    # Raw batch numbers applied, in order.
    batches_applied: list[int] = field(default_factory=list, metadata=_as({"batches_applied": len}))
    # How each commit applied its batches: "create", "append", "rewrite", "merge", "drop" or
    # "generation" (a new generation applied page by page, with its reset marker).
    merge_paths: list[str] = field(
        default_factory=list, metadata=_as({"merge_path": _joined_paths, "commits": len})
    )
    rows_in: int = field(default=0, metadata=_as("change_rows_in"))  # change rows read
    # Live rows inserted, updated, deleted (a tombstone written over a live row is a delete).
    inserted: int = field(default=0, metadata=_as("rows_inserted"))
    updated: int = field(default=0, metadata=_as("rows_updated"))
    deleted: int = field(default=0, metadata=_as("rows_deleted"))
    tombstones_written: int = 0  # deletes stored as tombstones (new or replacing)
    # Changes older than the table's drop floor: ignored.
    below_floor: int = field(default=0, metadata=_as("changes_below_drop_floor"))
    files_added: int = 0  # data files written by the commits
    # Data files the commits replaced (reported as both files_removed and files_rewritten).
    files_rewritten: int = field(
        default=0, metadata=_as({"files_removed": _as_is, "files_rewritten": _as_is})
    )
    bytes_rewritten: int = 0
    bytes_written: int = 0
    # Partitions (``_bucket`` values) the commits wrote.
    buckets_touched: list[str] = field(
        default_factory=list, metadata=_as({"partitions_touched": len})
    )
    # Keys stored twice in the partitions the commits wrote; must be 0 (reported by the check).
    duplicate_keys: int = field(default=0, metadata=_as({}))
    commit_attempts: int = field(default=0, metadata=_as({}))
    # Typed columns added or not stored (see schema_evolution).
    schema_changes: list[str] = field(
        default_factory=list, metadata=_as({"schema_changes": _joined("\n")})
    )
    # Deletes without a typed _id (DMS key-only rows) that match several live records: not
    # applied (see key_candidates); each entry lists the keys it could mean.
    ambiguous_deletes: list[str] = field(
        default_factory=list, metadata=_as({"ambiguous_deletes": len})
    )

    # Partial updates (update events with only ``updateDescription``, see partial_updates):
    # applied to the stored document, and set aside (no stored document, or it does not fit).
    partial_updates_applied: int = 0
    partial_updates_unapplied: int = 0

    def __add__(self, other: MergeCounts) -> Self:
        """These counters plus ``other``'s (lists concatenated); other fields of ``self`` kept."""
        return replace(
            self,
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(MergeCounts)},
        )

    def as_metadata(self) -> dict[str, Any]:
        """The counters (and, on a ``MergeResult``, the table state) as plain metadata values
        by their reported names, for ``lambda_functions.pipes.typed_metadata``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            report = f.metadata.get(_REPORT, {f.name: _as_is})
            for name, convert in report.items():
                out[name] = convert(getattr(self, f.name))
        return out

    @property
    def files_removed(self) -> int:
        """Data files the commits removed from the table (= ``files_rewritten``)."""
        return self.files_rewritten

    @property
    def merge_path(self) -> str:
        """The commits' paths joined with "+", or "none" when nothing was pending."""
        return _joined_paths(self.merge_paths)

    @property
    def commits(self) -> int:
        """Delta commits this run made (one per applied segment)."""
        return len(self.merge_paths)


def _table_version(version: int | None) -> int:
    return -1 if version is None else version


@dataclass(frozen=True, kw_only=True)
class MergeResult(MergeCounts):
    """What ``merge_batches`` did (the counters of ``MergeCounts``, summed over its commits) and
    the table's state after it.

    Counts are rows or files; ``bytes_*`` are bytes; ``duration_s`` is seconds of wall time;
    positions (``drop_floor``) are the source's change-stream positions. ``buckets_touched`` is
    sorted and without repeats. A run with nothing pending (e.g. a replay) has zero counters and
    ``merge_path`` "none"; ``version`` and ``last_applied_batch`` then repeat the table's state.
    ``as_metadata()`` gives the handler's Dagster metadata (``dagster/row_count`` = live rows).
    """

    namespace: str = field(metadata=_as({}))  # "database.collection"
    table_uri: str  # the Delta table's location (local path or s3://)
    # Table version after the merge (None: the table does not exist yet; reported as -1).
    version: int | None = field(metadata=_as({"table_version": _table_version}))
    # Pending batches in front of a marker without a position (a new generation): skipped unread.
    batches_superseded: list[int] = field(
        default_factory=list, metadata=_as({"batches_superseded": len})
    )
    last_applied_batch: int = 0  # the table's record of the last batch applied
    table_rows: int = field(
        default=0, metadata=_as("dagster/row_count")
    )  # live rows (tombstones not counted)
    tombstones: int = 0  # tombstones in the table after the merge
    drop_floor: int = 0  # changes below this position are ignored
    files_in_table: int = 0
    bytes_in_table: int = 0
    duration_s: float = field(
        default=0.0, metadata=_as({"duration_seconds": lambda s: round(s, 3)})
    )

    @classmethod
    def of(cls, counts: MergeCounts, **table_state: Any) -> MergeResult:
        """A result from a run's summed ``counts`` and the table's state (the other fields)."""
        summed = {f.name: getattr(counts, f.name) for f in fields(MergeCounts)}
        summed["buckets_touched"] = sorted(set(counts.buckets_touched))
        return cls(**summed, **table_state)
