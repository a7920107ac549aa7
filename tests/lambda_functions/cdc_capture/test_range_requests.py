"""Range requests that cannot be served are refused, naming the fix: a malformed
``snapshot_range`` before any work, a generation the raw zone has no plan for as a terminal
``SnapshotRangeError``; and ranges split at boundaries cover BSON order without gaps."""

from __future__ import annotations

import pytest
from bson import ObjectId

from lambda_functions.cdc_capture.range_plan import bson_order_key, ranges_from_boundaries
from lambda_functions.cdc_capture.range_snapshot import SnapshotRangeError, capture_range
from lambda_functions.contracts import CaptureRequest, InvalidRequestError
from lambda_functions.errors import TERMINAL_ERROR_TYPES, TerminalError


def test_a_malformed_snapshot_range_is_refused_field_by_field(tmp_path):
    event = CaptureRequest(lake_uri=str(tmp_path), database="shop", collection="orders").to_event()
    with pytest.raises(InvalidRequestError, match="snapshot_range"):
        CaptureRequest.from_event(event | {"snapshot_range": {"index": 9, "count": 8}})
    with pytest.raises(InvalidRequestError, match="snapshot_ranges"):
        CaptureRequest.from_event(event | {"snapshot_ranges": 0})


def test_a_range_of_an_unknown_generation_is_a_terminal_error(tmp_path, source):
    request = CaptureRequest(
        lake_uri=str(tmp_path / "lake"),
        database="shop",
        collection="orders",
        snapshot_range={"generation": "g1-x", "index": 0, "count": 1, "lower": None, "upper": None},
    )
    with pytest.raises(SnapshotRangeError, match="plan the snapshot again") as refused:
        capture_range(request, source=source)
    assert isinstance(refused.value, TerminalError) and isinstance(refused.value, RuntimeError)
    assert "SnapshotRangeError" in TERMINAL_ERROR_TYPES


def test_ranges_are_half_open_and_cover_every_type_in_bson_order():
    boundaries = [ObjectId(), 5, "m", True]  # numbers < strings < ObjectId < bool
    ranges = ranges_from_boundaries(boundaries * 2)  # duplicates collapse
    assert len(ranges) == 5 and ranges[0].lower is None and ranges[-1].upper is None
    assert [r.lower_id() for r in ranges[1:]] == sorted(boundaries, key=bson_order_key)
    for value in (None, -1, 5, 5.0, "a", "m", {"a": 1}, ObjectId(), False, True):
        assert sum(r.holds(value) for r in ranges) == 1, value
    assert ranges[1].holds(5) and not ranges[0].holds(5.0)  # 5 == 5.0: same record, same range
