"""A way past damage: a damaged checkpoint is rebuilt, damaged batches are named with the fix, and
a reset re-snapshots past them.

The checkpoint is a cache of the newest manifest, so damage to it costs nothing. A manifest or a
data file is the batch itself: damage to it is never skipped (rows would be lost); the error names
the batch, the object, what is wrong and ``DAMAGED_BATCH_FIX`` (re-snapshot via capture reset).
"""

from __future__ import annotations

import pytest

from lakehouse_local.demo_workload import DemoWorkload
from lambda_functions.cdc_capture import capture_changes, verify_batches
from lambda_functions.lake.raw_zone import (
    DAMAGED_BATCH_FIX,
    RESNAPSHOT_HOW_TO,
    CorruptBatchError,
    CorruptManifestError,
    RawZone,
)

DB, COLL = "shop", "orders"
RESET_RUN_CONFIG = '{"ops": {"cdc_raw_batches": {"config": {"reset": true}}}}'


def zone(store) -> RawZone:
    return RawZone(store, DB, COLL)


@pytest.fixture
def three_batches(source, lake, make_request) -> DemoWorkload:
    """A snapshot of 20 orders published as batches 1-3 (8 rows a batch)."""
    workload = DemoWorkload(source, initial_documents=20)
    workload.run(0)
    result = capture_changes(make_request(max_rows=8), source=source)
    assert result.batches == (1, 2, 3)
    return workload


def data_file_of(lake, batch: int) -> str:
    (data,) = zone(lake).read_manifest(batch).files
    return data.key


@pytest.mark.parametrize(
    "garbage",
    [
        b'{"batch": 3, "state": {"phase": "str',  # truncated
        b"\xff\xfe not utf-8",
        b"",
        b"[3, {}]",
        b'{"batch": "3", "state": {}}',
        b'{"batch": 3}',
        b'{"batch": -1, "state": {}}',
    ],
    ids=["truncated", "not-utf8", "empty", "list", "batch-text", "no-state", "negative"],
)
def test_a_damaged_checkpoint_is_rebuilt_from_the_newest_manifest(
    garbage, three_batches, source, lake, make_request, reconstruct, source_state
):
    three_batches.run(5)
    lake.put(zone(lake).checkpoint_key, garbage)
    said: list[str] = []

    result = capture_changes(make_request(max_rows=8), source=source, on_progress=said.append)

    assert result.batches == (4,)  # numbering continues after the newest manifest
    assert any("_checkpoint.json was damaged" in line and "batch 3" in line for line in said)
    assert zone(lake).read_checkpoint().batch == 4
    assert reconstruct(lake) == source_state(source)


def test_a_missing_checkpoint_is_rebuilt_from_the_newest_manifest(
    three_batches, source, lake, make_request, reconstruct, source_state
):
    three_batches.run(5)
    lake.delete(zone(lake).checkpoint_key)

    result = capture_changes(make_request(max_rows=8), source=source)

    assert result.batches == (4,)
    assert reconstruct(lake) == source_state(source)


def test_a_garbled_newest_manifest_is_named_with_the_fix_not_skipped(
    three_batches, source, lake, make_request
):
    key = zone(lake).manifest_key(3)
    lake.put(key, lake.get(key)[:40])  # truncated
    lake.put(zone(lake).checkpoint_key, b"{")  # the cache is gone too: the manifest is needed

    with pytest.raises(CorruptManifestError) as caught:
        capture_changes(make_request(), source=source)

    message = str(caught.value)
    assert caught.value.batch == 3 and caught.value.key == key
    assert f"shop.orders batch 3 is damaged: {key} manifest: not JSON" in message
    assert DAMAGED_BATCH_FIX in message and RESET_RUN_CONFIG in message


def test_a_truncated_data_file_names_the_batch_the_file_the_sizes_and_the_fix(three_batches, lake):
    key = data_file_of(lake, 2)
    data = lake.get(key)
    lake.put(key, data[: len(data) // 2])

    with pytest.raises(CorruptBatchError) as caught:
        zone(lake).read_batch(zone(lake).read_manifest(2))

    message = str(caught.value)
    assert caught.value.batch == 2 and caught.value.key == key
    assert (
        f"shop.orders batch 2 is damaged: {key} is {len(data) // 2} bytes, the manifest says "
        f"{len(data)} (truncated)"
    ) in message
    assert f"Fix: {DAMAGED_BATCH_FIX}" in message and RESNAPSHOT_HOW_TO in message


def test_a_data_file_with_another_checksum_names_both_checksums_and_the_fix(three_batches, lake):
    key = data_file_of(lake, 2)
    expected = zone(lake).read_manifest(2).files[0].sha256
    data = bytearray(lake.get(key))
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    lake.put(key, bytes(data))

    with pytest.raises(CorruptBatchError) as caught:
        zone(lake).read_batch(zone(lake).read_manifest(2))

    message = str(caught.value)
    assert f"shop.orders batch 2 is damaged: {key} has SHA-256 " in message
    assert f"the manifest says {expected}" in message and RESET_RUN_CONFIG in message


def test_verify_batches_reports_damaged_batches_by_name_with_the_fix(
    three_batches, lake, make_request
):
    key = data_file_of(lake, 2)
    lake.put(key, lake.get(key)[:-10])
    lake.put(zone(lake).manifest_key(3), b'{"format": "lakehouse-raw-batch"')

    verification = verify_batches(make_request(), (1, 2, 3))

    assert not verification.passed
    assert verification.damaged == (2, 3)
    assert verification.fix == DAMAGED_BATCH_FIX
    second, third = verification.problems
    assert second.startswith(f"shop.orders batch 2 is damaged: {key} is ")
    assert third.startswith(f"shop.orders batch 3 is damaged: {zone(lake).manifest_key(3)}")
    metadata = verification.metadata()
    assert metadata["damaged_batches"]["raw_value"] == [2, 3]
    assert metadata["fix"]["raw_value"] == DAMAGED_BATCH_FIX


def test_reset_while_a_damaged_batch_is_pending_publishes_the_marker_and_a_new_snapshot(
    three_batches, source, lake, make_request, source_state
):
    key = data_file_of(lake, 3)
    lake.put(key, lake.get(key)[:100])
    three_batches.run(10)

    result = capture_changes(make_request(max_rows=8), source=source, reset=True)

    marker = zone(lake).read_manifest(result.batches[0])
    assert result.batches[0] == 4 and marker.extra["dropped"] is True and marker.rows == 0
    assert result.phase == "stream"
    assert result.rows_by_op == {"snapshot": len(source_state(source))}
    assert verify_batches(make_request(), result.batches).passed
    after_marker = {
        row["_id"]: row["doc"]
        for number in result.batches
        for row in zone(lake).read_batch(zone(lake).read_manifest(number)).to_pylist()
    }
    assert after_marker == source_state(source)  # the new generation, without batch 3


def test_reset_past_a_garbled_newest_manifest_publishes_the_marker_after_it(
    three_batches, source, lake, make_request
):
    lake.put(zone(lake).manifest_key(3), b"\x00" * 16)
    lake.delete(zone(lake).checkpoint_key)

    result = capture_changes(make_request(max_rows=8), source=source, reset=True)

    assert result.batches[0] == 4 and zone(lake).read_manifest(4).extra["dropped"] is True
    assert result.rows_by_op == {"snapshot": 20}
    assert zone(lake).read_checkpoint().batch == result.batches[-1]
