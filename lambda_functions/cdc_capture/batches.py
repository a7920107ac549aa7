"""Rows of a raw batch, shared by every input (change stream, DMS files, MQ messages).
Rows carry the ordering position ``pos`` described in ``positions``.

Nothing is dropped silently: an input that cannot become a row is a dead letter with its reason
(``quarantine``), written beside the batch (at a key unique to the attempt, which the manifest
names as ``quarantine_key``) and counted in its manifest.

PII masking (``edge_masking``): a ``BatchRows`` made with a collection's ``EdgeMasking`` masks
every document and event before it becomes a row (``mask_document``, ``mask_event``, snapshot
pages) and every dead letter before it is kept; ``publish`` names the masking in the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import pyarrow as pa
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidBSON, InvalidDocument
from bson.raw_bson import RawBSONDocument

from lambda_functions.cdc_capture.edge_masking import EdgeMasking
from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.cdc_capture.positions import (
    cluster_position,
    commit_position,
    millis,
    token_order,
)
from lambda_functions.errors import TerminalError
from lambda_functions.lake.extended_json import (
    RAW_DOCUMENT_OPTIONS,
    encode_document,
    encode_raw,
    invalid_utf8_path,
    not_utf8_reason,
    relaxed_json,
)
from lambda_functions.lake.masking_key import MaskingKeyError
from lambda_functions.lake.raw_manifest import JSON_BYTES_KEY
from lambda_functions.lake.raw_zone import (
    BATCH_SCHEMA,
    UPDATE_DESCRIPTION_COLUMN,
    BatchManifest,
    Checkpoint,
    ObjectExistsError,
    RawZone,
)
from lambda_functions.lake.record_key import raw_record_key, record_key

ROW_OVERHEAD_BYTES = 48  # _id, op, pos, seq, event_time beside the document, for the byte budget
DATA_OPS = frozenset({"insert", "update", "replace", "delete"})  # change events that become rows
# Events after which the collection's stream is over: the collection must be snapshotted anew.
END_OPS = frozenset({"drop", "dropDatabase", "rename", "invalidate"})


class Malformed(TerminalError, ValueError):
    """An input that cannot become a row: it goes to the dead-letter object. Terminal (the same
    input is malformed every time); capture catches it and quarantines the input, so it only
    escapes as a bug."""


class ChangeRow(NamedTuple):
    """One row of a raw batch made from a change event (``event_row``), in ``BATCH_SCHEMA``'s
    column order (``seq`` is given when the batch is published: ``token_order``, else the
    delivery order)."""

    record_key: str  # the ``_id`` column: canonical string form of ``documentKey._id``
    op: str  # "insert" | "update" | "replace" | "delete"
    pos: int  # stream position: cluster time ``t << 32 | i`` (or the commit position)
    event_time_ms: int  # wall time of the change, epoch milliseconds
    doc: str | None  # canonical extended JSON of the full document; None for a delete
    # Canonical extended JSON of ``updateDescription`` for a partial update (an update event
    # without ``fullDocument``: ``doc`` is None); None otherwise (``UPDATE_DESCRIPTION_COLUMN``).
    update_description: str | None = None
    # The event's resume-token order (``positions.token_order``), its ``seq``; None without a
    # MongoDB token: the row's ``seq`` is then its place in the batch.
    token_order: int | None = None


class BatchRows:
    """Column lists for one batch, turned into a single Arrow table when published.

    Args:
        masking: the collection's masking (``None`` or empty rules: nothing is masked).
    """

    def __init__(self, masking: EdgeMasking | None = None) -> None:
        self.masking = masking if masking is not None and masking.active else None
        self.ids: list[str] = []
        self.ops: list[str] = []
        self.positions: list[int] = []
        self.times_ms: list[int] = []
        self.docs: list[str | None] = []
        self.update_descriptions: dict[int, str] = {}  # row index -> partial update's JSON
        self.token_orders: dict[int, int] = {}  # row index -> its ``seq`` from the resume token
        self.dead_letters: list[str] = []
        self.bytes = 0

    @property
    def seen(self) -> int:
        """Rows plus dead letters: what the ``max_rows`` budget counts."""
        return len(self.ids) + len(self.dead_letters)

    def add(
        self,
        _id: str,
        op: str,
        pos: int,
        time_ms: int,
        doc: str | None,
        update_description: str | None = None,
        token_order: int | None = None,
    ) -> None:
        if token_order is not None:
            self.token_orders[len(self.ids)] = token_order
        if update_description is not None:
            self.update_descriptions[len(self.ids)] = update_description
            self.bytes += len(update_description)
        self.ids.append(_id)
        self.ops.append(op)
        self.positions.append(pos)
        self.times_ms.append(time_ms)
        self.docs.append(doc)
        self.bytes += len(_id) + (len(doc) if doc else 0) + ROW_OVERHEAD_BYTES

    def mask_document(self, document: Any) -> Any:
        """``document`` masked with the collection's rules (itself without rules or when it
        is not a document).

        Raises:
            Malformed: the document cannot be read to mask it (it goes to the dead letters,
                masked or stripped).
            MaskingKeyError: the rules hash fields and no key is configured.
        """
        if self.masking is None or not isinstance(document, Mapping):
            return document
        try:
            return self.masking.document(document)
        except MaskingKeyError:
            raise
        except Exception as error:
            raise Malformed(f"document cannot be read to mask it: {type(error).__name__}") from None

    def mask_event(self, event: Any) -> Any:
        """A change event masked with the collection's rules (``EdgeMasking.event``).

        Raises:
            Malformed: the event cannot be read to mask it.
            MaskingKeyError: the rules hash fields and no key is configured.
        """
        if self.masking is None or not isinstance(event, Mapping):
            return event
        try:
            return self.masking.event(event)
        except MaskingKeyError:
            raise
        except Exception as error:
            raise Malformed(f"event cannot be read to mask it: {type(error).__name__}") from None

    def add_snapshot_page(
        self, page: list[Any], pos: int, time_ms: int, max_bytes: int
    ) -> tuple[int, Any]:
        """Add snapshot documents until the page ends or ``max_bytes`` is reached.

        Returns how many documents were taken and the ``_id`` of the last one taken that has an
        ``_id`` (the paging cursor; ``None`` if none had one), read so that it never raises: a
        document quarantined for a string that is not valid UTF-8 (even in its ``_id``) or any
        other reason still moves the cursor past it (``paging_id``). Raw BSON documents whose
        ``_id`` leads the document (what servers store) take the fast path: key and canonical
        JSON straight from the bytes, with no decoding in Python.
        """
        ids, docs, ops, positions, times = (
            self.ids,
            self.docs,
            self.ops,
            self.positions,
            self.times_ms,
        )
        taken, size = 0, self.bytes
        for document in page:
            taken += 1
            if self.masking is not None:  # decodes only what the rules name
                try:
                    document = self.mask_document(document)
                except Malformed as problem:
                    self.bytes = size
                    self.quarantine(str(problem), document)
                    size = self.bytes
                    if size >= max_bytes:
                        break
                    continue
            key = raw_record_key(document.raw) if type(document) is RawBSONDocument else None
            if key is not None:
                try:
                    doc = encode_raw(document.raw)
                except InvalidDocument as error:
                    self.bytes = size
                    self.quarantine(str(error), document)
                    size = self.bytes
                else:
                    ids.append(key)
                    docs.append(doc)
                    ops.append("snapshot")
                    positions.append(pos)
                    times.append(time_ms)
                    size += len(key) + len(doc) + ROW_OVERHEAD_BYTES
            else:
                self.bytes = size
                try:
                    _id, doc = document_json(document)
                except Malformed as problem:
                    self.quarantine(str(problem), document)
                else:
                    self.add(_id, "snapshot", pos, time_ms, doc)
                size = self.bytes
            if size >= max_bytes:
                break
        self.bytes = size
        for document in reversed(page[:taken]):
            found, last_id = paging_id(document)
            if found:
                return taken, last_id
        return taken, None

    def quarantine(self, reason: str, raw: Any) -> None:
        """Keep ``raw`` as a dead letter with its reason; masked (or stripped) and with masked
        values redacted from the reason when the collection has rules
        (``EdgeMasking.dead_letter``)."""
        if self.masking is not None:
            reason, raw = self.masking.dead_letter(reason, raw)
        line = f'{{"reason": {json.dumps(reason)}, "raw": {relaxed_json(raw)}}}'
        self.dead_letters.append(line)
        self.bytes += len(line)

    def table(self) -> pa.Table:
        """The rows in ``BATCH_SCHEMA``, plus ``UPDATE_DESCRIPTION_COLUMN`` when a row is a
        partial update (only then: other batches keep the format readers before it know).
        ``seq`` is a row's resume-token order when it has one, else its place in the batch."""
        seqs = range(len(self.ids))
        if self.token_orders:
            seqs = [self.token_orders.get(i, i) for i in seqs]
        table = pa.table(
            [
                pa.array(self.ids, pa.string()),
                pa.array(self.ops, pa.string()),
                pa.array(self.positions, pa.int64()),
                pa.array(seqs, pa.int64()),
                pa.array(self.times_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                pa.array(self.docs, pa.string()),
            ],
            schema=BATCH_SCHEMA,
        )
        if not self.update_descriptions:
            return table
        descriptions = [self.update_descriptions.get(i) for i in range(len(self.ids))]
        return table.append_column(
            pa.field(UPDATE_DESCRIPTION_COLUMN, pa.string()), pa.array(descriptions, pa.string())
        )


def paging_id(document: Any) -> tuple[bool, Any]:
    """(whether it has one, the ``_id``) of a snapshot document, never raising: raw BSON is
    read with ``RAW_DOCUMENT_OPTIONS`` (an ``_id`` string that is not valid UTF-8 comes back with
    surrogate escapes, which the sources turn back into the original bytes to page after it; a
    date outside years 1-9999 as ``DatetimeMS``)."""
    if isinstance(document, RawBSONDocument):
        try:
            readable = RawBSONDocument(document.raw, RAW_DOCUMENT_OPTIONS)
            return ("_id" in readable), readable.get("_id")
        except (InvalidBSON, ValueError, TypeError):
            return False, None  # not even a BSON document: nothing to page by
    if isinstance(document, Mapping) and "_id" in document:
        return True, document["_id"]
    return False, None


def document_json(document: Any) -> tuple[str, str]:
    """(key string, canonical JSON) of a full document, or ``Malformed`` with the reason."""
    if not isinstance(document, Mapping):
        raise Malformed(f"document is a {type(document).__name__}, not a document")
    try:
        doc = encode_document(document)
        if "_id" not in document:
            raise Malformed("document has no _id")
        return record_key(document["_id"]), doc
    except Malformed:
        raise
    except Exception as error:  # any encoding failure is about this document only
        raise Malformed(f"document cannot be encoded: {error}") from error


def event_row(event: Mapping[str, Any], *, order_by_token: bool = False) -> ChangeRow | None:
    """The row of a data-change event.

    Args:
        event: a change event (insert, update, replace or delete) in the change-stream shape:
            ``operationType``, ``documentKey._id``, ``clusterTime`` (or ``wallTime``) and, except
            for deletes, ``fullDocument``; an update may carry ``updateDescription`` instead
            (a stream opened without ``fullDocument: "updateLookup"`` omits ``fullDocument`` from
            update events: MongoDB Manual, "Change Events" > "update Event").
        order_by_token: set ``token_order`` from the event's resume token (inputs whose
            delivery order is not the stream's: a queue relay). A change stream reads events in
            stream order, so its rows keep the delivery order as ``seq``.

    Returns:
        A ``ChangeRow`` (``rows.add(*row)`` takes it): for an update without a ``fullDocument``
        field but with ``updateDescription``, a partial update (``doc`` None,
        ``update_description`` its canonical extended JSON); ``None`` for an update whose
        document is gone (``fullDocument: null``: the server's ``updateLookup`` found nothing,
        its delete follows in the stream). With ``order_by_token``, ``token_order`` is set when
        the event's ``_id`` is a MongoDB resume token of its ``clusterTime``
        (``positions.token_order``): events of one transaction then keep their stream order
        however they are delivered.

    Raises:
        Malformed: anything wrong with the event (a key or document that cannot be stored, a
            missing field), never another exception, so the stream moves past it.
    """
    try:
        row = _event_row(event)
        if row is not None and order_by_token:
            row = row._replace(token_order=token_order(event.get("_id"), row.pos))
    except Malformed:
        raise
    except Exception as error:  # an undecodable raw event: about this event only
        raise Malformed(
            f"{event.get('operationType', 'change')} event cannot be read: "
            f"{type(error).__name__}: {error}"
        ) from error
    return row


def _event_row(event: Mapping[str, Any]) -> ChangeRow | None:
    op = event["operationType"]
    key = event.get("documentKey")
    if not isinstance(key, Mapping) or "_id" not in key:
        raise Malformed(f"{op} event has no documentKey._id")
    cluster_time = event.get("clusterTime")
    wall = event.get("wallTime")
    wall = wall if isinstance(wall, datetime | DatetimeMS) else None
    if hasattr(cluster_time, "time") and hasattr(cluster_time, "inc"):
        pos = cluster_position(cluster_time.time, cluster_time.inc)
        time_ms = millis(wall) if wall is not None else cluster_time.time * 1000
    elif wall is not None:
        try:
            pos, time_ms = commit_position(wall), millis(wall)
        except ValueError as error:
            raise Malformed(
                f"{op} event has no clusterTime and its wallTime cannot order it: {error}"
            ) from None
    else:
        raise Malformed(f"{op} event has no clusterTime timestamp")
    try:
        _id = record_key(key["_id"])
    except Exception as error:
        bad = invalid_utf8_path(key)
        reason = not_utf8_reason(bad) if bad else str(error)
        raise Malformed(f"documentKey._id cannot be a record key: {reason}") from error
    if op == "delete":
        return ChangeRow(_id, op, pos, time_ms, None)
    document = event.get("fullDocument")
    if document is None:
        if op == "update":
            return _partial_update_row(event, _id, pos, time_ms)
        raise Malformed(f"{op} event has no fullDocument")
    _, doc = document_json(document)
    return ChangeRow(_id, op, pos, time_ms, doc)


def _partial_update_row(
    event: Mapping[str, Any], _id: str, pos: int, time_ms: int
) -> ChangeRow | None:
    """The partial-update row of an update event without a ``fullDocument`` field (``None``
    when the field is there but null: the lookup found no document).

    Raises:
        Malformed: the event has neither a ``fullDocument`` field nor an ``updateDescription``
            (the update cannot be applied: skipping it would lose it).
    """
    if "fullDocument" in event:
        return None
    description = event.get("updateDescription")
    if not isinstance(description, Mapping):
        raise Malformed("update event has neither fullDocument nor updateDescription")
    try:
        text = encode_document(description)
    except Exception as error:
        raise Malformed(f"update event's updateDescription cannot be encoded: {error}") from error
    return ChangeRow(_id, "update", pos, time_ms, None, text)


def publish(
    zone: RawZone,
    rows: BatchRows,
    checkpoint: Checkpoint,
    state: dict[str, Any],
    extra: dict[str, Any],
    *,
    side_files: Mapping[str, bytes] | None = None,
) -> BatchManifest:
    """Publish ``rows`` as batch ``checkpoint.batch + 1``: dead letters and ``side_files``
    (e.g. an input's ledger) first, then the data files, then the manifest, then the checkpoint.

    Everything written before the manifest belongs to the batch only once the manifest exists,
    so a crash at any point leaves either the whole batch or none of it. Every such object has a
    key unique to this attempt (``RawZone.side_key``) that the manifest names (dead letters:
    ``extra["quarantine_key"]``): a writer that loses the race for the batch number cannot
    overwrite the winner's files, and its own are removed.

    The manifest's ``extra["json_bytes"]`` records the rows' size as canonical JSON (ids,
    documents, update descriptions: ``BatchRows.bytes``), which the merge's byte budget reads.

    Raises:
        ConcurrentCaptureError: another writer published this batch number first; nothing of
            this attempt is published (re-read the checkpoint and rebuild on top of it).
    """
    batch = checkpoint.batch + 1
    side = dict(side_files or {})
    if rows.bytes:  # the rows' JSON size: what the merge budgets by (Parquet may compress it)
        extra = {**extra, JSON_BYTES_KEY: rows.bytes}
    if rows.masking is not None:
        extra = {**extra, **rows.masking.manifest_fields()}
    if rows.dead_letters:
        key = zone.side_key("quarantine", batch, ".jsonl")
        side[key] = ("\n".join(rows.dead_letters) + "\n").encode()
        extra = {**extra, "quarantine_key": key}
    try:
        return zone.write_batch(
            [rows.table()],
            after=checkpoint,
            state=state,
            quarantined=len(rows.dead_letters),
            extra=extra,
            side_files=side,
        )
    except ObjectExistsError:
        raise ConcurrentCaptureError(
            f"{zone.namespace}: batch {batch} was published by another writer while this one "
            "ran; this run's changes were not published (no data is lost: the other writer or "
            "the next run covers them). Run one capture per collection at a time (a Dagster "
            "concurrency pool of 1 per collection)."
        ) from None


# -- inputs that keep a ledger beside their batches -----------------------------------------------
def publish_with_ledger(
    zone: RawZone,
    rows: BatchRows,
    checkpoint: Checkpoint,
    extra: dict[str, Any],
    *,
    input_name: str,
    ledger: str,
    value: Any,
) -> BatchManifest:
    """Publish ``rows`` for an input that keeps its own ledger (DMS: the bookmark of files done;
    MQ: the message ids seen): ``value`` as JSON in
    ``<zone>/_<input_name>/<ledger>-<batch>-<uuid>.json`` (a name unique to this attempt),
    written before the manifest, whose state ``{"phase": input_name, "<ledger>_key": key}`` points
    to it (``read_ledger`` reads it back). The ledger is thus part of the batch's exclusive
    claim: the ledger a batch points to describes exactly the batches up to it.

    Raises:
        ConcurrentCaptureError: another writer published this batch number first.
    """
    key = zone.side_key(f"_{input_name}", checkpoint.batch + 1, ".json", stem=f"{ledger}-")
    return publish(
        zone,
        rows,
        checkpoint,
        {"phase": input_name, f"{ledger}_key": key},
        {**extra, "input": input_name},
        side_files={key: json.dumps(value).encode()},
    )


def read_ledger(zone: RawZone, checkpoint: Checkpoint, *, input_name: str, ledger: str) -> Any:
    """The ledger ``publish_with_ledger`` wrote with the checkpoint's batch, or ``None`` when that
    batch was not published by this input (no batch yet, or another input's). The key is the
    one the batch's state names (older batches name ``<ledger>-<batch>.json``), never guessed."""
    state = checkpoint.state
    key = state.get(f"{ledger}_key") if state.get("phase") == input_name else None
    return json.loads(zone.store.get(key)) if key else None
