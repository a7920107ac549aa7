"""The handler's environment is its function's, as in AWS Lambda; dead idle workers are replaced.

The handler sees exactly the variables its function is configured with (the ones its
``FunctionSpec.environment`` lists, the same list the deploy template renders) plus the variables
Lambda itself defines, never the caller's environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import lambda_functions
from lakehouse_local.lambda_runtime import LocalLambdaRuntime
from lakehouse_pipelines.deploy_template import VARIABLE_VALUES, render_yaml
from lakehouse_pipelines.resources import local_function_values
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.registry import FUNCTIONS, MQ_INGEST, FunctionSpec
from tests.lakehouse_local.lambda_runtime.test_runtime import HERE, exits_soon, invoke

CONFIGURED = FunctionSpec(
    "configured",
    "sample_handlers.read_setting",
    timeout_s=10,
    memory_mb=384,
    environment=("LAKEHOUSE_SETTING_FOR_TEST",),
)
UNCONFIGURED = FunctionSpec("unconfigured", "sample_handlers.read_setting", 10, 256)
ENVIRONMENT = FunctionSpec(
    "environment",
    "sample_handlers.environment",
    timeout_s=10,
    memory_mb=640,
    environment=("LAKEHOUSE_SETTING_FOR_TEST",),
)
LAMBDA_DEFINED = {  # what Lambda sets in every Python function's environment
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "TZ",
    "LANG",
    "PATH",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
}
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def caller_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The caller (Dagster, a test) has variables of its own that no function is configured with."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("LAKEHOUSE_SETTING_FOR_TEST", "from the caller")
    monkeypatch.setenv("LAKEHOUSE_CALLER_ONLY", "leaked")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def runtime(caller_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalLambdaRuntime]:
    functions = {s.name: s for s in (CONFIGURED, UNCONFIGURED, ENVIRONMENT)}
    with LocalLambdaRuntime(
        functions,
        variables={"LAKEHOUSE_SETTING_FOR_TEST": "configured", "LAKEHOUSE_NOT_LISTED": "x"},
        log_dir=tmp_path / "logs",
    ) as runtime:
        yield runtime


def handler_env(runtime: LocalLambdaRuntime) -> dict[str, Any]:
    response = invoke(runtime, "environment", {})
    assert "FunctionError" not in response, response["body"]
    return response["body"]


def test_a_handler_depending_on_an_unconfigured_variable_fails_as_in_aws(
    runtime: LocalLambdaRuntime,
) -> None:
    """The caller has the variable; the function is not configured with it: a KeyError, as the
    deployed function would raise. Configured, the function gets the deployment's value."""
    missing = invoke(runtime, "unconfigured", {})
    assert missing["FunctionError"] == "Unhandled"
    assert missing["body"]["errorType"] == "KeyError"
    assert "LAKEHOUSE_SETTING_FOR_TEST" in missing["body"]["errorMessage"]

    configured = invoke(runtime, "configured", {})
    assert "FunctionError" not in configured
    assert configured["body"] == "configured"  # the deployment's value, not the caller's


def test_the_handler_sees_its_configuration_and_lambdas_variables_and_nothing_else(
    runtime: LocalLambdaRuntime,
) -> None:
    env = handler_env(runtime)
    env.pop("pid")
    # Python's own PEP 538 locale coercion, where the machine lacks en_US.UTF-8 (AWS has it)
    if env.get("LC_CTYPE") in ("C.UTF-8", "C.utf8", "UTF-8"):
        env.pop("LC_CTYPE")

    assert set(env) == LAMBDA_DEFINED | {"LAKEHOUSE_SETTING_FOR_TEST"}
    assert env["LAKEHOUSE_SETTING_FOR_TEST"] == "configured"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert env["_HANDLER"] == "sample_handlers.environment"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "environment"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "640"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/environment"
    assert re.fullmatch(
        r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", env["AWS_LAMBDA_LOG_STREAM_NAME"]
    )
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == runtime.region
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{python}"
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Sampled=0", env["_X_AMZN_TRACE_ID"])
    assert env["TZ"] == ":UTC" and env["LANG"] == "en_US.UTF-8"
    assert re.fullmatch(r"[\d.]+:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    project = Path(lambda_functions.__file__).resolve().parent.parent
    assert Path(env["LAMBDA_TASK_ROOT"]) == project  # /var/task: the function's code
    assert (Path(env["LAMBDA_RUNTIME_DIR"]) / "worker.py").is_file()  # /var/runtime
    assert env["PATH"].endswith("/usr/local/bin:/usr/bin/:/bin:/opt/bin")
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # /var/lang/bin
    assert str(HERE) in env["PYTHONPATH"].split(os.pathsep)  # the caller's code, importable


def test_credentials_stand_in_for_the_execution_role_only_when_set(
    caller_env: pytest.MonkeyPatch, runtime: LocalLambdaRuntime
) -> None:
    """No caller credentials: none. The caller's: passed through (moto and real AWS keep
    working). ``environment``'s: those, all of them, instead of the caller's."""
    assert not set(CREDENTIALS) & set(handler_env(runtime))

    caller_env.setenv("AWS_ACCESS_KEY_ID", "caller-key")
    caller_env.setenv("AWS_SECRET_ACCESS_KEY", "caller-secret")
    with LocalLambdaRuntime({ENVIRONMENT.name: ENVIRONMENT}, variables=runtime_values()) as rt:
        env = handler_env(rt)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        "caller-key",
        "caller-secret",
    )
    assert "AWS_SESSION_TOKEN" not in env  # the caller has none

    role = {"AWS_ACCESS_KEY_ID": "role-key", "AWS_SECRET_ACCESS_KEY": "role-secret"}
    with LocalLambdaRuntime(
        {ENVIRONMENT.name: ENVIRONMENT}, environment=role, variables=runtime_values()
    ) as rt:
        env = handler_env(rt)
    assert {k: env.get(k) for k in CREDENTIALS} == {**role, "AWS_SESSION_TOKEN": None}


