"""Change events delivered by Amazon MQ (ActiveMQ, RabbitMQ) or SQS, into raw-zone batches.

A producer (e.g. a change-stream relay) sends each change event as canonical extended JSON of the
change-event shape pymongo returns (``_id`` token, ``operationType``, ``clusterTime``, ``ns``,
``documentKey``, ``fullDocument``, ``wallTime``); a message body may hold one event or a JSON
array of them. An update event without ``fullDocument`` but with ``updateDescription`` (a relay
of a stream opened without ``fullDocument: "updateLookup"``) is a partial update: published as
such, the merge applies it to the stored document (``merge.partial_updates``). Rows are the same as the change stream's (``batches.event_row``), so a collection
fed by messages merges exactly like a captured one, ordered by ``clusterTime``; events of one
transaction (equal ``clusterTime``) by their resume tokens, since queues (SQS standard) do not keep
the order (``seq`` from ``positions.token_order``).

Guarantees:
- **Idempotent by message id.** Brokers redeliver whole batches (MQ has no partial failure), so
  each collection keeps the ids of the messages it already published (the last
  ``MAX_SEEN_MESSAGES``, newest kept) in a ledger object written with the batch, before its
  manifest, at a key unique to the attempt that the manifest names (a concurrent invocation can
  never overwrite it); a redelivered message is skipped, and so is a second copy of a message
  inside one event. RabbitMQ messages without ``messageId`` are identified by a
  hash of queue and payload. Without the bound a duplicate would still be harmless (the merge
  keeps the latest ``pos``), only stored twice.
- **Nothing dropped silently.** A message that cannot be decoded, or an event that cannot become
  a row, is a dead letter with its reason: in the collection's batch quarantine when the
  collection is known, else in ``raw/_mq_quarantine/<message hash>.json``. For SQS its id is
  returned in ``batchItemFailures`` (every time it is delivered), so the queue's redrive policy
  moves it to the queue's own dead-letter queue too.
- **A bad message never blocks the good ones** of the same invocation: JSON whose type wrappers
  are invalid (``{"$oid": "zz…"}``, ``{"$numberDecimal": "1,5"}``, a malformed or out-of-int64
  ``$date``, ``$binary`` that is not base64, ``$numberLong`` with letters) fails that message
  alone, with a reason quoting the wrapper; it is still routed by its ``ns`` when that can be
  read. SQS can only fail a whole message (``batchItemFailures`` lists message ids), so a JSON
  array body with one bad event among good ones fails as a whole message: reported and kept
  whole in the dead letter, while its good events are published (as for an event that decodes
  but cannot become a row) — a redelivery skips it by its id, so nothing is published twice.
- A legal MongoDB name the product does not support (GridFS's dotted ``fs.files``, ``$``,
  spaces, more than 63 characters) is quarantined with a reason saying so, never routed.
- A ``drop``/``rename``/``invalidate`` event is an empty batch of its own, marked ``dropped``
  with the event's position (the merge removes the rows older than it): the rows read before
  it are published first, in a batch of their own, since a queue's best-effort order can put
  a newer change (into the re-created collection) in front of the drop.
- **PII masking** (``edge_masking``): the function's ``LAKEHOUSE_MASKING`` rules mask each event
  (``fullDocument``, ``fullDocumentBeforeChange``, ``documentKey``, ``updatedFields``) before it
  becomes a row; a dead letter keeps the message with its payload masked (stripped when it is
  not JSON), and a message no collection takes keeps no payload while any rules are set. Such
  failed messages are *not* returned in ``batchItemFailures`` (``withheld_failures`` instead):
  the queue's redrive policy would keep the message in clear in the queue's dead-letter queue,
  while the masked dead letter in the lake is kept and counted.
  Messages cannot be read again: after a rules change, rows published earlier keep the old
  masking until the relay sends the collection again behind a ``drop`` event (README, "PII
  masking").
- Concurrent invocations are safe: if another invocation published the next batch first, this
  one drops its unpublished batch and rebuilds on top of the winner's (whose ledger tells which
  messages the winner took), up to ``MAX_PUBLISH_ATTEMPTS`` attempts; what this invocation
  already published stays published and is not redone.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lambda_functions.cdc_capture.batches import (
    DATA_OPS,
    END_OPS,
    BatchRows,
    Malformed,
    event_row,
    publish_with_ledger,
    read_ledger,
)
from lambda_functions.cdc_capture.edge_masking import EdgeMasking, MaskingByCollection
from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.cdc_capture.positions import event_position
from lambda_functions.contracts import name_problem
from lambda_functions.lake.extended_json import InvalidExtendedJSONError, decode_document
from lambda_functions.lake.raw_zone import Checkpoint, RawZone
from lambda_functions.lake.store import ObjectExistsError, ObjectStore

MAX_SEEN_MESSAGES = 10_000
MAX_PUBLISH_ATTEMPTS = 5


@dataclass(frozen=True)
class Message:
    """One broker message: its id, where it came from, and its payload (``None`` if undecodable)."""

    message_id: str
    source: str  # "aws:amq" | "aws:rmq" | "aws:sqs"
    destination: str  # queue or topic name
    payload: bytes | None
    problem: str | None = None


@dataclass
class MessageIngestResult:
    """What one invocation published, per collection, and which messages failed."""

    messages: int = 0
    duplicates: int = 0  # redelivered messages skipped
    batches: dict[str, list[int]] = field(default_factory=dict)  # namespace -> batch numbers
    rows: int = 0
    quarantined: int = 0
    failed_message_ids: list[str] = field(default_factory=list)  # malformed (SQS reports them)
    # malformed messages of masked collections: kept masked in the lake, not reported (masking)
    withheld_failures: list[str] = field(default_factory=list)

    def response(self, event_source: str) -> dict[str, Any]:
        """The handler's return value: SQS partial failures, or a summary for MQ."""
        if event_source == "aws:sqs":
            return {"batchItemFailures": [{"itemIdentifier": i} for i in self.failed_message_ids]}
        return {
            "messages": self.messages,
            "duplicates": self.duplicates,
            "rows": self.rows,
            "quarantined": self.quarantined,
            "batches": self.batches,
        }


