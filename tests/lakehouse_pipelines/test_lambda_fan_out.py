"""Hopper fan-out: one single-run step invokes Lambda once per partition, with bounded concurrency."""

import threading

from dagster import (
    AssetCheckSpec,
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    ResourceParam,
    StaticPartitionsDefinition,
    asset,
    materialize,
)

from lakehouse_local.lambda_runtime import LocalLambdaRuntime
from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lambda_functions.contracts import MergeRequest
from lambda_functions.registry import FunctionSpec

SPEC = FunctionSpec(
    "probe-per-collection",
    "tests.lakehouse_pipelines.pipes_probe_handlers.per_collection",
    timeout_s=60,
    memory_mb=256,
)
KEYS = [f"c{i:02d}" for i in range(20)]
MAX_CONCURRENCY = 3


class CountingClient:
    """Wraps the Lambda client and records the most invocations ever in flight at once."""

    def __init__(self, inner):
        self.inner, self.in_flight, self.peak, self.calls = inner, 0, 0, 0
        self.lock = threading.Lock()

    def invoke(self, **kwargs):
        with self.lock:
            self.in_flight += 1
            self.calls += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            return self.inner.invoke(**kwargs)
        finally:
            with self.lock:
                self.in_flight -= 1


@asset(
    name="probe",
    partitions_def=StaticPartitionsDefinition(KEYS),
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=[AssetCheckSpec("probe_check", asset="probe")],
)
def probe(context, lambda_pipes: ResourceParam[LambdaPipes]):
    requests = {
        key: MergeRequest(lake_uri="/unused", database="db", collection=key)
        for key in context.partition_keys
    }
    return lambda_pipes.run_partitions(context, SPEC, requests, max_concurrency=MAX_CONCURRENCY)


def test_one_run_materializes_every_partition_with_bounded_concurrency():
    instance = DagsterInstance.ephemeral()
    with LocalLambdaRuntime({SPEC.name: SPEC}) as runtime:
        client = CountingClient(runtime)
        result = materialize(
            [probe],
            resources={"lambda_pipes": LambdaPipes.local(client)},
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": KEYS[0],
                "dagster/asset_partition_range_end": KEYS[-1],
            },
        )
    assert result.success
    assert client.calls == len(KEYS)
    assert 1 < client.peak <= MAX_CONCURRENCY
    events = result.get_asset_materialization_events()
    by_partition = {e.partition: e.materialization.metadata["collection"].value for e in events}
    assert by_partition == {key: key for key in KEYS}  # each partition got its own figures
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert check.metadata["failed_partitions"].value == ["c13"]
    # numeric check figures keyed by collection: one plot series per collection in the UI
    assert {k: v.value for k, v in check.metadata.items() if k.endswith("/figure")} == {
        f"{key}/figure": len(key) for key in KEYS
    }
    assert "figure" not in check.metadata
    assert instance.get_materialized_partitions(AssetKey("probe")) == set(KEYS)
