from dagster import RunRequest, SkipReason, build_sensor_context

from lakehouse_pipelines.defs.merge.definitions import raw_batches_sensor
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake import RawZone, open_store
from tests.lambda_functions.raw_batches import JAN, key, publish


def tick(settings, cursor):
    context = build_sensor_context(cursor=cursor, resources={"lakehouse": settings})
    result = raw_batches_sensor(context)
    if isinstance(result, SkipReason):
        return [], cursor
    return result.run_requests, result.cursor


def test_each_batch_is_handed_to_exactly_one_run_across_ticks(tmp_path):
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    zone = RawZone(open_store(settings.lake_uri), settings.database, settings.collection)

    runs, cursor = tick(settings, None)
    assert runs == [] and cursor is None

    publish(zone, [(key(JAN, 1), "insert", 1, "{}")])
    publish(zone, [(key(JAN, 2), "insert", 2, "{}")])
    runs, cursor = tick(settings, cursor)
    assert [r.run_key for r in runs] == ["shop.orders:1-2"] and cursor == "2"
    assert isinstance(runs[0], RunRequest)

    runs, cursor = tick(settings, cursor)  # nothing new: no run, cursor unchanged
    assert runs == [] and cursor == "2"

    publish(zone, [(key(JAN, 3), "delete", 3, None)])
    runs, cursor = tick(settings, cursor)
    assert [r.run_key for r in runs] == ["shop.orders:3-3"] and cursor == "3"
