"""Latest change wins, also across deletes and drops: tombstones, drops by position, expiry.

Where the expectations come from:
- MongoDB change events: a collection's changes are totally ordered by ``clusterTime`` (events
  of one transaction share it), and the latest one is the document's state; a delete at a later
  ``clusterTime`` than an update means the document is gone
  (https://www.mongodb.com/docs/manual/reference/change-events/).
- SQS standard queues: "at-least-once delivery, best-effort ordering": messages can arrive more
  than once and out of order (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/
  SQSDeveloperGuide/standard-queues.html); DMS CDC files can be delivered late likewise.
- Delta protocol, change data feed: ``insert``, ``delete``, ``update_preimage`` and
  ``update_postimage`` describe the table's rows (https://github.com/delta-io/delta/blob/master/
  PROTOCOL.md#change-data-files); a tombstone is not a document, so its writes are no change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import lambda_functions.merge.copy_on_write as copy_on_write
from lambda_functions.lake.raw_zone import CorruptBatchError
from lambda_functions.lake.table_layout import is_tombstone, live_changes
from lambda_functions.merge import changes_between, compact_table, merge_batches
from tests.lambda_functions.merge.events import compact_request
from tests.lambda_functions.merge.tables import stored_docs, tombstones
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish

K, OTHER, NEW = key(JAN, 1), key(JAN, 2), key(JAN, 3)


def force_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """ "merge": delta-rs MERGE (as for tables the Arrow rewrite does not write)."""
    if path == "merge":
        monkeypatch.setattr(copy_on_write, "supports", lambda _table: False)


def feed_of(uri: str, version: int) -> pa.Table:
    return pa.RecordBatchReader.from_stream(
        DeltaTable(uri).load_cdf(starting_version=version, ending_version=version)
    ).read_all()


def change_types(uri: str, version: int) -> list[tuple[str, str]]:
    """The live-row changes commit ``version`` made: (change type, _id), sorted."""
    feed = live_changes(feed_of(uri, version))
    return sorted(
        zip(
            feed.column("_change_type").cast(pa.string()).to_pylist(),
            feed.column("_id").cast(pa.string()).to_pylist(),
            strict=True,
        )
    )


def marker(zone, **extra) -> int:
    """Publish an empty marker batch (capture's drop/reset markers carry no rows)."""
    return zone.write_batch([], after=zone.read_checkpoint(), state={}, extra=extra).batch


@pytest.mark.parametrize("path", ["rewrite", "merge"])
def test_stale_update_delivered_after_the_delete_does_not_resurrect(lake, monkeypatch, path):
    """Insert at 10, delete at 30, then an update at 20 delivered last: the delete is the latest
    change (clusterTime 30 > 20), so the document stays deleted."""
    zone, request = lake
    publish(zone, [(K, "insert", 10, '{"v":10}'), (OTHER, "insert", 10, '{"v":1}')])
    merge_batches(request)  # create
    force_path(monkeypatch, path)
    publish(zone, [(K, "delete", 30, None)])
    deleted = merge_batches(request)
    publish(zone, [(K, "update", 20, '{"v":20}')])
    stale = merge_batches(request)
    assert deleted.merge_path == stale.merge_path == path
    assert (deleted.deleted, deleted.tombstones_written, deleted.table_rows) == (1, 1, 1)
    assert stored_docs(stale.table_uri) == {OTHER: '{"v":1}'}
    assert tombstones(stale.table_uri) == {K: 30}
    assert (stale.inserted, stale.updated, stale.deleted) == (0, 0, 0)
    assert stale.batches_applied == [3] and stale.table_rows == 1 and stale.tombstones == 1
    assert change_types(stale.table_uri, deleted.version) == [("delete", K)]


@pytest.mark.parametrize("path", ["rewrite", "merge"])
def test_stale_update_in_the_same_batch_as_the_delete_does_not_resurrect(lake, monkeypatch, path):
    zone, request = lake
    publish(zone, [(K, "insert", 10, '{"v":10}'), (OTHER, "insert", 10, "{}")])
    merge_batches(request)
    force_path(monkeypatch, path)
    publish(zone, [(K, "delete", 30, None), (K, "update", 20, '{"v":20}')])
    result = merge_batches(request)
    assert result.merge_path == path
    assert stored_docs(result.table_uri) == {OTHER: "{}"}
    assert tombstones(result.table_uri) == {K: 30}


@pytest.mark.parametrize("path", ["rewrite", "merge"])
def test_newer_insert_after_the_delete_comes_back_as_an_insert(lake, monkeypatch, path):
    """A re-insert at 40 after the delete at 30 is the latest change: the document exists again,
    and the change feed shows an insert (the warehouse had no row for it), not an update."""
    zone, request = lake
    publish(zone, [(K, "insert", 10, '{"v":10}'), (OTHER, "insert", 10, "{}")])
    merge_batches(request)
    force_path(monkeypatch, path)
    publish(zone, [(K, "delete", 30, None)])
    deleted = merge_batches(request)
    publish(zone, [(K, "insert", 40, '{"v":40}')])
    back = merge_batches(request)
    assert stored_docs(back.table_uri) == {K: '{"v":40}', OTHER: "{}"}
    assert tombstones(back.table_uri) == {}
    assert (back.inserted, back.updated, back.deleted) == (1, 0, 0)
    assert change_types(back.table_uri, back.version) == [("insert", K)]
    if path == "rewrite":  # the rewrite's own feed holds no tombstone row at all
        assert feed_of(back.table_uri, back.version).num_rows == 1
    net = changes_between(back.table_uri, {}, deleted.version, back.version)
    assert [(r["_id"], r["_deleted"], r["doc"]) for r in net.to_pylist()] == [
        (K, False, '{"v":40}')
    ]


@pytest.mark.parametrize("path", ["create", "append", "rewrite", "merge"])
def test_delete_of_a_key_never_held_refuses_an_older_insert_delivered_later(
    lake, monkeypatch, path
):
    """The delete at 30 arrives before the insert at 20 it follows at the source: the key must
    end deleted, so the delete leaves a tombstone even though the table never held the key."""
    zone, request = lake
    absent = key(JUN, 9)
    if path == "append":  # the table holds January only: June is a partition it does not have
        publish(zone, [(K, "insert", 10, "{}")])
        merge_batches(request)
    elif path != "create":
        publish(zone, [(K, "insert", 10, "{}"), (key(JUN, 1), "insert", 10, "{}")])
        merge_batches(request)
    force_path(monkeypatch, path)
    publish(zone, [(absent, "delete", 30, None)])
    first = merge_batches(request)
    publish(zone, [(absent, "insert", 20, '{"late":true}')])
    late = merge_batches(request)
    assert first.merge_path == path
    assert absent not in stored_docs(late.table_uri)
    assert tombstones(late.table_uri) == {absent: 30}
    assert first.deleted == 0 and first.tombstones_written == 1  # no live row was deleted
    assert late.inserted == 0 and late.duplicate_keys == 0
    if first.version is not None and first.version > 0:
        assert change_types(late.table_uri, first.version) == []  # invisible in the feed


@pytest.mark.parametrize("path", ["rewrite", "merge"])
def test_late_drop_keeps_newer_rows_and_refuses_older_changes_after_it(lake, monkeypatch, path):
    """The collection was dropped at 100 and re-created: an insert at 200 was merged before the
    drop event was delivered. The drop removes what is older than 100 only; a change older than
    the drop (pos < 100) that arrives after it belongs to the dropped collection: ignored."""
    zone, request = lake
    force_path(monkeypatch, path)
    old, recreated = key(JAN, 4), key(JUN, 5)
    publish(zone, [(old, "insert", 50, '{"gen":1}'), (K, "insert", 60, '{"gen":1}')])
    publish(zone, [(recreated, "insert", 200, '{"gen":2}'), (K, "update", 210, '{"gen":2}')])
    merge_batches(request)
    marker(zone, dropped=True, end_event="drop", drop_pos=100)
    dropped = merge_batches(request)
    assert dropped.merge_path == "drop" and dropped.drop_floor == 100
    assert stored_docs(dropped.table_uri) == {recreated: '{"gen":2}', K: '{"gen":2}'}
    assert dropped.deleted == 1 and dropped.table_rows == 2
    publish(zone, [(old, "update", 70, '{"late":1}'), (NEW, "insert", 90, '{"late":1}')])
    publish(zone, [(NEW, "insert", 150, '{"gen":2}')])
    late = merge_batches(request)
    assert late.below_floor == 2 and late.batches_applied == [4, 5]
    assert stored_docs(late.table_uri) == {
        recreated: '{"gen":2}',
        K: '{"gen":2}',
        NEW: '{"gen":2}',
    }
    assert change_types(late.table_uri, dropped.version) == [("delete", old)]


def test_drop_removes_older_tombstones_too(lake):
    zone, request = lake
    publish(zone, [(K, "insert", 10, "{}"), (OTHER, "insert", 10, "{}")])
    publish(zone, [(K, "delete", 20, None)])
    merge_batches(request)
    assert tombstones(merge_batches(request).table_uri) == {K: 20}
    marker(zone, dropped=True, end_event="drop", drop_pos=100)
    result = merge_batches(request)
    assert stored_docs(result.table_uri) == {} and tombstones(result.table_uri) == {}
    assert result.tombstones == 0 and result.deleted == 1  # the live row; the tombstone is none


def test_drop_as_the_first_batch_still_sets_the_floor(lake):
    """No table yet: the drop creates an empty one to record its floor, so an older change
    delivered after it is refused all the same."""
    zone, request = lake
    marker(zone, dropped=True, end_event="drop", drop_pos=100)
    first = merge_batches(request)
    publish(zone, [(K, "insert", 90, "{}"), (OTHER, "insert", 110, "{}")])
    result = merge_batches(request)
    assert first.drop_floor == 100 and first.version == 0
    assert stored_docs(result.table_uri) == {OTHER: "{}"}


def test_reset_marker_without_position_starts_a_generation_at_any_position(lake):
    """A reset (or a DMS reload) carries no position: batch order applies. Its snapshot rows
    sit at the position recorded before the snapshot, and DMS full-load rows at 0, so the floor
    of an earlier positional drop must not hide them."""
    zone, request = lake
    publish(zone, [(K, "insert", 500, "{}")])
    marker(zone, dropped=True, end_event="drop", drop_pos=400)
    merge_batches(request)
    marker(zone, dropped=True, reset=True, reason="reset")
    publish(zone, [(OTHER, "snapshot", 0, '{"full_load":true}')])
    result = merge_batches(request)
    assert result.drop_floor == 0
    assert stored_docs(result.table_uri) == {OTHER: '{"full_load":true}'}


def test_damaged_batch_names_the_batch_the_file_and_the_fix(lake):
    zone, request = lake
    publish(zone, [(K, "insert", 1, "{}")])
    merge_batches(request)
    damaged = publish(zone, [(OTHER, "insert", 2, "{}")])
    (data_file,) = zone.read_manifest(damaged).files
    zone.store.put(data_file.key, zone.store.get(data_file.key)[:40])  # truncated
    with pytest.raises(CorruptBatchError) as raised:
        merge_batches(request)
    message = str(raised.value)
    assert f"batch {damaged}" in message and data_file.key in message
    assert '{"ops": {"cdc_raw_batches": {"config": {"reset": true}}}}' in message


def test_reset_marker_after_a_damaged_batch_supersedes_it(lake):
    """A reset publishes a marker and a new snapshot behind the damaged batch: the batches in
    front of the marker are superseded (the marker removes every earlier row anyway), so the
    merge skips them unread and the table ends equal to the new snapshot."""
    zone, request = lake
    publish(zone, [(K, "insert", 1, '{"v":1}'), (OTHER, "insert", 1, '{"v":1}')])
    merge_batches(request)
    damaged = publish(zone, [(OTHER, "update", 2, '{"v":2}')])
    after = publish(zone, [(K, "update", 3, '{"v":3}')])
    (data_file,) = zone.read_manifest(damaged).files
    zone.store.put(data_file.key, b"not parquet")
    with pytest.raises(CorruptBatchError):
        merge_batches(request)
    reset = marker(zone, dropped=True, reset=True, reason="reset")
    publish(zone, [(K, "snapshot", 9, '{"v":"snap"}'), (NEW, "snapshot", 9, '{"v":"snap"}')])
    result = merge_batches(request)
    assert result.batches_superseded == [damaged, after]
    assert result.batches_applied == [reset, reset + 1]
    assert stored_docs(result.table_uri) == {K: '{"v":"snap"}', NEW: '{"v":"snap"}'}
    assert merge_batches(request).batches_applied == []


@pytest.mark.parametrize("path", ["rewrite", "merge"])
def test_maintenance_expires_old_tombstones_and_keeps_young_ones(lake, monkeypatch, path):
    """Expiry is by the delete's event time; its commit changes no live row, so the change feed
    read between the versions around it is empty (the warehouse loads nothing)."""
    zone, request = lake
    now = datetime.now(UTC)
    publish(zone, [(K, "insert", 1, "{}"), (OTHER, "insert", 1, "{}"), (NEW, "insert", 1, "{}")])
    merge_batches(request)
    force_path(monkeypatch, path)
    publish(zone, [(K, "delete", 2, None)], event_time=now - timedelta(hours=200))
    publish(zone, [(OTHER, "delete", 3, None)], event_time=now - timedelta(hours=10))
    merged = merge_batches(request)
    assert merged.tombstones == 2 and merged.table_rows == 1
    done = compact_table(
        compact_request(request, cold_after_hours=9999, vacuum=False, tombstone_retention_hours=168)
    )
    assert (done.tombstones_expired, done.tombstones) == (1, 1)
    assert tombstones(merged.table_uri) == {OTHER: 3}
    assert stored_docs(merged.table_uri) == {NEW: "{}"}
    assert done.version_after == merged.version + 1
    assert changes_between(merged.table_uri, {}, merged.version, done.version_after).num_rows == 0
    again = compact_table(compact_request(request, cold_after_hours=9999, vacuum=False))
    assert again.tombstones_expired == 0 and again.version_after == done.version_after


def test_stale_change_after_its_tombstone_expired_is_applied_the_documented_limit(lake):
    """Once a tombstone has expired, nothing remembers the delete: a change older than it that
    still arrives is applied like any change to an absent key, and the document comes back.
    The retention (LAKEHOUSE_TOMBSTONE_RETENTION_HOURS, 168 h = DocumentDB's longest change
    stream retention) must exceed the longest delay of any input."""
    zone, request = lake
    now = datetime.now(UTC)
    publish(zone, [(K, "insert", 10, '{"v":10}')], event_time=now - timedelta(hours=300))
    publish(zone, [(K, "delete", 30, None)], event_time=now - timedelta(hours=200))
    merge_batches(request)
    expired = compact_table(compact_request(request, cold_after_hours=9999, vacuum=False))
    assert expired.tombstones_expired == 1
    publish(zone, [(K, "update", 20, '{"v":20}')], event_time=now - timedelta(hours=250))
    result = merge_batches(request)
    assert stored_docs(result.table_uri) == {K: '{"v":20}'}  # resurrected: past the retention


def test_table_rows_and_duplicate_check_count_live_rows_with_one_row_per_key(lake):
    zone, request = lake
    publish(zone, [(key(JAN, n), "insert", 1, "{}") for n in range(1, 6)])
    merge_batches(request)
    publish(zone, [(key(JAN, n), "delete", 2, None) for n in range(1, 4)])
    publish(zone, [(key(JAN, 1), "insert", 3, "{}")])  # back: its tombstone is replaced
    result = merge_batches(request)
    table = DeltaTable(result.table_uri).to_pyarrow_table(columns=["_id", "_op"])
    assert table.num_rows == 5  # one row per key, live or tombstone
    assert result.table_rows == 3 and result.tombstones == 2 and result.duplicate_keys == 0
    assert table.filter(is_tombstone(table)).num_rows == 2
