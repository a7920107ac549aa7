"""A merge killed at any step leaves the previous version; the re-run converges, exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lambda_functions.merge import compact_table, merge_batches
from lambda_functions.merge.table_files import TableFiles
from tests.lambda_functions.merge.events import compact_request
from tests.lambda_functions.merge.tables import APP, stored_docs
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish

ROOT = Path(__file__).resolve().parents[3]
SEEDED = 200  # January rows


def run_killed(lake_uri: str, step: str, path: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.lambda_functions.merge.kill_merge", lake_uri, step, path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def seed_and_publish_changes(zone, request) -> tuple[str, dict[str, str], dict[str, str]]:
    """Batch 1 applied (the previous version); batch 2 published. Returns (table uri, docs
    before batch 2, docs after it)."""
    seeded = [(key(JAN, n), "snapshot", 10, f'{{"n":{n}}}') for n in range(SEEDED)]
    publish(zone, [*seeded, (key(JUN, 1), "snapshot", 10, '{"n":"june"}')])
    uri = merge_batches(request).table_uri
    before = stored_docs(uri)
    publish(
        zone,
        [
            (key(JAN, 0), "update", 11, '{"n":0,"v":2}'),
            (key(JAN, 1), "delete", 11, None),
            (key(JUN, 1), "update", 11, '{"n":"june","v":2}'),
            (key(JUN, 2), "insert", 11, '{"n":"new"}'),
        ],
    )
    after = dict(before)
    after.pop(key(JAN, 1))
    after.update(
        {
            key(JAN, 0): '{"n":0,"v":2}',
            key(JUN, 1): '{"n":"june","v":2}',
            key(JUN, 2): '{"n":"new"}',
        }
    )
    return uri, before, after


def orphan_files(uri: str) -> set[str]:
    """Data files on disk that no version's log entry names (written by a killed merge)."""
    live_now = set(TableFiles.of(DeltaTable(uri)).files)
    ever = set()
    for version in range(DeltaTable(uri).version() + 1):
        ever |= set(TableFiles.of(DeltaTable(uri, version=version)).files)
    on_disk = {
        p.relative_to(uri).as_posix()
        for p in Path(uri).rglob("*.parquet")
        if not p.relative_to(uri).as_posix().startswith("_change_data")
    }
    return on_disk - ever - live_now


@pytest.mark.parametrize(
    ("step", "path"),
    [
        ("read", ""),  # batches read, nothing written
        ("commit", ""),  # about to commit (rewrite path)
        ("commit", "merge"),  # about to commit (delta-rs MERGE path)
        ("data_files", ""),  # data and change files written, no log entry
    ],
)
def test_merge_killed_before_its_log_entry_leaves_the_previous_version(lake, step, path):
    zone, request = lake
    uri, before, after = seed_and_publish_changes(zone, request)
    version = DeltaTable(uri).version()

    killed = run_killed(request.lake_uri, step, path)

    assert killed.returncode == -9, killed.stderr
    table = DeltaTable(uri)
    assert table.version() == version and table.transaction_version(APP) == 1
    assert stored_docs(uri) == before
    if step == "data_files":
        assert orphan_files(uri), "the kill was meant to land after data files were written"
    rerun = merge_batches(request)
    assert rerun.batches_applied == [2] and rerun.version == version + 1
    assert stored_docs(uri) == after and rerun.duplicate_keys == 0
    assert merge_batches(request).batches_applied == []
    if step == "data_files":  # vacuum removes what the killed merge left behind
        compact_table(compact_request(request, cold_after_hours=9999, vacuum_retention_hours=0))
        assert not orphan_files(uri)
        assert stored_docs(uri) == after


def test_merge_killed_after_its_log_entry_is_not_applied_twice(lake):
    zone, request = lake
    uri, _before, after = seed_and_publish_changes(zone, request)
    version = DeltaTable(uri).version()

    killed = run_killed(request.lake_uri, "after_commit")

    assert killed.returncode == -9, killed.stderr
    table = DeltaTable(uri)
    assert table.version() == version + 1 and table.transaction_version(APP) == 2
    assert stored_docs(uri) == after
    rerun = merge_batches(request)
    assert rerun.batches_applied == [] and rerun.version == version + 1
    assert stored_docs(uri) == after
