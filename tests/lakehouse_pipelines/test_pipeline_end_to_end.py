"""All four stages, through PipesLambdaClient and the local Lambda runtime, on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, Definitions, materialize

from lakehouse_pipelines.definitions import build_definitions
from lakehouse_pipelines.defs.cdc_capture.definitions import cdc_raw_batches
from lakehouse_pipelines.defs.merge.definitions import lake_table
from lakehouse_pipelines.defs.metrics.definitions import pipeline_metrics
from lakehouse_pipelines.defs.warehouse_load.definitions import warehouse_table
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.cdc_capture.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture.extended_json import decode_document, key_string

ASSETS = [cdc_raw_batches, lake_table, warehouse_table, pipeline_metrics]


def source_documents(settings: LakehouseSettings) -> dict:
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        docs = source.documents(settings.database, settings.collection)
    return {key_string(doc["_id"]): doc for doc in docs}


def warehouse_documents(settings: LakehouseSettings) -> dict:
    with duckdb.connect(settings.duckdb_path, read_only=True) as db:
        rows = db.execute(
            f'SELECT _id, doc::VARCHAR FROM "{settings.warehouse_schema}"."{settings.collection}"'
        ).fetchall()
    return {key: decode_document(doc) for key, doc in rows}


def run_pipeline(settings: LakehouseSettings, instance: DagsterInstance):
    resources = build_resources(settings)
    try:
        result = materialize(ASSETS, resources=resources, instance=instance)
    finally:
        resources["lambda_pipes"].lambda_client.close()
    assert result.success
    for check in result.get_asset_check_evaluations():
        assert check.passed, f"{check.check_name} failed: {check.metadata}"
    return {
        event.asset_key.to_user_string(): {
            k: v.value for k, v in event.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }


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
    assert metrics["load/Rows"] == len(source_documents(settings))
    assert metrics["capture/LambdaBilledDuration"] > 0


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
    assert keys == {"cdc_raw_batches", "lake_table", "warehouse_table", "pipeline_metrics"}
    assert defs.resolve_sensor_def("raw_batches_sensor")
    assert defs.resolve_schedule_def("cdc_capture_schedule")
