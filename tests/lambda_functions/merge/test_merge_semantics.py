import pytest
from deltalake import DeltaTable

from lambda_functions.lake.table_layout import key_bucket, precombine
from lambda_functions.merge import merge_batches
from tests.lambda_functions.merge.tables import stored_docs
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish


def table_rows(result) -> dict[str, str]:
    return stored_docs(result.table_uri)


def test_latest_change_wins_and_deletes_are_applied(lake):
    zone, request = lake
    a, b, c = key(JAN, 1), key(JAN, 2), key(JUN, 3)
    publish(zone, [(a, "snapshot", 10, '{"v":0}'), (b, "snapshot", 10, '{"v":0}')])
    publish(
        zone,
        [
            (a, "update", 12, '{"v":2}'),
            (a, "update", 11, '{"v":1}'),
            (b, "delete", 11, None),
            (c, "insert", 13, '{"v":9}'),
        ],
    )
    result = merge_batches(request)
    assert result.batches_applied == [1, 2]
    assert table_rows(result) == {a: '{"v":2}', c: '{"v":9}'}
    assert result.duplicate_keys == 0


def test_replayed_batch_is_skipped(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 10, '{"v":1}')])
    first = merge_batches(request)
    again = merge_batches(request)
    assert first.batches_applied == [1]
    assert again.batches_applied == []
    assert again.version == first.version  # no new commit
    assert DeltaTable(first.table_uri).transaction_version("lakehouse-merge:shop.orders") == 1


def test_stale_event_never_rolls_a_document_back(lake):
    zone, request = lake
    a = key(JAN, 1)
    publish(zone, [(a, "insert", 20, '{"v":"new"}')])
    merge_batches(request)
    publish(zone, [(a, "update", 15, '{"v":"old"}'), (a, "delete", 14, None)])
    result = merge_batches(request)
    assert table_rows(result) == {a: '{"v":"new"}'}


def test_delete_then_reinsert_brings_the_document_back(lake):
    zone, request = lake
    a = key(JUN, 7)
    publish(zone, [(a, "insert", 10, '{"v":1}')])
    merge_batches(request)
    publish(zone, [(a, "delete", 11, None)])
    assert table_rows(merge_batches(request)) == {}
    publish(zone, [(a, "insert", 12, '{"v":2}')])
    assert table_rows(merge_batches(request)) == {a: '{"v":2}'}


def test_merge_that_dies_before_commit_leaves_the_previous_version(lake, monkeypatch):
    zone, request = lake
    a = key(JAN, 1)
    publish(zone, [(a, "insert", 10, '{"v":1}')])
    before = merge_batches(request)
    publish(zone, [(a, "update", 11, '{"v":2}')])

    import lambda_functions.merge.apply as apply_module

    def crash(*args, **kwargs):
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(apply_module, "apply_plan", crash)
    with pytest.raises(RuntimeError, match="killed"):
        merge_batches(request)
    table = DeltaTable(before.table_uri)
    assert table.version() == before.version
    assert table_rows(before) == {a: '{"v":1}'}
    monkeypatch.undo()
    after = merge_batches(request)
    assert after.batches_applied == [2]
    assert table_rows(after) == {a: '{"v":2}'}


def test_precombine_breaks_ties_on_batch_then_seq():
    import pyarrow as pa

    from lambda_functions.lake.table_layout import TABLE_SCHEMA

    t = pa.table(
        {
            "_id": ["k", "k", "k"],
            "_bucket": ["x"] * 3,
            "doc": ["a", "b", "c"],
            "_op": ["update"] * 3,
            "_pos": [5, 5, 5],
            "_batch": [2, 1, 2],
            "_seq": [0, 9, 1],
            "_event_time": pa.array([0, 0, 0], pa.timestamp("us", tz="UTC")),
        },
        schema=TABLE_SCHEMA,
    )
    assert precombine(t).column("doc").to_pylist() == ["c"]


def test_partition_bucket_is_the_objectid_month_or_a_hash_bucket():
    assert key_bucket(JAN) == "2024-01"
    assert key_bucket(JUN) == "2024-06"
    other = key_bucket("customer-42")
    assert other.startswith("h") and other == key_bucket("customer-42")


def test_delete_of_an_absent_key_beside_an_insert_is_a_no_op(lake):
    """Regression: delta-rs wrote null rows for a predicated WHEN NOT MATCHED INSERT."""
    zone, request = lake
    a, gone, new = key(JAN, 1), key(JAN, 2), key(JAN, 3)
    publish(zone, [(a, "insert", 1, '{"v":1}')])
    merge_batches(request)
    publish(zone, [(gone, "delete", 2, None), (new, "insert", 3, '{"v":3}')])
    result = merge_batches(request)
    assert table_rows(result) == {a: '{"v":1}', new: '{"v":3}'}


def test_a_batch_that_changes_nothing_is_still_recorded_as_applied(lake):
    zone, request = lake
    a = key(JAN, 1)
    publish(zone, [(a, "insert", 10, '{"v":1}')])
    merge_batches(request)
    publish(zone, [(a, "update", 5, '{"v":"stale"}')])  # older than the stored row
    first = merge_batches(request)
    assert first.batches_applied == [2] and first.last_applied_batch == 2
    assert merge_batches(request).batches_applied == []


def test_dropped_marker_removes_everything_applied_before_it(lake):
    zone, request = lake
    a, b = key(JAN, 1), key(JUN, 2)
    publish(zone, [(a, "snapshot", 1, '{"v":1}'), (b, "snapshot", 1, '{"v":1}')])
    merge_batches(request)
    zone.write_batch([], after=zone.read_checkpoint(), state={}, extra={"dropped": True})
    publish(zone, [(b, "snapshot", 9, '{"v":"resnapshot"}')])
    result = merge_batches(request)
    assert result.batches_applied == [2, 3]
    assert table_rows(result) == {b: '{"v":"resnapshot"}'}
    assert merge_batches(request).batches_applied == []
