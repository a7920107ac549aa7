"""The snapshot phase of capture: the initial load of a collection, in ``_id`` order.

The stream position is recorded before any document is read (``SnapshotState.start_token``);
each chunk of at most ``max_rows`` rows or ``max_bytes`` bytes is published as its own batch whose
state says where the snapshot stands, so a run that dies resumes after the last published chunk.
Used by ``capture._CaptureRun`` (the steps read and update the run's counters).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_functions.cdc_capture.batches import BatchRows
from lambda_functions.cdc_capture.capture_state import (
    CaptureState,
    SnapshotState,
    StreamState,
    storable_token,
)
from lambda_functions.cdc_capture.errors import CollectionNotFoundError, SnapshotStalledError
from lambda_functions.cdc_capture.positions import token_position
from lambda_functions.cdc_capture.run_parts import CaptureRunParts
from lambda_functions.contracts import closest_names
from lambda_functions.lake.extended_json import decode_document, encode_value
from lambda_functions.waits import WaitReport

if TYPE_CHECKING:
    from lambda_functions.lake.raw_zone import Checkpoint

SNAPSHOT_PAGE_ROWS = 1_000  # documents asked of the source per page (a chunk reads several)

__all__ = ["SNAPSHOT_PAGE_ROWS", "SnapshotProgress", "SnapshotSteps"]


@dataclass(frozen=True)
class SnapshotProgress:
    """Where the initial load stands: rows published by all runs of this snapshot so far.

    Attributes:
        documents: documents published by every chunk of this snapshot so far.
        last_id: canonical extended JSON of the last snapshotted ``_id`` (``None``: none yet, or
            the snapshot is complete).
        complete: every document was read; capture continues on the change stream.
        start_position: the stream position (``pos``) recorded before the snapshot started.
    """

    documents: int
    last_id: str | None  # canonical extended JSON of the last snapshotted _id
    complete: bool
    start_position: int | None


class SnapshotSteps(CaptureRunParts):
    """The snapshot steps of a capture run (a mixin of ``capture._CaptureRun``, which holds the
    run's request, source, zone and counters and publishes the batches)."""

    report_every_s: float
    snapshot_documents: int | None
    snapshot_start: int | None

    def _start_snapshot(self) -> SnapshotState:
        """Record the stream position before reading any document (nothing can fall between)."""
        self._require_collection()
        with self._source_errors(None):
            token = self.source.current_position(self.request.database, self.request.collection)
        now = time.time()
        self.on_progress(f"{self.zone.namespace}: snapshot starts at stream position {token}")
        return SnapshotState(
            start_token=storable_token(token),
            start_pos=token_position(token) or 0,
            start_time=now,
            last_id=None,
            rows=0,
        )

    def _require_collection(self) -> None:
        """A snapshot of a collection the source does not have would publish an empty table
        under a misspelt name: fail naming the closest existing collections instead. Sources
        that cannot list their collections are trusted."""
        list_names = getattr(self.source, "list_collection_names", None)
        if list_names is None:
            return
        database, collection = self.request.database, self.request.collection
        with self._source_errors(None):
            existing = list(list_names(database))
        if collection in existing:
            return
        close = closest_names(collection, existing)
        hint = (
            f"Did you mean {' or '.join(f'{database}.{name}' for name in close)}? " if close else ""
        )
        listing = ", ".join(existing[:20]) + (" ..." if len(existing) > 20 else "")
        raise CollectionNotFoundError(
            f"{self.zone.namespace}: the source has no collection {collection!r} in database "
            f"{database!r} (it has: {listing or 'none'}). {hint}Fix the name in "
            "LAKEHOUSE_COLLECTIONS (and remove the partition in the Dagster UI), or, if the "
            "collection is still to be created, capture again once it exists"
        )

    def _snapshot_chunk(
        self, checkpoint: Checkpoint, state: SnapshotState
    ) -> tuple[Checkpoint, CaptureState]:
        """Read at most one batch worth of documents after ``last_id``; publish it with the
        snapshot's progress (or, when the snapshot is complete, the stream state)."""
        request, rows = self.request, BatchRows(self.masking)
        pos = state.start_pos
        start_time = state.start_time if state.start_time is not None else time.time()
        time_ms = (pos >> 32) * 1000 or int(start_time * 1000)  # old states lack start_time
        start_id = decode_document(state.last_id) if state.last_id is not None else None
        last_id, complete = start_id, False
        reading = WaitReport(
            f"the snapshot of {self.zone.namespace} (batch {checkpoint.batch + 1})",
            self.on_progress,
            every_s=self.report_every_s,
        )
        while not complete and rows.seen < request.max_rows and rows.bytes < request.max_bytes:
            wanted = min(SNAPSHOT_PAGE_ROWS, request.max_rows - rows.seen)
            with self._source_errors(None):
                page = list(
                    self.source.documents(
                        request.database, request.collection, after_id=last_id, limit=wanted
                    )
                )
            taken, page_last_id = rows.add_snapshot_page(page, pos, time_ms, request.max_bytes)
            if page_last_id is not None:
                last_id = page_last_id
            complete = taken == len(page) and len(page) < wanted  # a short page: the end
            reading.still(
                f"{state.rows + rows.seen:,} documents read, {rows.bytes / 1e6:,.1f} MB in "
                f"this batch of at most {request.max_rows:,} rows"
            )
            if not complete and self._out_of_time():
                break
        if not complete and last_id == start_id:
            raise SnapshotStalledError(
                f"{self.zone.namespace}: the snapshot cannot advance: {rows.seen} documents in a "
                "row have no _id to page by; see the dead letters and fix the source documents"
            )
        done = state.rows + len(rows.ids)
        self.snapshot_documents, self.snapshot_start = done, state.start_pos
        snapshot = {"documents": done, "complete": complete}
        new_state: CaptureState
        if complete:
            token_time = state.start_time if state.start_time is not None else time.time()
            new_state = StreamState(resume_token=state.start_token, token_time=token_time)
        else:
            new_state = dataclasses.replace(state, last_id=encode_value(last_id), rows=done)
        if complete and not rows.seen:
            return checkpoint, new_state  # nothing left: the stream step publishes the state
        checkpoint = self._publish(rows, checkpoint, new_state, {"snapshot": snapshot})
        self.on_progress(
            f"{self.zone.namespace}: snapshot batch {checkpoint.batch}: {len(rows.ids)} documents "
            f"({done} so far{', complete' if complete else ''})"
        )
        return checkpoint, new_state
