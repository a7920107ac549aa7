"""Split change events reassembled, and oversized events reported.

Fragments are built in the shape MongoDB documents (MongoDB Manual, "$changeStreamSplitLargeEvent
(aggregation)", Example: an update of a document holding ``"a".repeat(16 * 1024 * 1024 - 1024)``
to ``"b".repeat(...)`` with pre- and post-images comes as three fragments with the keys
``_id, splitEvent, wallTime, clusterTime, operationType, documentKey, ns, fullDocument``, then
``_id, splitEvent, fullDocumentBeforeChange``, then ``_id, splitEvent, updateDescription``) and
in the Amazon DocumentDB Developer Guide's ("$changeStreamSplitLargeEvent", Output: two fragments,
the second holding ``updateDescription``). Resume semantics from the same manual page: a fragment's
token resumes at the next fragment, the final fragment's at the next event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from lambda_functions.cdc_capture.large_events import (
    MAX_BSON_DOCUMENT_BYTES,
    OversizedChangeEventError,
    SplitEventError,
    SplitEventReassembler,
    key_only_pipeline,
    oversized_event_report,
    pipeline_with_split_stage,
    reassemble_split_events,
    split_stage_supported,
)
from lambda_functions.errors import TerminalError, error_kind

LARGE = 16 * 1024 * 1024 - 1024  # the manual's field length: just under 16 MiB
NS = {"db": "test", "coll": "myCollection"}
SPLIT_STAGE = {"$changeStreamSplitLargeEvent": {}}


def token(n: int, fragment: int | None = None) -> dict[str, str]:
    """A resume token's shape (``{_data: <hex>}``); fragments of one event share a prefix."""
    suffix = "" if fragment is None else f"{fragment:02X}"
    return {"_data": f"8265A1B2C3{n:08X}2B0429{suffix}"}


def plain_event(n: int, op: str = "insert", key: Any = None) -> dict[str, Any]:
    key = n if key is None else key
    event: dict[str, Any] = {
        "_id": token(n),
        "operationType": op,
        "clusterTime": Timestamp(1_700_000_000, n),
        "ns": NS,
        "documentKey": {"_id": key},
    }
    if op != "delete":
        event["fullDocument"] = {"_id": key, "n": n}
    return event


