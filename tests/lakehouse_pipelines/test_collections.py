"""Collections as dynamic partitions: discovery, the registering sensor and job, and schedules
that cover every registered collection in one run."""

import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lakehouse_local.lambda_runtime import LocalLambdaRuntime
from lakehouse_pipelines.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from lakehouse_pipelines.definitions import build_definitions
from lakehouse_pipelines.defs.collections import (
    DiscoveryError,
    collections_sensor,
    discover,
    discover_collections,
    registered_collections,
)
from lakehouse_pipelines.defs.warehouse_load.definitions import load_request
from lakehouse_pipelines.resources import LambdaPipes, build_resources, local_function_values
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake import RawZone, open_store
from tests.lambda_functions.cdc_capture.mock_documentdb import embedded_backed_server
from tests.lambda_functions.raw_batches import JAN, key, publish


def settings_for(tmp_path, collections: str) -> LakehouseSettings:
    return LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_COLLECTIONS": collections}
    )


def test_discovery_unions_configured_names_source_listing_and_raw_zone(tmp_path):
    settings = settings_for(tmp_path, "shop.orders,crm.*")
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        for name in ("leads", "accounts"):
            DemoWorkload(source, "crm", name, initial_documents=3).run(1)
        DemoWorkload(source, "other", "ignored", initial_documents=3).run(1)
    publish(
        RawZone(open_store(settings.lake_uri), "dms", "invoices"),
        [(key(JAN, 1), "insert", 1, "{}")],
    )

    assert discover_collections(settings) == [
        "crm.accounts",
        "crm.leads",
        "dms.invoices",
        "shop.orders",
    ]


def test_the_sensor_registers_new_collections_once(tmp_path):
    settings = settings_for(tmp_path, "shop.orders,shop.customers")
    instance = DagsterInstance.ephemeral()

    def tick():
        context = build_sensor_context(instance=instance, resources=build_resources(settings))
        result = collections_sensor(context)
        if isinstance(result, SkipReason):
            return None
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        return list(result.dynamic_partitions_requests[0].partition_keys)

    assert tick() == ["shop.customers", "shop.orders"]
    assert tick() is None  # nothing new
    publish(
        RawZone(open_store(settings.lake_uri), "shop", "returns"),
        [(key(JAN, 1), "insert", 1, "{}")],
    )
    assert tick() == ["shop.returns"]
    assert registered_collections(instance) == ["shop.customers", "shop.orders", "shop.returns"]


def test_the_register_job_registers_what_the_sensor_would(tmp_path):
    settings = settings_for(tmp_path, "shop.orders,shop.customers")
    defs = build_definitions(settings)
    instance = DagsterInstance.ephemeral()
    job = defs.resolve_job_def("register_collections")
    assert job.execute_in_process(instance=instance).success
    assert job.execute_in_process(instance=instance).success  # again: nothing added twice
    assert registered_collections(instance) == ["shop.customers", "shop.orders"]


def test_a_misspelt_collection_is_reported_at_registration_with_the_closest_names(tmp_path):
    """Issue 12: LAKEHOUSE_COLLECTIONS=shop.ordrs was accepted silently."""
    settings = settings_for(tmp_path, "shop.orders,shop.ordrs,shop.customers")
    assert discover(settings).unknown == [
        "LAKEHOUSE_COLLECTIONS names shop.ordrs, which the source does not have (closest: "
        "shop.orders); its capture will fail until the name is fixed or the collection exists"
    ]
    defs = build_definitions(settings)
    result = defs.resolve_job_def("register_collections").execute_in_process(
        instance=DagsterInstance.ephemeral()
    )
    assert result.success  # registered all the same: its capture fails, naming the fix
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    (reported,) = output.event_specific_data.metadata["not_in_source"].value
    assert "shop.ordrs" in reported and "closest: shop.orders" in reported


def test_a_collection_the_source_has_raises_no_warning(tmp_path):
    settings = settings_for(tmp_path, "shop.orders,crm.leads")
    with EmbeddedChangeStreamSource(settings.source_location) as source:
        DemoWorkload(source, "crm", "leads", initial_documents=2).run(0)
    assert discover(settings).unknown == []


def test_a_schedule_tick_is_one_run_over_every_registered_collection(tmp_path):
    """Without collections a tick skips; with 20, it is one run over the range of all 20."""
    settings = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_MERGE_CRON": "*/30 * * * *"}
    )
    defs = build_definitions(settings)
    with instance_for_test() as instance:
        check_schedules(defs, instance)


