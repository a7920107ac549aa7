"""Change capture: from a change source into numbered raw-zone batches.

What a run does depends on the capture state stored with the newest batch (``RawZone``):

- **No state** (first run, or after a reset/drop): record the stream position *first*, then
  snapshot the collection in ``_id`` order. Every chunk of at most ``max_rows`` rows or
  ``max_bytes`` bytes is its own batch whose state says where the snapshot stands, so a run that
  dies resumes after the last published chunk: no document is snapshotted twice, none is skipped.
  Snapshot rows carry the recorded position, so every change replayed from the stream afterwards
  orders after them (full documents make the replay idempotent).
- **Stream**: read the change stream after the saved resume token (``fullDocument:
  updateLookup``) until it is drained, ``max_rows``/``max_bytes`` is reached or the deadline is
  near, and publish *one* batch whose state is the token of the last event it covers.

Guarantees:
- The checkpoint advances only with a published batch (data files, then manifest, then
  checkpoint): delivery is at-least-once, never lossy; the merge makes it exactly-once in effect.
- Rows are in stream order: ``pos`` is the event's cluster time (``t << 32 | i``) and ``seq``
  its place in the batch, so events of one transaction (same cluster time) keep their order.
- Nothing is dropped silently: a malformed document or event goes to the batch's dead-letter
  object ``quarantine/<batch>-<uuid>.jsonl`` (named by the manifest's ``quarantine_key``) and is
  counted in the manifest; an update whose lookup found
  the document deleted is skipped and counted (its delete follows in the stream).
- Nothing new means no batch: the checkpoint is left as it is, except for a quiet collection
  whose saved token is older than half the change-stream retention: if the source advanced its
  resume token without events (a post-batch resume token), an empty batch carries the new token,
  so the saved position never expires while nothing happens.
- An expired resume token stops capture with ``ResumeTokenExpiredError`` (what to do is in the
  message), unless the request opts in to ``auto_resnapshot``: then a batch marked ``dropped``
  (the merge clears the table) is published and a new snapshot follows, a new table generation
  with nothing lost and nothing duplicated.

Masking rules (``request.masking``, PII masking at the edge: ``edge_masking``) mask every
snapshot document and change event before it becomes a row or a dead letter. Their
``rules_fingerprint`` is kept in the capture state (``masking_fingerprint``); when the rules (or
the key of hashed fields) change, the run starts a new generation first, as a reset does
(``resnapshot_reason: "masking_rules_changed"``): a ``dropped`` marker (the merge clears the
table, so no row captured under the old rules stays current) and a new snapshot under the new
rules. Older Delta versions keep the old values until vacuum (see the README, "PII masking").

Why an empty batch rather than writing the token into ``_checkpoint.json`` alone: the raw zone's
one invariant is that capture state lives in manifests and the checkpoint is only a cache of the
newest one (``read_checkpoint`` rolls forward over manifests); an empty batch keeps that, is
visible to operators, costs one manifest per collection per half retention (every 1.5 h with
DocumentDB's default 3 h) and the merge applies it as a no-op.

This module is the entry (``capture_changes``) and the run's bookkeeping; the phases live in
``snapshot`` and ``stream``, the stored state in ``capture_state``, the read-back check in
``verify``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lambda_functions.cdc_capture.batches import BatchRows, publish
from lambda_functions.cdc_capture.capture_state import (
    CaptureState,
    SnapshotState,
    StreamState,
    capture_state_from_json,
    loaded_token,
)
from lambda_functions.cdc_capture.change_source import ChangeSource
from lambda_functions.cdc_capture.edge_masking import EdgeMasking, masking_of_request
from lambda_functions.cdc_capture.errors import ResumeTokenExpiredError
from lambda_functions.cdc_capture.positions import token_position
from lambda_functions.cdc_capture.snapshot import SnapshotProgress, SnapshotSteps
from lambda_functions.cdc_capture.stream import StreamSteps
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.raw_zone import (
    OPS,
    BatchManifest,
    Checkpoint,
    CorruptManifestError,
    RawZone,
)
from lambda_functions.lake.store import ObjectStore
from lambda_functions.pipes import typed, typed_metadata
from lambda_functions.waits import REPORT_EVERY_S

# Stop reading with at least this share of the function's time left (and never less than 5 s):
# publishing the batch and reporting to Dagster must fit in what remains.
DEADLINE_RESERVE_FRACTION = 0.10
DEADLINE_RESERVE_MIN_S = 5.0

# The capture state's record of the masking rules its rows were captured under.
MASKING_STATE_KEY = "masking_fingerprint"

__all__ = [
    "MASKING_STATE_KEY",
    "CaptureResult",
    "SnapshotProgress",
    "capture_changes",
]


@dataclass(frozen=True)
class CaptureResult:
    """What one capture run published and where capture stands afterwards.

    Attributes:
        namespace: ``"database.collection"``.
        batch: the newest batch this run published; ``None`` when nothing was new.
        batches: every batch this run published, ascending (several while snapshotting).
        checkpoint_batch: the newest published batch after the run (this run's or an earlier).
        rows: rows published by this run (dead letters not included); ``rows_by_op`` splits
            them by ``op`` (``OPS``).
        bytes: size of the Parquet data files this run wrote, in bytes.
        quarantined: inputs this run sent to dead-letter objects.
        skipped: events deliberately not turned into rows, by reason (e.g.
            ``update_of_deleted_document``, ``ignored_<op>``).
        phase: ``"snapshot"`` | ``"stream"``: what the next run will do.
        stopped_by: ``"drained"`` | ``"max_rows"`` | ``"max_bytes"`` | ``"deadline"`` |
            ``"dropped"``.
        resume_position: stream position (``pos``) the next run resumes after; ``None`` unknown.
        max_event_time: newest event time in this run's batches (UTC), ``None`` with no rows.
        cdc_lag_seconds: how far behind the source the capture position was at the end, in
            seconds (0 when the stream was drained).
        snapshot: set while (and in the run when) a snapshot is taken.
        dropped: the collection was dropped/invalidated/reset: a new snapshot follows.
        duration_seconds: wall time of the run, in seconds.
        resnapshot_reason: ``"reset"`` | ``"resume_token_expired"`` |
            ``"masking_rules_changed"`` when this run started one.
        idle_token_advanced: an empty batch carried a fresher token (quiet collection).
        masking_fingerprint: ``rules_fingerprint`` of the collection's masking rules (16 hex),
            ``None`` without rules.
    """

    namespace: str
    batch: int | None  # the newest batch this run published; None when nothing was new
    batches: tuple[int, ...]  # every batch this run published (several while snapshotting)
    checkpoint_batch: int  # newest published batch after the run (this run's or an earlier one)
    rows: int
    rows_by_op: Mapping[str, int]
    bytes: int
    quarantined: int
    skipped: Mapping[str, int]  # events deliberately not turned into rows, by reason
    phase: str  # "snapshot" | "stream": what the next run will do
    stopped_by: str  # "drained" | "max_rows" | "max_bytes" | "deadline" | "dropped"
    resume_position: int | None  # stream position the next run resumes after
    max_event_time: datetime | None
    cdc_lag_seconds: float  # how far behind the source the capture position was at the end
    snapshot: SnapshotProgress | None  # set while (and in the run when) a snapshot is taken
    dropped: bool  # the collection was dropped/invalidated/reset: a new snapshot follows
    duration_seconds: float
    resnapshot_reason: str | None = None  # "reset" | "resume_token_expired" | "masking_..."
    idle_token_advanced: bool = False  # an empty batch carried a fresher token (quiet collection)
    masking_fingerprint: str | None = None  # the masking rules' fingerprint; None: no rules

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Materialization metadata in the typed form ``dagster_pipes`` accepts."""
        values: dict[str, Any] = {
            "dagster/row_count": self.rows,
            "batch": self.batch if self.batch is not None else -1,
            "batches": list(self.batches),
            "checkpoint_batch": self.checkpoint_batch,
            "rows_by_op": dict(self.rows_by_op),
            "bytes": self.bytes,
            "quarantined": self.quarantined,
            "skipped": dict(self.skipped),
            "phase": self.phase,
            "stopped_by": self.stopped_by,
            "dropped": self.dropped,
            "cdc_lag_seconds": float(round(self.cdc_lag_seconds, 3)),
            "duration_seconds": float(round(self.duration_seconds, 3)),
            "idle_token_advanced": self.idle_token_advanced,
        }
        for op in OPS:
            values[f"rows/{op}"] = int(self.rows_by_op.get(op, 0))
        if self.resume_position is not None:
            values["resume_position"] = self.resume_position
        if self.max_event_time is not None:
            values["max_event_time"] = typed(self.max_event_time.timestamp(), "timestamp")
        if self.snapshot is not None:
            values["snapshot_progress"] = dataclasses.asdict(self.snapshot)
            values["snapshot_documents"] = self.snapshot.documents
        if self.resnapshot_reason is not None:
            values["resnapshot_reason"] = self.resnapshot_reason
        if self.masking_fingerprint is not None:
            values["masking_rules_fingerprint"] = self.masking_fingerprint
        return typed_metadata(values)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (the Lambda return value)."""
        summary = dataclasses.asdict(self)
        summary["max_event_time"] = self.max_event_time.isoformat() if self.max_event_time else None
        summary["batches"] = list(self.batches)
        return summary


def capture_changes(
    request: CaptureRequest,
    *,
    source: ChangeSource,
    deadline: Callable[[], float] | None = None,
    on_progress: Callable[[str], None] | None = None,
    store: ObjectStore | None = None,
    reset: bool = False,
    masking: EdgeMasking | None = None,
) -> CaptureResult:
    """Capture what changed in one collection since its last published batch.

    A first run (no capture state) records the stream position *before* reading any document,
    then snapshots the collection in ``_id`` order, one batch per chunk; later runs read the
    change stream after the saved resume token (``resumeAfter``, ``fullDocument:
    updateLookup``) into one batch. See the module docstring, the MongoDB manual "Change Streams"
    / "Resume a Change Stream" and the Amazon DocumentDB Developer Guide "Using change streams
    with Amazon DocumentDB" (per-collection enabling, ``change_stream_log_retention_duration``).

    Args:
        request: the collection and limits (``database``, ``collection``, ``lake_uri``,
            ``max_rows`` rows and ``max_bytes`` bytes per batch, ``stream_retention_seconds``,
            ``auto_resnapshot``).
        source: the change source (DocumentDB through pymongo, or a local stand-in).
        deadline: returns the seconds the caller has left (a Lambda's remaining time); reading
            stops while ``max(5 s, 10% of the time at the start)`` remains.
        on_progress: told one line per published batch and at intervals during long reads.
        store: the lake's object store (default: opened from ``request.lake_uri``).
        reset: start over with a new snapshot, first publishing an empty batch marked
            ``dropped`` so the merge clears the table (the recovery from
            ``ResumeTokenExpiredError``; ``request.auto_resnapshot`` does it by itself).
        masking: the collection's masking (default: from ``request.masking`` and
            ``request.masking_key_secret_arn`` / ``LAKEHOUSE_MASKING_KEY``); a fingerprint
            other than the stored one starts a new generation (module docstring).

    Returns:
        A ``CaptureResult``: the batches published by this run and where capture stands.

    Raises:
        ResumeTokenExpiredError: the saved token fell out of the change-stream history (terminal;
            the message says how to re-snapshot) and ``auto_resnapshot`` is off.
        ChangeStreamsDisabledError: change streams are not enabled on the collection.
        CollectionNotFoundError: the source has no such collection (closest names quoted).
        ConcurrentCaptureError: another capture published the next batch number first
            (transient: nothing of this run is published; retry).
        SourceConnectionError: the source cannot be reached (``SourceUnreachableError``,
            transient) or is configured wrongly (``SourceConfigurationError``, terminal).
        CorruptManifestError: the newest manifest is damaged (unless ``reset``).
        CaptureStateError: the newest batch is another input's (DMS files, MQ messages).
        MaskingRulesError, MaskingKeyError: the masking rules are malformed, or they hash
            fields and the key is missing or unreadable (terminal; nothing is read).
        MaskingKeyUnavailableError: Secrets Manager throttled the key read (transient).

    Guarantees:
        Atomic batches: data files first, the manifest (an exclusive create) last, the checkpoint
        only after the manifest; a crash leaves the whole batch or none of it. Resumable and
        at-least-once: the state advances only with a published batch, so a rerun continues
        where the last published batch ended (snapshot chunk or resume token). Rows are in
        stream order (``pos``, then ``seq``).
    """
    zone = RawZone.for_request(request, store)
    if masking is None:
        masking = masking_of_request(
            zone.namespace, request.masking, key_secret_arn=request.masking_key_secret_arn
        )
    run = _CaptureRun(request, source, zone, deadline, on_progress, masking)
    return run.execute(reset=reset)


class _CaptureRun(SnapshotSteps, StreamSteps):
    """One capture run: reads the checkpoint, runs the snapshot and stream steps, publishes
    batches and counts what it did for the ``CaptureResult``."""

    def __init__(
        self,
        request: CaptureRequest,
        source: ChangeSource,
        zone: RawZone,
        deadline: Callable[[], float] | None,
        on_progress: Callable[[str], None] | None,
        masking: EdgeMasking,
    ):
        self.request = request
        self.masking = masking
        self.source = source
        self.zone = zone
        self.deadline = deadline
        self.reserve = (
            max(DEADLINE_RESERVE_MIN_S, DEADLINE_RESERVE_FRACTION * deadline()) if deadline else 0.0
        )
        self.on_progress = on_progress or (lambda message: None)
        self.report_every_s = REPORT_EVERY_S  # a long snapshot read says how far it got
        self.started = time.monotonic()
        self.manifests: list[BatchManifest] = []
        self.skipped: Counter[str] = Counter()
        self.stopped_by = "drained"
        self.dropped = False
        self.resnapshot_reason: str | None = None
        self.idle_token_advanced = False
        self.last_event_ms: int | None = None
        self.snapshot_documents: int | None = None  # set once this run reads snapshot documents
        self.snapshot_start: int | None = None

    # -- the run ---------------------------------------------------------------------------------
    def execute(self, *, reset: bool) -> CaptureResult:
        try:
            checkpoint = self.zone.read_checkpoint(on_repair=self.on_progress)
        except CorruptManifestError as damage:
            if not reset:
                raise
            # The reset needs only the newest batch number: its marker supersedes the damage.
            self.on_progress(f"{damage}\nreset: publishing the marker after it")
            checkpoint = Checkpoint(batch=self.zone.newest_batch_number())
        state: CaptureState | None = None
        if not reset and checkpoint.state and self._masking_changed(checkpoint.state):
            self.on_progress(
                f"{self.zone.namespace}: the masking rules changed (fingerprint "
                f"{checkpoint.state.get(MASKING_STATE_KEY)} -> {self.masking.fingerprint}): "
                "starting a new generation (re-snapshot) so no value captured under the old "
                "rules stays in the current table"
            )
            checkpoint, state = self._resnapshot(checkpoint, "masking_rules_changed")
        elif reset:
            checkpoint, state = self._resnapshot(checkpoint, "reset")
        if state is None:
            state = (
                capture_state_from_json(checkpoint.state, self.zone.namespace)
                or self._start_snapshot()
            )
        checkpoint, state = self._snapshot(checkpoint, state)
        if isinstance(state, StreamState) and self.stopped_by != "deadline":
            try:
                checkpoint, state = self._stream_batch(checkpoint, state)
            except ResumeTokenExpiredError as expired:
                if not self.request.auto_resnapshot:
                    raise
                self.on_progress(f"{expired}\nauto_resnapshot is on: taking a new snapshot")
                checkpoint, state = self._resnapshot(checkpoint, "resume_token_expired")
                checkpoint, state = self._snapshot(checkpoint, state)
        return self._result(checkpoint, state)

    def _snapshot(
        self, checkpoint: Checkpoint, state: CaptureState
    ) -> tuple[Checkpoint, CaptureState]:
        while isinstance(state, SnapshotState):
            if self._out_of_time():
                break
            checkpoint, state = self._snapshot_chunk(checkpoint, state)
        return checkpoint, state

    def _resnapshot(self, checkpoint: Checkpoint, reason: str) -> tuple[Checkpoint, SnapshotState]:
        """Publish an empty batch marked ``dropped`` (the merge clears the table: a new table
        generation) whose state is a new snapshot's start. The position is recorded before the
        marker, so nothing between the marker and the snapshot can be missed."""
        state = self._start_snapshot()
        self.dropped, self.resnapshot_reason = True, reason
        extra: dict[str, Any] = {"dropped": True, "reset": True, "reason": reason}
        if state.start_pos:
            # The snapshot reflects every change before its start: the merge ignores older
            # changes still delivered late (e.g. by a queue) instead of resurrecting documents.
            extra["generation_pos"] = state.start_pos
        return self._publish(BatchRows(), checkpoint, state, extra), state

    def _masking_changed(self, stored: Mapping[str, Any]) -> bool:
        """Whether the stored state was captured under other masking rules (a state without a
        fingerprint was captured without rules). Only change-stream states are compared: a
        state of another input is refused as before (``capture_state_from_json``)."""
        if stored.get("phase") not in ("snapshot", "stream"):
            return False
        return stored.get(MASKING_STATE_KEY) != self.masking.fingerprint

    # -- publishing ------------------------------------------------------------------------------
    def _publish(
        self,
        rows: BatchRows,
        checkpoint: Checkpoint,
        state: CaptureState,
        extra: dict[str, Any],
    ) -> Checkpoint:
        stored = self._stored_state(state)
        manifest = publish(
            self.zone, rows, checkpoint, stored, {**extra, "stopped_by": self.stopped_by}
        )
        self.manifests.append(manifest)
        return Checkpoint(batch=manifest.batch, state=stored)

    def _stored_state(self, state: CaptureState) -> dict[str, Any]:
        """The state as the manifest stores it: with the masking rules' fingerprint, if any."""
        stored = {k: v for k, v in state.to_json().items() if k != MASKING_STATE_KEY}
        if self.masking.fingerprint is not None:
            stored[MASKING_STATE_KEY] = self.masking.fingerprint
        return stored

    def _out_of_time(self) -> bool:
        if self.deadline is not None and self.deadline() <= self.reserve:
            self.stopped_by = "deadline"
            return True
        return False

    # -- result ----------------------------------------------------------------------------------
    def _result(self, checkpoint: Checkpoint, state: CaptureState) -> CaptureResult:
        ops: Counter[str] = Counter()
        for manifest in self.manifests:
            ops.update(manifest.ops)
        times = [m.max_event_time for m in self.manifests if m.max_event_time]
        now = time.time()
        snapshot = None
        if isinstance(state, SnapshotState):
            resume_position = state.start_pos or None
            started = (state.start_pos >> 32) or state.start_time or now
            lag = max(0.0, now - started)
            snapshot = SnapshotProgress(
                documents=state.rows,
                last_id=state.last_id,
                complete=False,
                start_position=state.start_pos,
            )
        else:
            resume_position = token_position(loaded_token(state.resume_token))
            lag = (
                max(0.0, now - self.last_event_ms / 1000)
                if self.stopped_by not in ("drained", "dropped") and self.last_event_ms
                else 0.0
            )
            if self.snapshot_documents is not None:
                snapshot = SnapshotProgress(
                    documents=self.snapshot_documents,
                    last_id=None,
                    complete=True,
                    start_position=self.snapshot_start,
                )
        return CaptureResult(
            namespace=self.zone.namespace,
            batch=self.manifests[-1].batch if self.manifests else None,
            batches=tuple(m.batch for m in self.manifests),
            checkpoint_batch=checkpoint.batch,
            rows=sum(m.rows for m in self.manifests),
            rows_by_op=dict(ops),
            bytes=sum(m.bytes for m in self.manifests),
            quarantined=sum(m.quarantined for m in self.manifests),
            skipped=dict(self.skipped),
            phase=state.phase,
            stopped_by=self.stopped_by,
            resume_position=resume_position,
            max_event_time=datetime.fromisoformat(max(times)) if times else None,
            cdc_lag_seconds=lag,
            snapshot=snapshot,
            dropped=self.dropped,
            duration_seconds=time.monotonic() - self.started,
            resnapshot_reason=self.resnapshot_reason,
            idle_token_advanced=self.idle_token_advanced,
            masking_fingerprint=self.masking.fingerprint,
        )
