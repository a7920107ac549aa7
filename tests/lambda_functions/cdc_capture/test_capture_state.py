"""The typed capture state reads every state capture ever stored and writes it back unchanged."""

import pytest

from lambda_functions.cdc_capture.capture_state import (
    SnapshotState,
    StreamState,
    capture_state_from_json,
)
from lambda_functions.cdc_capture.errors import CaptureStateError
from lambda_functions.errors import TerminalError

SNAPSHOT = {
    "phase": "snapshot",
    "start_token": {"_data": "8265A0"},
    "start_pos": 7 << 32,
    "start_time": 1700000000.5,
    "last_id": '{"$oid": "65a000000000000000000000"}',
    "rows": 1000,
}
STREAM = {"phase": "stream", "resume_token": {"_data": "8265A1"}, "token_time": 1700000100.0}


@pytest.mark.parametrize(
    "raw",
    [
        SNAPSHOT,
        STREAM,
        {k: v for k, v in SNAPSHOT.items() if k != "start_time"},  # written before start_time
        {"phase": "stream", "resume_token": {"$ejson": '{"t": 1}'}},  # before token_time
        {**STREAM, "future_field": [1, 2]},  # a key a newer version may add
    ],
)
def test_a_stored_state_reads_back_typed_and_writes_back_unchanged(raw):
    state = capture_state_from_json(raw)
    assert isinstance(state, SnapshotState | StreamState) and state.phase == raw["phase"]
    assert state.to_json() == raw
    assert list(state.to_json()) == list(raw)  # same key order: the checkpoint file's bytes too


def test_no_state_is_none_and_another_inputs_state_is_a_terminal_error():
    assert capture_state_from_json({}) is None
    with pytest.raises(CaptureStateError, match="'dms' input") as caught:
        capture_state_from_json({"phase": "dms", "bookmark_key": "k"}, "shop.orders")
    assert isinstance(caught.value, TerminalError) and isinstance(caught.value, RuntimeError)
    with pytest.raises(CaptureStateError, match="lacks 'resume_token'"):
        capture_state_from_json({"phase": "stream"})
