"""How a batch is committed (create, append, rewrite, MERGE) and what each commit reports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

import lambda_functions.merge.copy_on_write as copy_on_write
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.lake.table_layout import TABLE_SCHEMA
from lambda_functions.merge import merge_batches
from lambda_functions.merge.handler import handler
from lambda_functions.merge.table_files import TableFiles
from tests.lambda_functions.emf_checks import numeric_metadata, stage_metrics
from tests.lambda_functions.merge.events import pipes_event
from tests.lambda_functions.merge.tables import APP, commits, stored_docs
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish


def force_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Make batches that touch existing files take ``path``: "rewrite" (the Arrow copy-on-write,
    the default) or "merge" (delta-rs MERGE, for tables the rewrite does not write)."""
    if path == "merge":
        monkeypatch.setattr(copy_on_write, "supports", lambda _table: False)


def publish_history(zone: RawZone) -> None:
    """Two batches exercising every rule: newer update, stale update, delete, delete of an
    absent key, insert then update in one batch, delete then re-insert in one batch."""
    a, b, c, d, e, f = (
        key(JAN, 1),
        key(JAN, 2),
        key(JAN, 3),
        key(JUN, 4),
        key(JAN, 5),
        key(JUN, 6),
    )
    publish(
        zone,
        [
            (k, "snapshot", 10, f'{{"v":"{name}0"}}')
            for k, name in zip((a, b, c, d), "abcd", strict=True)
        ],
    )
    publish(
        zone,
        [
            (a, "update", 12, '{"v":"a2"}'),
            (b, "delete", 11, None),
            (c, "update", 5, '{"v":"stale"}'),
            (e, "insert", 13, '{"v":"e1"}'),
            (e, "update", 14, '{"v":"e2"}'),
            (f, "delete", 15, None),
            (d, "delete", 16, None),
            (d, "insert", 17, '{"v":"d2"}'),
        ],
    )


def all_rows(table_uri: str) -> list[dict[str, Any]]:
    """Every column but ``_event_time`` (publish stamps it with the wall clock)."""
    table = DeltaTable(table_uri).to_pyarrow_table().drop_columns(["_event_time"])
    plain = pa.schema(
        [
            pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f
            for f in table.schema
        ]
    )
    return table.cast(plain).sort_by("_id").to_pylist()


def test_rewrite_and_merge_give_identical_rows_and_counts(tmp_path, monkeypatch):
    results, rows = {}, {}
    for path in ("merge", "rewrite"):
        lake = tmp_path / path
        zone = RawZone(open_store(str(lake)), "shop", "orders")
        request = MergeRequest(lake_uri=str(lake), database="shop", collection="orders")
        publish_history(zone)
        first = merge_batches(replace(request, max_batches=1))  # creates the table
        force_path(monkeypatch, path)
        results[path] = merge_batches(request)
        rows[path] = all_rows(results[path].table_uri)
        monkeypatch.undo()
        assert first.merge_path == "create"
    assert results["merge"].merge_path == "merge" and results["rewrite"].merge_path == "rewrite"
    assert rows["merge"] == rows["rewrite"]
    docs = {r["_id"]: r["doc"] for r in rows["merge"] if r["_op"] != "delete"}
    dead = {r["_id"]: r["_pos"] for r in rows["merge"] if r["_op"] == "delete"}
    assert dead == {key(JAN, 2): 11, key(JUN, 6): 15}  # the deletes' tombstones, on both paths
    assert docs == {
        key(JAN, 1): '{"v":"a2"}',
        key(JAN, 3): '{"v":"c0"}',  # the stale update did not roll it back
        key(JUN, 4): '{"v":"d2"}',  # deleted, then re-inserted
        key(JAN, 5): '{"v":"e2"}',  # inserted, then updated
    }
    counts = {p: (r.inserted, r.updated, r.deleted) for p, r in results.items()}
    assert counts["merge"] == counts["rewrite"] == (1, 2, 1)
    assert results["rewrite"].duplicate_keys == results["merge"].duplicate_keys == 0


def test_batch_touching_every_file_is_one_commit_that_replaces_every_file(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, "{}"), (key(JUN, 2), "insert", 1, "{}")])
    created = merge_batches(request)
    before = TableFiles.of(DeltaTable(created.table_uri))
    publish(zone, [(key(JAN, 1), "update", 2, '{"v":2}'), (key(JUN, 2), "delete", 2, None)])
    result = merge_batches(request)
    table = DeltaTable(result.table_uri)
    assert result.merge_path == "rewrite" and result.version == created.version + 1
    assert table.transaction_version(APP) == 2
    assert (result.files_rewritten, result.bytes_rewritten) == (before.count, before.bytes)
    assert commits(result.table_uri)[-1]["lakehouse.merge_path"] == "rewrite"
    assert merge_batches(request).batches_applied == []  # replay skipped as for any path


