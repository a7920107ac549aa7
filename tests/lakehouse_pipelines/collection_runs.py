"""Running partitioned stage assets in tests the way Dagster does: collections registered as
partitions in the instance, then one partition, or a range of them in a single run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from lakehouse_pipelines.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from lakehouse_pipelines.defs.collections import COLLECTIONS
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.settings import LakehouseSettings


def register(instance: DagsterInstance, keys: Sequence[str]) -> None:
    known = set(COLLECTIONS.get_partition_keys(dynamic_partitions_store=instance))
    instance.add_dynamic_partitions(COLLECTIONS.name, [k for k in keys if k not in known])


def materialize_collections(
    assets: Sequence[Any],
    settings: LakehouseSettings,
    instance: DagsterInstance,
    keys: str | Sequence[str],
    run_config: dict | None = None,
    resources: dict[str, Any] | None = None,
) -> ExecuteInProcessResult:
    """``keys``: one partition key (a partition run), or a list (one run over the range)."""
    register(instance, [keys] if isinstance(keys, str) else keys)
    own_resources = resources is None
    resources = build_resources(settings) if resources is None else resources
    if isinstance(keys, str):
        options: dict[str, Any] = {"partition_key": keys}
    else:
        options = {
            "tags": {
                ASSET_PARTITION_RANGE_START_TAG: keys[0],
                ASSET_PARTITION_RANGE_END_TAG: keys[-1],
            }
        }
    try:
        return materialize(
            assets,
            resources=resources,
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
            **options,
        )
    finally:
        if own_resources:
            resources["lambda_pipes"].lambda_client.close()


def metadata_by_asset(result: ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """asset key (plus ``[partition]`` when a run covered several) -> materialization metadata."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        name = materialization.asset_key.to_user_string()
        out[name] = {k: v.value for k, v in materialization.metadata.items()}
        if materialization.partition:
            out[f"{name}[{materialization.partition}]"] = out[name]
    return out
