"""What the code location needs from Dagster beyond its public API, in one place.

Dagster's public API (``import dagster``) covers everything else; the names below are either
private (``dagster._...``) or only stable as documented strings. Each is pinned by
``tests/lakehouse_pipelines/test_dagster_internals.py``, which fails loudly when an upgrade of
Dagster changes it, so the fix is made here and nowhere else.
"""

from __future__ import annotations

# Run tags Dagster sets and reads for partitioned runs ("Run tags" in the Dagster docs; the
# strings a backfill puts on its runs). Public as strings, private as constants
# (``dagster._core.storage.tags``): kept as strings here.
PARTITION_NAME_TAG = "dagster/partition"
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def is_valid_cron_string(cron: str) -> bool:
    """Whether ``ScheduleDefinition`` accepts ``cron`` as its ``cron_schedule``.

    Private import, on purpose: the settings check cron strings when the code location loads, so
    a bad one names its variable instead of failing deep inside Dagster's definition loading, and
    only Dagster's own check accepts exactly what Dagster accepts (5 fields, its vendored
    croniter, no 30th of February). No public equivalent exists (Dagster 1.13), and no public
    cron library is installed.

    Args:
        cron: a cron expression, e.g. ``"*/30 * * * *"``.

    Returns:
        True if Dagster would accept it as a schedule's cron string.
    """
    from dagster._utils.schedules import is_valid_cron_string as dagster_is_valid_cron_string

    return dagster_is_valid_cron_string(cron)