@pytest.mark.parametrize("path", ["rewrite", "merge"])
def test_only_the_files_of_the_touched_partition_are_rewritten(lake, monkeypatch, path):
    zone, request = lake
    force_path(monkeypatch, path)
    publish(zone, [(key(JAN, 1), "insert", 1, "{}"), (key(JUN, 2), "insert", 1, "{}")])
    created = merge_batches(request)
    before = TableFiles.of(DeltaTable(created.table_uri))
    (june_file,) = [p for p, f in before.files.items() if f[0] == "2024-06"]
    publish(zone, [(key(JUN, 2), "update", 2, '{"v":2}'), (key(JUN, 3), "insert", 2, "{}")])
    result = merge_batches(request)
    after = TableFiles.of(DeltaTable(result.table_uri))
    assert result.merge_path == path and result.buckets_touched == ["2024-06"]
    assert (result.files_rewritten, result.bytes_rewritten) == (1, before.files[june_file][1])
    assert before.minus(after).files.keys() == {june_file}  # the January file is untouched
    assert result.bytes_written > 0 and result.files_in_table == after.count
    assert result.bytes_in_table == after.bytes and result.table_rows == 3


def test_batch_that_touches_only_new_partitions_is_appended(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, '{"v":1}')])
    merge_batches(request)
    publish(zone, [(key(JUN, 2), "insert", 2, '{"v":2}'), (key(JUN, 3), "delete", 2, None)])
    result = merge_batches(request)
    assert result.merge_path == "append"
    assert (result.files_rewritten, result.inserted, result.deleted) == (0, 1, 0)
    assert stored_docs(result.table_uri) == {key(JAN, 1): '{"v":1}', key(JUN, 2): '{"v":2}'}
    assert DeltaTable(result.table_uri).transaction_version(APP) == 2


def test_backlog_is_applied_in_commits_of_bounded_size(lake):
    zone, request = lake
    for n in range(3):
        publish(
            zone, [(key(JAN, 2 * n), "insert", n, "{}"), (key(JAN, 2 * n + 1), "insert", n, "{}")]
        )
    result = merge_batches(request, max_rows_per_commit=3)
    assert result.batches_applied == [1, 2, 3] and result.commits == 3
    assert result.merge_path == "create+rewrite+rewrite"
    assert [c.get("lakehouse.batches") for c in commits(result.table_uri)] == ["1-1", "2-2", "3-3"]
    assert result.table_rows == 6 and result.duplicate_keys == 0


def test_commit_metadata_names_batches_path_and_source_position(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 41, "{}")])
    publish(zone, [(key(JAN, 1), "update", 42, "{}")])
    result = merge_batches(request)
    (commit,) = commits(result.table_uri)
    assert commit["lakehouse.batches"] == "1-2" and commit["lakehouse.merge_path"] == "create"
    assert commit["lakehouse.max_pos"] == "42" and commit["lakehouse.namespace"] == "shop.orders"


def test_nothing_pending_reports_no_path_and_no_commit(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, "{}")])
    first = merge_batches(request)
    again = merge_batches(request)
    assert (again.merge_path, again.commits, again.version) == ("none", 0, first.version)


def merge_event(request: MergeRequest, messages: Path) -> dict[str, Any]:
    return pipes_event(request, messages, asset="lake_table", job="merge_and_load_job")


def test_handler_reports_the_path_and_the_files_and_bytes_rewritten(lake, tmp_path):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, "{}"), (key(JUN, 2), "insert", 1, "{}")])
    merge_batches(request)
    publish(zone, [(key(JUN, 2), "update", 2, '{"v":2}')])
    messages = tmp_path / "messages.jsonl"
    returned = handler(merge_event(request, messages), None)
    by_method: dict[str, list] = {}
    for line in messages.read_text().splitlines():
        message = json.loads(line)
        by_method.setdefault(message["method"], []).append(message["params"])
    metadata = by_method["report_asset_materialization"][0]["metadata"]
    assert returned["merge_path"] == "rewrite"
    assert metadata["merge_path"] == {"raw_value": "rewrite", "type": "text"}
    assert metadata["tombstones"] == {"raw_value": 0, "type": "int"}
    assert metadata["batches_superseded"] == {"raw_value": 0, "type": "int"}
    assert metadata["files_rewritten"] == {"raw_value": 1, "type": "int"}
    assert metadata["bytes_rewritten"]["raw_value"] > 0
    assert metadata["files_in_table"] == {"raw_value": 2, "type": "int"}
    assert metadata["schema_changes"] == {"raw_value": "none", "type": "text"}
    assert by_method["report_asset_check"][0]["passed"] is True


