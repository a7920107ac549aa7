"""Warehouse table names checked where they are born: at registration and before a load, as
the engines compare them (Redshift folds identifiers to lower case and allows 127 bytes;
DuckDB resolves identifiers without case), with the fix in the refusal."""

from __future__ import annotations

import duckdb
import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context

from lakehouse_pipelines.definitions import build_definitions
from lakehouse_pipelines.defs.collections import collections_sensor, registered_collections
from lakehouse_pipelines.defs.merge.definitions import lake_table
from lakehouse_pipelines.defs.warehouse_load.definitions import load_request, warehouse_table
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.settings import LakehouseSettings, SettingsError
from lakehouse_pipelines.warehouse_names import assign_warehouse_tables
from lambda_functions.lake import RawZone, open_store
from tests.lakehouse_pipelines.collection_runs import materialize_collections
from tests.lambda_functions.raw_batches import JAN, key, publish


def settings_for(tmp_path, collections: str, **env: str) -> LakehouseSettings:
    return LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_COLLECTIONS": collections, **env}
    )


def register_job(settings, instance) -> tuple[list[str], list[str]]:
    """Run ``register_collections``; return (registered collections, withheld messages)."""
    result = (
        build_definitions(settings)
        .resolve_job_def("register_collections")
        .execute_in_process(instance=instance)
    )
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return registered_collections(instance), event.event_specific_data.metadata["withheld"].value


@pytest.mark.parametrize(
    ("naming", "suggested"),
    [("collection", "shop_orders"), ("database_collection", "shop_orders_2")],
)
def test_a_collection_whose_table_differs_only_in_case_is_withheld_with_the_fix(
    tmp_path, naming, suggested
):
    """``shop.Orders`` after ``shop.orders``: ``Orders``/``orders`` (or ``shop_Orders``/
    ``shop_orders``) are one table in Redshift and DuckDB, in both naming modes."""
    settings = settings_for(
        tmp_path, "shop.orders,shop.Orders", LAKEHOUSE_WAREHOUSE_TABLE_NAMES=naming
    )
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("collections", ["shop.orders"])
    registered, (withheld,) = register_job(settings, instance)
    assert registered == ["shop.orders"]
    assert withheld.startswith("shop.Orders is not registered: it has no warehouse table")
    assert "Redshift folds identifiers to lower case" in withheld
    fix = f"""LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES='{{"shop.Orders": "{suggested}"}}'"""
    assert fix in withheld
    # The other naming mode does not separate them either, so it is not offered as the fix.
    assert "LAKEHOUSE_WAREHOUSE_TABLE_NAMES=" not in withheld

    fixed = settings_for(
        tmp_path,
        "shop.orders,shop.Orders",
        LAKEHOUSE_WAREHOUSE_TABLE_NAMES=naming,
        LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES='{"shop.Orders": "orders_upper"}',
    )
    registered, withheld = register_job(fixed, instance)
    assert (registered, withheld) == (["shop.orders", "shop.Orders"], [])
    assert load_request(fixed, "shop.Orders").table_name == "orders_upper"


def test_the_sensor_withholds_the_case_variant_and_registers_the_rest(tmp_path):
    settings = settings_for(tmp_path, "shop.orders,shop.ORDERS,shop.customers")
    instance = DagsterInstance.ephemeral()
    context = build_sensor_context(instance=instance, resources=build_resources(settings))
    (request,) = collections_sensor(context).dynamic_partitions_requests
    assert list(request.partition_keys) == ["shop.customers", "shop.orders"]
    instance.add_dynamic_partitions("collections", list(request.partition_keys))
    skipped = collections_sensor(
        build_sensor_context(instance=instance, resources=build_resources(settings))
    )
    assert isinstance(skipped, SkipReason)
    assert "shop.ORDERS is not registered" in skipped.skip_message
    assert "'orders' of shop.orders" in skipped.skip_message


def test_a_derived_name_of_66_characters_is_registered_and_loads(tmp_path):
    """``<database>_<collection>`` of 66 characters: within Redshift's 127 bytes, so it is a
    table, where the product's 63-character rule refused it at every load."""
    namespace = "shop." + "o" * 61
    settings = settings_for(
        tmp_path, namespace, LAKEHOUSE_WAREHOUSE_TABLE_NAMES="database_collection"
    )
    registered, withheld = register_job(settings, DagsterInstance.ephemeral())
    assert (registered, withheld) == ([namespace], [])
    request = load_request(settings, namespace)
    request.validate()
    assert len(request.table_name) == 66


def test_a_collection_registered_before_names_were_folded_fails_alone_with_the_fix(tmp_path):
    """``shop.orders`` and ``shop.Orders`` were both registered (before this check existed):
    the load of the later one fails, naming the fix; the others merge and load."""
    settings = settings_for(tmp_path, "shop.orders")
    store = open_store(settings.lake_uri)
    for n, (database, collection) in enumerate(
        [("shop", "orders"), ("shop", "Orders"), ("shop", "customers")], start=1
    ):
        publish(RawZone(store, database, collection), [(key(JAN, n), "insert", 1, "{}")])
    instance = DagsterInstance.ephemeral()
    result = materialize_collections(
        [lake_table, warehouse_table],
        settings,
        instance,
        ["shop.orders", "shop.Orders", "shop.customers"],
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "1 of 3 partitions failed: shop.Orders: warehouse load of shop.Orders refused" in message
    assert "LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES" in message
    merged = {
        e.partition
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "lake_table"
    }
    assert merged == {"shop.orders", "shop.Orders", "shop.customers"}
    with duckdb.connect(settings.duckdb_path, read_only=True) as db:
        assert db.execute("SELECT _id FROM analytics.orders").fetchall() == [(key(JAN, 1),)]
        assert db.execute("SELECT _id FROM analytics.customers").fetchall() == [(key(JAN, 3),)]


def test_table_assignment_is_first_come_first_served_in_registration_order(tmp_path):
    settings = settings_for(tmp_path, "shop.orders")
    tables = assign_warehouse_tables(settings, ["shop.Orders", "shop.orders", "crm.leads"])
    assert tables.tables == {"shop.Orders": "Orders", "crm.leads": "leads"}
    assert list(tables.refused) == ["shop.orders"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("not json", "must be a JSON object"),
        ('{"shop": "t"}', "must be 'database.collection'"),
        ('{"shop.*": "t"}', "not a pattern"),
        ('{"shop.orders": "' + "t" * 128 + '"}', "128 bytes long; Redshift allows at most 127"),
        ('{"shop.orders": "has space"}', "not a plain name"),
        ('{"shop.orders": "_lakehouse_loads"}', "control/staging table"),
        ('{"shop.a": "Orders", "shop.b": "orders"}', "would both load into warehouse table"),
    ],
)
def test_table_overrides_are_checked_at_configuration(tmp_path, overrides, message):
    with pytest.raises(SettingsError, match=message):
        settings_for(tmp_path, "shop.orders", LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES=overrides)


def test_the_warehouse_schema_is_checked_at_configuration(tmp_path):
    with pytest.raises(SettingsError, match=r"LAKEHOUSE_WAREHOUSE_SCHEMA.*127"):
        settings_for(tmp_path, "shop.orders", LAKEHOUSE_WAREHOUSE_SCHEMA="s" * 128)