def check_schedules(defs, instance):
    for name in ("cdc_capture_schedule", "merge_and_load_schedule", "lake_maintenance_schedule"):
        schedule = defs.resolve_schedule_def(name)
        with build_schedule_context(instance=instance) as context:
            tick = schedule.evaluate_tick(context)
        assert not tick.run_requests and "no collection is registered" in tick.skip_message

    instance.add_dynamic_partitions("collections", [f"db.c{i:02d}" for i in range(20)])
    schedule = defs.resolve_schedule_def("cdc_capture_schedule")
    with build_schedule_context(instance=instance) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert isinstance(request, RunRequest)
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == "db.c00"
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == "db.c19"


def test_a_collection_whose_warehouse_table_name_is_taken_is_withheld_with_the_fix(tmp_path):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("collections", ["shop.orders"])  # loads into "orders"
    settings = settings_for(tmp_path, "shop.orders,legacy.orders,shop.customers")
    context = build_sensor_context(instance=instance, resources=build_resources(settings))
    result = collections_sensor(context)
    (request,) = result.dynamic_partitions_requests
    assert list(request.partition_keys) == ["shop.customers"]  # legacy.orders is withheld

    named = LakehouseSettings.from_env(
        {
            "LAKEHOUSE_ROOT": str(tmp_path),
            "LAKEHOUSE_COLLECTIONS": "shop.orders,legacy.orders",
            "LAKEHOUSE_WAREHOUSE_TABLE_NAMES": "database_collection",
        }
    )
    job = build_definitions(named).resolve_job_def("register_collections")
    assert job.execute_in_process(instance=instance).success
    assert registered_collections(instance) == ["shop.orders", "legacy.orders"]  # added order
    request = load_request(named, "legacy.orders")
    assert (request.collection, request.table_name) == ("orders", "legacy_orders")


def test_the_register_job_names_a_withheld_collection_and_the_setting_to_change(tmp_path):
    settings = settings_for(tmp_path, "shop.orders,legacy.orders")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("collections", ["shop.orders"])
    result = (
        build_definitions(settings)
        .resolve_job_def("register_collections")
        .execute_in_process(instance=instance)
    )
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    (withheld,) = event.event_specific_data.metadata["withheld"].value
    assert "legacy.orders is not registered" in withheld
    assert "LAKEHOUSE_WAREHOUSE_TABLE_NAMES=database_collection" in withheld


def test_a_database_pattern_lists_documentdb_collections_over_the_wire(tmp_path, monkeypatch):
    """``crm.*`` against DocumentDB: pymongo's listCollections; system collections and names that
    cannot be a table are left out."""
    store = tmp_path / "documentdb.sqlite"
    with EmbeddedChangeStreamSource(store) as source:
        for name in ("leads", "accounts"):
            DemoWorkload(source, "crm", name, initial_documents=2).run(1)
    with embedded_backed_server(store) as server:
        server.extra_collections = ["system.views", "has space", "a.dotted"]
        monkeypatch.setenv("CRM_DOCDB_URI", server.uri)
        settings = LakehouseSettings.from_env(
            {
                "LAKEHOUSE_ROOT": str(tmp_path),
                "LAKEHOUSE_COLLECTIONS": "crm.*",
                "LAKEHOUSE_SOURCE": "documentdb",
                "LAKEHOUSE_SOURCE_LOCATION": "CRM_DOCDB_URI",
                "LAKEHOUSE_DOCUMENTDB_TLS": "false",
            }
        )
        # through Lambda the function reads the URI variable from its own environment
        runtime = LocalLambdaRuntime(
            variables=local_function_values(settings),
            environment={"CRM_DOCDB_URI": server.uri},
        )
        with runtime:
            assert discover_collections(settings, LambdaPipes.local(runtime)) == [
                "crm.accounts",
                "crm.leads",
            ]
        assert "listCollections" in server.names()


def test_a_failing_source_listing_names_the_pattern_and_the_fix(tmp_path):
    settings = LakehouseSettings.from_env(
        {
            "LAKEHOUSE_ROOT": str(tmp_path),
            "LAKEHOUSE_COLLECTIONS": "crm.*",
            "LAKEHOUSE_SOURCE": "documentdb",
            "LAKEHOUSE_SOURCE_LOCATION": "UNSET_DOCDB_URI_FOR_TEST",
        }
    )
    with pytest.raises(DiscoveryError, match=r"'crm\.\*' failed: .*UNSET_DOCDB_URI_FOR_TEST"):
        discover_collections(settings)