def parse_event(event: Mapping[str, Any]) -> tuple[str, list[Message]]:
    """The event source and its messages, for ``aws:amq``, ``aws:rmq`` and ``aws:sqs`` events.

    Event shapes: AWS Lambda Developer Guide, "Using Lambda with Amazon MQ" (``messages``,
    ``rmqMessagesByQueue``, base64 ``data``) and "Using Lambda with Amazon SQS" (``Records``).

    Args:
        event: the Lambda event as delivered by the event source mapping.

    Returns:
        ``(event source, messages)``: ``"aws:amq"`` | ``"aws:rmq"`` | ``"aws:sqs"`` and one
        ``Message`` per record, in delivery order; a record whose body cannot be read still
        becomes a ``Message`` with its ``problem`` set (it is dead-lettered, not dropped).

    Raises:
        ValueError: the event is none of these shapes.
    """
    if event.get("eventSource") == "aws:amq" or "messages" in event:
        return "aws:amq", [_amq_message(m) for m in event.get("messages", [])]
    if event.get("eventSource") == "aws:rmq" or "rmqMessagesByQueue" in event:
        messages = []
        for queue, items in (event.get("rmqMessagesByQueue") or {}).items():
            messages.extend(_rmq_message(queue, item) for item in items)
        return "aws:rmq", messages
    records = event.get("Records")
    if isinstance(records, list):
        return "aws:sqs", [_sqs_message(r) for r in records]
    raise ValueError(
        "not an Amazon MQ or SQS event: expected eventSource aws:amq (messages), aws:rmq "
        "(rmqMessagesByQueue) or SQS Records"
    )


