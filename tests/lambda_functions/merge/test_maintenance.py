"""Compaction of cold partitions and vacuum: rows unchanged, feed untouched, old files deleted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lambda_functions.contracts import CompactRequest, InvalidRequestError
from lambda_functions.merge import changes_between, compact_table, merge_batches
from lambda_functions.merge.maintenance import LakeTableMissingError
from lambda_functions.merge.maintenance_handler import handler
from lambda_functions.merge.table_files import TableFiles
from tests.lambda_functions.emf_checks import numeric_metadata, stage_metrics
from tests.lambda_functions.merge.events import compact_request, pipes_event
from tests.lambda_functions.merge.tables import APP, stored_docs
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish


def january_key(minute: int) -> str:
    """An ObjectId created ``minute`` minutes into January 2024."""
    return f"{int(JAN[:8], 16) + 60 * minute:08x}" + "0" * 16


def fragmented_table(zone, request) -> str:
    """January gets one file per merge (each inserts keys above the previous file's range, so the
    merge leaves the older files alone), in an order that is not the keys' order, and one file
    replaced by an update; June is written last."""
    for n in (3, 1, 2, 0):
        minutes = [10 * n + i for i in range(3)]
        publish(zone, [(january_key(m), "insert", n, f'{{"m":{m}}}') for m in minutes])
        merge_batches(request)
    publish(zone, [(january_key(30), "update", 5, '{"m":30,"updated":true}')])
    merge_batches(request)
    time.sleep(0.01)
    publish(zone, [(key(JUN, 1), "insert", 9, "{}")])
    return merge_batches(request).table_uri


def newest_write_ms(uri: str, bucket: str) -> int:
    actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
    times = [
        t
        for b, t in zip(
            actions.column("partition._bucket").to_pylist(),
            actions.column("modification_time").to_pylist(),
            strict=True,
        )
        if b == bucket
    ]
    return max(times)


def test_compaction_rewrites_cold_partitions_sorted_and_leaves_hot_ones(lake):
    zone, request = lake
    uri = fragmented_table(zone, request)
    before = TableFiles.of(DeltaTable(uri))
    january = {p for p, f in before.files.items() if f[0] == "2024-01"}
    assert len(january) >= 3
    docs = stored_docs(uri)
    # "Now" is just before June's write: January is cold, June (written after it) is hot.
    now_ms = newest_write_ms(uri, "2024-06") - 1
    assert newest_write_ms(uri, "2024-01") < now_ms
    result = compact_table(
        compact_request(request, cold_after_hours=0, vacuum=False), now_ms=now_ms
    )
    after = TableFiles.of(DeltaTable(uri))
    assert result.partitions_compacted == ["2024-01"] and result.hot_partitions == 1
    assert before.minus(after).files.keys() == january
    assert result.files_compacted == len(january) and result.files_written == 1
    (new_file,) = after.minus(before).files.values()
    # z-ordered on _id: clustered by its first bytes, an ObjectId's creation time.
    ids = DeltaTable(uri).to_pyarrow_table(columns=["_id"], filters=[("_bucket", "=", "2024-01")])
    assert ids.column("_id").to_pylist() == sorted(ids.column("_id").to_pylist())
    assert new_file[3] == min(ids.column("_id").to_pylist())
    assert stored_docs(uri) == docs


def test_compaction_changes_no_row_and_adds_nothing_to_the_change_feed(lake):
    zone, request = lake
    uri = fragmented_table(zone, request)
    result = compact_table(compact_request(request, cold_after_hours=0, vacuum=False))
    assert result.version_after == result.version_before + 1
    assert changes_between(uri, {}, result.version_before, result.version_after).num_rows == 0
    table = DeltaTable(uri)
    assert table.transaction_version(APP) == 6  # the merge's idempotency marker survives
    assert table.history(1)[0]["operation"] == "OPTIMIZE"
    publish(zone, [(january_key(1), "update", 20, '{"after":"compaction"}')])
    assert merge_batches(request).batches_applied == [7]
    assert stored_docs(uri)[january_key(1)] == '{"after":"compaction"}'


def test_vacuum_deletes_replaced_files_once_past_retention(lake):
    zone, request = lake
    uri = fragmented_table(zone, request)
    live = set(TableFiles.of(DeltaTable(uri)).files)
    on_disk = {p.relative_to(uri).as_posix() for p in Path(uri).rglob("*.parquet")}
    replaced = on_disk - live - {p for p in on_disk if p.startswith("_change_data")}
    assert replaced  # merges replaced January's file versions
    kept = compact_table(compact_request(request, cold_after_hours=9999))
    assert kept.files_vacuumed == 0  # all younger than the default 7-day retention
    result = compact_table(
        compact_request(request, cold_after_hours=9999, vacuum_retention_hours=0)
    )
    assert result.files_vacuumed >= len(replaced)
    remaining = {p.relative_to(uri).as_posix() for p in Path(uri).rglob("*.parquet")}
    assert not (remaining & replaced) and live <= remaining
    assert stored_docs(uri)[key(JUN, 1)] == "{}"


def test_dry_run_reports_and_changes_nothing(lake):
    zone, request = lake
    uri = fragmented_table(zone, request)
    version = DeltaTable(uri).version()
    files_on_disk = sorted(Path(uri).rglob("*.parquet"))
    result = compact_table(
        compact_request(request, cold_after_hours=0, vacuum_retention_hours=0, dry_run=True)
    )
    assert result.dry_run and result.partitions_compacted == ["2024-01"]
    assert result.files_compacted >= 3 and result.files_vacuumed > 0
    assert DeltaTable(uri).version() == version == result.version_after
    assert sorted(Path(uri).rglob("*.parquet")) == files_on_disk


def test_missing_table_says_to_merge_first(lake):
    _, request = lake
    with pytest.raises(LakeTableMissingError, match="run the merge stage first"):
        compact_table(compact_request(request))


def test_compact_request_round_trips_and_rejects_negative_hours():
    request = CompactRequest(lake_uri="/lake", database="shop", collection="orders", dry_run=True)
    assert CompactRequest.from_event(request.to_event()) == request
    with pytest.raises(InvalidRequestError, match="0 or more"):
        CompactRequest.from_event({**request.to_event(), "vacuum_retention_hours": -1})


def maintenance_event(request: CompactRequest, messages: Path) -> dict:
    return pipes_event(
        request, messages, asset="lake_table_maintenance", job="lake_maintenance_job"
    )


def materialization_metadata(messages: Path) -> dict:
    reports = [
        json.loads(line)["params"]
        for line in messages.read_text().splitlines()
        if json.loads(line)["method"] == "report_asset_materialization"
    ]
    return reports[0]["metadata"]


def test_handler_reports_what_maintenance_did(lake, tmp_path):
    zone, request = lake
    fragmented_table(zone, request)
    messages = tmp_path / "messages.jsonl"
    returned = handler(
        maintenance_event(compact_request(request, cold_after_hours=0), messages), None
    )
    metadata = materialization_metadata(messages)
    assert (
        returned["partitions_compacted"]
        == ["2024-01", "2024-06"][: len(returned["partitions_compacted"])]
    )
    assert metadata["partitions_compacted"]["raw_value"] == len(returned["partitions_compacted"])
    assert metadata["files_compacted"]["raw_value"] >= 3
    assert metadata["dry_run"] == {"raw_value": False, "type": "bool"}
    assert metadata["tombstones_expired"] == {"raw_value": 0, "type": "int"}  # none old enough
    assert metadata["tombstones"]["type"] == "int"


def test_handler_prints_the_maintenance_figures_as_an_emf_line(lake, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_METRICS_NAMESPACE", "Lakehouse/Test")
    zone, request = lake
    fragmented_table(zone, request)
    messages = tmp_path / "messages.jsonl"
    capsys.readouterr()
    event = maintenance_event(
        compact_request(request, cold_after_hours=0, vacuum_retention_hours=0), messages
    )
    handler(event, None)
    document, directive = stage_metrics(capsys.readouterr().out, "maintenance")
    assert directive["Namespace"] == "Lakehouse/Test"
    assert directive["Dimensions"] == [["Stage", "Collection"]]
    assert (document["Stage"], document["Collection"]) == ("maintenance", "shop.orders")
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert {
        "PartitionsCompacted": "Count",
        "FilesCompacted": "Count",
        "FilesWritten": "Count",
        "FilesVacuumed": "Count",
        "BytesCompacted": "Bytes",
        "BytesWritten": "Bytes",
        "DurationSeconds": "Seconds",
    }.items() <= units.items()
    assert "DryRun" not in units  # a bool is not a figure
    assert document["FilesCompacted"] >= 3 and document["FilesVacuumed"] > 0
    assert document["BytesCompacted"] > 0
    reported = numeric_metadata(materialization_metadata(messages))
    assert set(units) == set(reported)
    assert {name: document[name] for name in units} == reported
