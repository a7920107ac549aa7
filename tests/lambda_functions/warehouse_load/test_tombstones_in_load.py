"""Tombstones (rows the merge keeps for deleted documents) never reach the warehouse: not in a
full load, not in an incremental one, not in reconciliation, whatever path wrote them.

The expected warehouse state is the source's live state: MongoDB's latest change per document
by ``clusterTime`` (https://www.mongodb.com/docs/manual/reference/change-events/), with late,
older changes refused; the load reads the Delta change data feed (PROTOCOL.md, "Change Data
Files"), in which a tombstone is no document.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import lambda_functions.merge.copy_on_write as copy_on_write
from lambda_functions.merge import compact_table, merge_batches
from lambda_functions.warehouse_load import load_changes
from tests.lambda_functions.merge.events import compact_request
from tests.lambda_functions.merge.tables import tombstones
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish
from tests.lambda_functions.warehouse_load.test_duckdb_load import A, B, C, D, doc, pipeline

__all__ = ["pipeline"]  # the fixture, shared with the DuckDB load tests

GONE = key(JUN, 9)  # deleted before the lake ever held it


@pytest.mark.parametrize("path", ["rewrite", "merge"])
@pytest.mark.parametrize("first_load", ["before", "after"])
def test_warehouse_equals_the_live_source_state_whatever_the_tombstones(
    pipeline, monkeypatch, path, first_load
):
    if path == "merge":
        monkeypatch.setattr(copy_on_write, "supports", lambda _table: False)
    pipeline.change(
        (A, "snapshot", 1, doc(v=0)), (B, "snapshot", 1, doc(v=0)), (C, "snapshot", 1, doc(v=0))
    )
    if first_load == "before":
        load_changes(pipeline.request())
    pipeline.change((A, "delete", 5, None), (GONE, "delete", 5, None), (B, "update", 5, doc(v=5)))
    pipeline.change((A, "update", 3, doc(stale=True)), (GONE, "insert", 4, doc(stale=True)))
    pipeline.change((C, "delete", 6, None))
    pipeline.change((C, "insert", 7, doc(v=7)), (D, "insert", 7, doc(v=7)))
    result = load_changes(pipeline.request())
    live = {B: (doc(v=5), 5), C: (doc(v=7), 7), D: (doc(v=7), 7)}
    uri = pipeline.lake_table_uri()
    assert tombstones(uri) == {A: 5, GONE: 5}  # held in the lake, invisible to readers
    assert pipeline.warehouse_rows() == live == pipeline.lake_rows()
    check = result.reconciliation
    assert check.matches and (check.lake_rows, check.warehouse_rows) == (3, 3)
    assert result.full_reload == (first_load == "after")


def test_writing_and_expiring_tombstones_loads_nothing(pipeline):
    """A delete of a key the lake never held writes only a tombstone; expiring it later changes
    no live row. Neither stages a row for the warehouse."""
    old = datetime.now(UTC) - timedelta(hours=500)
    pipeline.change((A, "snapshot", 1, doc(v=0)))
    load_changes(pipeline.request())
    pipeline.change((GONE, "delete", 2, None), (key(JAN, 7), "delete", 2, None))
    tombstone_only = load_changes(pipeline.request())
    assert (tombstone_only.rows_staged, tombstone_only.reconciliation.matches) == (0, True)
    publish(pipeline.zone, [(B, "delete", 3, None)], event_time=old)
    merge_batches(pipeline.merge)
    load_changes(pipeline.request())
    expired = compact_table(compact_request(pipeline.merge, cold_after_hours=9999, vacuum=False))
    assert expired.tombstones_expired == 1
    after_expiry = load_changes(pipeline.request())
    assert after_expiry.rows_staged == 0 and not after_expiry.full_reload
    assert after_expiry.reconciliation.matches
    assert pipeline.warehouse_rows() == {A: (doc(v=0), 1)}