def test_handler_prints_the_merge_figures_as_an_emf_line(lake, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_METRICS_NAMESPACE", "Lakehouse/Test")
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, "{}"), (key(JUN, 2), "insert", 1, "{}")])
    merge_batches(request)
    publish(
        zone,
        [
            (key(JUN, 2), "update", 2, '{"v":2}'),
            (key(JAN, 1), "delete", 2, None),
            (key(JUN, 3), "insert", 2, "{}"),
        ],
    )
    messages = tmp_path / "messages.jsonl"
    capsys.readouterr()
    handler(merge_event(request, messages), None)
    document, directive = stage_metrics(capsys.readouterr().out, "merge")
    assert directive["Namespace"] == "Lakehouse/Test"
    assert directive["Dimensions"] == [["Stage", "Collection"]]
    assert (document["Stage"], document["Collection"]) == ("merge", "shop.orders")
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert {
        "RowsInserted": "Count",
        "RowsUpdated": "Count",
        "RowsDeleted": "Count",
        "FilesRewritten": "Count",
        "BytesRewritten": "Bytes",
        "BytesWritten": "Bytes",
        "DurationSeconds": "Seconds",
        "Rows": "Count",
    }.items() <= units.items()
    assert "MergePath" not in units and "TableUri" not in units  # text is not a metric
    assert "TableVersion" not in units and "LastAppliedBatch" not in units  # identifiers
    assert (document["RowsInserted"], document["RowsUpdated"], document["RowsDeleted"]) == (
        1.0,
        1.0,
        1.0,
    )
    assert document["FilesRewritten"] >= 1 and document["BytesRewritten"] > 0
    (report,) = [
        json.loads(line)["params"]
        for line in messages.read_text().splitlines()
        if json.loads(line)["method"] == "report_asset_materialization"
    ]
    reported = numeric_metadata(report["metadata"])
    assert set(units) == set(reported)
    assert {name: document[name] for name in units} == reported


@pytest.mark.parametrize("path", ["rewrite", "merge"])
def test_a_key_stored_twice_is_reported_by_the_duplicate_check(lake, monkeypatch, path):
    """The check is honest: plant a second copy of a key (as a buggy writer would), in a file
    with another new key so that the batch touches it, and the result says so."""
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, "{}"), (key(JAN, 3), "insert", 1, "{}")])
    created = merge_batches(request)
    stored = DeltaTable(created.table_uri).to_pyarrow_table().cast(TABLE_SCHEMA)
    copy = stored.filter(pc.equal(stored.column("_id"), key(JAN, 1)))
    other = copy.set_column(0, "_id", pa.array([key(JAN, 4)], pa.string()))
    write_deltalake(
        created.table_uri, pa.concat_tables([copy, other.cast(TABLE_SCHEMA)]), mode="append"
    )
    force_path(monkeypatch, path)
    publish(zone, [(key(JAN, 2), "insert", 2, "{}")])  # inside both files' key ranges
    assert merge_batches(request).duplicate_keys == 1


def test_merge_after_a_full_rewrite_prunes_with_the_rewritten_files_statistics(lake):
    zone, request = lake
    publish(zone, [(key(JAN, n), "insert", 1, "{}") for n in range(10)])
    merge_batches(request)
    publish(zone, [(key(JAN, n), "update", 2, '{"v":2}') for n in range(10)])
    rewritten = merge_batches(request)
    files = TableFiles.of(DeltaTable(rewritten.table_uri))
    ((_, (_, _, rows, low, high)),) = files.files.items()
    assert (rows, low, high) == (10, key(JAN, 0), key(JAN, 9))  # statistics of our own writer
    publish(zone, [(key(JAN, 5), "update", 3, '{"v":3}'), (key(JUN, 1), "insert", 3, "{}")])
    result = merge_batches(request)
    assert result.merge_path == "rewrite" and result.files_rewritten == 1
    assert stored_docs(result.table_uri)[key(JAN, 5)] == '{"v":3}'


def test_batch_of_stale_events_rewrites_nothing_and_is_recorded(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 10, "{}")])
    created = merge_batches(request)
    publish(zone, [(key(JAN, 1), "update", 5, '{"stale":true}')])
    result = merge_batches(request)
    assert result.batches_applied == [2] and result.version == created.version + 1
    assert (result.files_rewritten, result.files_added) == (0, 0)
    assert DeltaTable(result.table_uri).transaction_version(APP) == 2


def test_table_with_constraints_is_merged_by_delta_rs_which_enforces_them(lake):
    """The Arrow rewrite only writes tables whose protocol it honours; a CHECK constraint (writer
    protocol feature it does not evaluate) sends batches through delta-rs MERGE."""
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, "{}")])
    created = merge_batches(request)
    DeltaTable(created.table_uri).alter.add_constraint({"positive_position": "_pos > 0"})
    publish(zone, [(key(JAN, 1), "update", 2, '{"v":2}')])
    result = merge_batches(request)
    assert result.merge_path == "merge"
    assert stored_docs(result.table_uri) == {key(JAN, 1): '{"v":2}'}


def test_rewrite_commits_write_checkpoints_at_the_tables_interval(lake):
    zone, request = lake
    publish(zone, [(key(JAN, 1), "insert", 1, "{}")])
    created = merge_batches(request)
    DeltaTable(created.table_uri).alter.set_table_properties({"delta.checkpointInterval": "2"})
    for n in (2, 3):
        publish(zone, [(key(JAN, 1), "update", n, f'{{"v":{n}}}')])
        merge_batches(request)
    log = Path(created.table_uri) / "_delta_log"
    assert (log / f"{2:020d}.checkpoint.parquet").exists()  # versions 2 (rewrite) ...
    assert not (log / f"{3:020d}.checkpoint.parquet").exists()  # ... not 3
    assert stored_docs(created.table_uri) == {key(JAN, 1): '{"v":3}'}
