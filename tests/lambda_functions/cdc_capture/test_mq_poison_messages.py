"""SQS/MQ messages that are not change events fail alone; the batch's good messages publish.

SQS partial batch responses (Lambda developer guide, "Using Lambda with Amazon SQS" >
"Reporting batch item failures"): when the function returns ``batchItemFailures``, only those
messages return to the queue; when the function raises, the whole batch does, good messages
included, again and again until the redrive policy moves them all to the dead-letter queue. So
one bad message must never make the handler raise.
"""

from __future__ import annotations

import json

import pytest

from lambda_functions.cdc_capture.mq_handler import MqIngestConfigurationError
from lambda_functions.cdc_capture.mq_handler import handler as mq_handler
from lambda_functions.errors import error_kind
from tests.lambda_functions.cdc_capture.test_poison_inputs import (
    change_event,
    rows_and_dead_letters,
    sqs_event,
)

NOT_EVENTS = {
    "nested-array": "[" * 100_000,  # garbage: JSON deeper than any parser's stack
    "nested-object": '{"a":' * 100_000,
}


@pytest.mark.parametrize("name", list(NOT_EVENTS))
def test_deeply_nested_garbage_fails_that_message_alone(tmp_path, monkeypatch, name):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    event = sqs_event({"good": json.dumps(change_event("g1")), name: NOT_EVENTS[name]})

    response = mq_handler(event, None)

    assert response == {"batchItemFailures": [{"itemIdentifier": name}]}
    rows, _dead = rows_and_dead_letters(tmp_path)
    assert [row["_id"] for row in rows] == ['"g1"']
    (letter,) = (tmp_path / "lake" / "raw" / "_mq_quarantine").iterdir()
    assert "not extended JSON" in json.loads(letter.read_text())["reason"]


@pytest.mark.parametrize("op", [["insert"], {"type": "insert"}])
def test_an_operation_type_that_is_not_a_string_fails_that_message_alone(tmp_path, monkeypatch, op):
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    bad = change_event("b1") | {"operationType": op}
    event = sqs_event({"good": json.dumps(change_event("g1")), "bad": json.dumps(bad)})

    response = mq_handler(event, None)

    assert response == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    rows, dead = rows_and_dead_letters(tmp_path)
    assert [row["_id"] for row in rows] == ['"g1"']
    (letter,) = dead
    assert "operationType" in letter["reason"] and "not a data change" in letter["reason"]


def test_fifo_queue_reports_the_poison_message_alone_and_publishes_the_later_ones(
    tmp_path, monkeypatch
):
    """Unlike the guide's FIFO advice (stop at the first failure, report the rest), the later
    messages are published and not reported: the poison message is never retried into rows, and
    the merge orders rows by clusterTime, so redelivering them would only age them toward the
    dead-letter queue with it (see ``mq_handler``'s docstring)."""
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "lake"))
    event = sqs_event(
        {
            "first": json.dumps(change_event("f1")),
            "poison": "not json",
            "later": json.dumps(change_event("f2")),
        }
    )
    for record in event["Records"]:
        record["eventSourceARN"] += ".fifo"
        record["attributes"] |= {"MessageGroupId": "shop.orders", "SequenceNumber": "1"}

    response = mq_handler(event, None)

    assert response == {"batchItemFailures": [{"itemIdentifier": "poison"}]}
    rows, _dead = rows_and_dead_letters(tmp_path)
    assert sorted(row["_id"] for row in rows) == ['"f1"', '"f2"']


def test_missing_lake_uri_is_a_terminal_configuration_error(monkeypatch):
    monkeypatch.delenv("LAKEHOUSE_LAKE_URI", raising=False)

    with pytest.raises(MqIngestConfigurationError, match="LAKEHOUSE_LAKE_URI") as raised:
        mq_handler(sqs_event({"m": json.dumps(change_event("x"))}), None)

    assert isinstance(raised.value, RuntimeError)  # its builtin base, for old callers
    assert error_kind(type(raised.value).__name__) == "terminal"