def runtime_values() -> dict[str, str]:
    return {"LAKEHOUSE_SETTING_FOR_TEST": "configured"}


def test_environment_sets_variables_on_every_function_and_may_not_set_reserved_ones(
    caller_env: pytest.MonkeyPatch,
) -> None:
    endpoint = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}  # e.g. a test's moto server
    with LocalLambdaRuntime(
        {ENVIRONMENT.name: ENVIRONMENT}, environment=endpoint, variables=runtime_values()
    ) as rt:
        assert handler_env(rt)["AWS_ENDPOINT_URL"] == endpoint["AWS_ENDPOINT_URL"]
    for reserved in ("LAMBDA_TASK_ROOT", "AWS_LAMBDA_RUNTIME_API", "TZ", "_X_AMZN_TRACE_ID"):
        with pytest.raises(ValueError, match="Lambda reserves"):
            LocalLambdaRuntime({}, environment={reserved: "x"})


def test_a_variable_the_deployment_cannot_supply_fails_at_construction() -> None:
    with pytest.raises(ValueError, match=r"configured.*LAKEHOUSE_SETTING_FOR_TEST.*no value"):
        LocalLambdaRuntime({CONFIGURED.name: CONFIGURED})


def test_template_and_local_runtime_configure_the_same_variables_from_the_registry(
    tmp_path: Path,
) -> None:
    """One list (``FunctionSpec.environment``), two deployments that supply every name on it."""
    listed = {name for spec in FUNCTIONS.values() for name in spec.environment}
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    assert listed <= set(VARIABLE_VALUES) and listed <= set(local_function_values(settings))
    template = yaml.safe_load(render_yaml())
    deployed = {
        r["Properties"]["FunctionName"]: r["Properties"]["Environment"]["Variables"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    }
    assert {name: set(env) for name, env in deployed.items()} == {
        name: set(spec.environment) for name, spec in FUNCTIONS.items()
    }
    LocalLambdaRuntime(FUNCTIONS, variables=local_function_values(settings)).close()


MQ_EVENT = json.loads(  # an SQS batch: one change event, one malformed message
    (HERE.parents[1] / "lambda_functions/cdc_capture/fixtures/mq/sqs_event.json").read_text()
)


def test_the_mq_function_reads_its_lake_from_its_configuration_not_the_callers(
    caller_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real handler: ``LAKEHOUSE_LAKE_URI`` set in the caller does not reach it; the value
    the deployment configures does."""
    caller_env.setenv("LAKEHOUSE_LAKE_URI", str(tmp_path / "caller-lake"))
    values = {"LAKEHOUSE_METRICS_NAMESPACE": "Lakehouse/Test"}
    not_configured = dataclasses.replace(MQ_INGEST, environment=("LAKEHOUSE_METRICS_NAMESPACE",))
    with LocalLambdaRuntime({MQ_INGEST.name: not_configured}, variables=values) as rt:
        response = invoke(rt, MQ_INGEST.name, MQ_EVENT)
    assert response["FunctionError"] == "Unhandled"
    assert "LAKEHOUSE_LAKE_URI is not set on the function" in response["body"]["errorMessage"]

    lake = tmp_path / "configured-lake"
    values["LAKEHOUSE_LAKE_URI"] = str(lake)
    with LocalLambdaRuntime({MQ_INGEST.name: MQ_INGEST}, variables=values) as rt:
        response = invoke(rt, MQ_INGEST.name, MQ_EVENT)
    assert "FunctionError" not in response, response["body"]
    assert response["body"]["batchItemFailures"]  # the malformed message, for the redrive
    assert lake.exists() and not (tmp_path / "caller-lake").exists()


def test_a_killed_idle_worker_is_replaced_by_a_cold_start(runtime: LocalLambdaRuntime) -> None:
    first = invoke(runtime, "environment", {})["body"]["pid"]
    os.kill(int(first), signal.SIGKILL)  # the environment dies while idle
    assert exits_soon(int(first))

    response = invoke(runtime, "environment", {}, LogType="Tail")

    assert "FunctionError" not in response, response["body"]  # not Runtime.ExitError
    assert response["body"]["pid"] != first
    assert runtime.invocations[-1].cold_start
    assert "Init Duration:" in runtime.last_log("environment").splitlines()[-1]
