import json
import shutil
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunRequest, build_sensor_context
from dagster._core.test_utils import create_run_for_test

from lakehouse_pipelines.defs.merge.definitions import raw_batches_sensor
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.merge import merge_batches
from tests.lakehouse_pipelines.collection_runs import register
from tests.lambda_functions.raw_batches import JAN, key, publish


def tick(settings, instance, cursor):
    context = build_sensor_context(
        cursor=cursor, resources={"lakehouse": settings}, instance=instance
    )
    result = raw_batches_sensor(context)
    return result.run_requests or [], result.cursor


def handed(cursor, namespace):
    return json.loads(cursor)[namespace]["batch"]


def merge(settings, namespace):
    database, collection = namespace.split(".")
    request = MergeRequest(lake_uri=settings.lake_uri, database=database, collection=collection)
    return merge_batches(request)


def setup(tmp_path, namespaces=("shop.orders",)):
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    instance = DagsterInstance.ephemeral()
    register(instance, list(namespaces))
    return settings, instance, open_store(settings.lake_uri)


def test_each_batch_is_handed_to_exactly_one_run_per_collection_across_ticks(tmp_path):
    settings, instance, store = setup(tmp_path)
    orders, customers = RawZone(store, "shop", "orders"), RawZone(store, "shop", "customers")

    runs, cursor = tick(settings, instance, None)
    assert runs == []

    publish(orders, [(key(JAN, 1), "insert", 1, "{}")])
    publish(orders, [(key(JAN, 2), "insert", 2, "{}")])
    publish(customers, [(key(JAN, 3), "insert", 3, "{}")])  # not registered yet: waits
    runs, cursor = tick(settings, instance, cursor)
    assert [(r.run_key, r.partition_key) for r in runs] == [("shop.orders:1-2", "shop.orders")]
    assert isinstance(runs[0], RunRequest) and handed(cursor, "shop.orders") == 2

    runs, cursor = tick(settings, instance, cursor)  # nothing new: no run, cursor unchanged
    assert runs == [] and handed(cursor, "shop.orders") == 2

    merge(settings, "shop.orders")  # the run requested
    register(instance, ["shop.customers"])  # what collections_sensor does on its next tick
    publish(orders, [(key(JAN, 3), "delete", 4, None)])
    runs, cursor = tick(settings, instance, cursor)
    assert sorted(r.run_key for r in runs) == ["shop.customers:1-1", "shop.orders:3-3"]
    assert handed(cursor, "shop.customers") == 1 and handed(cursor, "shop.orders") == 3


def test_batches_a_ui_run_already_merged_cause_no_follow_up_run(tmp_path):
    """What "Materialize all" does: capture and merge in one run; the sensor must not follow
    it with a run that applies nothing (the phantom runs of issue 12)."""
    settings, instance, store = setup(tmp_path)
    orders = RawZone(store, "shop", "orders")
    publish(orders, [(key(JAN, 1), "insert", 1, "{}")])
    runs, cursor = tick(settings, instance, None)
    assert [r.run_key for r in runs] == ["shop.orders:1-1"]
    merge(settings, "shop.orders")

    publish(orders, [(key(JAN, 2), "insert", 2, "{}")])  # the UI run's capture step ...
    assert merge(settings, "shop.orders").batches_applied == [2]  # ... and its merge step
    runs, cursor = tick(settings, instance, cursor)
    assert runs == []

    publish(orders, [(key(JAN, 3), "insert", 3, "{}")])  # a scheduled capture, not merged
    runs, cursor = tick(settings, instance, cursor)
    assert [r.run_key for r in runs] == ["shop.orders:3-3"]


def test_a_collection_an_unfinished_run_is_merging_waits_for_it(tmp_path):
    settings, instance, store = setup(tmp_path, ["shop.customers", "shop.orders"])
    publish(RawZone(store, "shop", "orders"), [(key(JAN, 1), "insert", 1, "{}")])
    publish(RawZone(store, "shop", "customers"), [(key(JAN, 1), "insert", 1, "{}")])
    run = create_run_for_test(
        instance,
        job_name="__ASSET_JOB",
        status=DagsterRunStatus.STARTED,
        tags={"dagster/partition": "shop.orders"},
        asset_selection={AssetKey("cdc_raw_batches"), AssetKey("lake_table")},
    )
    runs, cursor = tick(settings, instance, None)
    assert [r.partition_key for r in runs] == ["shop.customers"]

    instance.report_run_failed(run)  # the run ended without merging: the sensor takes over
    runs, cursor = tick(settings, instance, cursor)
    assert [r.run_key for r in runs] == ["shop.orders:1-1"]


def test_a_removed_lake_is_followed_within_one_tick(tmp_path):
    """Issue 12: after the lake directory was removed, batch numbers restarted at 1 while the
    cursor stayed at 3, and the new batches were skipped tick after tick."""
    settings, instance, store = setup(tmp_path)
    orders = RawZone(store, "shop", "orders")
    for n in (1, 2, 3):
        publish(orders, [(key(JAN, n), "insert", n, "{}")])
    runs, cursor = tick(settings, instance, None)
    assert [r.run_key for r in runs] == ["shop.orders:1-3"]
    merge(settings, "shop.orders")
    runs, cursor = tick(settings, instance, cursor)
    assert runs == []

    shutil.rmtree(Path(settings.lake_uri))
    runs, cursor = tick(settings, instance, cursor)  # the lake is empty: nothing to merge
    assert runs == []
    publish(
        RawZone(open_store(settings.lake_uri), "shop", "orders"), [(key(JAN, 9), "insert", 9, "{}")]
    )
    runs, cursor = tick(settings, instance, cursor)
    assert [(r.partition_key, r.tags["lakehouse/batches"]) for r in runs] == [
        ("shop.orders", "1-1")
    ]
    assert runs[0].run_key != "shop.orders:1-1"  # not taken for a request already made


def test_a_removed_lake_table_is_merged_again_from_its_raw_zone(tmp_path):
    settings, instance, store = setup(tmp_path)
    orders = RawZone(store, "shop", "orders")
    for n in (1, 2):
        publish(orders, [(key(JAN, n), "insert", n, "{}")])
    runs, cursor = tick(settings, instance, None)
    merge(settings, "shop.orders")
    runs, cursor = tick(settings, instance, cursor)
    assert runs == []

    shutil.rmtree(Path(settings.lake_uri) / "tables")
    runs, cursor = tick(settings, instance, cursor)
    assert [r.tags["lakehouse/batches"] for r in runs] == ["1-2"]
    assert runs[0].run_key not in ("shop.orders:1-2",)


def test_a_cursor_of_the_old_shape_is_read_as_the_newest_batch_handed(tmp_path):
    settings, instance, store = setup(tmp_path)
    orders = RawZone(store, "shop", "orders")
    for n in (1, 2, 3):
        publish(orders, [(key(JAN, n), "insert", n, "{}")])
    runs, _ = tick(settings, instance, json.dumps({"shop.orders": 3}))
    assert runs == []  # handed to a run already (it may still be queued)
    publish(orders, [(key(JAN, 4), "insert", 4, "{}")])
    runs, _ = tick(settings, instance, json.dumps({"shop.orders": 3}))
    assert [r.tags["lakehouse/batches"] for r in runs] == ["1-4"]
