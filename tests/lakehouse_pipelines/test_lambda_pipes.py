"""The Pipes wiring over the Lambda invoke contract, run against the local Lambda runtime."""

from __future__ import annotations

import logging
import os
import warnings

import boto3
import pytest
from botocore.stub import Stubber
from dagster import AssetCheckSpec, DagsterInstance, ResourceParam, asset, materialize
from dagster_aws.pipes import PipesLambdaClient

from lakehouse_local.lambda_runtime import LocalLambdaRuntime
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.resources.lambda_failures import MissingAwsSettingError
from lakehouse_pipelines.resources.lambda_pipes import (
    LambdaPipes,
    lambda_client_config,
    lambda_report_metadata,
)
from lakehouse_pipelines.resources.metrics_sink import CloudWatchMetrics
from lakehouse_pipelines.resources.pipes_messages import PIPES_MESSAGE_PREFIX
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import MergeRequest
from lambda_functions.registry import FUNCTIONS, FunctionSpec

HANDLERS = "tests.lakehouse_pipelines.pipes_probe_handlers"
NOISY = FunctionSpec("probe-noisy", f"{HANDLERS}.noisy", timeout_s=60, memory_mb=512)
FAILING = FunctionSpec("probe-failing", f"{HANDLERS}.failing", timeout_s=60, memory_mb=512)
SLOW = FunctionSpec("probe-slow", f"{HANDLERS}.slow", timeout_s=2, memory_mb=512)
REGION = FunctionSpec("probe-region", f"{HANDLERS}.region", timeout_s=60, memory_mb=512)
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
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [probe_asset(spec)],
        resources={"lambda_pipes": lambda_pipes},
        raise_on_error=False,
        instance=instance,
    )
    result.logs = instance.all_logs(result.run_id)
    return result


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


def recording_readers(lambda_pipes: LambdaPipes) -> list:
    """Keep every message reader the resource creates, to look at what it read."""
    readers, make = [], lambda_pipes._message_reader_factory

    def factory():
        readers.append(make())
        return readers[-1]

    lambda_pipes._message_reader_factory = factory
    return readers


def test_aws_path_delivers_messages_through_s3_and_removes_them(aws_env, moto_endpoint):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="pipes-messages")
    with LocalLambdaRuntime({NOISY.name: NOISY}, environment=aws_env) as aws_like_lambda:
        lambda_pipes = LambdaPipes.aws(
            pipes_bucket="pipes-messages", lambda_client=aws_like_lambda, s3_client=s3
        )
        readers = recording_readers(lambda_pipes)
        result = run_probe(NOISY, lambda_pipes)
    assert result.success
    assert materialization_metadata(result)["answer"] == 42
    (reader,) = readers
    assert reader.chunks_read >= 1  # it really went via S3 ...
    reader.cleanup.result()  # deleted off the step's path: wait for it here
    assert reader.chunks_deleted == reader.chunks_read  # ... and nothing was left there
    assert s3.list_objects_v2(Bucket="pipes-messages")["KeyCount"] == 0


