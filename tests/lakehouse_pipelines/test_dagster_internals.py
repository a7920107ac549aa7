"""What ``lakehouse_pipelines.dagster_internals`` relies on still holds in the installed Dagster:
an upgrade that changes it fails here, naming the module to fix."""

from dagster._core.storage import tags
from dagster._utils.schedules import is_valid_cron_string as dagster_check

from lakehouse_pipelines import dagster_internals


def test_the_partition_run_tags_are_dagsters():
    assert dagster_internals.PARTITION_NAME_TAG == tags.PARTITION_NAME_TAG
    assert dagster_internals.ASSET_PARTITION_RANGE_START_TAG == (
        tags.ASSET_PARTITION_RANGE_START_TAG
    )
    assert dagster_internals.ASSET_PARTITION_RANGE_END_TAG == tags.ASSET_PARTITION_RANGE_END_TAG


def test_cron_strings_are_checked_as_dagster_checks_them():
    for cron in (
        "*/30 * * * *",
        "0 3 * * 1-5",
        "@daily",
        "0 0 30 2 *",
        "* * * * * *",
        "61 * * * *",
    ):
        assert dagster_internals.is_valid_cron_string(cron) == dagster_check(cron), cron
    assert dagster_internals.is_valid_cron_string("*/30 * * * *")
    assert not dagster_internals.is_valid_cron_string("0 0 30 2 *")  # 30th of February
    assert not dagster_internals.is_valid_cron_string("every day")