def manual_update_fragments(n: int, key: Any = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The manual's three fragments of one update, and the whole event they stand for (its
    ``_id`` the last fragment's token, its fields in fragment order)."""
    before = {"_id": key, "largeField": "a" * LARGE}
    after = {"_id": key, "largeField": "b" * LARGE}
    first = {
        "_id": token(n, 1),
        "splitEvent": {"fragment": 1, "of": 3},
        "wallTime": datetime(2026, 12, 1, 1, 0, tzinfo=UTC),
        "clusterTime": Timestamp(1_700_000_000, n),
        "operationType": "update",
        "documentKey": {"_id": key},
        "ns": NS,
        "fullDocument": after,
    }
    second = {
        "_id": token(n, 2),
        "splitEvent": {"fragment": 2, "of": 3},
        "fullDocumentBeforeChange": before,
    }
    third = {
        "_id": token(n, 3),
        "splitEvent": {"fragment": 3, "of": 3},
        "updateDescription": {
            "updatedFields": {"largeField": "b" * LARGE},
            "removedFields": [],
            "truncatedArrays": [],
        },
    }
    whole = {"_id": token(n, 3)}
    for part in (first, second, third):
        whole.update({k: v for k, v in part.items() if k not in ("_id", "splitEvent")})
    return [first, second, third], whole


def documentdb_update_fragments(n: int, key: Any) -> list[dict[str, Any]]:
    """The DocumentDB guide's two fragments of an update (payload 9 MiB, looked up and in the
    update description)."""
    payload = "y" * (9 * 1024 * 1024)
    return [
        {
            "_id": token(n, 1),
            "splitEvent": {"fragment": 1, "of": 2},
            "ns": NS,
            "clusterTime": Timestamp(1_700_000_000, n),
            "documentKey": {"_id": key},
            "fullDocument": {"_id": key, "item": "Widget", "payload": payload},
            "operationType": "update",
        },
        {
            "_id": token(n, 2),
            "splitEvent": {"fragment": 2, "of": 2},
            "updateDescription": {"updatedFields": {"payload": payload}, "removedFields": []},
        },
    ]


@pytest.mark.parametrize("as_raw_bson", [False, True], ids=["dict", "RawBSONDocument"])
def test_an_event_over_16_mib_in_three_fragments_comes_back_whole_byte_for_byte(as_raw_bson):
    fragments, whole = manual_update_fragments(1)
    encoded = [bson.encode(f) for f in fragments]
    assert all(len(e) <= MAX_BSON_DOCUMENT_BYTES for e in encoded)  # what the server sends
    expected = bson.encode(whole)
    assert len(expected) > 3 * LARGE > MAX_BSON_DOCUMENT_BYTES  # the logical event is ~48 MiB
    stream = [RawBSONDocument(e) for e in encoded] if as_raw_bson else fragments

    (event,) = list(reassemble_split_events(stream))

    assert bson.encode(event) == expected
    assert dict(event["_id"]) == token(1, 3)  # the last fragment's token: resuming skips the event
    assert "splitEvent" not in event
    assert list(event) == list(whole)


def test_unsplit_events_pass_through_in_stream_order_around_split_ones():
    manual, manual_whole = manual_update_fragments(2, key=0)
    docdb = documentdb_update_fragments(4, key=1)
    before, middle, after = plain_event(1), plain_event(3, "replace"), plain_event(5, "delete")

    events = list(reassemble_split_events([before, *manual, middle, *docdb, after]))

    assert [e["_id"] for e in events] == [
        token(1),
        token(2, 3),
        token(3),
        token(4, 2),
        token(5),
    ]
    assert events[0] is before and events[2] is middle and events[4] is after
    assert bson.encode(events[1]) == bson.encode(manual_whole)
    docdb_event = events[3]
    assert docdb_event["operationType"] == "update"
    assert docdb_event["documentKey"] == {"_id": 1}
    assert docdb_event["updateDescription"] == docdb[1]["updateDescription"]
    assert docdb_event["fullDocument"]["payload"] == "y" * (9 * 1024 * 1024)


def test_the_reassembler_says_when_the_cursor_is_inside_an_event():
    fragments = documentdb_update_fragments(7, key="k")
    reassembler = SplitEventReassembler()
    assert reassembler.push(plain_event(6)) is not None
    assert reassembler.last_whole_token == token(6)

    assert reassembler.push(fragments[0]) is None
    assert reassembler.in_progress  # no checkpoint, no stop here
    assert reassembler.last_whole_token == token(6)
    whole = reassembler.push(fragments[1])

    assert whole is not None and not reassembler.in_progress
    assert reassembler.last_whole_token == token(7, 2) == whole["_id"]
    reassembler.finish()


def test_a_stream_resumed_from_a_middle_fragment_token_is_refused():
    fragments, _ = manual_update_fragments(1)
    # Resumed after fragment 1's token: the stream begins with fragment 2 (manual, Behavior).
    with pytest.raises(SplitEventError, match="without fragment 1") as caught:
        list(reassemble_split_events([fragments[1], fragments[2], plain_event(2)]))
    error = caught.value
    assert isinstance(error, TerminalError) and isinstance(error, ValueError)
    assert error.document_key is None  # the key was in fragment 1
    assert "resume after" in str(error)


def test_a_missing_fragment_names_the_key_and_the_token_to_resume_after():
    fragments, _ = manual_update_fragments(2, key=42)
    got: list[Any] = []
    with pytest.raises(SplitEventError, match="fragment 2 of 3 was due") as caught:
        for event in reassemble_split_events([plain_event(1), fragments[0], fragments[2]]):
            got.append(event)
    assert [e["_id"] for e in got] == [token(1)]
    assert caught.value.document_key == {"_id": 42}
    assert caught.value.resume_token == token(1)
    assert "{'_id': 42}" in str(caught.value) and repr(token(1)) in str(caught.value)


def test_an_unsplit_event_inside_a_split_one_means_fragments_were_lost():
    fragments, _ = manual_update_fragments(2)
    with pytest.raises(SplitEventError, match="fragments are missing"):
        list(reassemble_split_events([fragments[0], fragments[1], plain_event(3)]))


def test_a_fragment_of_another_event_where_the_next_was_due_is_refused():
    first, _ = manual_update_fragments(2)
    other = documentdb_update_fragments(3, key=1)
    with pytest.raises(SplitEventError, match="missing or out of order"):
        list(reassemble_split_events([first[0], other[0]]))
    with pytest.raises(SplitEventError, match="missing or out of order"):
        list(reassemble_split_events([first[0], other[1]]))  # 2 of 2 where 2 of 3 was due


def test_a_read_that_ends_inside_a_split_event_is_refused_after_the_whole_events():
    fragments, _ = manual_update_fragments(2)
    got: list[Any] = []
    with pytest.raises(SplitEventError, match="ended after fragment 2 of 3"):
        for event in reassemble_split_events([plain_event(1), fragments[0], fragments[1]]):
            got.append(event)
    assert [e["_id"] for e in got] == [token(1)]


@pytest.mark.parametrize(
    "split",
    [{"fragment": 0, "of": 2}, {"fragment": 3, "of": 2}, {"fragment": "1", "of": 2}, {"of": 2}, 1],
)
def test_a_malformed_split_event_field_is_refused(split):
    with pytest.raises(SplitEventError, match="splitEvent"):
        SplitEventReassembler().push({"_id": token(1, 1), "splitEvent": split})


def test_a_field_in_two_fragments_is_refused_rather_than_one_value_picked():
    one = {"_id": token(1, 1), "splitEvent": {"fragment": 1, "of": 2}, "fullDocument": {"a": 1}}
    two = {"_id": token(1, 2), "splitEvent": {"fragment": 2, "of": 2}, "fullDocument": {"a": 2}}
    with pytest.raises(SplitEventError, match="'fullDocument' appears in more than one"):
        list(reassemble_split_events([one, two]))


def test_a_single_fragment_event_is_whole_at_once():
    lone = {"_id": token(1, 1), "splitEvent": {"fragment": 1, "of": 1}, "operationType": "insert"}
    assert list(reassemble_split_events([lone])) == [
        {"_id": token(1, 1), "operationType": "insert"}
    ]


def test_the_split_stage_is_added_last_once_and_only_where_supported():
    pipeline = [{"$match": {"operationType": {"$in": ["insert", "update"]}}}]

    with_stage = pipeline_with_split_stage(pipeline, server_supports=True)

    assert with_stage == [*pipeline, SPLIT_STAGE]
    assert pipeline == [{"$match": {"operationType": {"$in": ["insert", "update"]}}}]
    assert pipeline_with_split_stage(with_stage, server_supports=True) == with_stage
    assert pipeline_with_split_stage(pipeline, server_supports=False) == pipeline
    assert pipeline_with_split_stage([], server_supports=True) == [SPLIT_STAGE]
    with pytest.raises(ValueError, match="must be the only one and the last"):
        pipeline_with_split_stage([SPLIT_STAGE, *pipeline], server_supports=True)


@pytest.mark.parametrize(
    ("server", "version", "elastic", "supported"),
    [
        ("mongodb", "7.0.0", False, True),
        ("mongodb", "8.0.4", False, True),
        ("mongodb", (7, 0, 12), False, True),
        ("mongodb", "7.0.0-rc1", False, True),
        ("mongodb", "6.0.9", False, True),
        ("mongodb", "6.0.8", False, False),
        ("mongodb", "6.3.1", False, False),
        ("mongodb", "5.0.20", False, False),
        ("documentdb", "8.0.2", False, True),
        ("documentdb", "8.0.0", False, False),
        ("documentdb", "5.0.0", False, False),
        ("documentdb", "8.0.2", True, False),
    ],
)
def test_which_servers_accept_the_split_stage(server, version, elastic, supported):
    assert split_stage_supported(server, version, elastic_cluster=elastic) is supported


def test_an_unknown_server_kind_is_refused():
    with pytest.raises(ValueError, match="'mongodb' or 'documentdb'"):
        split_stage_supported("cosmos", "7.0")  # type: ignore[arg-type]


def test_the_key_only_pipeline_drops_the_large_fields_and_keeps_the_split_stage_last():
    match = {"$match": {"operationType": "update"}}
    project = {
        "$project": {"fullDocument": 0, "fullDocumentBeforeChange": 0, "updateDescription": 0}
    }
    assert key_only_pipeline([match]) == [match, project]
    assert key_only_pipeline([match, SPLIT_STAGE]) == [match, project, SPLIT_STAGE]


SERVER_MESSAGE = (
    "PlanExecutor error during aggregation :: caused by :: BSONObj size: 17701268 (0x10E1994) "
    "is invalid. Size must be between 0 and 16793600(16MB) First element: _id: { _data: "
    '"826AA99D52000000982B042C0100296E5A1004" }'
)


def test_an_oversized_event_error_becomes_a_report_with_key_and_fix():
    error = OperationFailure(
        SERVER_MESSAGE, code=10334, details={"code": 10334, "codeName": "BSONObjectTooLarge"}
    )

    report = oversized_event_report(
        error, document_key={"_id": 42}, resume_token=token(1), split_supported=True
    )

    assert report is not None
    assert "17,701,268 bytes" in report
    assert "key {'_id': 42}" in report
    assert repr(token(1)) in report
    assert "BSONObjectTooLarge, code 10334" in report
    assert "$changeStreamSplitLargeEvent" in report
    assert "key_only_pipeline" in report and "resumeAfter" in report
    raised = OversizedChangeEventError(report)
    assert isinstance(raised, TerminalError) and isinstance(raised, RuntimeError)


def test_the_report_leaves_out_the_split_stage_where_the_server_has_none():
    error = OperationFailure(SERVER_MESSAGE, code=10334)
    report = oversized_event_report(error, split_supported=False)
    assert report is not None
    assert "$changeStreamSplitLargeEvent" not in report
    assert "did not report" in report  # no key known
    assert report.index("updateDescription") < report.index("key_only_pipeline")


@pytest.mark.parametrize(
    "error",
    [
        OperationFailure("too big", code=None, details={"codeName": "BSONObjectTooLarge"}),
        RuntimeError("BSONObjectTooLarge: change event too large"),
        RuntimeError(SERVER_MESSAGE),
    ],
)
def test_the_report_recognises_the_error_by_code_name_or_message(error):
    assert oversized_event_report(error) is not None


def test_other_errors_get_no_report():
    assert oversized_event_report(OperationFailure("not primary", code=10107)) is None
    assert oversized_event_report(TimeoutError("timed out")) is None


def test_the_new_errors_are_terminal_in_the_contract():
    assert error_kind("SplitEventError") == "terminal"
    assert error_kind("OversizedChangeEventError") == "terminal"
