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
  object ``quarantine/<batch>.jsonl`` and is counted in the manifest; an update whose lookup found
  the document deleted is skipped and counted (its delete follows in the stream).
- Nothing new means no batch: the checkpoint is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from pymongo.errors import OperationFailure

from lambda_functions.cdc_capture.change_source import ChangeSource
from lambda_functions.cdc_capture.extended_json import (
    decode_document,
    encode_document,
    encode_value,
    key_string,
    relaxed_json,
)
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.raw_zone import (
    BATCH_SCHEMA,
    BatchManifest,
    Checkpoint,
    CorruptBatchError,
    ObjectExistsError,
    RawZone,
)
from lambda_functions.lake.store import ObjectStore, open_store

# Stop reading with at least this share of the function's time left (and never less than 5 s):
# publishing the batch and reporting to Dagster must fit in what remains.
DEADLINE_RESERVE_FRACTION = 0.10
DEADLINE_RESERVE_MIN_S = 5.0
SNAPSHOT_PAGE_ROWS = 1_000
STREAM_BATCH_SIZE = 1_000
ROW_OVERHEAD_BYTES = 48  # _id, op, pos, seq, event_time beside the document, for the byte budget

DATA_OPS = frozenset({"insert", "update", "replace", "delete"})
# Events after which the collection's stream is over: the collection must be snapshotted anew.
END_OPS = frozenset({"drop", "dropDatabase", "rename", "invalidate"})
EXPIRED_CODES = frozenset({136, 286})
EXPIRED_CODE_NAMES = frozenset({"CappedPositionLost", "ChangeStreamHistoryLost"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CaptureError(RuntimeError):
    """Capture cannot go on; the message says why and what to do."""


class ResumeTokenExpiredError(CaptureError):
    """The change stream no longer holds the saved position: changes may have been missed."""


class ChangeStreamsDisabledError(CaptureError):
    """The collection has no change stream to read (DocumentDB enables them per collection)."""


class ConcurrentCaptureError(CaptureError):
    """Another capture published the batch number this run was about to publish."""


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
    dropped: bool  # the collection was dropped/invalidated: a new snapshot follows
    duration_seconds: float

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Materialization metadata in the typed form ``dagster_pipes`` accepts."""

        def typed(value: Any, kind: str) -> dict[str, Any]:
            return {"raw_value": value, "type": kind}

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
        }
        if self.resume_position is not None:
            metadata["resume_position"] = typed(self.resume_position, "int")
        if self.max_event_time is not None:
            metadata["max_event_time"] = typed(self.max_event_time.timestamp(), "timestamp")
        if self.snapshot is not None:
            metadata["snapshot_progress"] = typed(dataclasses.asdict(self.snapshot), "json")
        return metadata

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (the Lambda return value)."""
        summary = dataclasses.asdict(self)
        summary["max_event_time"] = self.max_event_time.isoformat() if self.max_event_time else None
        summary["batches"] = list(self.batches)
        return summary


@dataclass(frozen=True)
class BatchVerification:
    """Whether published batches read back intact (files present, checksums and counts match)."""

    passed: bool
    batches: tuple[int, ...]
    rows: int
    problems: tuple[str, ...]

    def metadata(self) -> dict[str, dict[str, Any]]:
        return {
            "batches": {"raw_value": list(self.batches), "type": "json"},
            "rows_read": {"raw_value": self.rows, "type": "int"},
            "problems": {"raw_value": list(self.problems), "type": "json"},
        }


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
    (the recovery from ``ResumeTokenExpiredError``).
    """
    zone = RawZone(store or open_store(request.lake_uri), request.database, request.collection)
    return _CaptureRun(request, source, zone, deadline, on_progress).execute(reset=reset)


def verify_batches(
    request: CaptureRequest, batches: tuple[int, ...], *, store: ObjectStore | None = None
) -> BatchVerification:
    """Re-read published batches through their manifests; a run that published nothing passes."""
    zone = RawZone(store or open_store(request.lake_uri), request.database, request.collection)
    rows, problems = 0, []
    for number in batches:
        try:
            manifest = zone.read_manifest(number)
            table = zone.read_batch(manifest)
        except (CorruptBatchError, FileNotFoundError) as error:
            problems.append(f"batch {number}: {error}")
            continue
        rows += table.num_rows
        missing = set(BATCH_SCHEMA.names) - set(table.column_names)
        if missing:
            problems.append(f"batch {number}: columns {sorted(missing)} are missing")
    return BatchVerification(not problems, tuple(batches), rows, tuple(problems))


def token_position(token: Mapping[str, Any] | None) -> int | None:
    """The cluster time in a resume token as a ``pos`` (``t << 32 | i``), if it can be read.

    MongoDB's resume tokens (and the embedded source's) are KeyString hex starting with ``82``
    followed by the 8-byte cluster time; tokens of another layout give ``None``.
    """
    data = token.get("_data") if isinstance(token, Mapping) else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return int(data[2:18], 16)
    except ValueError:
        return None


class _Rows:
    """Column lists for one batch, turned into a single Arrow table when published."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ops: list[str] = []
        self.positions: list[int] = []
        self.times_ms: list[int] = []
        self.docs: list[str | None] = []
        self.dead_letters: list[str] = []
        self.bytes = 0

    @property
    def seen(self) -> int:
        """Rows plus dead letters: what the ``max_rows`` budget counts."""
        return len(self.ids) + len(self.dead_letters)

    def add(self, _id: str, op: str, pos: int, time_ms: int, doc: str | None) -> None:
        self.ids.append(_id)
        self.ops.append(op)
        self.positions.append(pos)
        self.times_ms.append(time_ms)
        self.docs.append(doc)
        self.bytes += len(_id) + (len(doc) if doc else 0) + ROW_OVERHEAD_BYTES

    def quarantine(self, reason: str, raw: Any) -> None:
        line = f'{{"reason": {json.dumps(reason)}, "raw": {relaxed_json(raw)}}}'
        self.dead_letters.append(line)
        self.bytes += len(line)

    def table(self) -> pa.Table:
        return pa.table(
            [
                pa.array(self.ids, pa.string()),
                pa.array(self.ops, pa.string()),
                pa.array(self.positions, pa.int64()),
                pa.array(range(len(self.ids)), pa.int64()),
                pa.array(self.times_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                pa.array(self.docs, pa.string()),
            ],
            schema=BATCH_SCHEMA,
        )


class _Malformed(ValueError):
    """An input that cannot become a row: it goes to the dead-letter object."""


def _document_json(document: Any) -> tuple[str, str]:
    """(key string, canonical JSON) of a full document, or ``_Malformed``."""
    if not isinstance(document, Mapping):
        raise _Malformed(f"document is a {type(document).__name__}, not a document")
    if "_id" not in document:
        raise _Malformed("document has no _id")
    try:
        return key_string(document["_id"]), encode_document(document)
    except Exception as error:  # any encoding failure is about this document only
        raise _Malformed(f"document cannot be encoded: {error}") from error


def _event_row(event: Mapping[str, Any]) -> tuple[str, str, int, int, str | None] | None:
    """The row of a data-change event; ``None`` for an update whose document is gone."""
    op = event["operationType"]
    key = event.get("documentKey")
    if not isinstance(key, Mapping) or "_id" not in key:
        raise _Malformed(f"{op} event has no documentKey._id")
    cluster_time = event.get("clusterTime")
    if not (hasattr(cluster_time, "time") and hasattr(cluster_time, "inc")):
        raise _Malformed(f"{op} event has no clusterTime timestamp")
    pos = (cluster_time.time << 32) | cluster_time.inc
    wall = event.get("wallTime")
    time_ms = _millis(wall) if isinstance(wall, datetime) else cluster_time.time * 1000
    try:
        _id = key_string(key["_id"])
    except Exception as error:
        raise _Malformed(f"documentKey._id cannot be encoded: {error}") from error
    if op == "delete":
        return _id, op, pos, time_ms, None
    document = event.get("fullDocument")
    if document is None:
        if op == "update":
            return None
        raise _Malformed(f"{op} event has no fullDocument")
    _, doc = _document_json(document)
    return _id, op, pos, time_ms, doc


def _millis(value: datetime) -> int:
    """Exact epoch milliseconds (float seconds * 1000 can land one millisecond short)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # BSON datetimes are UTC
    return (value - _EPOCH) // timedelta(milliseconds=1)


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
        self.started = time.monotonic()
        self.manifests: list[BatchManifest] = []
        self.skipped: Counter[str] = Counter()
        self.stopped_by = "drained"
        self.dropped = False
        self.last_event_ms: int | None = None
        self.snapshot_documents: int | None = None  # set once this run reads snapshot documents
        self.snapshot_start: int | None = None

    # -- the run ---------------------------------------------------------------------------------
    def execute(self, *, reset: bool) -> CaptureResult:
        checkpoint = self.zone.read_checkpoint()
        if reset:
            checkpoint = self._publish(
                _Rows(), checkpoint, self._start_snapshot(), {"dropped": True, "reset": True}
            )
        state = checkpoint.state or self._start_snapshot()
        while state["phase"] == "snapshot":
            if self._out_of_time():
                break
            checkpoint, state = self._snapshot_chunk(checkpoint, state)
        if state["phase"] == "stream" and self.stopped_by != "deadline":
            checkpoint, state = self._stream_batch(checkpoint, state)
        return self._result(checkpoint, state)

    def _start_snapshot(self) -> dict[str, Any]:
        """Record the stream position before reading any document (nothing can fall between)."""
        with self._source_errors(None):
            token = dict(
                self.source.current_position(self.request.database, self.request.collection)
            )
        self.on_progress(f"{self.zone.namespace}: snapshot starts at stream position {token}")
        return {
            "phase": "snapshot",
            "start_token": token,
            "start_pos": token_position(token) or 0,
            "last_id": None,
            "rows": 0,
        }

    def _snapshot_chunk(
        self, checkpoint: Checkpoint, state: dict[str, Any]
    ) -> tuple[Checkpoint, dict[str, Any]]:
        """Read at most one batch worth of documents after ``last_id``; publish it with the
        snapshot's progress (or, when the snapshot is complete, the stream state)."""
        request, rows = self.request, _Rows()
        pos = state["start_pos"]
        time_ms = (pos >> 32) * 1000 or _millis(datetime.now(UTC))
        start_id = decode_document(state["last_id"]) if state["last_id"] is not None else None
        last_id, complete = start_id, False
        while not complete and rows.seen < request.max_rows and rows.bytes < request.max_bytes:
            wanted = min(SNAPSHOT_PAGE_ROWS, request.max_rows - rows.seen)
            with self._source_errors(None):
                page = self.source.documents(
                    request.database, request.collection, after_id=last_id, limit=wanted
                )
            taken = 0
            for document in page:
                taken += 1
                try:
                    _id, doc = _document_json(document)
                except _Malformed as problem:
                    rows.quarantine(str(problem), document)
                else:
                    rows.add(_id, "snapshot", pos, time_ms, doc)
                if isinstance(document, Mapping) and "_id" in document:
                    last_id = document["_id"]
                if rows.bytes >= request.max_bytes:
                    break
            complete = taken == len(page) and len(page) < wanted  # a short page: the end
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
            new_state: dict[str, Any] = {"phase": "stream", "resume_token": state["start_token"]}
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
        request, rows = self.request, _Rows()
        token = state["resume_token"]
        last_token: Mapping[str, Any] | None = None
        end_op: str | None = None
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
                        break
                    op = event.get("operationType")
                    if isinstance(event.get("_id"), Mapping):
                        last_token = event["_id"]
                    if op in END_OPS:
                        end_op = op
                        break
                    self._add_event(rows, event, op)
            finally:
                cursor.close()
        extra: dict[str, Any] = {"skipped": dict(self.skipped)} if self.skipped else {}
        if end_op is not None:
            self.dropped, self.stopped_by = True, "dropped"
            new_state = self._start_snapshot()
            extra |= {"dropped": True, "end_event": end_op}
            self.on_progress(
                f"{self.zone.namespace}: the stream ended with a {end_op} event; "
                "the next run takes a new snapshot"
            )
        elif last_token is not None:
            new_state = {"phase": "stream", "resume_token": dict(last_token)}
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

    def _add_event(self, rows: _Rows, event: Mapping[str, Any], op: Any) -> None:
        if op not in DATA_OPS:
            self.skipped[f"ignored_{op}"] += 1  # e.g. createIndexes with expanded events
            return
        try:
            row = _event_row(event)
        except _Malformed as problem:
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
        rows: _Rows,
        checkpoint: Checkpoint,
        state: dict[str, Any],
        extra: dict[str, Any],
    ) -> Checkpoint:
        batch = checkpoint.batch + 1
        if rows.dead_letters:
            key = f"{self.zone.prefix}/quarantine/{batch:012d}.jsonl"
            self.zone.store.put(key, ("\n".join(rows.dead_letters) + "\n").encode())
            extra = {**extra, "quarantine_key": key}
        try:
            manifest = self.zone.write_batch(
                [rows.table()],
                after=checkpoint,
                state=state,
                quarantined=len(rows.dead_letters),
                extra={**extra, "stopped_by": self.stopped_by},
            )
        except ObjectExistsError:
            raise ConcurrentCaptureError(
                f"{self.zone.namespace}: batch {batch} was published by another capture while this "
                "one ran; this run's changes were not published (no data is lost: the other "
                "capture or the next run covers them). Run one capture per collection at a time "
                "(a Dagster concurrency pool of 1 per collection)."
            ) from None
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
        code_name = (error.details or {}).get("codeName")
        if error.code in EXPIRED_CODES or code_name in EXPIRED_CODE_NAMES:
            pos = token_position(token)
            age = (
                f" (the token is {time.time() - (pos >> 32):,.0f} s old)" if pos is not None else ""
            )
            return ResumeTokenExpiredError(
                f"cannot resume change capture of {ns}: the change stream no longer holds the "
                f"saved resume token{age}; changes after it were purged, so some may have been "
                "missed. Fix: re-snapshot the collection: materialize with reset "
                "(capture_changes(..., reset=True) publishes a batch marked dropped and takes a "
                "new snapshot). To prevent it, capture more often than the change stream log "
                "retention or increase the cluster parameter change_stream_log_retention_duration "
                f"(DocumentDB default 3 hours, at most 7 days). Server said: {error}"
            )
        message = str(error).lower()
        if "change stream" in message and ("not enabled" in message or "disabled" in message):
            return ChangeStreamsDisabledError(
                f"change streams are not enabled on {ns}; run db.adminCommand({{modifyChangeStreams: "
                f"1, database: '{db}', collection: '{coll}', enable: true}}) as an admin user, then "
                "capture again (the first capture takes a snapshot). With the embedded source, "
                "run the demo workload (demo_changes > 0) or call enable_change_streams. "
                f"Server said: {error}"
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
            resume_position = state["start_pos"]
            lag = max(0.0, now - (resume_position >> 32)) if resume_position else 0.0
        else:
            resume_position = token_position(state["resume_token"])
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
        )
