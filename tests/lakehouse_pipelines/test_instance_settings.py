from pathlib import Path

from dagster import DagsterInstance
from dagster._core.instance.config import PoolGranularity

DAGSTER_YAML = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"


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
    assert limit["key"] == "lakehouse/namespace" and limit["limit"] == 1
    assert config.pool_config.default_pool_limit == 4
    assert config.pool_config.pool_granularity == PoolGranularity.OP
