"""The Pipes wiring over the Lambda invoke contract, run against the local Lambda runtime."""

from __future__ import annotations

import warnings

import boto3
import pytest
from dagster import AssetCheckSpec, ResourceParam, asset, materialize
from dagster_aws.pipes import PipesLambdaClient

from lakehouse_pipelines.local_lambda import LocalLambdaRuntime
from lakehouse_pipelines.resources.lambda_pipes import (
    LambdaPipes,
    lambda_client_config,
    lambda_report_metadata,
)
from lambda_functions.contracts import MergeRequest
from lambda_functions.registry import FUNCTIONS, FunctionSpec

HANDLERS = "tests.lakehouse_pipelines.pipes_probe_handlers"
NOISY = FunctionSpec("probe-noisy", f"{HANDLERS}.noisy", timeout_s=60, memory_mb=512)
FAILING = FunctionSpec("probe-failing", f"{HANDLERS}.failing", timeout_s=60, memory_mb=512)
SLOW = FunctionSpec("probe-slow", f"{HANDLERS}.slow", timeout_s=2, memory_mb=512)
MISSING = FunctionSpec("probe-not-deployed", f"{HANDLERS}.noisy")
REQUEST = MergeRequest(lake_uri="/unused", database="probe", collection="things")


def probe_asset(spec: FunctionSpec):
    @asset(name="probe", check_specs=[AssetCheckSpec("probe_check", asset="probe")])
    def probe(context, lambda_pipes: ResourceParam[LambdaPipes]):
        return lambda_pipes.run(context, spec, REQUEST)

    return probe


@pytest.fixture(scope="module")
def runtime():
    with LocalLambdaRuntime({s.name: s for s in (NOISY, FAILING, SLOW)}) as rt:
        yield rt


def run_probe(spec: FunctionSpec, lambda_pipes: LambdaPipes):
    return materialize(
        [probe_asset(spec)], resources={"lambda_pipes": lambda_pipes}, raise_on_error=False
    )


def materialization_metadata(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def failure_of(result):
    (failure,) = result.get_step_failure_events()
    return failure.step_failure_data


def test_more_than_4kb_of_logs_around_pipes_still_delivers_metadata_and_checks(runtime):
    result = run_probe(NOISY, LambdaPipes.local(runtime))
    assert result.success
    metadata = materialization_metadata(result)
    assert metadata["answer"] == 42
    assert metadata["lambda/max_memory_used_mb"] > 0
    assert metadata["lambda/billed_duration_ms"] >= metadata["lambda/duration_ms"]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "probe_check" and check.passed


def test_the_default_log_tail_reader_loses_those_messages(runtime):
    """Why the file/S3 readers exist: PipesLambdaClient's default reader sees only the 4 KB tail."""

    @asset(name="probe")
    def probe(context):
        client = PipesLambdaClient(client=runtime)
        invocation = client.run(function_name=NOISY.name, event=REQUEST.to_event(), context=context)
        return invocation.get_materialize_result()

    result = materialize([probe], raise_on_error=False)
    metadata = materialization_metadata(result)
    assert "answer" not in metadata  # reported, then pushed out of the tail by later output


def test_warm_worker_serves_a_second_invocation(runtime):
    lambda_pipes = LambdaPipes.local(runtime)
    first = materialization_metadata(run_probe(NOISY, lambda_pipes))
    second = materialization_metadata(run_probe(NOISY, lambda_pipes))
    assert second["answer"] == 42  # the Pipes singleton was reset between invocations
    assert second["warm_invocations"] > first["warm_invocations"]
    assert second["lambda/init_duration_ms"] == 0.0  # no cold start


def test_function_error_fails_the_step_with_the_lambda_error(runtime):
    result = run_probe(FAILING, LambdaPipes.local(runtime))
    assert not result.success
    failure = failure_of(result)
    assert "failed with ValueError: document 42 has no _id" in failure.error.message
    metadata = {k: v.value for k, v in failure.user_failure_data.metadata.items()}
    assert metadata["error_type"] == "ValueError"
    assert "pipes_probe_handlers.py" in metadata["stack_trace"]
    assert metadata["request_id"]


def test_timeout_fails_the_step_and_names_the_fix(runtime):
    result = run_probe(SLOW, LambdaPipes.local(runtime))
    assert not result.success
    message = failure_of(result).error.message
    assert "Sandbox.Timedout" in message and "Task timed out after 2.00 seconds" in message
    assert "raise timeout_s" in message


def test_unknown_function_fails_with_a_deploy_hint(runtime):
    result = run_probe(MISSING, LambdaPipes.local(runtime))
    assert not result.success
    assert "does not exist" in failure_of(result).error.message


def test_aws_path_delivers_messages_through_s3(aws_env, moto_endpoint):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="pipes-messages")
    with LocalLambdaRuntime({NOISY.name: NOISY}, environment=aws_env) as aws_like_lambda:
        lambda_pipes = LambdaPipes.aws(
            pipes_bucket="pipes-messages", lambda_client=aws_like_lambda, s3_client=s3
        )
        result = run_probe(NOISY, lambda_pipes)
    assert result.success
    assert materialization_metadata(result)["answer"] == 42
    assert s3.list_objects_v2(Bucket="pipes-messages")["KeyCount"] > 0  # it really went via S3


def test_aws_lambda_client_outwaits_every_function_and_never_retries():
    config = lambda_client_config()
    assert config.read_timeout > max(spec.timeout_s for spec in FUNCTIONS.values())
    assert config.retries["total_max_attempts"] == 1
    client = boto3.client("lambda", region_name="us-east-1", config=config)
    assert client.meta.config.read_timeout == config.read_timeout


def test_report_line_becomes_duration_memory_and_cost_metadata():
    tail = (
        "END RequestId: abc\nREPORT RequestId: abc\tDuration: 1500.25 ms\tBilled Duration: 1501 ms"
        "\tMemory Size: 2048 MB\tMax Memory Used: 300 MB\tInit Duration: 250.50 ms\n"
    )
    metadata = lambda_report_metadata(tail, price_per_gb_second=0.0000166667)
    assert metadata["lambda/billed_duration_ms"].value == 1501
    assert metadata["lambda/max_memory_used_mb"].value == 300
    assert metadata["lambda/init_duration_ms"].value == 250.5
    expected = 1.501 * 2 * 0.0000166667 + 0.0000002
    assert metadata["lambda/estimated_cost_usd"].value == pytest.approx(expected)


def test_an_invocation_emits_no_dagster_preview_beta_or_supersession_warning(runtime):
    """dagster reads ``expected_writer_count`` (a @preview property) of the message reader on
    every Pipes session; our readers define it themselves, so no PreviewWarning per invocation."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_probe(NOISY, LambdaPipes.local(runtime))
    assert result.success
    names = {"PreviewWarning", "BetaWarning", "SupersessionWarning"}
    assert [
        str(w.message)
        for w in caught
        if type(w.category).__name__ in names or w.category.__name__ in names
    ] == []
