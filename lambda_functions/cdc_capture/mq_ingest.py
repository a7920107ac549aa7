"""Change events delivered by Amazon MQ (ActiveMQ, RabbitMQ) or SQS, into raw-zone batches.

A producer (e.g. a change-stream relay) sends each change event as canonical extended JSON of the
change-event shape pymongo returns (``_id`` token, ``operationType``, ``clusterTime``, ``ns``,
``documentKey``, ``fullDocument``, ``wallTime``); a message body may hold one event or a JSON
array of them. Rows are the same as the change stream's (``batches.event_row``), so a collection
fed by messages merges exactly like a captured one, ordered by ``clusterTime``.

Guarantees:
- **Idempotent by message id.** Brokers redeliver whole batches (MQ has no partial failure), so
  each collection keeps the ids of the messages it already published (the last
  ``MAX_SEEN_MESSAGES``, newest kept) in an object written with the batch, before its manifest;
  a redelivered message is skipped. RabbitMQ messages without ``messageId`` are identified by a
  hash of queue and payload. Without the bound a duplicate would still be harmless (the merge
  keeps the latest ``pos``), only stored twice.
- **Nothing dropped silently.** A message that cannot be decoded, or an event that cannot become
  a row, is a dead letter with its reason: in the collection's batch quarantine when the
  collection is known, else in ``raw/_mq_quarantine/<message hash>.json``. For SQS its id is
  returned in ``batchItemFailures`` (every time it is delivered), so the queue's redrive policy
  moves it to the queue's own dead-letter queue too.
- A ``drop``/``rename``/``invalidate`` event ends its batch, marked ``dropped`` (the merge clears
  the table; events after it start the new generation).
- Each collection is one writer at a time: if another invocation published first, the batch is
  rebuilt on top of it (its seen ids included) and published again, up to 5 attempts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bson.errors import InvalidDocument

from lambda_functions.cdc_capture.batches import (
    DATA_OPS,
    END_OPS,
    BatchRows,
    Malformed,
    event_row,
    publish_with_ledger,
    read_ledger,
)
from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.cdc_capture.extended_json import decode_document
from lambda_functions.cdc_capture.positions import event_position
from lambda_functions.contracts import validate_name
from lambda_functions.lake.raw_zone import Checkpoint, RawZone
from lambda_functions.lake.store import ObjectStore

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
    """The event source and its messages, for ``aws:amq``, ``aws:rmq`` and ``aws:sqs`` events."""
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
) -> MessageIngestResult:
    """Publish the change events of ``messages`` as batches, one or more per collection."""
    result = MessageIngestResult(messages=len(messages))
    by_namespace: dict[str, list[tuple[Message, list[Any] | None, str | None]]] = {}
    for message in messages:
        events, problem = _decode(message)
        namespace = _namespace(events, default_namespace)
        if namespace is None:
            _quarantine_unrouted(store, message, problem or "no ns in the event and no default")
            result.quarantined += 1
            result.failed_message_ids.append(message.message_id)
            continue
        by_namespace.setdefault(namespace, []).append((message, events, problem))
    for namespace, items in by_namespace.items():
        database, collection = namespace.split(".", 1)
        zone = RawZone(store, database, collection)
        for attempt in range(1, MAX_PUBLISH_ATTEMPTS + 1):
            try:
                _publish_namespace(zone, items, result)
                break
            except ConcurrentCaptureError:
                if attempt == MAX_PUBLISH_ATTEMPTS:
                    raise
    return result


def _publish_namespace(
    zone: RawZone,
    items: list[tuple[Message, list[Any] | None, str | None]],
    result: MessageIngestResult,
) -> None:
    checkpoint = zone.read_checkpoint()
    seen = read_ledger(zone, checkpoint, input_name="mq", ledger="seen") or {}
    rows, covered, failed = BatchRows(), dict(seen), []
    published: list[int] = []
    counted = {"rows": 0, "quarantined": 0, "duplicates": 0}

    def flush(extra: dict[str, Any]) -> None:
        nonlocal rows, checkpoint
        trimmed = dict(list(covered.items())[-MAX_SEEN_MESSAGES:])
        manifest = publish_with_ledger(
            zone, rows, checkpoint, extra, input_name="mq", ledger="seen", value=trimmed
        )
        published.append(manifest.batch)
        counted["rows"] += manifest.rows
        counted["quarantined"] += manifest.quarantined
        checkpoint = Checkpoint(manifest.batch, manifest.state)
        rows = BatchRows()

    for message, events, problem in items:
        status = seen.get(message.message_id)
        if status is not None:
            counted["duplicates"] += 1
            if status == "quarantined":
                failed.append(message.message_id)
            continue
        malformed = problem is not None
        if problem is not None:
            rows.quarantine(problem, _raw_of(message))
        for event in events or ():
            op = event.get("operationType") if isinstance(event, Mapping) else None
            if op in END_OPS:  # the message counts as seen once all its events are published
                drop_pos = event_position(event)  # the merge drops rows older than this
                flush(
                    {"dropped": True, "end_event": op}
                    | ({"drop_pos": drop_pos} if drop_pos is not None else {})
                )
                continue
            try:
                if op not in DATA_OPS:
                    raise Malformed(f"operationType {op!r} is not a data change")
                if op == "update" and "fullDocument" not in event:
                    raise Malformed(
                        "update event without fullDocument: publish change events opened with "
                        "fullDocument: 'updateLookup'"
                    )
                row = event_row(event)
            except (Malformed, KeyError, TypeError) as error:
                rows.quarantine(f"message {message.message_id}: {error}", event)
                malformed = True
                continue
            if row is not None:  # None: the document was deleted later (its delete follows)
                rows.add(*row)
        covered[message.message_id] = "quarantined" if malformed else "ok"
        if malformed:
            failed.append(message.message_id)
    if rows.seen or len(covered) != len(seen):
        flush({})
    if published:
        result.batches.setdefault(zone.namespace, []).extend(published)
    result.rows += counted["rows"]
    result.quarantined += counted["quarantined"]
    result.duplicates += counted["duplicates"]
    result.failed_message_ids.extend(failed)


def _decode(message: Message) -> tuple[list[Any] | None, str | None]:
    """The change events in a message, or the reason there are none."""
    if message.problem is not None or message.payload is None:
        return None, message.problem or "empty message"
    try:
        decoded = decode_document(message.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError, InvalidDocument) as error:
        return None, f"message {message.message_id} is not extended JSON: {error}"
    events = decoded if isinstance(decoded, list) else [decoded]
    if not events or not all(isinstance(e, Mapping) and "operationType" in e for e in events):
        return None, f"message {message.message_id} does not carry change events"
    return events, None


def _namespace(events: list[Any] | None, default: str | None) -> str | None:
    for event in events or ():
        ns = event.get("ns")
        if isinstance(ns, Mapping) and ns.get("db") and ns.get("coll"):
            try:
                return f"{validate_name(ns['db'], 'database')}.{validate_name(ns['coll'], 'collection')}"
            except ValueError:
                return None
    return default


def _quarantine_unrouted(store: ObjectStore, message: Message, reason: str) -> None:
    digest = hashlib.sha256(message.message_id.encode()).hexdigest()[:32]
    line = {"reason": reason, "message_id": message.message_id, "raw": _raw_of(message)}
    store.put(f"raw/_mq_quarantine/{digest}.json", json.dumps(line).encode())


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
