from pathlib import Path

import pytest

from lakehouse_pipelines.settings import VARIABLES, LakehouseSettings, SettingsError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_local_is_the_default_and_lives_under_the_root(tmp_path):
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    assert settings.env == "local" and not settings.is_aws
    assert settings.lake_uri == str(tmp_path / "lake")
    assert settings.duckdb_path == str(tmp_path / "warehouse.duckdb")
    assert (settings.source_kind, settings.warehouse_kind) == ("embedded", "duckdb")
    assert settings.collections == ("shop.orders", "shop.customers")
    assert settings.fanout_concurrency == 4


def test_aws_mode_requires_an_s3_lake_and_derives_the_pipes_bucket():
    with pytest.raises(SettingsError, match="LAKEHOUSE_LAKE_URI is required"):
        LakehouseSettings.from_env({"LAKEHOUSE_ENV": "aws", "LAKEHOUSE_COLLECTIONS": "a.b"})
    with pytest.raises(SettingsError, match="LAKEHOUSE_COLLECTIONS is required"):
        LakehouseSettings.from_env({"LAKEHOUSE_ENV": "aws", "LAKEHOUSE_LAKE_URI": "s3://b/p"})
    settings = LakehouseSettings.from_env(
        {
            "LAKEHOUSE_ENV": "aws",
            "LAKEHOUSE_LAKE_URI": "s3://analytics-lake/prod",
            "LAKEHOUSE_COLLECTIONS": "shop.orders, crm.*, shop.orders",
        }
    )
    assert settings.collections == ("shop.orders", "crm.*")
    assert settings.pipes_bucket == "analytics-lake"
    assert (settings.source_kind, settings.warehouse_kind) == ("documentdb", "redshift")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LAKEHOUSE_ENV": "staging"}, "use 'local' or 'aws'"),
        ({"LAKEHOUSE_COLLECTIONS": "orders"}, "must be 'database.collection'"),
        ({"LAKEHOUSE_COLLECTIONS": "shop.orders,shop.ord ers"}, "not a valid name"),
        ({"LAKEHOUSE_COLLECTIONS": " , "}, "names no collection"),
        ({"LAKEHOUSE_FANOUT_CONCURRENCY": "0"}, "1 or more"),
        ({"LAKEHOUSE_MAINTENANCE_CRON": "daily"}, "not a cron string"),
        ({"LAKEHOUSE_VACUUM_RETENTION_HOURS": "0"}, "at least 1"),
        ({"LAKEHOUSE_DEMO_CHANGES": "many"}, "must be a whole number"),
        ({"LAKEHOUSE_METRICS_NAMESPACE": "AWS/Lambda"}, "reserved"),
        ({"LAKEHOUSE_DMS_CSV_DELIMITER": ";;"}, "LAKEHOUSE_DMS_CSV_DELIMITER=';;' must be one"),
        ({"LAKEHOUSE_WAREHOUSE": "snowflake"}, "use 'duckdb' or 'redshift'"),
    ],
)
def test_bad_configuration_names_the_variable_and_the_fix(env, message):
    with pytest.raises(SettingsError, match=message):
        LakehouseSettings.from_env(env)


def test_every_variable_is_documented_in_the_readme():
    readme = README.read_text()
    missing = [name for name in VARIABLES if f"`{name}`" not in readme]
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_the_dms_request_carries_the_endpoint_csv_delimiter(tmp_path):
    from lakehouse_pipelines.defs.cdc_capture.definitions import dms_request

    default = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    semicolon = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_DMS_CSV_DELIMITER": ";"}
    )
    tab = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_DMS_CSV_DELIMITER": "\\t"}
    )

    assert dms_request(default, "shop.orders", "s3://dms/shop/orders").csv_delimiter == ","
    request = dms_request(semicolon, "shop.orders", "s3://dms/shop/orders")
    assert (request.csv_delimiter, request.dms_uri) == (";", "s3://dms/shop/orders")
    assert dms_request(tab, "shop.orders", "s3://dms/shop/orders").csv_delimiter == "\t"


def test_every_bad_setting_is_reported_at_once_not_only_the_first():
    with pytest.raises(SettingsError) as raised:
        LakehouseSettings.from_env(
            {
                "LAKEHOUSE_COLLECTIONS": "orders",
                "LAKEHOUSE_FANOUT_CONCURRENCY": "0",
                "LAKEHOUSE_DEMO_CHANGES": "many",
                "LAKEHOUSE_MAINTENANCE_CRON": "daily",
                "LAKEHOUSE_WAREHOUSE": "snowflake",
                "LAKEHOUSE_WAREHOUSE_PROJECTION": "not json",
            }
        )
    message = str(raised.value)
    assert message.startswith("6 settings are wrong")
    for variable in (
        "LAKEHOUSE_COLLECTIONS",
        "LAKEHOUSE_FANOUT_CONCURRENCY",
        "LAKEHOUSE_DEMO_CHANGES",
        "LAKEHOUSE_MAINTENANCE_CRON",
        "LAKEHOUSE_WAREHOUSE",
        "LAKEHOUSE_WAREHOUSE_PROJECTION",
    ):
        assert f"- {variable}" in message, variable


def test_the_merge_function_gets_its_segment_byte_budget(tmp_path):
    from lakehouse_pipelines.resources import local_function_values
    from lambda_functions.registry import FUNCTIONS, function_environment

    settings = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_MERGE_SEGMENT_BYTES": "1048576"}
    )
    merge = function_environment(FUNCTIONS["lakehouse-merge"], local_function_values(settings))
    assert merge["LAKEHOUSE_MERGE_SEGMENT_BYTES"] == "1048576"
    with pytest.raises(SettingsError, match="LAKEHOUSE_MERGE_SEGMENT_BYTES"):
        LakehouseSettings.from_env(
            {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_MERGE_SEGMENT_BYTES": "lots"}
        )
