"""Change events in MongoDB's change-stream shape, and the SQS events a relay delivers them in,
built for tests (AWS Lambda developer guide, "Using Lambda with Amazon SQS", for the event)."""

from __future__ import annotations

import uuid
from typing import Any

from bson import Timestamp, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS


def change_event(
    op: str, _id: Any, t: int, doc: dict | None = None, *, db: str = "shop", coll: str = "orders"
) -> dict[str, Any]:
    """A change event at cluster time ``(t, 1)``; ``drop`` events carry no ``documentKey``."""
    event: dict[str, Any] = {
        "_id": {"_data": f"82{t:08X}00000001"},
        "operationType": op,
        "clusterTime": Timestamp(t, 1),
        "ns": {"db": db, "coll": coll},
    }
    if op != "drop":
        event["documentKey"] = {"_id": _id}
    if doc is not None:
        event["fullDocument"] = doc
    return event


def sqs_event(*events: dict[str, Any], queue: str = "shop-orders") -> dict[str, Any]:
    """One SQS delivery: a record per change event, its body canonical extended JSON."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "body": json_util.dumps(event, json_options=CANONICAL_JSON_OPTIONS),
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:111122223333:{queue}",
            }
            for event in events
        ]
    }


def relayed_message(n: int, op: str, t: int, key: str | None = None, *, ns: dict[str, str]) -> Any:
    """Message ``m-<n>`` of an SQS relay carrying one change event at cluster time ``(t, 1)``
    (an insert of ``{"_id": key, "n": n}`` when ``key`` is given)."""
    from lambda_functions.cdc_capture.mq_ingest import Message
    from lambda_functions.lake.extended_json import encode_document

    body: dict[str, Any] = {"_id": {"_data": f"token-{n}"}, "operationType": op, "ns": ns}
    body["clusterTime"] = Timestamp(t, 1)
    if key is not None:
        body |= {"documentKey": {"_id": key}, "fullDocument": {"_id": key, "n": n}}
    return Message(f"m-{n}", "aws:sqs", "shop-orders", encode_document(body).encode())
