from datetime import timedelta

from dagster import AssetKey

from lakehouse_pipelines.definitions import build_definitions
from lakehouse_pipelines.settings import LakehouseSettings


def schedules(defs) -> dict[str, str]:
    return {s.name: s.cron_schedule for s in defs.schedules}


def test_a_schedule_per_stage_follows_the_configured_crons():
    defaults = build_definitions(LakehouseSettings.from_env({}))
    assert schedules(defaults) == {
        "cdc_capture_schedule": "*/15 * * * *",
        "lake_maintenance_schedule": "0 3 * * *",
        "pipeline_metrics_schedule": "*/10 * * * *",
    }
    configured = build_definitions(
        LakehouseSettings.from_env(
            {
                "LAKEHOUSE_LOAD_CRON": "0 * * * *",
                "LAKEHOUSE_CAPTURE_CRON": "*/5 * * * *",
                "LAKEHOUSE_MERGE_CRON": "*/30 * * * *",
                "LAKEHOUSE_MAINTENANCE_CRON": "30 2 * * 0",
            }
        )
    )
    assert schedules(configured) == {
        "cdc_capture_schedule": "*/5 * * * *",
        "merge_and_load_schedule": "*/30 * * * *",
        "warehouse_load_schedule": "0 * * * *",
        "lake_maintenance_schedule": "30 2 * * 0",
        "pipeline_metrics_schedule": "*/10 * * * *",
    }


def test_lake_and_warehouse_tables_expect_freshness_within_the_configured_windows():
    defs = build_definitions(
        LakehouseSettings.from_env(
            {"LAKEHOUSE_FRESHNESS_WARN_MINUTES": "30", "LAKEHOUSE_FRESHNESS_FAIL_MINUTES": "90"}
        )
    )
    for key in ("lake_table", "warehouse_table"):
        policy = defs.resolve_asset_graph().get(AssetKey(key)).freshness_policy
        assert policy.warn_window.to_timedelta() == timedelta(minutes=30)
        assert policy.fail_window.to_timedelta() == timedelta(minutes=90)
