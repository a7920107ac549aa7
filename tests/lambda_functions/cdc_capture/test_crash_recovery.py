"""A capture killed at any step boundary loses nothing and duplicates nothing.

Every write a capture makes is a place it can die: a data file, the quarantine, the manifest, the
checkpoint. The first test injects the failure at each write of a whole scenario (snapshot in
chunks, then streamed changes) in turn, re-runs, and merges; the second really SIGKILLs a capture
process at the named boundaries. Both end with the merged Delta table equal to the source, with
no duplicate keys.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.contracts import CaptureRequest, MergeRequest
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore
from lambda_functions.lake.table_layout import live_rows
from lambda_functions.merge import lake_table_location, merge_batches
from tests.lambda_functions.cdc_capture.conftest import (
    HookedStore,
    InjectedCrash,
    source_state,
)

DB, COLL = "shop", "orders"
ROOT = Path(__file__).resolve().parents[3]


class CrashAtWrite(HookedStore):
    """Raises at the ``crash_at``-th write counted across every store sharing ``counter``."""

    def __init__(self, root: Path, counter: Counter, crash_at: int | None):
        super().__init__(root)
        self.counter, self.crash_at = counter, crash_at

    def before_write(self, key: str) -> None:
        self.counter["writes"] += 1
        if self.counter["writes"] == self.crash_at:
            raise InjectedCrash(f"killed before writing {key}")


def merged_table(lake: Path) -> dict[str, str]:
    """Merge every published batch and read the Delta table back; fails on duplicate keys."""
    merge_batches(MergeRequest(lake_uri=str(lake), database=DB, collection=COLL))
    uri, options = lake_table_location(LocalObjectStore(lake), DB, COLL)
    table = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["_id", "doc", "_op"])
    ids = table.column("_id").to_pylist()
    assert len(ids) == len(set(ids)), (
        "duplicate keys in the merged table"
    )  # one row per key, tombstones included
    live = live_rows(table)  # tombstones are deleted documents, not data
    return dict(zip(live.column("_id").to_pylist(), live.column("doc").to_pylist(), strict=True))


def snapshot_keys_once_per_generation(lake: Path) -> bool:
    zone = RawZone(LocalObjectStore(lake), DB, COLL)
    seen: Counter[str] = Counter()
    for manifest in zone.manifests():
        if manifest.extra.get("dropped"):
            seen.clear()
        rows = zone.read_batch(manifest).to_pylist()
        seen.update(r["_id"] for r in rows if r["op"] == "snapshot")
    return all(count == 1 for count in seen.values())


def run_scenario(tmp_path: Path, crash_at: int | None) -> tuple[int, bool]:
    """Snapshot 90 documents in chunks of 25, then two rounds of changes, merging midway; the
    capture that crashes is simply run again. Returns (writes made, whether a crash happened)."""
    lake = tmp_path / "lake"
    request = CaptureRequest(lake_uri=str(lake), database=DB, collection=COLL, max_rows=25)
    counter: Counter[str] = Counter()
    crashed = False
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        workload = DemoWorkload(source, initial_documents=90)
        workload.run(0)
        for changes in (0, 40, 30):
            workload.run(changes)
            while True:
                try:
                    result = capture_changes(
                        request, source=source, store=CrashAtWrite(lake, counter, crash_at)
                    )
                except InjectedCrash:
                    crashed = True
                    continue  # the next invocation picks up where the dead one stopped
                if result.stopped_by == "drained":
                    break
            if changes == 40:
                merged_table(lake)  # a merge between captures must not matter
        assert merged_table(lake) == source_state(source)
    assert snapshot_keys_once_per_generation(lake)
    return counter["writes"], crashed


def test_a_crash_at_every_write_of_a_snapshot_and_stream_loses_and_duplicates_nothing(tmp_path):
    writes, crashed = run_scenario(tmp_path / "clean", None)
    assert not crashed and writes >= 20

    for crash_at in range(1, writes + 1):
        _, crashed = run_scenario(tmp_path / f"crash-{crash_at}", crash_at)
        assert crashed, f"write {crash_at} was never reached"


@pytest.mark.parametrize(
    ("kind", "occurrence", "boundary"),
    [
        ("data", 1, "before the first data file: nothing of the batch exists"),
        ("manifest", 1, "after the data files, before the manifest"),
        ("checkpoint", 1, "after the manifest, before the checkpoint"),
        ("data", 3, "mid-snapshot: two chunks published, the third being written"),
        ("checkpoint", 3, "mid-snapshot, after the third chunk's manifest"),
    ],
)
def test_a_capture_process_killed_at_a_step_boundary_is_resumed_by_the_next_run(
    tmp_path, kind, occurrence, boundary
):
    lake = tmp_path / "lake"
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        DemoWorkload(source, initial_documents=90).run(0)
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.lambda_functions.cdc_capture.kill_capture",
            str(tmp_path / "source.db"),
            str(lake),
            "25",
            kind,
            str(occurrence),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, f"{boundary}: {killed.stderr}"

    request = CaptureRequest(lake_uri=str(lake), database=DB, collection=COLL, max_rows=25)
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        while capture_changes(request, source=source).stopped_by != "drained":
            pass
        DemoWorkload(source, initial_documents=90).run(40)
        while capture_changes(request, source=source).stopped_by != "drained":
            pass
        assert merged_table(lake) == source_state(source), boundary
    assert snapshot_keys_once_per_generation(lake), boundary
