import json

from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

from lakehouse_pipelines.defs.merge.definitions import raw_batches_sensor
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake import RawZone, open_store
from tests.lakehouse_pipelines.collection_runs import register
from tests.lambda_functions.raw_batches import JAN, key, publish


def tick(settings, instance, cursor):
    context = build_sensor_context(
        cursor=cursor, resources={"lakehouse": settings}, instance=instance
    )
    result = raw_batches_sensor(context)
    if isinstance(result, SkipReason):
        return [], cursor
    return result.run_requests, result.cursor


def test_each_batch_is_handed_to_exactly_one_run_per_collection_across_ticks(tmp_path):
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    instance = DagsterInstance.ephemeral()
    store = open_store(settings.lake_uri)
    orders, customers = RawZone(store, "shop", "orders"), RawZone(store, "shop", "customers")
    register(instance, ["shop.orders"])

    runs, cursor = tick(settings, instance, None)
    assert runs == [] and cursor is None

    publish(orders, [(key(JAN, 1), "insert", 1, "{}")])
    publish(orders, [(key(JAN, 2), "insert", 2, "{}")])
    publish(customers, [(key(JAN, 3), "insert", 3, "{}")])  # not registered yet: waits
    runs, cursor = tick(settings, instance, cursor)
    assert [(r.run_key, r.partition_key) for r in runs] == [("shop.orders:1-2", "shop.orders")]
    assert isinstance(runs[0], RunRequest) and json.loads(cursor) == {"shop.orders": 2}

    runs, cursor = tick(settings, instance, cursor)  # nothing new: no run, cursor unchanged
    assert runs == [] and json.loads(cursor) == {"shop.orders": 2}

    register(instance, ["shop.customers"])  # what collections_sensor does on its next tick
    publish(orders, [(key(JAN, 3), "delete", 4, None)])
    runs, cursor = tick(settings, instance, cursor)
    assert sorted(r.run_key for r in runs) == ["shop.customers:1-1", "shop.orders:3-3"]
    assert json.loads(cursor) == {"shop.customers": 1, "shop.orders": 3}
