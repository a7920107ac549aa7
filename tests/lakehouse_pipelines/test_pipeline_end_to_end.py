"""All four stages, through PipesLambdaClient and the local Lambda runtime, on embedded defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, Definitions

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lakehouse_pipelines.definitions import build_definitions
from lakehouse_pipelines.defs.cdc_capture.definitions import cdc_raw_batches
from lakehouse_pipelines.defs.merge.definitions import (
    MAINTENANCE_KEY,
    lake_table,
    lake_table_maintenance,
)
from lakehouse_pipelines.defs.metrics.definitions import pipeline_metrics
from lakehouse_pipelines.defs.warehouse_load.definitions import warehouse_table
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake.extended_json import decode_document
from lambda_functions.lake.record_key import record_key
from tests.lakehouse_pipelines.collection_runs import materialize_collections, metadata_by_asset

ASSETS = [cdc_raw_batches, lake_table, warehouse_table, pipeline_metrics]
ORDERS = "shop.orders"


def source_documents(settings: LakehouseSettings, namespace: str = ORDERS) -> dict:
    database, collection = namespace.split(".")
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        docs = source.documents(database, collection)
    return {record_key(doc["_id"]): doc for doc in docs}


def warehouse_documents(settings: LakehouseSettings, namespace: str = ORDERS) -> dict:
    table = namespace.split(".")[1]
    with duckdb.connect(settings.duckdb_path, read_only=True) as db:
        rows = db.execute(
            f'SELECT _id, doc::VARCHAR FROM "{settings.warehouse_schema}"."{table}"'
        ).fetchall()
    return {key: decode_document(doc) for key, doc in rows}


def run_pipeline(
    settings: LakehouseSettings, instance: DagsterInstance, keys: str | list[str] = ORDERS
):
    result = materialize_collections(ASSETS, settings, instance, keys)
    assert result.success
    for check in result.get_asset_check_evaluations():
        assert check.passed, f"{check.check_name} failed: {check.metadata}"
    return metadata_by_asset(result)


@pytest.fixture
def settings(tmp_path: Path) -> LakehouseSettings:
    return LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_DEMO_CHANGES": "150"}
    )


def test_warehouse_equals_the_source_across_inserts_updates_deletes_and_reruns(settings):
    instance = DagsterInstance.ephemeral()
    first = run_pipeline(settings, instance)
    assert first["cdc_raw_batches"]["batch"] == 1
    assert first["warehouse_table"]["load_reason"] == "first load"
    assert warehouse_documents(settings) == source_documents(settings)

    second = run_pipeline(settings, instance)
    capture = second["cdc_raw_batches"]
    assert capture["batch"] == 2 and capture["phase"] == "stream"
    assert set(capture["rows_by_op"]) >= {"insert", "update", "delete"}
    load = second["warehouse_table"]
    assert load["load_reason"] == "incremental"
    assert load["rows_staged"] < load["dagster/row_count"]  # only the changes travelled
    assert second["lake_table"]["table_version"] == first["lake_table"]["table_version"] + 1
    assert warehouse_documents(settings) == source_documents(settings)

    third = run_pipeline(settings, instance)
    assert third["cdc_raw_batches"]["batch"] == 3
    assert warehouse_documents(settings) == source_documents(settings)

    metrics = third["pipeline_metrics"]
    assert metrics["QueuedRuns"] == 0.0
    assert metrics["shop.orders/load/Rows"] == len(source_documents(settings))
    assert metrics["shop.orders/capture/LambdaBilledDuration"] > 0


def test_one_run_over_every_collection_keeps_each_warehouse_table_equal_to_its_source(settings):
    instance = DagsterInstance.ephemeral()
    collections = ["shop.customers", ORDERS]  # the defaults, in registration order
    for _ in range(2):
        metadata = run_pipeline(settings, instance, collections)
        for namespace in collections:
            assert metadata[f"lake_table[{namespace}]"]["batches_applied"] == 1
            assert warehouse_documents(settings, namespace) == source_documents(settings, namespace)
    assert source_documents(settings, "shop.customers") != source_documents(settings)
    metrics = metadata["pipeline_metrics"]
    for namespace in collections:
        assert metrics[f"{namespace}/load/Rows"] == len(source_documents(settings, namespace))


def test_a_run_with_no_new_changes_applies_nothing(settings, tmp_path):
    instance = DagsterInstance.ephemeral()
    run_pipeline(settings, instance)
    quiet = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_DEMO_CHANGES": "0"}
    )
    again = run_pipeline(quiet, instance)
    assert again["cdc_raw_batches"]["dagster/row_count"] == 0
    assert again["lake_table"]["batches_applied"] == 0
    assert again["warehouse_table"]["load_reason"] == "up to date"
    assert warehouse_documents(quiet) == source_documents(quiet)


def test_definitions_load_with_default_settings():
    defs = build_definitions()
    Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "cdc_raw_batches",
        "lake_table",
        "lake_table_maintenance",
        "source_audit",
        "warehouse_table",
        "pipeline_metrics",
    }
    for sensor in ("collections_sensor", "raw_batches_sensor", "pipeline_metrics_sensor"):
        assert defs.resolve_sensor_def(sensor)
    for schedule in ("cdc_capture_schedule", "lake_maintenance_schedule"):
        assert defs.resolve_schedule_def(schedule)
    assert defs.resolve_job_def("register_collections")
    assert defs.resolve_job_def("source_audit_job")


def test_maintenance_runs_in_lambda_and_leaves_the_incremental_load_intact(settings):
    """Maintenance through Dagster and the Lambda contract. Copy-on-write merges keep one file per
    small partition, so on the demo table it finds nothing to compact (compaction itself is
    tested on fragmented tables in tests/lambda_functions/merge/test_maintenance.py) and, with
    files minutes old, nothing to vacuum: it must then commit nothing."""
    instance = DagsterInstance.ephemeral()
    for _ in range(2):
        before = run_pipeline(settings, instance)

    everything_cold = {"ops": {MAINTENANCE_KEY: {"config": {"cold_after_hours": 0}}}}
    result = materialize_collections(
        [lake_table_maintenance], settings, instance, ORDERS, everything_cold
    )
    assert result.success
    done = metadata_by_asset(result)[MAINTENANCE_KEY]
    assert done["files_in_table"] == before["lake_table"]["files_in_table"]
    assert done["hot_partitions"] == 0  # cold_after_hours=0 reached the asset's request
    assert (done["partitions_compacted"], done["files_vacuumed"]) == (0, 0)
    assert done["table_version"] == before["lake_table"]["table_version"]  # no empty commit

    after = run_pipeline(settings, instance)
    assert after["warehouse_table"]["load_reason"] == "incremental"
    assert after["lake_table"]["table_version"] == done["table_version"] + 1
    assert warehouse_documents(settings) == source_documents(settings)


def test_a_merge_that_finds_the_lake_removed_fails_and_records_nothing(settings):
    """Issue 12: with the lake removed mid-run the merge step succeeded with table_version -1
    and 0 rows, its check green; now the step fails naming the fix, records no
    materialization and no passing check, and the load is not run."""
    instance = DagsterInstance.ephemeral()
    run_pipeline(settings, instance)
    shutil.rmtree(Path(settings.lake_uri))
    result = materialize_collections([lake_table, warehouse_table], settings, instance, ORDERS)
    assert not result.success
    assert not result.asset_materializations_for_node("lake_table")
    assert not [c for c in result.get_asset_check_evaluations() if c.passed]
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "there is no lake table" in str(failure.event_specific_data.error)
    assert "materialize cdc_raw_batches" in str(failure.event_specific_data.error)
