"""The stored state of a parallel range snapshot: the raw-zone keys of its plan, pages and
progress, and the typed records the capture function reports (``range_snapshot`` does the work).

Layout under the collection's raw-zone prefix (``raw/<db>/<coll>/``)::

    ranges/_open.json                                   {"generation": id}: the plan in progress
    ranges/<generation>/plan.json                       the RangePlan
    ranges/<generation>/range-<i>/page-<n>.parquet      rows of page n (``BATCH_SCHEMA``)
    ranges/<generation>/range-<i>/page-<n>.quarantine.jsonl   its dead letters, if any
    ranges/<generation>/range-<i>/progress.json         RangeProgress, written after each page

None of these is part of the table until the generation's manifest names the pages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from lambda_functions.cdc_capture.errors import CaptureError
from lambda_functions.cdc_capture.range_plan import IdRange, RangePlan, range_metadata
from lambda_functions.errors import TerminalError
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.pipes import typed_metadata

__all__ = [
    "RangeProgress",
    "RangeResult",
    "RangeSnapshotStatus",
    "SnapshotRangeError",
    "open_key",
    "plan_key",
    "range_prefix",
    "read_plan",
    "read_progress",
    "write_progress",
]


class SnapshotRangeError(CaptureError, TerminalError):
    """A range request names a generation or range the raw zone has no plan for (a request
    built for another lake or collection, or a plan removed by hand): plan again."""


@dataclass
class RangeProgress:
    """How far one range's capture got: written after each page, read by the next run.

    Attributes:
        index: the range's place in the plan.
        last_id: canonical extended JSON of the last ``_id`` captured (``None``: none yet).
        documents: rows in the pages listed.
        bytes: Parquet bytes of the pages listed.
        pages: the pages written, in order, as ``BatchFile`` fields (key, rows, bytes, sha256).
        quarantined: dead letters in the pages' quarantine files (``quarantine_keys``).
        complete: the range is read to its upper bound.
    """

    index: int
    last_id: str | None = None
    documents: int = 0
    bytes: int = 0
    pages: list[dict[str, Any]] = field(default_factory=list)
    quarantined: int = 0
    quarantine_keys: list[str] = field(default_factory=list)
    complete: bool = False


@dataclass(frozen=True)
class RangeResult:
    """What one range invocation did (``capture_range``).

    Attributes:
        namespace, generation, index, count: which range of which plan.
        progress: the range's progress after this run.
        documents_this_run: rows this run wrote.
        duration_seconds: wall time of the run.
    """

    namespace: str
    generation: str
    index: int
    count: int
    progress: RangeProgress
    documents_this_run: int
    duration_seconds: float

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Typed Pipes metadata: the range, its documents, bytes and pages, and whether done."""
        return typed_metadata(
            {
                "dagster/row_count": self.documents_this_run,
                "range_generation": self.generation,
                "range_index": self.index,
                "range_count": self.count,
                "range_documents": self.progress.documents,
                "range_bytes": self.progress.bytes,
                "range_pages": len(self.progress.pages),
                "range_complete": self.progress.complete,
                "phase": "snapshot",
                "duration_seconds": float(round(self.duration_seconds, 3)),
            }
        )


@dataclass(frozen=True)
class RangeSnapshotStatus:
    """Where a collection's range snapshot stands after a plan/publish call.

    Attributes:
        step: ``"not_planned"`` (no snapshot to take: the collection is streaming, or a
            single-worker snapshot is under way; capture as usual), ``"in_progress"`` (ranges
            remain: capture them), ``"published"`` (this call wrote the generation's manifest).
        plan: the plan (``None`` when not planned).
        progress: each range's progress, by index.
        batch: the generation's batch number once published.
    """

    step: str
    plan: RangePlan | None = None
    progress: tuple[RangeProgress, ...] = ()
    batch: int | None = None

    @property
    def unfinished(self) -> list[IdRange]:
        """The plan's ranges not complete yet."""
        if self.plan is None:
            return []
        done = {p.index for p in self.progress if p.complete}
        return [r for r in self.plan.ranges if r.index not in done]

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Typed Pipes metadata: the plan and documents/bytes per range."""
        values: dict[str, Any] = {"range_step": self.step}
        if self.plan is not None:
            values |= range_metadata(self.plan)
            values["range_documents"] = [p.documents for p in self.progress]
            values["range_bytes"] = [p.bytes for p in self.progress]
            values["range_complete"] = [p.complete for p in self.progress]
            values["ranges_complete"] = sum(p.complete for p in self.progress)
            values["snapshot_documents"] = sum(p.documents for p in self.progress)
        if self.batch is not None:
            values["generation_batch"] = self.batch
        return typed_metadata(values)


# -- keys -------------------------------------------------------------------------------------------
def open_key(zone: RawZone) -> str:
    return f"{zone.prefix}/ranges/_open.json"


def plan_key(zone: RawZone, generation: str) -> str:
    return f"{zone.prefix}/ranges/{generation}/plan.json"


def range_prefix(zone: RawZone, generation: str, index: int) -> str:
    return f"{zone.prefix}/ranges/{generation}/range-{index:05d}"


def read_plan(zone: RawZone, generation: str) -> RangePlan:
    """The stored plan of ``generation``.

    Raises:
        SnapshotRangeError: there is no such plan under this collection's prefix.
    """
    try:
        return RangePlan.from_json(zone.store.get(plan_key(zone, generation)))
    except FileNotFoundError:
        raise SnapshotRangeError(
            f"{zone.namespace}: no range plan {generation!r} in the raw zone; plan the snapshot "
            "again (materialize cdc_raw_batches with LAKEHOUSE_SNAPSHOT_RANGES > 1)"
        ) from None


def read_progress(zone: RawZone, generation: str, index: int) -> RangeProgress:
    """A range's progress (an empty one before its first page)."""
    try:
        raw = json.loads(zone.store.get(f"{range_prefix(zone, generation, index)}/progress.json"))
    except FileNotFoundError:
        return RangeProgress(index=index)
    return RangeProgress(**raw)


def write_progress(zone: RawZone, generation: str, progress: RangeProgress) -> None:
    key = f"{range_prefix(zone, generation, progress.index)}/progress.json"
    zone.store.put(key, json.dumps(asdict(progress), sort_keys=True).encode())
