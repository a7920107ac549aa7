"""A parallel range snapshot equals the single-worker snapshot, survives a killed range, and the
stream continues from the position recorded before the plan (nothing missed, nothing doubled).

100,000 documents with ``_id``s of many BSON types (``range_runs.mixed_documents``), 8 ranges
(``benchmarks/scale.py`` runs 1,000,000).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from bson import ObjectId

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.range_plan import bson_order_key
from lambda_functions.cdc_capture.range_snapshot import (
    advance_range_snapshot,
    capture_range,
    read_progress,
)
from lambda_functions.contracts import CaptureRequest, MergeRequest
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.lake.store import LocalObjectStore
from lambda_functions.merge import lake_table_location, merge_batches
from tests.lambda_functions.cdc_capture.conftest import batch_rows, reconstruct, source_state
from tests.lambda_functions.cdc_capture.range_runs import (
    mixed_documents,
    range_request,
    run_all_ranges,
)
from tests.lambda_functions.merge.tables import stored_docs

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = 100_000
RANGES = 8


@pytest.fixture(scope="module")
def built_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("range_source") / "source.db"
    with EmbeddedChangeStreamSource(path) as source:
        source.enable_change_streams("shop", "orders")
        with source.bulk():
            source.insert_many("shop", "orders", mixed_documents(DOCUMENTS))
    return path


@pytest.fixture
def source_path(built_source: Path, tmp_path: Path) -> Path:
    path = tmp_path / "source.db"
    shutil.copy(built_source, path)
    return path


@pytest.fixture
def source(source_path: Path) -> Iterator[EmbeddedChangeStreamSource]:
    with EmbeddedChangeStreamSource(source_path) as opened:
        yield opened


def request_for(source_path: Path, lake: Path, **overrides) -> CaptureRequest:
    fields = {
        "lake_uri": str(lake),
        "database": "shop",
        "collection": "orders",
        "source_location": str(source_path),
        "max_rows": 5_000,
    }
    return CaptureRequest(**(fields | overrides))


def snapshot_rows(lake: Path) -> list[tuple[str, str]]:
    return [
        (r["_id"], r["doc"]) for r in batch_rows(LocalObjectStore(lake)) if r["op"] == "snapshot"
    ]


def single_worker_snapshot(source, source_path: Path, lake: Path) -> None:
    request = request_for(source_path, lake)
    while capture_changes(request, source=source).phase != "stream":
        pass


def test_eight_ranges_equal_the_single_worker_snapshot(source, source_path, tmp_path):
    single_worker_snapshot(source, source_path, tmp_path / "single")
    request = request_for(source_path, tmp_path / "ranges", snapshot_ranges=RANGES)

    status = run_all_ranges(request, source)

    assert status.step == "published" and len(status.plan.ranges) == RANGES
    single, parallel = snapshot_rows(tmp_path / "single"), snapshot_rows(tmp_path / "ranges")
    assert len(parallel) == len(set(parallel)) == DOCUMENTS  # nothing doubled
    assert sorted(parallel) == sorted(single)  # same keys, same documents
    # one generation: one manifest, every range listed, every range did a share of the work
    manifests = list(RawZone(LocalObjectStore(tmp_path / "ranges"), "shop", "orders").manifests())
    assert [m.batch for m in manifests] == [1]
    ranges = manifests[0].extra["ranges"]
    assert [r["index"] for r in ranges] == list(range(RANGES))
    assert sum(r["documents"] for r in ranges) == DOCUMENTS
    assert min(r["documents"] for r in ranges) > DOCUMENTS // (2 * RANGES)
    assert manifests[0].state["phase"] == "stream"


def test_ranges_cover_every_bson_type_once(source, source_path, tmp_path):
    request = request_for(source_path, tmp_path / "lake", snapshot_ranges=RANGES)
    status = advance_range_snapshot(request, source=source)
    bounds = [r.lower_id() for r in status.plan.ranges[1:]]
    brackets = {bson_order_key(b)[0] for b in bounds}
    assert len(brackets) >= 2, "the boundaries should fall in several type brackets"
    found = Counter()
    for document in source.documents("shop", "orders"):
        holding = [r.index for r in status.plan.ranges if r.holds(document["_id"])]
        assert len(holding) == 1, document["_id"]
        found[type(document["_id"]).__name__] += 1
    assert {"ObjectId", "int", "Int64", "float", "Decimal128", "str", "datetime", "dict"} <= set(
        found
    )


def test_killed_range_resumes_without_doubling(source, source_path, tmp_path):
    lake = tmp_path / "lake"
    request = request_for(source_path, lake, snapshot_ranges=RANGES, max_rows=2_000)
    status = advance_range_snapshot(request, source=source)
    victim = 3
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.lambda_functions.cdc_capture.range_runs",
            str(source_path),
            str(lake),
            status.plan.generation,
            str(victim),
            str(RANGES),
            "3",  # dies before the 3rd progress write: page 3 is written, its progress is not
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr.decode()
    zone = RawZone(LocalObjectStore(lake), "shop", "orders")
    half = read_progress(zone, status.plan.generation, victim)
    assert not half.complete and len(half.pages) == 2
    assert advance_range_snapshot(request, source=source).step == "in_progress"  # nothing public
    assert list(zone.manifests()) == []

    final = run_all_ranges(request, source)

    assert final.step == "published"
    rows = snapshot_rows(lake)
    assert len(rows) == len(set(rows)) == DOCUMENTS
    assert {k for k, _ in rows} == set(source_state(source))
    resumed = read_progress(zone, status.plan.generation, victim)
    assert resumed.complete and resumed.documents == final.progress[victim].documents
    pages = [p["key"] for p in resumed.pages]
    assert len(pages) == len(set(pages))  # page 3 rewritten at its key, not added again


def test_stream_continues_from_the_recorded_position(source, source_path, tmp_path):
    lake = tmp_path / "lake"
    request = request_for(source_path, lake, snapshot_ranges=RANGES)
    status = advance_range_snapshot(request, source=source)  # the position is recorded here
    ids = [d["_id"] for d in source.documents("shop", "orders", limit=40_000)][::1000]
    changed = 0
    for number, chosen in enumerate(status.unfinished):
        # the application keeps writing while the ranges are read: in ranges already read,
        # in the one about to be read, and in ranges still to come
        _id = ids[number * 4 % len(ids)]
        source.update_one("shop", "orders", {"_id": _id}, {"$set": {"during": number}})
        source.delete_one("shop", "orders", {"_id": ids[(number * 4 + 1) % len(ids)]})
        source.insert_one("shop", "orders", {"_id": ObjectId(), "new": number})
        source.insert_one("shop", "orders", {"_id": f"key-new-{number}", "new": number})
        changed += 4
        capture_range(range_request(request, status, chosen.index), source=source)
    source.update_one("shop", "orders", {"_id": ids[-1]}, {"$set": {"after": True}})

    published = advance_range_snapshot(request, source=source)
    streamed = capture_changes(request, source=source)

    assert published.step == "published" and streamed.phase == "stream"
    assert streamed.rows == changed + 1  # every change since the position, once
    store = LocalObjectStore(lake)
    assert reconstruct(store) == source_state(source)
    # and through the merge: the lake table holds the source exactly
    merge_batches(MergeRequest(lake_uri=str(lake), database="shop", collection="orders"))
    uri, options = lake_table_location(store, "shop", "orders")
    assert stored_docs(uri, options) == source_state(source)


def test_reset_publishes_the_marker_then_one_generation(source, source_path, tmp_path):
    lake = tmp_path / "lake"
    single_worker_snapshot(source, source_path, lake)
    request = request_for(source_path, lake, snapshot_ranges=4)
    status = advance_range_snapshot(request, source=source, reset=True)
    assert status.step == "in_progress"
    final = run_all_ranges(request, source)
    zone = RawZone(LocalObjectStore(lake), "shop", "orders")
    manifests = list(zone.manifests())
    marker, generation = manifests[-2], manifests[-1]
    assert marker.extra["dropped"] and marker.extra["reason"] == "reset"
    assert (
        generation.batch == final.batch and generation.extra["generation"] == status.plan.generation
    )
    assert generation.min_pos == marker.extra["generation_pos"] == status.plan.start_pos
    assert reconstruct(zone.store) == source_state(source)
    assert {record_key(d["_id"]) for d in source.documents("shop", "orders")} == set(
        reconstruct(zone.store)
    )


def test_ranges_mask_as_the_single_worker_snapshot_does(source, source_path, tmp_path, monkeypatch):
    """PII masking at the edge holds for a range snapshot too: the same masked documents as a
    single-worker snapshot under the same rules (HMAC-SHA256 is deterministic per key), no clear
    value in any raw-zone object, and the rules' fingerprint in the manifest and the state."""
    monkeypatch.setenv("LAKEHOUSE_MASKING_KEY", "k" * 32)
    rules = {"drop": ["tags"], "hash": ["name"]}
    single = request_for(source_path, tmp_path / "single", masking=rules)
    while capture_changes(single, source=source).phase != "stream":
        pass
    request = request_for(source_path, tmp_path / "ranges", snapshot_ranges=4, masking=rules)

    assert run_all_ranges(request, source).step == "published"

    assert sorted(snapshot_rows(tmp_path / "ranges")) == sorted(snapshot_rows(tmp_path / "single"))
    documents = [doc for _, doc in snapshot_rows(tmp_path / "ranges")]
    assert len(documents) == DOCUMENTS
    assert not any("doc 4242" in doc or '"tags"' in doc for doc in documents)  # none in clear
    assert all('"name" : "hmac-sha256:' in doc for doc in documents)  # canonical extended JSON
    (manifest,) = RawZone(LocalObjectStore(tmp_path / "ranges"), "shop", "orders").manifests()
    assert manifest.extra["masking"]["hash"] == ["name"]
    assert manifest.state["masking_fingerprint"] == manifest.extra["masking"]["rules_fingerprint"]
