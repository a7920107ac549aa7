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
        "pipeline_metrics_schedule": "*/10 * * * *",
    }
    configured = build_definitions(
        LakehouseSettings.from_env(
            {"LAKEHOUSE_LOAD_CRON": "0 * * * *", "LAKEHOUSE_CAPTURE_CRON": "*/5 * * * *"}
        )
    )
    assert schedules(configured)["warehouse_load_schedule"] == "0 * * * *"
    assert schedules(configured)["cdc_capture_schedule"] == "*/5 * * * *"


def test_warehouse_table_expects_freshness_within_the_configured_windows():
    defs = build_definitions(
        LakehouseSettings.from_env(
            {"LAKEHOUSE_FRESHNESS_WARN_MINUTES": "30", "LAKEHOUSE_FRESHNESS_FAIL_MINUTES": "90"}
        )
    )
    policy = defs.resolve_asset_graph().get(AssetKey("warehouse_table")).freshness_policy
    assert policy.warn_window.to_timedelta() == timedelta(minutes=30)
    assert policy.fail_window.to_timedelta() == timedelta(minutes=90)
