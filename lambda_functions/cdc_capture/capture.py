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

Why an empty batch rather than writing the token into ``_checkpoint.json`` alone: the raw zone's
one invariant is that capture state lives in manifests and the checkpoint is only a cache of the
newest one (``read_checkpoint`` rolls forward over manifests); an empty batch keeps that, is
visible to operators, costs one manifest per collection per half retention (every 1.5 h with
DocumentDB's default 3 h) and the merge applies it as a no-op.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import OperationFailure

from lambda_functions.cdc_capture.batches import (
    DATA_OPS,
    END_OPS,
    BatchRows,
    Malformed,
    event_row,
    publish,
)
from lambda_functions.cdc_capture.change_source import ChangeSource
from lambda_functions.cdc_capture.errors import (
    CaptureError,
    ChangeStreamsDisabledError,
    CollectionNotFoundError,
    ResumeTokenExpiredError,
)
from lambda_functions.cdc_capture.extended_json import decode_document, encode_value
from lambda_functions.cdc_capture.positions import event_position, token_position
from lambda_functions.contracts import CaptureRequest, closest_names
from lambda_functions.lake.raw_zone import (
    BATCH_SCHEMA,
    DAMAGED_BATCH_FIX,
    OPS,
    RESNAPSHOT_HOW_TO,  # how to re-snapshot; the expired-token error quotes it word for word
    BatchManifest,
    Checkpoint,
    CorruptBatchError,
    CorruptManifestError,
    RawZone,
)
from lambda_functions.lake.store import ObjectStore
from lambda_functions.pipes import typed
from lambda_functions.waits import REPORT_EVERY_S, WaitReport

# Stop reading with at least this share of the function's time left (and never less than 5 s):
# publishing the batch and reporting to Dagster must fit in what remains.
DEADLINE_RESERVE_FRACTION = 0.10
DEADLINE_RESERVE_MIN_S = 5.0
SNAPSHOT_PAGE_ROWS = 1_000
STREAM_BATCH_SIZE = 1_000

EXPIRED_CODES = frozenset({136, 286})
EXPIRED_CODE_NAMES = frozenset({"CappedPositionLost", "ChangeStreamHistoryLost"})

__all__ = [
    "BatchVerification",
    "CaptureResult",
    "SnapshotProgress",
    "capture_changes",
    "verify_batches",
]


@dataclass(frozen=True)
class SnapshotProgress:
    """Where the initial load stands: rows published by all runs of this snapshot so far."""

    documents: int
    last_id: str | None  # canonical extended JSON of the last snapshotted _id
    complete: bool
    start_position: int | None


@dataclass(frozen=True)
class CaptureResult:
    """What one capture run published and where capture stands afterwards."""

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
    resnapshot_reason: str | None = None  # "reset" | "resume_token_expired" when one started
    idle_token_advanced: bool = False  # an empty batch carried a fresher token (quiet collection)

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Materialization metadata in the typed form ``dagster_pipes`` accepts."""

        metadata = {
            "dagster/row_count": typed(self.rows, "int"),
            "batch": typed(self.batch if self.batch is not None else -1, "int"),
            "batches": typed(list(self.batches), "json"),
            "checkpoint_batch": typed(self.checkpoint_batch, "int"),
            "rows_by_op": typed(dict(self.rows_by_op), "json"),
            "bytes": typed(self.bytes, "int"),
            "quarantined": typed(self.quarantined, "int"),
            "skipped": typed(dict(self.skipped), "json"),
            "phase": typed(self.phase, "text"),
            "stopped_by": typed(self.stopped_by, "text"),
            "dropped": typed(self.dropped, "bool"),
            "cdc_lag_seconds": typed(round(self.cdc_lag_seconds, 3), "float"),
            "duration_seconds": typed(round(self.duration_seconds, 3), "float"),
            "idle_token_advanced": typed(self.idle_token_advanced, "bool"),
        }
        for op in OPS:
            metadata[f"rows/{op}"] = typed(int(self.rows_by_op.get(op, 0)), "int")
        if self.resume_position is not None:
            metadata["resume_position"] = typed(self.resume_position, "int")
        if self.max_event_time is not None:
            metadata["max_event_time"] = typed(self.max_event_time.timestamp(), "timestamp")
        if self.snapshot is not None:
            metadata["snapshot_progress"] = typed(dataclasses.asdict(self.snapshot), "json")
            metadata["snapshot_documents"] = typed(self.snapshot.documents, "int")
        if self.resnapshot_reason is not None:
            metadata["resnapshot_reason"] = typed(self.resnapshot_reason, "text")
        return metadata

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (the Lambda return value)."""
        summary = dataclasses.asdict(self)
        summary["max_event_time"] = self.max_event_time.isoformat() if self.max_event_time else None
        summary["batches"] = list(self.batches)
        return summary


@dataclass(frozen=True)
class BatchVerification:
    """Whether published batches read back intact (files present, sizes, checksums and counts
    match). ``damaged`` names the batches that did not, ``fix`` says what to do about them."""

    passed: bool
    batches: tuple[int, ...]
    rows: int
    problems: tuple[str, ...]
    damaged: tuple[int, ...] = ()
    fix: str | None = None

    def metadata(self) -> dict[str, dict[str, Any]]:
        metadata = {
            "batches": {"raw_value": list(self.batches), "type": "json"},
            "rows_read": {"raw_value": self.rows, "type": "int"},
            "problems": {"raw_value": list(self.problems), "type": "json"},
            "damaged_batches": {"raw_value": list(self.damaged), "type": "json"},
        }
        if self.fix is not None:
            metadata["fix"] = {"raw_value": self.fix, "type": "text"}
        return metadata


def capture_changes(
    request: CaptureRequest,
    *,
    source: ChangeSource,
    deadline: Callable[[], float] | None = None,
    on_progress: Callable[[str], None] | None = None,
    store: ObjectStore | None = None,
    reset: bool = False,
) -> CaptureResult:
    """Capture what changed since the last published batch; see the module docstring.

    ``deadline`` returns the seconds the caller has left (a Lambda's remaining time): reading stops
    while ``max(5 s, 10% of the time at the start)`` remains. ``reset`` starts over with a new
    snapshot, first publishing an empty batch marked ``dropped`` so the merge clears the table
    (the recovery from ``ResumeTokenExpiredError``; ``request.auto_resnapshot`` does it by itself).
    """
    zone = RawZone.for_request(request, store)
    return _CaptureRun(request, source, zone, deadline, on_progress).execute(reset=reset)


def verify_batches(
    request: CaptureRequest, batches: tuple[int, ...], *, store: ObjectStore | None = None
) -> BatchVerification:
    """Re-read published batches through their manifests; a run that published nothing passes.

    Args:
        request: the collection (``lake_uri``, ``database``, ``collection``).
        batches: the batch numbers to re-read (capture passes the ones it just published).
        store: the lake's object store (default: opened from ``request.lake_uri``).

    Returns:
        A ``BatchVerification``: each damaged batch by number in ``damaged``, one problem line
        per batch naming the object and what is wrong, and ``fix`` (``DAMAGED_BATCH_FIX``)
        when any is damaged.
    """
    zone = RawZone.for_request(request, store)
    rows, problems, damaged = 0, [], []
    for number in batches:
        try:
            manifest = zone.read_manifest(number)
            table = zone.read_batch(manifest)
        except FileNotFoundError:
            problems.append(
                f"{zone.namespace} batch {number}: manifest {zone.manifest_key(number)} is "
                f"missing. Fix: {DAMAGED_BATCH_FIX}"
            )
            damaged.append(number)
            continue
        except CorruptBatchError as error:
            problems.append(str(error))
            damaged.append(number)
            continue
        rows += table.num_rows
        missing = set(BATCH_SCHEMA.names) - set(table.column_names)
        if missing:
            problems.append(
                f"{zone.namespace} batch {number}: columns {sorted(missing)} are missing. "
                f"Fix: {DAMAGED_BATCH_FIX}"
            )
            damaged.append(number)
    return BatchVerification(
        passed=not problems,
        batches=tuple(batches),
        rows=rows,
        problems=tuple(problems),
        damaged=tuple(damaged),
        fix=DAMAGED_BATCH_FIX if damaged else None,
    )


def storable_token(token: Mapping[str, Any]) -> dict[str, Any]:
    """A resume token as JSON the manifest can hold: as is when it is plain JSON (MongoDB's
    ``{"_data": hex}``), else wrapped as canonical extended JSON (``{"$ejson": ...}``)."""
    plain = dict(token)
    if all(isinstance(v, str | int | float | bool) or v is None for v in plain.values()):
        return plain
    return {"$ejson": encode_value(plain)}


def loaded_token(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The token ``storable_token`` stored, with its BSON types back."""
    if set(stored) == {"$ejson"}:
        return dict(decode_document(stored["$ejson"]))
    return dict(stored)


def stream_state(stored_token: dict[str, Any], token_time: float) -> dict[str, Any]:
    """Capture state of the stream phase: resume after ``stored_token`` (``storable_token``'s
    form), which was current at ``token_time`` (epoch seconds)."""
    return {"phase": "stream", "resume_token": stored_token, "token_time": token_time}


class _CaptureRun:
    def __init__(
        self,
        request: CaptureRequest,
        source: ChangeSource,
        zone: RawZone,
        deadline: Callable[[], float] | None,
        on_progress: Callable[[str], None] | None,
    ):
        self.request = request
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
        if reset:
            checkpoint = self._resnapshot(checkpoint, "reset")
        state = checkpoint.state or self._start_snapshot()
        checkpoint, state = self._snapshot(checkpoint, state)
        if state["phase"] == "stream" and self.stopped_by != "deadline":
            try:
                checkpoint, state = self._stream_batch(checkpoint, state)
            except ResumeTokenExpiredError as expired:
                if not self.request.auto_resnapshot:
                    raise
                self.on_progress(f"{expired}\nauto_resnapshot is on: taking a new snapshot")
                checkpoint = self._resnapshot(checkpoint, "resume_token_expired")
                checkpoint, state = self._snapshot(checkpoint, checkpoint.state)
        return self._result(checkpoint, state)

    def _snapshot(
        self, checkpoint: Checkpoint, state: dict[str, Any]
    ) -> tuple[Checkpoint, dict[str, Any]]:
        while state["phase"] == "snapshot":
            if self._out_of_time():
                break
            checkpoint, state = self._snapshot_chunk(checkpoint, state)
        return checkpoint, state

    def _resnapshot(self, checkpoint: Checkpoint, reason: str) -> Checkpoint:
        """Publish an empty batch marked ``dropped`` (the merge clears the table: a new table
        generation) whose state is a new snapshot's start. The position is recorded before the
        marker, so nothing between the marker and the snapshot can be missed."""
        state = self._start_snapshot()
        self.dropped, self.resnapshot_reason = True, reason
        extra: dict[str, Any] = {"dropped": True, "reset": True, "reason": reason}
        if state["start_pos"]:
            # The snapshot reflects every change before its start: the merge ignores older
            # changes still delivered late (e.g. by a queue) instead of resurrecting documents.
            extra["generation_pos"] = state["start_pos"]
        return self._publish(BatchRows(), checkpoint, state, extra)

    def _start_snapshot(self) -> dict[str, Any]:
        """Record the stream position before reading any document (nothing can fall between)."""
        self._require_collection()
        with self._source_errors(None):
            token = self.source.current_position(self.request.database, self.request.collection)
        now = time.time()
        self.on_progress(f"{self.zone.namespace}: snapshot starts at stream position {token}")
        return {
            "phase": "snapshot",
            "start_token": storable_token(token),
            "start_pos": token_position(token) or 0,
            "start_time": now,
            "last_id": None,
            "rows": 0,
        }

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
        self, checkpoint: Checkpoint, state: dict[str, Any]
    ) -> tuple[Checkpoint, dict[str, Any]]:
        """Read at most one batch worth of documents after ``last_id``; publish it with the
        snapshot's progress (or, when the snapshot is complete, the stream state)."""
        request, rows = self.request, BatchRows()
        pos = state["start_pos"]
        time_ms = (pos >> 32) * 1000 or int(state.get("start_time", time.time()) * 1000)
        start_id = decode_document(state["last_id"]) if state["last_id"] is not None else None
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
                f"{state['rows'] + rows.seen:,} documents read, {rows.bytes / 1e6:,.1f} MB in "
                f"this batch of at most {request.max_rows:,} rows"
            )
            if not complete and self._out_of_time():
                break
        if not complete and last_id == start_id:
            raise CaptureError(
                f"{self.zone.namespace}: the snapshot cannot advance: {rows.seen} documents in a "
                "row have no _id to page by; see the dead letters and fix the source documents"
            )
        done = state["rows"] + len(rows.ids)
        self.snapshot_documents, self.snapshot_start = done, state["start_pos"]
        snapshot = {"documents": done, "complete": complete}
        if complete:
            new_state = stream_state(state["start_token"], state.get("start_time", time.time()))
        else:
            new_state = {**state, "last_id": encode_value(last_id), "rows": done}
        if complete and not rows.seen:
            return checkpoint, new_state  # nothing left: the stream step publishes the state
        checkpoint = self._publish(rows, checkpoint, new_state, {"snapshot": snapshot})
        self.on_progress(
            f"{self.zone.namespace}: snapshot batch {checkpoint.batch}: {len(rows.ids)} documents "
            f"({done} so far{', complete' if complete else ''})"
        )
        return checkpoint, new_state

    def _stream_batch(
        self, checkpoint: Checkpoint, state: dict[str, Any]
    ) -> tuple[Checkpoint, dict[str, Any]]:
        """Read the stream after the saved token into one batch (see the module docstring)."""
        request, rows = self.request, BatchRows()
        token = loaded_token(state["resume_token"])
        last_token: Mapping[str, Any] | None = None
        idle_token: Mapping[str, Any] | None = None
        end_op: str | None = None
        drop_pos: int | None = None
        with self._source_errors(token):
            cursor = self.source.watch(
                request.database,
                request.collection,
                resume_after=token,
                full_document="updateLookup",
                batch_size=min(STREAM_BATCH_SIZE, request.max_rows),
            )
            try:
                while True:
                    if rows.seen >= request.max_rows:
                        self.stopped_by = "max_rows"
                        break
                    if rows.bytes >= request.max_bytes:
                        self.stopped_by = "max_bytes"
                        break
                    if self._out_of_time():
                        break
                    event = cursor.try_next()
                    if event is None:
                        self.stopped_by = "drained"
                        if last_token is None:
                            idle_token = getattr(cursor, "resume_token", None)
                        break
                    op = event.get("operationType")
                    if isinstance(event.get("_id"), Mapping):
                        last_token = event["_id"]
                    if op in END_OPS:
                        end_op, drop_pos = op, event_position(event)
                        break
                    self._add_event(rows, event, op)
            finally:
                cursor.close()
        extra: dict[str, Any] = {"skipped": dict(self.skipped)} if self.skipped else {}
        if end_op is not None:
            self.dropped, self.stopped_by = True, "dropped"
            new_state = self._start_snapshot()
            extra |= {"dropped": True, "end_event": end_op}
            if drop_pos is not None:  # the merge drops by position: rows older than the drop
                extra |= {"drop_pos": drop_pos}
            self.on_progress(
                f"{self.zone.namespace}: the stream ended with a {end_op} event; "
                "the next run takes a new snapshot"
            )
        elif last_token is not None:
            token_time = self.last_event_ms / 1000 if self.last_event_ms else time.time()
            new_state = stream_state(storable_token(last_token), token_time)
        elif idle_token is not None and self._idle_token_is_due(state, token, idle_token):
            new_state = stream_state(storable_token(idle_token), time.time())
            extra |= {"idle_token_advance": True}
            self.idle_token_advanced = True
        else:
            new_state = state
        if not rows.seen and new_state == checkpoint.state:
            return checkpoint, new_state  # nothing new: no batch, checkpoint unchanged
        checkpoint = self._publish(rows, checkpoint, new_state, extra)
        self.on_progress(
            f"{self.zone.namespace}: stream batch {checkpoint.batch}: {len(rows.ids)} rows, "
            f"stopped by {self.stopped_by}"
        )
        return checkpoint, new_state

    def _idle_token_is_due(
        self, state: Mapping[str, Any], saved: Mapping[str, Any], fresher: Mapping[str, Any]
    ) -> bool:
        """A quiet collection's token is re-saved once it is older than half the retention."""
        if dict(fresher) == dict(saved):
            return False
        saved_pos = token_position(saved)
        saved_time = (
            state.get("token_time") if saved_pos is None else (saved_pos >> 32)
        ) or time.time()
        return time.time() - saved_time > self.request.stream_retention_seconds / 2

    def _add_event(self, rows: BatchRows, event: Mapping[str, Any], op: Any) -> None:
        if op not in DATA_OPS:
            self.skipped[f"ignored_{op}"] += 1  # e.g. createIndexes with expanded events
            return
        try:
            row = event_row(event)
        except Malformed as problem:
            rows.quarantine(str(problem), event)
            return
        if row is None:
            self.skipped["update_of_deleted_document"] += 1
            return
        rows.add(*row)
        self.last_event_ms = row[3]

    # -- publishing ------------------------------------------------------------------------------
    def _publish(
        self,
        rows: BatchRows,
        checkpoint: Checkpoint,
        state: dict[str, Any],
        extra: dict[str, Any],
    ) -> Checkpoint:
        manifest = publish(
            self.zone, rows, checkpoint, state, {**extra, "stopped_by": self.stopped_by}
        )
        self.manifests.append(manifest)
        return Checkpoint(batch=manifest.batch, state=state)

    # -- errors and time -------------------------------------------------------------------------
    @contextmanager
    def _source_errors(self, token: Mapping[str, Any] | None) -> Iterator[None]:
        """Turn the source's ``OperationFailure`` into an error that says what to do."""
        try:
            yield
        except OperationFailure as error:
            raise self._explain(error, token) from error

    def _explain(self, error: OperationFailure, token: Mapping[str, Any] | None) -> Exception:
        ns, db, coll = self.zone.namespace, self.request.database, self.request.collection
        if change_streams_disabled(error):
            return ChangeStreamsDisabledError(
                f"change streams are not enabled on {ns}; run db.adminCommand({{modifyChangeStreams: "
                f"1, database: '{db}', collection: '{coll}', enable: true}}) as an admin user, then "
                "capture again (the first capture takes a snapshot). With the embedded source, "
                "run the demo workload (demo_changes > 0) or call enable_change_streams. "
                f"Server said: {error}"
            )
        code_name = (error.details or {}).get("codeName")
        if error.code in EXPIRED_CODES or code_name in EXPIRED_CODE_NAMES:
            pos = token_position(token)
            age = (
                f" (the token is {time.time() - (pos >> 32):,.0f} s old)" if pos is not None else ""
            )
            return ResumeTokenExpiredError(
                f"cannot resume change capture of {ns}: the change stream no longer holds the "
                f"saved resume token{age}; changes after it were purged, so some may have been "
                f"missed. Fix: re-snapshot the collection: {RESNAPSHOT_HOW_TO}. A re-snapshot "
                "publishes a batch marked dropped (the merge starts a new table generation) and "
                "loads the collection again, losing and duplicating nothing. To prevent it, "
                "capture more often than the change stream log retention or increase the cluster "
                "parameter change_stream_log_retention_duration (DocumentDB default 3 hours, at "
                f"most 7 days). Server said: {error}"
            )
        return error

    def _out_of_time(self) -> bool:
        if self.deadline is not None and self.deadline() <= self.reserve:
            self.stopped_by = "deadline"
            return True
        return False

    # -- result ----------------------------------------------------------------------------------
    def _result(self, checkpoint: Checkpoint, state: dict[str, Any]) -> CaptureResult:
        ops: Counter[str] = Counter()
        for manifest in self.manifests:
            ops.update(manifest.ops)
        times = [m.max_event_time for m in self.manifests if m.max_event_time]
        phase = state["phase"]
        now = time.time()
        if phase == "snapshot":
            resume_position = state["start_pos"] or None
            started = (state["start_pos"] >> 32) or state.get("start_time") or now
            lag = max(0.0, now - started)
        else:
            resume_position = token_position(loaded_token(state["resume_token"]))
            lag = (
                max(0.0, now - self.last_event_ms / 1000)
                if self.stopped_by not in ("drained", "dropped") and self.last_event_ms
                else 0.0
            )
        snapshot = None
        if phase == "snapshot" or self.snapshot_documents is not None:
            snapshot = SnapshotProgress(
                documents=state.get("rows", 0) if phase == "snapshot" else self.snapshot_documents,
                last_id=state.get("last_id"),
                complete=phase != "snapshot",
                start_position=state["start_pos"] if phase == "snapshot" else self.snapshot_start,
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
            phase=phase,
            stopped_by=self.stopped_by,
            resume_position=resume_position,
            max_event_time=datetime.fromisoformat(max(times)) if times else None,
            cdc_lag_seconds=lag,
            snapshot=snapshot,
            dropped=self.dropped,
            duration_seconds=time.monotonic() - self.started,
            resnapshot_reason=self.resnapshot_reason,
            idle_token_advanced=self.idle_token_advanced,
        )


def change_streams_disabled(error: OperationFailure) -> bool:
    """Whether the server refused a change stream because it is not enabled on the collection.

    DocumentDB has no documented error code for this; it answers ``watch()`` on a collection
    without change streams with an ``OperationFailure`` whose message says change streams are
    not enabled (observed wordings vary, e.g. "Change stream is not enabled for this
    collection"), so the message is matched: "change stream" with "not enabled" or "disabled",
    case-insensitive. Checked before the expired-token codes because the code is not reliable.
    """
    message = str(error).lower().replace("changestream", "change stream")
    return "change stream" in message and ("not enabled" in message or "disabled" in message)