def ingest_messages(
    messages: list[Message],
    store: ObjectStore,
    *,
    default_namespace: str | None = None,
    masking: MaskingByCollection | None = None,
) -> MessageIngestResult:
    """Publish the change events of ``messages`` as batches, one or more per collection.

    A message carries change events in the change-stream shape (canonical extended JSON, one
    event or an array; MongoDB manual, "Change Events"), routed by their ``ns``. Each message id
    is published at most once: a copy delivered again in the same event, or already in the
    collection's ledger, is skipped and counted in ``duplicates``.

    Args:
        messages: the messages of one Lambda event (``parse_event``).
        store: the lake's object store.
        default_namespace: ``"database.collection"`` for events without ``ns``.
        masking: each collection's masking (default: ``MaskingByCollection()``, from the
            function's ``LAKEHOUSE_MASKING`` and key settings).

    Returns:
        A ``MessageIngestResult``: counts of messages, rows, duplicates and dead letters, the
        batches published by namespace, ``withheld_failures`` (malformed messages of collections
        with masking rules: dead-lettered masked in the lake only) and ``failed_message_ids``
        (the other malformed messages, which the SQS handler reports as batch item failures).

    Guarantees:
        Atomic batches: data and the ledger of message ids first, the manifest last (an
        exclusive create), the checkpoint after it. A message is in exactly one batch or a
        dead-letter object, never dropped silently; events keep their order within a message.

    Raises:
        ConcurrentCaptureError: other invocations published first ``MAX_PUBLISH_ATTEMPTS``
            times in a row (nothing of the failed attempt is published; the broker redelivers).
        MaskingRulesError, MaskingKeyError: the masking settings are malformed, or rules hash
            fields and the key is missing (terminal; nothing of the collection is published).
    """
    masking = MaskingByCollection() if masking is None else masking
    result = MessageIngestResult(messages=len(messages))
    by_namespace: dict[str, list[tuple[Message, list[Any] | None, str | None]]] = {}
    delivered: set[str] = set()
    for message in messages:
        if message.message_id in delivered:  # redelivered inside this event
            result.duplicates += 1
            continue
        delivered.add(message.message_id)
        events, problem, routing = _decode(message)
        namespace, unroutable = _namespace(routing, default_namespace)
        if namespace is None:
            # with masking rules set, a decoding problem (it may quote a value) is left out
            parts = (unroutable,) if masking.configured else (problem, unroutable)
            reason = "; ".join(filter(None, parts))
            _quarantine_unrouted(store, message, reason, strip=masking.configured)
            result.quarantined += 1
            failed = result.withheld_failures if masking.configured else result.failed_message_ids
            failed.append(message.message_id)
            continue
        by_namespace.setdefault(namespace, []).append((message, events, problem))
    for namespace, items in by_namespace.items():
        database, collection = namespace.split(".", 1)
        zone = RawZone(store, database, collection)
        _publish_namespace(zone, items, result, masking(namespace))
    return result


@dataclass
class _NamespaceProgress:
    """What this invocation has published for one collection, kept across attempts."""

    batches: list[int] = field(default_factory=list)
    rows: int = 0
    quarantined: int = 0
    published: dict[str, str] = field(default_factory=dict)  # message id -> "ok" | "quarantined"
    # A message whose events a drop/rename/invalidate split over batches: how many of its events
    # are published, and whether one of those was malformed (a retry resumes after them).
    partial: dict[str, tuple[int, bool]] = field(default_factory=dict)


@dataclass
class _AttemptOutcome:
    """What one attempt found in the ledger: counted only if the attempt completes."""

    duplicates: int = 0
    failed_duplicates: list[str] = field(default_factory=list)


def _publish_namespace(
    zone: RawZone,
    items: list[tuple[Message, list[Any] | None, str | None]],
    result: MessageIngestResult,
    masking: EdgeMasking,
) -> None:
    """Publish one collection's messages; if another invocation publishes first, rebuild on top
    of its batch (its ledger included). Messages this invocation already published in an
    earlier attempt are neither published again nor counted as duplicates."""
    progress = _NamespaceProgress()
    for attempt in range(1, MAX_PUBLISH_ATTEMPTS + 1):
        try:
            outcome = _publish_attempt(zone, items, progress, masking)
            break
        except ConcurrentCaptureError:
            if attempt == MAX_PUBLISH_ATTEMPTS:
                raise
    if progress.batches:
        result.batches.setdefault(zone.namespace, []).extend(progress.batches)
    result.rows += progress.rows
    result.quarantined += progress.quarantined
    result.duplicates += outcome.duplicates
    failed = result.withheld_failures if masking.active else result.failed_message_ids
    failed.extend(
        [i for i, status in progress.published.items() if status == "quarantined"]
        + outcome.failed_duplicates
    )


