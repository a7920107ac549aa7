"""Policies shared by the stages: freshness expectations, retries and optional cron schedules."""

from datetime import timedelta

from dagster import (
    AssetsDefinition,
    AssetSpec,
    Backoff,
    DefaultScheduleStatus,
    FreshnessPolicy,
    Jitter,
    RetryPolicy,
    ScheduleDefinition,
)

from lakehouse_pipelines.settings import LakehouseSettings

# Steps that invoke Lambda: a failure that may clear by itself (throttling, a lost commit race, a
# lock or statement timeout, an unplanned error) is retried up to 3 times after ~2, 4 and 8 s
# (+/- jitter, so fanned-out steps do not retry in step); a terminal one (bad input or
# configuration) fails at once: ``LambdaPipes`` raises ``Failure(allow_retries=False)`` for it
# (lambda_functions.errors.error_kind). Longer outages are left to the next schedule tick.
LAMBDA_RETRY_POLICY = RetryPolicy(
    max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


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
