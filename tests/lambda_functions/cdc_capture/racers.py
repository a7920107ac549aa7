"""Writers that race for the same collection's raw zone, for the racing-writer tests.

Module-level and light (no Delta, no Dagster) so that ``multiprocessing``'s spawn start method can
import it in a fresh interpreter, as a second Lambda container would be.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.cdc_capture.mq_ingest import Message, ingest_messages
from lambda_functions.lake.store import ObjectStore, open_store

DB, COLL = "shop", "orders"
BASE_TIME = 1_704_449_700  # clusterTime seconds of the first message
REDELIVERIES = 10  # a broker redelivers an event whose invocation failed


def change_message(number: int, label: str) -> tuple[str, bytes]:
    """(message id, payload) of an insert event whose document says which message it came from."""
    event = {
        "_id": {"_data": f"{number:032X}"},
        "operationType": "insert",
        "clusterTime": {"$timestamp": {"t": BASE_TIME + number // 100, "i": number % 100 + 1}},
        "ns": {"db": DB, "coll": COLL},
        "documentKey": {"_id": f"doc-{label}"},
        "fullDocument": {"_id": f"doc-{label}", "message": label},
    }
    return f"ID:{label}", json.dumps(event).encode()


@dataclass
class RacerReport:
    """What one racer saw: the invocations that raised (by error type) and the duplicates."""

    errors: list[str] = field(default_factory=list)
    duplicates: int = 0
    batches: list[int] = field(default_factory=list)


def deliver(
    store: ObjectStore, events: Sequence[Sequence[tuple[str, bytes]]], start_at: float
) -> RacerReport:
    """Wait until ``start_at`` (epoch seconds, shared by all racers), then hand each event (a
    list of (id, payload) messages) to ``ingest_messages``, one invocation per event."""
    report = RacerReport()
    while time.time() < start_at:
        pass
    for event in events:
        messages = [Message(i, "aws:amq", f"{DB}.{COLL}", payload) for i, payload in event]
        for _delivery in range(REDELIVERIES):
            try:
                result = ingest_messages(messages, store)
            except ConcurrentCaptureError as error:  # a failed invocation: the broker redelivers
                report.errors.append(f"{type(error).__name__}: {error}")
                continue
            report.duplicates += result.duplicates
            report.batches.extend(result.batches.get(f"{DB}.{COLL}", []))
            break
    return report


def deliver_in_process(
    lake_uri: str, events: Sequence[Sequence[tuple[str, bytes]]], start_at: float
) -> RacerReport:
    """``deliver`` in a worker process (opens its own store)."""
    return deliver(open_store(lake_uri), events, start_at)