def _publish_attempt(
    zone: RawZone,
    items: list[tuple[Message, list[Any] | None, str | None]],
    progress: _NamespaceProgress,
    masking: EdgeMasking,
) -> _AttemptOutcome:
    checkpoint = zone.read_checkpoint()
    seen = read_ledger(zone, checkpoint, input_name="mq", ledger="seen") or {}
    rows, covered, outcome = BatchRows(masking), dict(seen), _AttemptOutcome()
    unpublished: dict[str, str] = {}  # messages in ``rows``, published with the next flush

    def flush(extra: dict[str, Any]) -> None:
        nonlocal rows, checkpoint
        trimmed = dict(list(covered.items())[-MAX_SEEN_MESSAGES:])
        manifest = publish_with_ledger(
            zone, rows, checkpoint, extra, input_name="mq", ledger="seen", value=trimmed
        )
        progress.batches.append(manifest.batch)
        progress.rows += manifest.rows
        progress.quarantined += manifest.quarantined
        progress.published.update(unpublished)
        unpublished.clear()
        checkpoint = Checkpoint(manifest.batch, manifest.state)
        rows = BatchRows(masking)

    for message, events, problem in items:
        message_id = message.message_id
        if message_id in progress.published:
            continue  # published by an earlier attempt of this invocation
        status = seen.get(message_id)
        if status is not None:
            outcome.duplicates += 1
            if status == "quarantined":
                outcome.failed_duplicates.append(message_id)
            continue
        done, malformed = progress.partial.get(message_id, (0, False))
        if problem is not None:
            rows.quarantine(problem, _raw_of(message))
            malformed = True
        for index, event in enumerate(events or ()):
            if index < done:
                continue  # published before this attempt lost a later batch
            op = event.get("operationType") if isinstance(event, Mapping) else None
            # (a list or object is not hashable) the message counts as seen once all its events
            # are published
            if isinstance(op, str) and op in END_OPS:
                if rows.seen or unpublished:
                    # The rows read so far get their own batch: a queue delivers in best-effort
                    # order, so they may be newer than the drop (the merge applies a dropped
                    # batch as the drop alone).
                    flush({})
                    progress.partial[message_id] = (index, malformed)
                drop_pos = event_position(event)  # the merge drops rows older than this
                flush(
                    {"dropped": True, "end_event": op}
                    | ({"drop_pos": drop_pos} if drop_pos is not None else {})
                )
                progress.partial[message_id] = (index + 1, malformed)
                continue
            try:
                if not isinstance(op, str) or op not in DATA_OPS:
                    raise Malformed(f"operationType {op!r} is not a data change")
                if op == "update" and not ({"fullDocument", "updateDescription"} & event.keys()):
                    raise Malformed(
                        "update event with neither fullDocument nor updateDescription: publish "
                        "the change events as the change stream returns them"
                    )
                # Masked before it becomes a row; a queue does not keep the stream's order, so
                # events of one transaction are ordered by their resume tokens.
                row = event_row(rows.mask_event(event), order_by_token=True)
            except (Malformed, KeyError, TypeError) as error:
                rows.quarantine(f"message {message_id}: {error}", event)
                malformed = True
                continue
            if row is not None:  # None: the document was deleted later (its delete follows)
                rows.add(*row)
        covered[message_id] = unpublished[message_id] = "quarantined" if malformed else "ok"
    if rows.seen or unpublished:
        flush({})
    return outcome


def _decode(message: Message) -> tuple[list[Any] | None, str | None, list[Any]]:
    """The change events in a message that decode, the reason the others (or the whole message)
    do not, and the events as plain JSON for routing by ``ns`` (when the body is JSON at all)."""
    if message.problem is not None or message.payload is None:
        return None, message.problem or "empty message", []
    where = f"message {message.message_id}"
    try:
        text = message.payload.decode("utf-8")
        decoded, problem = decode_document(text), None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        # RecursionError: JSON nested deeper than Python's parser goes (no document is: MongoDB
        # refuses nesting past 100 levels), e.g. "[[[[…" garbage; that message alone fails.
        return None, f"{where} is not extended JSON: {type(error).__name__}: {error}", []
    except (InvalidExtendedJSONError, ValueError, TypeError) as error:
        plain = json.loads(text)  # JSON with a bad type wrapper: find the bad events
        routing = [
            e for e in (plain if isinstance(plain, list) else [plain]) if isinstance(e, Mapping)
        ]
        if not isinstance(plain, list):
            return None, f"{where}: {error}", routing
        decoded, problems = [], []
        for index, item in enumerate(plain):
            try:
                decoded.append(decode_document(json.dumps(item)))
            except (InvalidExtendedJSONError, ValueError, TypeError) as item_error:
                problems.append(f"event {index}: {item_error}")
        problem = f"{where} (a JSON array of events) fails as a whole: " + "; ".join(problems)
    events = decoded if isinstance(decoded, list) else [decoded]
    if not all(isinstance(e, Mapping) and "operationType" in e for e in events) or not (
        events or problem
    ):
        return (
            None,
            f"{where} does not carry change events (JSON objects with operationType, as "
            "pymongo's watch() returns them, in canonical extended JSON)",
            [e for e in events if isinstance(e, Mapping)],
        )
    return events, problem, events


