"""Issue 6's acceptance: 20 collections, one backfill run materializes all 20 partitions of every
stage, with at most LAKEHOUSE_FANOUT_CONCURRENCY Lambda invocations in flight, and the metrics
asset reports each collection's figures."""

from __future__ import annotations

import duckdb
import pytest
from dagster import DagsterInstance

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lakehouse_pipelines.defs.cdc_capture.definitions import cdc_raw_batches
from lakehouse_pipelines.defs.collections import discover_collections
from lakehouse_pipelines.defs.merge.definitions import lake_table
from lakehouse_pipelines.defs.metrics.definitions import pipeline_metrics
from lakehouse_pipelines.defs.warehouse_load.definitions import warehouse_table
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.settings import LakehouseSettings
from tests.lakehouse_pipelines.collection_runs import materialize_collections, metadata_by_asset
from tests.lakehouse_pipelines.test_lambda_fan_out import CountingClient

FANOUT = 3
COLLECTIONS = [f"shop.c{i:02d}" for i in range(20)]


@pytest.mark.timeout(600)
def test_one_backfill_run_materializes_20_collections_with_bounded_invocations(tmp_path):
    settings = LakehouseSettings.from_env(
        {
            "LAKEHOUSE_ROOT": str(tmp_path),
            "LAKEHOUSE_COLLECTIONS": ",".join(COLLECTIONS),
            "LAKEHOUSE_DEMO_CHANGES": "20",
            "LAKEHOUSE_FANOUT_CONCURRENCY": str(FANOUT),
        }
    )
    # The demo workload invents documents for the demo collections only: these 20 are created
    # as an application would (seeded, change streams on) before the backfill captures them.
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        for namespace in COLLECTIONS:
            DemoWorkload(source, *namespace.split("."), initial_documents=20).run(0)
    keys = discover_collections(settings)
    assert keys == COLLECTIONS
    resources = build_resources(settings)
    runtime = resources["lambda_pipes"].lambda_client
    counting = resources["lambda_pipes"].lambda_client = CountingClient(runtime)
    instance = DagsterInstance.ephemeral()
    try:
        result = materialize_collections(
            [cdc_raw_batches, lake_table, warehouse_table, pipeline_metrics],
            settings,
            instance,
            keys,
            resources=resources,
        )
    finally:
        runtime.close()

    assert result.success
    assert len(instance.get_runs()) == 1  # one run for the whole backfill
    assert counting.calls == 3 * len(keys)  # capture, merge, load: once per collection each
    assert 1 < counting.peak <= FANOUT
    metadata = metadata_by_asset(result)
    for stage in ("cdc_raw_batches", "lake_table", "warehouse_table"):
        assert all(f"{stage}[{key}]" in metadata for key in keys), stage
    checks = result.get_asset_check_evaluations()
    assert all(check.passed for check in checks)
    for check in checks:
        if check.asset_key.to_user_string() != "pipeline_metrics":  # combined over collections
            assert check.metadata["partitions_checked"].value == len(keys), check.check_name

    with EmbeddedChangeStreamSource(settings.source_location) as source:
        counts = {key: source.count_documents("shop", key.split(".")[1]) for key in keys}
    with duckdb.connect(settings.duckdb_path, read_only=True) as db:
        for key in keys:
            table = key.split(".")[1]
            loaded = db.execute(f"SELECT count(*) FROM analytics.{table}").fetchone()[0]
            assert loaded == counts[key] == metadata[f"warehouse_table[{key}]"]["dagster/row_count"]

    figures = metadata["pipeline_metrics"]
    assert figures["RunningRuns"] == 1 and figures["QueuedRuns"] == 0  # this run
    for key in keys:
        assert (
            figures[f"{key}/capture/Rows"]
            == metadata[f"cdc_raw_batches[{key}]"]["dagster/row_count"]
        )
        assert figures[f"{key}/load/Rows"] == counts[key]
        assert figures[f"{key}/merge/LambdaBilledDuration"] > 0
        assert figures[f"{key}/load/LambdaEstimatedCost"] > 0
