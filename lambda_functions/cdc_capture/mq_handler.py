"""Lambda ``lakehouse-mq-ingest``: an Amazon MQ / SQS event-source handler.

Invoked by Lambda's event-source mapping (not by Dagster): the event is the broker's batch of
messages. Configuration comes from the function's environment: ``LAKEHOUSE_LAKE_URI`` (required)
and ``LAKEHOUSE_MQ_DEFAULT_COLLECTION`` (``database.collection`` for events without ``ns``).
Returns SQS's ``batchItemFailures`` (malformed messages, so the queue's redrive policy keeps
them) or a summary for MQ; any other failure raises, and the broker redelivers the whole batch,
which ``ingest_messages`` skips message by message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lambda_functions.cdc_capture.mq_ingest import ingest_messages, parse_event
from lambda_functions.lake.store import open_store


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    lake_uri = os.environ.get("LAKEHOUSE_LAKE_URI", "")
    if not lake_uri:
        raise RuntimeError(
            "LAKEHOUSE_LAKE_URI is not set on the function: set it to the lake (s3://bucket/prefix)"
        )
    source, messages = parse_event(event)
    result = ingest_messages(
        messages,
        open_store(lake_uri),
        default_namespace=os.environ.get("LAKEHOUSE_MQ_DEFAULT_COLLECTION") or None,
    )
    summary = result.response("aws:amq")
    print(json.dumps({"event_source": source, **summary}))  # one structured log line
    return result.response(source)
