"""A missing lake table is never a success: rebuilt from the raw zone, or a failure naming the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lambda_functions.lake.lake_table import LakeTableMissingError
from lambda_functions.merge import merge_batches
from tests.lambda_functions.raw_batches import JAN, key, publish


def test_a_merge_with_no_table_and_no_raw_batch_fails_naming_the_fix(lake):
    """Issue 12: with the lake removed mid-run the merge reported version -1 and 0 rows as a
    success, and its check and freshness passed."""
    _zone, request = lake
    with pytest.raises(LakeTableMissingError) as raised:
        merge_batches(request)
    message = str(raised.value)
    assert "there is no lake table" in message and "shop.orders" in message
    assert "materialize cdc_raw_batches" in message


def test_a_lake_removed_after_a_merge_fails_the_next_merge(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, '{"a": 1}')])
    assert merge_batches(request).version == 0
    shutil.rmtree(Path(request.lake_uri))
    with pytest.raises(LakeTableMissingError, match="raw zone has no published batch"):
        merge_batches(request)


def test_a_removed_table_is_rebuilt_from_its_raw_zone(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, '{"a": 1}')])
    publish(zone, [(key(JAN, 2), "insert", 2, '{"a": 2}'), (key(JAN, 1), "delete", 3, None)])
    assert merge_batches(request).table_rows == 1
    shutil.rmtree(Path(request.lake_uri) / "tables")
    rebuilt = merge_batches(request)
    assert rebuilt.version is not None and rebuilt.batches_applied == [1, 2]
    assert rebuilt.table_rows == 1 and rebuilt.last_applied_batch == 2


def test_a_table_gone_with_its_first_batches_is_not_rebuilt_from_the_rest(lake):
    zone, request = lake
    for n in (1, 2, 3):
        publish(zone, [(key(JAN, n), "insert", n, '{"a": 1}')])
    merge_batches(request)
    shutil.rmtree(Path(request.lake_uri) / "tables")
    zone.store.delete(zone.manifest_key(1))  # batch 1 (the snapshot) is gone too
    with pytest.raises(LakeTableMissingError, match=r"starts at batch 2, not at a snapshot"):
        merge_batches(request)
