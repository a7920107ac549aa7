"""Lambda ``lakehouse-mq-ingest``: an Amazon MQ / SQS event-source handler.

Invoked by Lambda's event-source mapping (not by Dagster): the event is the broker's batch of
messages. Configuration comes from the function's environment: ``LAKEHOUSE_LAKE_URI`` (required)
and ``LAKEHOUSE_MQ_DEFAULT_COLLECTION`` (``database.collection`` for events without ``ns``).
Returns SQS's ``batchItemFailures`` (malformed messages, so the queue's redrive policy keeps
them) or a summary for MQ; any other failure raises, and the broker redelivers the whole batch,
which ``ingest_messages`` skips message by message.

SQS partial batch responses (AWS Lambda Developer Guide, "Handling errors for an SQS event source
in Lambda", https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html; the
mapping needs ``FunctionResponseTypes: [ReportBatchItemFailures]``): a message is reported when it
is malformed, and then on every delivery, so the redrive policy moves it to the dead-letter queue
after ``maxReceiveCount``; it is also kept in the lake's quarantine the first time. Amazon MQ
has no partial response (https://docs.aws.amazon.com/lambda/latest/dg/with-mq.html): for it the
return value is only a summary.

FIFO queues: the guide asks a function to stop at the first failure and report it with every
later message, so that a retry keeps the group's order. This handler reports the malformed
messages alone, on purpose: a malformed message is never retried into rows (it is quarantined,
and skipped by id when redelivered), and the merge orders rows by their ``clusterTime``, not by
delivery, so there is no order to keep. Reporting the later messages too would only redeliver
messages already published (skipped as duplicates) with the poison message, at the same receive
count, so the redrive policy could move them to the dead-letter queue with it.

Hand-written because (issue 14, item 8; aws-lambda-powertools 3.37.0): Powertools'
``BatchProcessor`` / ``SqsFifoPartialProcessor`` with ``process_partial_response`` run one handler
per record, whereas ``ingest_messages`` publishes a whole delivery as one raw batch per
collection, with one ledger (per-record handling would write a batch per message); they know SQS,
Kinesis, DynamoDB Streams and Kafka but not Amazon MQ, which this handler also serves; by default
they raise when every record failed (the whole delivery comes back) where this handler reports
each message; ``SqsFifoPartialProcessor`` reports every message after the first failure (see
above); and the response they would build is the one line of ``MessageIngestResult.response``.
Cost (``benchmarks/powertools_cost.py``, 2 shared cores, median of fresh interpreters, quietest
run): importing ``aws_lambda_powertools.utilities.batch`` takes 72.5 ms alone, 21.6 ms on top of
this handler's imports; with ``metrics`` too it adds 8.5-11 % to the handler's cold import
(four runs); the package with its dependencies installs 8.3 MB.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lambda_functions.cdc_capture.mq_ingest import ingest_messages, parse_event
from lambda_functions.errors import TerminalError
from lambda_functions.lake.store import open_store


class MqIngestConfigurationError(TerminalError, RuntimeError):
    """The function's environment lacks what the handler needs; the message names the setting."""


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Publish the change events of one broker delivery into the raw zone.

    Idempotent by message id: a redelivered message is skipped (see ``ingest_messages``), so a
    whole-batch redelivery after a raised error publishes nothing twice.

    Args:
        event: an Amazon MQ (``eventSource`` ``aws:amq`` with ``messages``, or ``aws:rmq`` with
            ``rmqMessagesByQueue``) or SQS (``Records``) event, as the event-source mapping
            delivers it.
        context: the Lambda context (unused).

    Returns:
        For SQS, ``{"batchItemFailures": [{"itemIdentifier": message_id}, ...]}`` listing the
        malformed messages (empty when all were taken). For Amazon MQ, a summary:
        ``{"messages", "duplicates", "rows", "quarantined": int, "batches": {namespace:
        [batch numbers]}}``. The summary is also printed as one JSON log line, for every source.

    Raises:
        MqIngestConfigurationError: ``LAKEHOUSE_LAKE_URI`` is not set on the function.
        ValueError: the event is neither an Amazon MQ nor an SQS event (``parse_event``).
        ConcurrentCaptureError: other invocations kept publishing first (the broker redelivers).
    """
    lake_uri = os.environ.get("LAKEHOUSE_LAKE_URI", "")
    if not lake_uri:
        raise MqIngestConfigurationError(
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
