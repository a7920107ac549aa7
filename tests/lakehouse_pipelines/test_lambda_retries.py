"""Transient Lambda failures are retried by the step's RetryPolicy; terminal ones never are."""

from __future__ import annotations

import pytest
from dagster import (
    BackfillPolicy,
    DagsterInstance,
    ResourceParam,
    RetryPolicy,
    StaticPartitionsDefinition,
    asset,
    materialize,
)
from lakehouse_pipelines.local_lambda import LocalLambdaRuntime

from lakehouse_pipelines.defs.cdc_capture.definitions import cdc_raw_batches
from lakehouse_pipelines.defs.collections import collection_asset
from lakehouse_pipelines.defs.policies import LAMBDA_RETRY_POLICY
from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lambda_functions import errors
from lambda_functions.contracts import MergeRequest
from lambda_functions.registry import FunctionSpec

HANDLERS = "tests.lakehouse_pipelines.pipes_probe_handlers"
THROTTLED = FunctionSpec("probe-throttled", f"{HANDLERS}.throttled", timeout_s=60, memory_mb=256)
BAD_INPUT = FunctionSpec("probe-bad-input", f"{HANDLERS}.bad_input", timeout_s=60, memory_mb=256)
MIXED = FunctionSpec("probe-mixed", f"{HANDLERS}.bad_input_for_c1", timeout_s=60, memory_mb=256)
RETRIES = 2
KEYS = ["c1", "c2", "c3"]


@pytest.fixture(autouse=True)
def probe_error_kinds(monkeypatch):
    monkeypatch.setattr(
        errors, "TRANSIENT_ERROR_TYPES", errors.TRANSIENT_ERROR_TYPES | {"ProbeThrottledError"}
    )
    monkeypatch.setattr(
        errors, "TERMINAL_ERROR_TYPES", errors.TERMINAL_ERROR_TYPES | {"ProbeBadInputError"}
    )


@pytest.fixture(scope="module")
def runtime():
    with LocalLambdaRuntime({s.name: s for s in (THROTTLED, BAD_INPUT, MIXED)}) as rt:
        yield rt


def probe_asset(spec: FunctionSpec, partitioned: bool = False):
    @asset(
        name="probe",
        retry_policy=RetryPolicy(max_retries=RETRIES),  # no delay: the test stays fast
        partitions_def=StaticPartitionsDefinition(KEYS) if partitioned else None,
        backfill_policy=BackfillPolicy.single_run() if partitioned else None,
    )
    def probe(context, lambda_pipes: ResourceParam[LambdaPipes]):
        if not partitioned:
            return lambda_pipes.run(context, spec, MergeRequest("/unused", "db", "c1"))
        requests = {key: MergeRequest("/unused", "db", key) for key in context.partition_keys}
        return lambda_pipes.run_partitions(context, spec, requests, max_concurrency=2)

    return probe


def invocations(runtime: LocalLambdaRuntime, spec: FunctionSpec) -> int:
    return sum(1 for record in runtime.invocations if record.function_name == spec.name)


def run(runtime, spec: FunctionSpec, partitioned: bool = False):
    tags = (
        {
            "dagster/asset_partition_range_start": KEYS[0],
            "dagster/asset_partition_range_end": KEYS[-1],
        }
        if partitioned
        else None
    )
    return materialize(
        [probe_asset(spec, partitioned)],
        resources={"lambda_pipes": LambdaPipes.local(runtime)},
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
        tags=tags,
    )


def retried(result) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")


def test_a_transient_function_error_is_retried_up_to_the_policy(runtime):
    before = invocations(runtime, THROTTLED)
    result = run(runtime, THROTTLED)
    assert not result.success
    assert retried(result) == RETRIES
    assert invocations(runtime, THROTTLED) - before == RETRIES + 1


def test_a_terminal_function_error_is_not_retried(runtime):
    before = invocations(runtime, BAD_INPUT)
    result = run(runtime, BAD_INPUT)
    assert not result.success
    assert retried(result) == 0
    assert invocations(runtime, BAD_INPUT) - before == 1
    (failure,) = result.get_step_failure_events()
    assert "ProbeBadInputError" in failure.step_failure_data.error.message


def test_a_fan_out_with_one_terminal_failure_is_not_retried(runtime):
    """c1 fails terminally, c2 transiently: retrying cannot fix c1, so the step fails at once,
    naming both."""
    before = invocations(runtime, MIXED)
    result = run(runtime, MIXED, partitioned=True)
    assert not result.success
    assert retried(result) == 0
    assert invocations(runtime, MIXED) - before == len(KEYS)
    (failure,) = result.get_step_failure_events()
    metadata = failure.step_failure_data.user_failure_data.metadata
    assert metadata["error_kinds"].value == {"c1": "terminal", "c2": "transient"}


def test_the_lambda_stage_assets_carry_the_bounded_backoff_policy():
    assert cdc_raw_batches.op.retry_policy == LAMBDA_RETRY_POLICY
    assert LAMBDA_RETRY_POLICY.max_retries == 3
    assert LAMBDA_RETRY_POLICY.backoff is not None and LAMBDA_RETRY_POLICY.jitter is not None

    @collection_asset(name="probe_stage")
    def probe_stage() -> None: ...

    assert probe_stage.op.retry_policy == LAMBDA_RETRY_POLICY
