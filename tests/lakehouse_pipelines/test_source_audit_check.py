"""The ``source_audit`` asset and its ``lake_matches_source`` check in Dagster: through the local
Lambda runtime (the same invoke contract as AWS), per collection and over a range of collections,
and its schedule."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, build_schedule_context, instance_for_test
from deltalake import DeltaTable

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lakehouse_pipelines.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from lakehouse_pipelines.definitions import build_definitions
from lakehouse_pipelines.defs.cdc_capture.definitions import (
    LAKE_MATCHES_SOURCE,
    cdc_raw_batches,
    source_audit,
)
from lakehouse_pipelines.defs.merge.definitions import lake_table
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake import open_store
from lambda_functions.lake.record_key import record_key
from lambda_functions.merge import lake_table_location
from tests.lakehouse_pipelines.collection_runs import materialize_collections, register

ORDERS, CUSTOMERS = "shop.orders", "shop.customers"


@pytest.fixture
def settings(tmp_path: Path) -> LakehouseSettings:
    return LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_DEMO_CHANGES": "40"}
    )


@pytest.fixture
def resources(settings: LakehouseSettings) -> Iterator[dict[str, Any]]:
    resources = build_resources(settings)
    yield resources
    resources["lambda_pipes"].lambda_client.close()


def build_lake(settings, instance, resources, keys: Sequence[str]) -> None:
    """Capture (snapshot, then a stream batch) and merge, through the pipeline's own assets."""
    for _ in range(2):
        result = materialize_collections(
            [cdc_raw_batches, lake_table], settings, instance, list(keys), resources=resources
        )
        assert result.success


def audit(settings, instance, resources, keys: str | Sequence[str]):
    """Materialize ``source_audit`` for one collection (a partition) or a range of them; return
    the check evaluation and the materialization metadata by partition."""
    result = materialize_collections([source_audit], settings, instance, keys, resources=resources)
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == LAKE_MATCHES_SOURCE
    figures = {
        event.materialization.partition: {
            k: v.value for k, v in event.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }
    return evaluation, {k: v.value for k, v in evaluation.metadata.items()}, figures


def source_keys(settings: LakehouseSettings, namespace: str = ORDERS) -> list[str]:
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        return sorted(record_key(d["_id"]) for d in source.documents(*namespace.split(".")))


def event_count(settings: LakehouseSettings) -> dict[str, str]:
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        return source.current_position("shop", "orders")


def test_audit_passes_with_its_figures_and_does_not_change_the_source(settings, resources):
    instance = DagsterInstance.ephemeral()
    build_lake(settings, instance, resources, [ORDERS])
    position = event_count(settings)

    evaluation, metadata, figures = audit(settings, instance, resources, ORDERS)

    assert evaluation.passed, metadata
    assert figures[ORDERS]["source_count"] == metadata["source_count"]  # also materialized
    keys = source_keys(settings)
    assert metadata["status"] == "audited" and metadata["buckets_compared"] == 64
    assert metadata["source_count"] == metadata["lake_count"] == len(keys)
    assert metadata["sampled_rate"] == 1.0
    assert metadata["missing_count"] == metadata["extra_count"] == 0
    assert metadata["different_count"] == 0 and metadata["missing_keys"] == []
    assert metadata["duration_seconds"] > 0 and figures[ORDERS]["lambda/memory_size_mb"] == 2048
    assert event_count(settings) == position  # no demo workload: the audit only reads


def test_a_row_lost_from_the_lake_fails_the_check_naming_the_key(settings, resources):
    instance = DagsterInstance.ephemeral()
    build_lake(settings, instance, resources, [ORDERS])
    lost = source_keys(settings)[4]
    uri, options = lake_table_location(open_store(settings.lake_uri), "shop", "orders")
    DeltaTable(uri, storage_options=options).delete(predicate=f"_id = '{lost}'")

    evaluation, metadata, _ = audit(settings, instance, resources, ORDERS)

    assert not evaluation.passed and evaluation.severity.value == "ERROR"
    assert metadata["missing_count"] == 1 and metadata["missing_keys"] == [lost]
    assert metadata["lake_count"] == metadata["source_count"] - 1
    assert len(metadata["buckets_differing"]) == 1


def test_a_range_run_audits_each_collection_and_names_the_failing_one(settings, resources):
    instance = DagsterInstance.ephemeral()
    build_lake(settings, instance, resources, [CUSTOMERS, ORDERS])
    lost = source_keys(settings, CUSTOMERS)[0]
    uri, options = lake_table_location(open_store(settings.lake_uri), "shop", "customers")
    DeltaTable(uri, storage_options=options).delete(predicate=f"_id = '{lost}'")

    evaluation, metadata, figures = audit(settings, instance, resources, [CUSTOMERS, ORDERS])

    assert not evaluation.passed
    assert metadata["partitions_checked"] == 2 and metadata["failed_partitions"] == [CUSTOMERS]
    assert figures[CUSTOMERS]["missing_keys"] == [lost]
    assert figures[ORDERS]["status"] == "audited" and figures[ORDERS]["missing_count"] == 0


def test_a_collection_without_a_lake_table_is_a_warning_not_a_pass(settings, resources):
    instance = DagsterInstance.ephemeral()
    register(instance, [ORDERS])

    evaluation, metadata, _ = audit(settings, instance, resources, ORDERS)

    assert not evaluation.passed and evaluation.severity.value == "WARN"
    assert metadata["status"] == "no_lake_table"


def test_audit_schedule_exists_only_when_its_cron_is_set(tmp_path):
    off = build_definitions(LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)}))
    assert "source_audit_schedule" not in {s.name for s in off.schedules}

    on = build_definitions(
        LakehouseSettings.from_env(
            {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_AUDIT_CRON": "0 4 * * *"}
        )
    )
    schedule = on.resolve_schedule_def("source_audit_schedule")
    assert schedule.cron_schedule == "0 4 * * *" and schedule.job_name == "source_audit_job"
    with instance_for_test() as instance:
        register(instance, [CUSTOMERS, ORDERS])
        with build_schedule_context(instance=instance) as context:
            (request,) = schedule.evaluate_tick(context).run_requests
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == CUSTOMERS
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == ORDERS
