"""Settings → the warehouse asset's load request: Redshift and projection configuration."""

from __future__ import annotations

import pytest
from dagster import Failure

from lakehouse_pipelines.defs.warehouse_load.definitions import load_request
from lakehouse_pipelines.settings import LakehouseSettings, SettingsError

ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"
REDSHIFT = {
    "LAKEHOUSE_ENV": "aws",
    "LAKEHOUSE_LAKE_URI": "s3://analytics-lake/prod",
    "LAKEHOUSE_COLLECTIONS": "shop.orders",
    "LAKEHOUSE_REDSHIFT_DATABASE": "dev",
    "LAKEHOUSE_REDSHIFT_WORKGROUP": "analytics",
    "LAKEHOUSE_REDSHIFT_IAM_ROLE": ROLE,
    "LAKEHOUSE_REDSHIFT_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:rs",
    "LAKEHOUSE_WAREHOUSE_PROJECTION": '{"status": "VARCHAR(32)"}',
}


def test_redshift_settings_travel_in_the_load_request():
    request = load_request(LakehouseSettings.from_env(REDSHIFT), "shop.orders")
    assert request.warehouse_kind == "redshift"
    assert (request.redshift_database, request.redshift_workgroup) == ("dev", "analytics")
    assert request.redshift_iam_role == ROLE
    assert request.projection == {"status": "VARCHAR(32)"}
    assert request.redshift_timeout_s == 600


def test_the_iam_role_and_secret_arn_are_not_in_the_settings_repr():
    shown = repr(LakehouseSettings.from_env(REDSHIFT))
    assert ROLE not in shown and "secret:rs" not in shown


def test_local_defaults_project_the_demo_fields(tmp_path):
    request = load_request(
        LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)}), "shop.orders"
    )
    assert request.warehouse_kind == "duckdb"
    assert set(request.projection) == {"status", "total", "created_at"}


def test_a_misconfigured_redshift_load_fails_in_dagster_naming_the_variable():
    settings = LakehouseSettings.from_env({**REDSHIFT, "LAKEHOUSE_REDSHIFT_WORKGROUP": ""})
    with pytest.raises(Failure, match="LAKEHOUSE_REDSHIFT_WORKGROUP"):
        load_request(settings, "shop.orders")


@pytest.mark.parametrize(
    ("projection", "message"),
    [("status", "JSON object"), ('{"status": "MONEY"}', "not supported")],
)
def test_a_bad_projection_setting_names_the_variable(projection, message):
    with pytest.raises(SettingsError, match="LAKEHOUSE_WAREHOUSE_PROJECTION") as raised:
        LakehouseSettings.from_env({"LAKEHOUSE_WAREHOUSE_PROJECTION": projection})
    assert message in str(raised.value)


def test_history_collections_setting_turns_history_on_per_collection(tmp_path):
    settings = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_HISTORY_COLLECTIONS": "shop.orders, crm.*"}
    )
    assert load_request(settings, "shop.orders").history
    assert not load_request(settings, "shop.customers").history
    assert settings.keeps_history("crm.people") and not settings.keeps_history("shop.other")
    everything = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_HISTORY_COLLECTIONS": "*"}
    )
    assert everything.keeps_history("any.thing")
    assert not LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)}).keeps_history("a.b")
    with pytest.raises(SettingsError, match="LAKEHOUSE_HISTORY_COLLECTIONS"):
        LakehouseSettings.from_env({"LAKEHOUSE_HISTORY_COLLECTIONS": "orders"})
