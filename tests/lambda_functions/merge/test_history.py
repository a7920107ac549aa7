"""Time travel and incremental reads: any retained version, exactly the keys changed between two."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

import lambda_functions.merge.copy_on_write as copy_on_write
from lambda_functions.lake.table_layout import TABLE_SCHEMA, is_tombstone, live_changes
from lambda_functions.merge import changes_between, compact_table, merge_batches, read_version
from lambda_functions.merge.history import VersionNotAvailableError
from tests.lambda_functions.merge.events import compact_request
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish

A, B, C, D, E = key(JAN, 1), key(JAN, 2), key(JUN, 3), key(JUN, 4), key(JAN, 5)


def seeded(zone, request) -> int:
    publish(zone, [(k, "snapshot", 10, f'{{"k":"{k[-1]}"}}') for k in (A, B, C, D)])
    return merge_batches(request).version


def one_batch_of_every_kind(zone) -> None:
    publish(
        zone,
        [
            (A, "update", 11, '{"k":"1","v":2}'),
            (B, "delete", 11, None),
            (C, "update", 5, '{"stale":true}'),
            (E, "insert", 12, '{"k":"5"}'),
        ],
    )


def by_key(changes: pa.Table) -> dict[str, tuple[bool, str | None]]:
    return {r["_id"]: (r["_deleted"], r["doc"]) for r in changes.to_pylist()}


def test_time_travel_reads_a_past_version(lake):
    zone, request = lake
    first = seeded(zone, request)
    one_batch_of_every_kind(zone)
    merge_batches(request)
    uri = merge_batches(request).table_uri
    past = read_version(uri, {}, first, columns=["_id", "doc"])
    assert dict(
        zip(past.column("_id").to_pylist(), past.column("doc").to_pylist(), strict=True)
    ) == {
        A: '{"k":"1"}',
        B: '{"k":"2"}',
        C: '{"k":"3"}',
        D: '{"k":"4"}',
    }


@pytest.mark.parametrize("path", ["merge", "rewrite"])
def test_changes_between_two_versions_are_exactly_the_changed_keys(lake, monkeypatch, path):
    zone, request = lake
    first = seeded(zone, request)
    if path == "merge":
        monkeypatch.setattr(copy_on_write, "supports", lambda _table: False)
    one_batch_of_every_kind(zone)
    result = merge_batches(request)
    assert result.merge_path == path
    uri = result.table_uri
    changes = changes_between(uri, {}, first, result.version)
    assert by_key(changes) == {
        A: (False, '{"k":"1","v":2}'),
        B: (True, '{"k":"2"}'),  # a deleted key comes with its last stored row
        E: (False, '{"k":"5"}'),
    }  # C (stale update) and D (untouched) are not changes
    raw = pa.RecordBatchReader.from_stream(
        DeltaTable(uri).load_cdf(starting_version=result.version, ending_version=result.version)
    ).read_all()
    if path == "rewrite":  # the rewrite writes live-row changes only: no tombstone in its feed
        assert raw.filter(is_tombstone(raw)).num_rows == 0
    # Read as live rows (delta-rs MERGE writes B's tombstone as B's postimage), both feeds are
    # exact: deleted, inserted, and both images of the updated row.
    assert sorted(live_changes(raw).column("_change_type").to_pylist()) == [
        "delete",
        "insert",
        "update_postimage",
        "update_preimage",
    ]


def test_changes_between_nets_out_an_overwrite_that_changed_few_rows(lake):
    """A version written by an overwrite (another tool, a repair) has no change files: the feed
    lists every row as deleted and re-inserted. Only the rows that differ are changes."""
    zone, request = lake
    first = seeded(zone, request)
    uri = merge_batches(request).table_uri
    rows = DeltaTable(uri).to_pyarrow_table()
    docs = pa.array(
        [
            f'{{"k":"{k[-1]}","v":2}}' if k == A else d
            for k, d in zip(
                rows.column("_id").to_pylist(), rows.column("doc").to_pylist(), strict=True
            )
        ]
    )
    positions = pa.array(
        [
            13 if k == A else p
            for k, p in zip(
                rows.column("_id").to_pylist(), rows.column("_pos").to_pylist(), strict=True
            )
        ],
        pa.int64(),
    )
    rows = rows.set_column(rows.schema.get_field_index("doc"), "doc", docs)
    rows = rows.set_column(rows.schema.get_field_index("_pos"), "_pos", positions)
    keep = pc.not_equal(rows.column("_id"), B)
    write_deltalake(uri, rows.filter(keep).cast(TABLE_SCHEMA), mode="overwrite")
    raw = pa.RecordBatchReader.from_stream(
        DeltaTable(uri).load_cdf(starting_version=first + 1)
    ).read_all()
    assert raw.num_rows == 7  # 4 rows deleted, 3 re-inserted
    assert by_key(changes_between(uri, {}, first)) == {
        A: (False, '{"k":"1","v":2}'),
        B: (True, '{"k":"2"}'),
    }


def test_key_inserted_and_deleted_between_the_versions_is_not_a_change(lake):
    zone, request = lake
    first = seeded(zone, request)
    publish(zone, [(E, "insert", 12, "{}")])
    merge_batches(request)
    publish(zone, [(E, "delete", 13, None), (A, "update", 13, "{}")])
    last = merge_batches(request).version
    changes = changes_between(merge_batches(request).table_uri, {}, first, last)
    assert by_key(changes) == {A: (False, "{}")}


def test_nothing_changed_gives_an_empty_table_with_the_columns(lake):
    zone, request = lake
    version = seeded(zone, request)
    uri = merge_batches(request).table_uri
    changes = changes_between(uri, {}, version, version)
    assert changes.num_rows == 0 and "_deleted" in changes.column_names


def test_vacuumed_version_says_what_to_read_instead(lake):
    zone, request = lake
    first = seeded(zone, request)
    one_batch_of_every_kind(zone)
    merge_batches(request)
    compact_table(compact_request(request, cold_after_hours=0, vacuum_retention_hours=0))
    uri = merge_batches(request).table_uri
    with pytest.raises(VersionNotAvailableError, match="no longer retained"):
        read_version(uri, {}, first)
