"""cdc_raw_batches in Dagster: the reset run config and the cdc_lag check, through the local
Lambda runtime (the same invoke contract as AWS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from lakehouse_pipelines.defs.cdc_capture.definitions import CAPTURE_KEY, cdc_raw_batches
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore
from tests.lakehouse_pipelines.collection_runs import materialize_collections

RESET = {"ops": {CAPTURE_KEY: {"config": {"reset": True}}}}


@pytest.fixture
def settings(tmp_path: Path) -> LakehouseSettings:
    return LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_DEMO_CHANGES": "20"}
    )


def capture(settings: LakehouseSettings, run_config: dict | None = None):
    return materialize_collections(
        [cdc_raw_batches], settings, DagsterInstance.ephemeral(), "shop.orders", run_config
    )


def test_launchpad_reset_config_starts_a_new_table_generation(settings):
    capture(settings)

    result = capture(settings, RESET)

    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["resnapshot_reason"] == "reset" and metadata["dropped"] is True
    zone = RawZone(LocalObjectStore(settings.lake_uri), "shop", "orders")
    marker = zone.read_manifest(metadata["batches"][0])
    assert marker.extra["dropped"] is True and marker.rows == 0
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"batch_verified": True, "cdc_lag": True}


def test_masking_settings_reach_capture_and_no_clear_value_reaches_the_lake_or_dagster(tmp_path):
    """``LAKEHOUSE_MASKING`` and the key, through the request and the local Lambda runtime's
    function environment: the demo orders' e-mail addresses (all ``@example.com``) are hashed
    before the raw zone, and neither the lake nor Dagster's event log (logs and Pipes messages)
    holds one."""
    masked = LakehouseSettings.from_env(
        {
            "LAKEHOUSE_ROOT": str(tmp_path),
            "LAKEHOUSE_DEMO_CHANGES": "20",
            "LAKEHOUSE_MASKING": '{"shop.orders": {"hash": ["customer.email"]}}',
            "LAKEHOUSE_MASKING_KEY": "k" * 32,
        }
    )
    instance = DagsterInstance.ephemeral()
    runs = [
        materialize_collections([cdc_raw_batches], masked, instance, "shop.orders")
        for _ in range(2)  # snapshot, then the stream
    ]

    assert all(run.success for run in runs)
    lake = Path(masked.lake_uri)
    files = [p for p in lake.rglob("*") if p.is_file() and "/raw/shop/orders/" in str(p)]
    assert any(b"hmac-sha256:" in p.read_bytes() for p in files)  # the hashes are there
    assert not [p for p in files if b"@example.com" in p.read_bytes()]
    logged = [str(entry) for run in runs for entry in instance.all_logs(run.run_id)]
    assert any("capturing shop.orders" in line for line in logged)  # Pipes logs are in it
    assert not [line for line in logged if "@example.com" in line]
