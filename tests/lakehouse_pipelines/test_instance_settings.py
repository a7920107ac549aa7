from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.instance.config import PoolGranularity

from lakehouse_pipelines.settings import LakehouseSettings

DAGSTER_YAML = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"
TEMPLATE = DAGSTER_YAML.with_name("template.yaml")


def test_shipped_dagster_yaml_sets_run_queue_and_pool_limits(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text(DAGSTER_YAML.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = DagsterInstance.get()
    try:
        config = instance.get_concurrency_config()
    finally:
        instance.dispose()
    assert config.run_queue_config.max_concurrent_runs == 4
    (limit,) = config.run_queue_config.tag_concurrency_limits
    assert limit["key"] == "dagster/partition" and limit["limit"] == 1
    assert limit["value"] == {"applyLimitPerUniqueValue": True}
    assert config.pool_config.pool_granularity == PoolGranularity.OP
    # Invocations in flight (pool slots x fan-out per step) never exceed reserved concurrency.
    template = yaml.safe_load(TEMPLATE.read_text())
    reserved = template["Parameters"]["ReservedConcurrency"]["Default"]
    fanout = LakehouseSettings.from_env({}).fanout_concurrency
    assert config.pool_config.default_pool_limit * fanout <= reserved