def _namespace(events: list[Any], default: str | None) -> tuple[str | None, str | None]:
    """The collection the events belong to (their first ``ns``, else ``default``), or ``None``
    and why."""
    for event in events:
        ns = event.get("ns")
        if isinstance(ns, Mapping) and ns.get("db") and ns.get("coll"):
            database, collection = ns["db"], ns["coll"]
            for what, name in (("database", database), ("collection", collection)):
                problem = name_problem(name)
                if problem is not None:
                    return None, (
                        f"{what} name {name!r} (ns {database!r}.{collection!r}) is a legal "
                        f"MongoDB name this product does not support: {problem}; lake paths "
                        "and warehouse identifiers need letters, digits, '_' or '-', starting "
                        "with a letter or '_', at most 63 characters. Exclude it from the relay "
                        "(e.g. a $match on ns in the change stream that feeds the queue), or "
                        "rename it (renameCollection) if it must be captured"
                    )
            return f"{database}.{collection}", None
    if default is None:
        return None, (
            "no ns in the event and no default collection: relay whole change events (with "
            "ns) or set LAKEHOUSE_MQ_DEFAULT_COLLECTION on the function"
        )
    return default, None


def _quarantine_unrouted(
    store: ObjectStore, message: Message, reason: str, *, strip: bool = False
) -> None:
    """Write the dead letter of a message no collection can take, once per (id, payload).

    With ``strip`` (masking rules are set for some collection, and which apply is unknown), the
    payload is left out (its size is kept); the caller leaves out of ``reason`` what may quote
    a value.

    The key hashes the message id *and* payload, so a redelivery of the same message finds its
    dead letter already there, while two different messages that share an id (a RabbitMQ
    producer reusing ``messageId``) cannot overwrite one another's.
    """
    raw: dict[str, Any] = _raw_of(message)
    if strip:
        raw["payload"] = {"stripped": len(message.payload or b"")}
    line = {"reason": reason, "message_id": message.message_id, "raw": raw}
    digest = hashlib.sha256(message.message_id.encode() + b"\n" + (message.payload or b""))
    with contextlib.suppress(ObjectExistsError):  # the same message, delivered before
        store.put_if_absent(
            f"raw/_mq_quarantine/{digest.hexdigest()[:32]}.json", json.dumps(line).encode()
        )


def _raw_of(message: Message) -> dict[str, Any]:
    payload = message.payload
    text = payload.decode("utf-8", "replace") if payload is not None else None
    return {
        "message_id": message.message_id,
        "source": message.source,
        "destination": message.destination,
        "payload": text,
    }


def _b64(data: Any) -> tuple[bytes | None, str | None]:
    if not isinstance(data, str):
        return None, "message has no base64 data"
    try:
        return base64.b64decode(data, validate=True), None
    except (binascii.Error, ValueError) as error:
        return None, f"message data is not base64: {error}"


def _amq_message(item: Mapping[str, Any]) -> Message:
    destination = next(
        (v for k, v in (item.get("destination") or {}).items() if k.lower() == "physicalname"),
        "",
    )
    payload, problem = _b64(item.get("data"))
    message_id = str(item.get("messageID") or item.get("messageId") or "")
    if not message_id:
        message_id = _payload_id(destination, item.get("data"))
    return Message(message_id, "aws:amq", str(destination), payload, problem)


def _rmq_message(queue: str, item: Mapping[str, Any]) -> Message:
    properties = item.get("basicProperties") or {}
    payload, problem = _b64(item.get("data"))
    message_id = properties.get("messageId") or _payload_id(queue, item.get("data"))
    return Message(str(message_id), "aws:rmq", queue, payload, problem)


def _payload_id(destination: Any, data: Any) -> str:
    """The id of a message that carries none: a hash of where it was sent and its payload."""
    return "sha256:" + hashlib.sha256(f"{destination}\n{data}".encode()).hexdigest()


def _sqs_message(record: Mapping[str, Any]) -> Message:
    body = record.get("body")
    queue = str(record.get("eventSourceARN", "")).rsplit(":", 1)[-1]
    payload = body.encode("utf-8") if isinstance(body, str) else None
    problem = None if payload is not None else "SQS record has no body"
    return Message(str(record.get("messageId", "")), "aws:sqs", queue, payload, problem)
