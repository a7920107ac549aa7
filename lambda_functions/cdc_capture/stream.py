"""The stream phase of capture: change events after the saved resume token, into one batch.

The stream is opened with ``resumeAfter`` and the request's ``full_document``: ``updateLookup``
by default, or ``default`` (``LAKEHOUSE_UPDATE_LOOKUP=false``: one read less per update on the
cluster, update events then carry only ``updateDescription`` and become partial updates that the
merge applies; MongoDB manual, "Change Streams", "Change Events" > "update Event" and "Resume a
Change Stream"; Amazon DocumentDB Developer Guide, "Using change streams with Amazon DocumentDB"), read until drained, ``max_rows``/``max_bytes`` or the deadline,
and published with the token of the last event it covers. Source failures become errors that say
what to do (change streams disabled, resume token expired, an event over 16 MiB).

Events over 16 MiB (``large_events`` has the research): a source that can split them returns
``$changeStreamSplitLargeEvent`` fragments, which the read feeds through a
``SplitEventReassembler``. While an event is in progress the read does not stop for
``max_rows``, ``max_bytes`` or the deadline, and the position saved is only ever a whole event's
token (``last_whole_token``): a read that ends mid-event (the source fell quiet, or the run died)
leaves the event unread, and the next run reads it again from its first fragment. A source that
cannot deliver the event fails with BSONObjectTooLarge (10334); capture then raises
``OversizedChangeEventError`` naming the document key when a key-only read
(``key_only_pipeline``) finds it, and the fix.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from lambda_functions.cdc_capture.batches import DATA_OPS, END_OPS, BatchRows, Malformed, event_row
from lambda_functions.cdc_capture.capture_state import (
    CaptureState,
    StreamState,
    loaded_token,
    storable_token,
)
from lambda_functions.cdc_capture.errors import ChangeStreamsDisabledError, ResumeTokenExpiredError
from lambda_functions.cdc_capture.large_events import (
    OversizedChangeEventError,
    SplitEventReassembler,
    key_only_pipeline,
    oversized_event_report,
)
from lambda_functions.cdc_capture.positions import event_position, token_position
from lambda_functions.cdc_capture.run_parts import CaptureRunParts
from lambda_functions.lake.extended_json import raw_bson_document
from lambda_functions.lake.raw_zone import RESNAPSHOT_HOW_TO

if TYPE_CHECKING:
    from lambda_functions.lake.raw_zone import Checkpoint

STREAM_BATCH_SIZE = 1_000  # events per getMore (bounded by max_rows)
MID_EVENT_WAITS = 10  # empty reads tolerated inside a split event before the read gives up

# The server's answer when the resume token is older than the change-stream history: MongoDB's
# ChangeStreamHistoryLost (286) and CappedPositionLost (136), which DocumentDB also uses.
EXPIRED_CODES = frozenset({136, 286})
EXPIRED_CODE_NAMES = frozenset({"CappedPositionLost", "ChangeStreamHistoryLost"})

__all__ = [
    "EXPIRED_CODES",
    "EXPIRED_CODE_NAMES",
    "STREAM_BATCH_SIZE",
    "StreamSteps",
    "change_streams_disabled",
]


class StreamSteps(CaptureRunParts):
    """The stream steps of a capture run (a mixin of ``capture._CaptureRun``, which holds the
    run's request, source, zone and counters and publishes the batches)."""

    skipped: Counter[str]
    stopped_by: str
    dropped: bool
    idle_token_advanced: bool
    last_event_ms: int | None
    _last_whole_token: Mapping[str, Any] | None = None  # the read's last whole event (or saved)

    def _stream_batch(
        self, checkpoint: Checkpoint, state: StreamState
    ) -> tuple[Checkpoint, CaptureState]:
        """Read the stream after the saved token into one batch (see the module docstring)."""
        request, rows = self.request, BatchRows(self.masking)
        token = loaded_token(state.resume_token)
        last_token: Mapping[str, Any] | None = None
        idle_token: Mapping[str, Any] | None = None
        end_op: str | None = None
        drop_pos: int | None = None
        whole, waits = SplitEventReassembler(), 0
        self._last_whole_token = token
        with self._source_errors(token):
            cursor = self.source.watch(
                request.database,
                request.collection,
                resume_after=token,
                full_document=request.full_document,
                batch_size=min(STREAM_BATCH_SIZE, request.max_rows),
            )
            try:
                while True:
                    if not whole.in_progress:  # stop only between whole events
                        if rows.seen >= request.max_rows:
                            self.stopped_by = "max_rows"
                            break
                        if rows.bytes >= request.max_bytes:
                            self.stopped_by = "max_bytes"
                            break
                        if self._out_of_time():
                            break
                    fragment_or_event = cursor.try_next()
                    if fragment_or_event is None:
                        if whole.in_progress:
                            # The rest of a split event comes with the next getMores; if it
                            # does not, the partial event stays unread for the next run.
                            waits += 1
                            if self._out_of_time():
                                break  # stopped_by "deadline"
                            if waits <= MID_EVENT_WAITS:
                                continue
                        self.stopped_by = "drained"
                        if last_token is None and not whole.in_progress:
                            idle_token = getattr(cursor, "resume_token", None)
                        break
                    waits = 0
                    event = whole.push(fragment_or_event)
                    if event is None:
                        continue  # a fragment: the event is not whole yet
                    if event is not fragment_or_event and isinstance(
                        fragment_or_event, RawBSONDocument
                    ):
                        event = raw_bson_document(event)  # one raw event, as pymongo reads it
                    op = event.get("operationType")
                    if isinstance(event.get("_id"), Mapping):
                        last_token = self._last_whole_token = event["_id"]
                    if op in END_OPS:
                        end_op, drop_pos = op, event_position(event)
                        break
                    self._add_event(rows, event, op)
            finally:
                cursor.close()
        extra: dict[str, Any] = {"skipped": dict(self.skipped)} if self.skipped else {}
        new_state: CaptureState
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
            new_state = StreamState(resume_token=storable_token(last_token), token_time=token_time)
        elif idle_token is not None and self._idle_token_is_due(state, token, idle_token):
            new_state = StreamState(resume_token=storable_token(idle_token), token_time=time.time())
            extra |= {"idle_token_advance": True}
            self.idle_token_advanced = True
        else:
            new_state = state
        if not rows.seen and self._stored_state(new_state) == checkpoint.state:
            return checkpoint, new_state  # nothing new: no batch, checkpoint unchanged
        checkpoint = self._publish(rows, checkpoint, new_state, extra)
        self.on_progress(
            f"{self.zone.namespace}: stream batch {checkpoint.batch}: {len(rows.ids)} rows, "
            f"stopped by {self.stopped_by}"
        )
        return checkpoint, new_state

    def _idle_token_is_due(
        self, state: StreamState, saved: Mapping[str, Any], fresher: Mapping[str, Any]
    ) -> bool:
        """A quiet collection's token is re-saved once it is older than half the retention."""
        if dict(fresher) == dict(saved):
            return False
        saved_pos = token_position(saved)
        saved_time = (state.token_time if saved_pos is None else (saved_pos >> 32)) or time.time()
        return time.time() - saved_time > self.request.stream_retention_seconds / 2

    def _add_event(self, rows: BatchRows, event: Mapping[str, Any], op: Any) -> None:
        if op not in DATA_OPS:
            self.skipped[f"ignored_{op}"] += 1  # e.g. createIndexes with expanded events
            return
        try:
            row = event_row(rows.mask_event(event))  # masked before it becomes a row
        except Malformed as problem:
            rows.quarantine(str(problem), event)  # masked or stripped (``BatchRows``)
            return
        if row is None:
            self.skipped["update_of_deleted_document"] += 1
            return
        rows.add(*row)
        self.last_event_ms = row.event_time_ms

    # -- source errors ---------------------------------------------------------------------------
    @contextmanager
    def _source_errors(self, token: Mapping[str, Any] | None) -> Iterator[None]:
        """Turn the source's ``OperationFailure`` into an error that says what to do."""
        try:
            yield
        except OperationFailure as error:
            if oversized_event_report(error) is not None:  # BSONObjectTooLarge (10334)
                split = getattr(self.source, "split_large_events", None)
                report = oversized_event_report(
                    error,
                    document_key=self._oversized_key(),
                    resume_token=self._last_whole_token,
                    split_supported=split,
                    split_in_use=bool(split),
                )
                raise OversizedChangeEventError(f"{self.zone.namespace}: {report}") from error
            raise self._explain(error, token) from error

    def _oversized_key(self) -> Mapping[str, Any] | None:
        """The key of the event the source could not deliver, best effort: a key-only read
        (``key_only_pipeline``) after the last whole event, taking among the next events' keys
        the one whose current document is largest (an event over the limit carries its document
        once or twice); ``None`` if that read fails too or finds no key."""
        request = self.request
        try:
            cursor = self.source.watch(
                request.database,
                request.collection,
                resume_after=self._last_whole_token,
                full_document=request.full_document,
                batch_size=STREAM_BATCH_SIZE,
                pipeline=key_only_pipeline([]),
            )
            keys = []
            try:
                while len(keys) < STREAM_BATCH_SIZE and (event := cursor.try_next()) is not None:
                    if isinstance(event.get("documentKey"), Mapping):
                        keys.append(dict(event["documentKey"]))
            finally:
                cursor.close()
            ids = [key["_id"] for key in keys if "_id" in key]
            documents = self.source.documents_by_id(request.database, request.collection, ids)
        except Exception:  # best effort: only the report's detail is lost
            return None
        if not documents:
            return keys[0] if len(keys) == 1 else None
        largest = max(documents, key=lambda doc: len(raw_bson_document(doc).raw))
        return {"_id": largest["_id"]}

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