def test_s3_messages_live_under_their_own_prefix(aws_env, moto_endpoint):
    """Written under _dagster_pipes/<invocation>/, the prefix the template's lifecycle rule
    expires; seen before the reader deletes them."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="pipes-prefix")
    keys_seen = []
    real_delete = s3.delete_objects

    def delete_objects(**kwargs):
        keys_seen.extend(k["Key"] for k in kwargs["Delete"]["Objects"])
        return real_delete(**kwargs)

    s3.delete_objects = delete_objects
    with LocalLambdaRuntime({NOISY.name: NOISY}, environment=aws_env) as aws_like_lambda:
        lambda_pipes = LambdaPipes.aws(
            pipes_bucket="pipes-prefix", lambda_client=aws_like_lambda, s3_client=s3
        )
        readers = recording_readers(lambda_pipes)
        assert run_probe(NOISY, lambda_pipes).success
    readers[0].cleanup.result()
    assert keys_seen and all(
        key.startswith(f"{PIPES_MESSAGE_PREFIX}/") and key.endswith(".json") for key in keys_seen
    )


def pipes_warnings(result) -> list[str]:
    return [
        entry.user_message
        for entry in result.logs
        if entry.level == logging.WARNING and "[pipes]" in entry.user_message
    ]


def test_missing_function_on_the_s3_path_fails_at_once_without_pipes_warnings(
    aws_env, moto_endpoint
):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="pipes-missing-fn")
    with LocalLambdaRuntime({NOISY.name: NOISY}, environment=aws_env) as aws_like_lambda:
        lambda_pipes = LambdaPipes.aws(
            pipes_bucket="pipes-missing-fn", lambda_client=aws_like_lambda, s3_client=s3
        )
        readers = recording_readers(lambda_pipes)
        result = run_probe(MISSING, lambda_pipes)
    assert not result.success
    message = failure_of(result).error.message
    assert "'probe-not-deployed' does not exist" in message
    assert "LAKEHOUSE_FUNCTION_PREFIX" in message and "AWS_REGION" in message
    assert pipes_warnings(result) == []  # no "not readable", no "did not receive any messages"
    assert readers[0].chunks_read == 0


# Lambda Invoke errors for an invoke the service refuses (API_Invoke "Errors"; AccessDenied is
# what IAM returns), as botocore raises them: the function never runs.
REFUSALS = [
    (
        "ResourceNotFoundException",
        404,
        "Function not found: arn:aws:lambda:us-east-1:123456789012:function:probe-noisy",
        "does not exist",
        "sam deploy",
    ),
    (
        "AccessDeniedException",
        403,
        "User: arn:aws:iam::123456789012:user/ci is not authorized "
        "to perform: lambda:InvokeFunction",
        "AccessDeniedException",
        "lambda:InvokeFunction",
    ),
    (
        "TooManyRequestsException",
        429,
        "Rate Exceeded.",
        "TooManyRequestsException",
        "LAKEHOUSE_FANOUT_CONCURRENCY",
    ),
]


@pytest.mark.parametrize(("code", "status", "aws_message", "named", "fix"), REFUSALS)
def test_refused_invoke_fails_with_the_fix_and_reads_nothing(code, status, aws_message, named, fix):
    lambda_client = boto3.client(
        "lambda", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    s3 = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    with Stubber(lambda_client) as lambda_stub, Stubber(s3) as s3_stub:  # s3: no call expected
        lambda_stub.add_client_error(
            "invoke", service_error_code=code, service_message=aws_message, http_status_code=status
        )
        lambda_pipes = LambdaPipes.aws(
            pipes_bucket="unused", lambda_client=lambda_client, s3_client=s3
        )
        result = run_probe(NOISY, lambda_pipes)
        lambda_stub.assert_no_pending_responses()
        s3_stub.assert_no_pending_responses()
    assert not result.success
    message = failure_of(result).error.message
    assert named in message and fix in message and aws_message in message
    assert pipes_warnings(result) == []


def test_throttled_local_invoke_fails_with_the_concurrency_settings():
    with LocalLambdaRuntime({NOISY.name: NOISY}, max_concurrency=0) as throttled:
        result = run_probe(NOISY, LambdaPipes.local(throttled))
    assert not result.success
    message = failure_of(result).error.message
    assert "TooManyRequestsException" in message and "LAKEHOUSE_FANOUT_CONCURRENCY" in message
    assert pipes_warnings(result) == []


def test_missing_pipes_bucket_fails_naming_the_setting(aws_env, moto_endpoint):
    """The function cannot write its messages: it fails, and says which setting to change."""
    s3 = boto3.client("s3")
    with LocalLambdaRuntime({NOISY.name: NOISY}, environment=aws_env) as aws_like_lambda:
        lambda_pipes = LambdaPipes.aws(
            pipes_bucket="no-such-pipes-bucket", lambda_client=aws_like_lambda, s3_client=s3
        )
        result = run_probe(NOISY, lambda_pipes)
    assert not result.success
    message = failure_of(result).error.message
    assert "NoSuchBucket" in message and "LAKEHOUSE_PIPES_BUCKET" in message
    assert "aws s3 mb s3://no-such-pipes-bucket" in message


def without_aws_configuration(monkeypatch, tmp_path) -> None:
    """No region, no credentials, no profile files, no instance metadata (no network)."""
    for name in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty-aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches credentials seen earlier


def test_missing_region_names_aws_region(monkeypatch, tmp_path):
    without_aws_configuration(monkeypatch, tmp_path)
    with pytest.raises(MissingAwsSettingError, match="set AWS_REGION"):
        LambdaPipes.aws(pipes_bucket="lake")
    with pytest.raises(MissingAwsSettingError, match="set AWS_REGION"):
        CloudWatchMetrics("Lakehouse/Pipelines")


def test_missing_credentials_name_how_to_configure_them(monkeypatch, tmp_path):
    without_aws_configuration(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # were a request sent: nowhere
    lambda_pipes = LambdaPipes.aws(pipes_bucket="lake", region="eu-west-1")
    result = run_probe(NOISY, lambda_pipes)
    assert not result.success
    message = failure_of(result).error.message
    assert "No AWS credentials" in message and "aws configure" in message
    assert "AWS_ACCESS_KEY_ID" in message


def test_local_runtime_gives_workers_the_configured_region(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path), **os.environ})
    lambda_pipes = build_resources(settings)["lambda_pipes"]
    runtime = lambda_pipes.lambda_client
    runtime._functions[REGION.name] = REGION  # a probe beside the registry's functions,
    runtime._configured[REGION.name] = {}  # configured with no variables of its own
    runtime._sandboxes.pools[REGION.name] = type(runtime._sandboxes.pools["lakehouse-merge"])(None)
    try:
        result = run_probe(REGION, lambda_pipes)
    finally:
        runtime.close()
    assert result.success
    assert materialization_metadata(result)["region"] == "eu-central-1"


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
