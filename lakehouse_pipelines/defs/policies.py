"""Policies shared by the stages: freshness expectations and optional cron schedules."""

from datetime import timedelta

from dagster import (
    AssetsDefinition,
    AssetSpec,
    DefaultScheduleStatus,
    FreshnessPolicy,
    ScheduleDefinition,
)

from lakehouse_pipelines.settings import LakehouseSettings


def with_freshness(assets: AssetsDefinition, settings: LakehouseSettings) -> AssetsDefinition:
    """The asset, expected to be updated within the configured windows (warn, then fail)."""
    policy = FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=settings.freshness_fail_minutes),
        warn_window=timedelta(minutes=settings.freshness_warn_minutes),
    )
    return assets.map_asset_specs(
        lambda spec: AssetSpec.replace_attributes(spec, freshness_policy=policy)
    )


def optional_schedule(name: str, target: list[str], cron: str) -> list[ScheduleDefinition]:
    """A schedule for ``target`` when ``cron`` is set (off until turned on in the UI)."""
    if not cron:
        return []
    return [
        ScheduleDefinition(
            name=name,
            target=target,
            cron_schedule=cron,
            default_status=DefaultScheduleStatus.STOPPED,
        )
    ]
