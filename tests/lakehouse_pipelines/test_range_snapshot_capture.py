"""cdc_raw_batches with LAKEHOUSE_SNAPSHOT_RANGES > 1: the initial load fans out over ``_id``
ranges (one local Lambda invocation per range, bounded), published as one generation; the plan
and documents per range show in the materialization's metadata."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from bson import ObjectId
from dagster import DagsterInstance

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lakehouse_pipelines.defs.cdc_capture.definitions import cdc_raw_batches
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore
from tests.lakehouse_pipelines.collection_runs import materialize_collections

DOCUMENTS = 6_000
COLLECTIONS = ["shop.customers", "shop.orders"]


@pytest.fixture
def settings(tmp_path: Path) -> LakehouseSettings:
    settings = LakehouseSettings.from_env(
        {
            "LAKEHOUSE_ROOT": str(tmp_path),
            "LAKEHOUSE_DEMO_CHANGES": "0",
            "LAKEHOUSE_SNAPSHOT_RANGES": "4",
            "LAKEHOUSE_FANOUT_CONCURRENCY": "2",
        }
    )
    Path(settings.source_location).parent.mkdir(parents=True, exist_ok=True)
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        for namespace in COLLECTIONS:
            database, collection = namespace.split(".")
            source.enable_change_streams(database, collection)
            with source.bulk():
                source.insert_many(
                    database,
                    collection,
                    [{"_id": ObjectId(), "n": i} for i in range(DOCUMENTS - 100)]
                    + [{"_id": i, "n": i} for i in range(100)],
                )
    return settings


class InFlight:
    """Counts the capture invocations running at once (wraps ``LambdaPipes.run``)."""

    def __init__(self, run):
        self.run, self.now, self.most = run, 0, 0
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self.run(*args)
        finally:
            with self.lock:
                self.now -= 1


def test_initial_load_fans_out_over_ranges_and_publishes_one_generation(settings):
    instance = DagsterInstance.ephemeral()
    resources = build_resources(settings)
    lambda_pipes = resources["lambda_pipes"]
    lambda_pipes.run = in_flight = InFlight(lambda_pipes.run)

    try:
        result = materialize_collections(
            [cdc_raw_batches], settings, instance, COLLECTIONS, resources=resources
        )
    finally:
        lambda_pipes.lambda_client.close()

    assert result.success
    # two collections of 4 ranges each: never more than LAKEHOUSE_FANOUT_CONCURRENCY at once
    assert in_flight.most == settings.fanout_concurrency == 2
    events = result.get_asset_materialization_events()
    assert sorted(e.partition for e in events) == COLLECTIONS
    for event in events:
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
        assert metadata["range_count"] == 4 and len(metadata["range_plan"]) == 4
        assert metadata["range_method"] == "embedded_split_keys"
        assert sum(metadata["range_documents"]) == DOCUMENTS
        assert metadata["range_complete"] == [True] * 4
        assert metadata["range_invocations"] == 6  # plan, 4 ranges, publish
        assert metadata["dagster/row_count"] == DOCUMENTS
        assert metadata["phase"] == "stream"
        database, collection = event.partition.split(".")
        zone = RawZone(LocalObjectStore(settings.lake_uri), database, collection)
        (manifest,) = zone.manifests()
        assert manifest.rows == DOCUMENTS and len(manifest.extra["ranges"]) == 4
        assert metadata["batches"] == [manifest.batch]  # the generation this step published
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"batch_verified": True, "cdc_lag": True}
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("snapshot in 4 ranges" in line for line in logs)
    assert any("range 4/4" in line for line in logs)

    # afterwards the collection streams: no new plan, one ordinary capture
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        source.insert_one("shop", "orders", {"_id": ObjectId(), "late": True})
    again = materialize_collections([cdc_raw_batches], settings, instance, "shop.orders")
    (event,) = again.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert "range_plan" not in metadata and metadata["dagster/row_count"] == 1


def test_a_failed_range_fails_the_step_and_the_next_run_invokes_only_it(settings):
    instance = DagsterInstance.ephemeral()
    resources = build_resources(settings)
    lambda_pipes = resources["lambda_pipes"]
    real_run = lambda_pipes.run

    def range_two_dies(context, spec, request):
        if request.snapshot_range and request.snapshot_range["index"] == 2:
            raise RuntimeError("the range's execution environment was lost")
        return real_run(context, spec, request)

    lambda_pipes.run = range_two_dies
    try:
        failed = materialize_collections(
            [cdc_raw_batches], settings, instance, "shop.orders", resources=resources
        )
        zone = RawZone(LocalObjectStore(settings.lake_uri), "shop", "orders")
        assert not failed.success and list(zone.manifests()) == []  # nothing half published

        lambda_pipes.run = in_flight = InFlight(real_run)
        again = materialize_collections(
            [cdc_raw_batches], settings, instance, "shop.orders", resources=resources
        )
    finally:
        lambda_pipes.lambda_client.close()

    assert again.success
    (event,) = again.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["range_invocations"] == 3  # the plan call, range 2 alone, the publish call
    assert sum(metadata["range_documents"]) == DOCUMENTS == metadata["dagster/row_count"]
    (manifest,) = zone.manifests()
    assert manifest.rows == DOCUMENTS
    assert in_flight.most == 1
