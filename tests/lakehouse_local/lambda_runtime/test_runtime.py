"""The local Lambda runtime behaves like ``boto3.client("lambda").invoke`` against AWS Lambda."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from botocore.response import StreamingBody

from lakehouse_local.lambda_runtime import LocalLambdaRuntime, ResourceNotFoundException
from lambda_functions.registry import FunctionSpec

HERE = Path(__file__).parent
REQUEST_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def spec(name: str, handler: str, timeout_s: float = 10, memory_mb: int = 256) -> FunctionSpec:
    """A function whose handler is ``sample_handlers.<handler>`` (or ``handler`` if dotted)."""
    handler = handler if "." in handler else f"sample_handlers.{handler}"
    return FunctionSpec(name, handler, timeout_s, memory_mb)  # type: ignore[arg-type]


FUNCTIONS = {
    s.name: s
    for s in (
        spec("echo", "echo"),
        spec("count", "count"),
        spec("context", "describe_context", timeout_s=7, memory_mb=512),
        spec("output", "write_output"),
        spec("fail", "fail"),
        spec("unserializable", "return_unserializable"),
        spec("sleep", "sleep", timeout_s=1.0),
        spec("allocate", "allocate", memory_mb=128),
        spec("exit", "exit_process"),
        spec("modules", "loaded_modules"),
        spec("write-file", "write_file"),
        spec("no-module", "no_such_module.handler"),
        spec("no-attribute", "no_such_function"),
    )
}


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalLambdaRuntime]:
    monkeypatch.syspath_prepend(str(HERE))  # workers import sample_handlers via our sys.path
    with LocalLambdaRuntime(
        FUNCTIONS, environment={"LAKEHOUSE_TEST": "yes"}, log_dir=tmp_path / "logs"
    ) as runtime:
        yield runtime


def invoke(runtime: LocalLambdaRuntime, name: str, event: Any = None, **kwargs: Any) -> dict:
    payload = b"" if event is None else json.dumps(event)
    response = runtime.invoke(FunctionName=name, Payload=payload, **kwargs)
    response["body"] = json.loads(response["Payload"].read())
    return response


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its new parent counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def exits_soon(pid: int, within_s: float = 5.0) -> bool:
    """SIGKILL is asynchronous: give the kernel a moment to finish the process off."""
    deadline = time.monotonic() + within_s
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def log_result(response: dict) -> str:
    return base64.b64decode(response["LogResult"]).decode("utf-8")


def test_echo_round_trip_has_boto3_response_shape(runtime: LocalLambdaRuntime) -> None:
    response = runtime.invoke(FunctionName="echo", Payload=json.dumps({"a": [1, "b"]}))

    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response and "LogResult" not in response
    assert isinstance(response["Payload"], StreamingBody)
    assert json.loads(response["Payload"].read())["event"] == {"a": [1, "b"]}
    metadata = response["ResponseMetadata"]
    assert re.fullmatch(REQUEST_ID, metadata["RequestId"])
    assert metadata["HTTPStatusCode"] == 200 and metadata["RetryAttempts"] == 0
    assert metadata["HTTPHeaders"]["x-amzn-requestid"] == metadata["RequestId"]
    assert invoke(runtime, "echo")["body"]["event"] == {}  # no payload: an empty event


def test_max_memory_used_measures_the_worker_not_the_runtime(runtime: LocalLambdaRuntime) -> None:
    ballast = b"x" * (300 * 1024 * 1024)  # this process is now far bigger than the function
    response = invoke(runtime, "echo", {}, LogType="Tail")
    del ballast

    record = runtime.invocations[-1]
    assert 5 <= record.max_memory_used_mb < 100 and record.memory_size_mb == 256
    assert f"\tMax Memory Used: {record.max_memory_used_mb} MB" in log_result(response)


def test_context_has_lambda_fields_and_remaining_time_decreases(
    runtime: LocalLambdaRuntime,
) -> None:
    env_names = ["AWS_REGION", "AWS_DEFAULT_REGION", "_HANDLER", "AWS_LAMBDA_FUNCTION_NAME"]
    env_names += ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_STREAM_NAME", "LAKEHOUSE_TEST"]
    client_context = base64.b64encode(json.dumps({"custom": {"run": "42"}}).encode()).decode()
    response = invoke(runtime, "context", {"env": env_names}, ClientContext=client_context)
    context = response["body"]

    assert context["aws_request_id"] == response["ResponseMetadata"]["RequestId"]
    assert context["function_name"] == "context"
    assert context["function_version"] == "$LATEST"
    assert (
        context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:context"
    )
    assert context["memory_limit_in_mb"] == "512"  # a string, as in the AWS Python runtime
    assert context["log_group_name"] == "/aws/lambda/context"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", context["log_stream_name"])
    assert context["client_context"] == {"run": "42"}
    assert context["cognito_identity_id"] is None
    first, second = context["remaining_ms"]
    assert 6000 < first <= 7000
    assert 150 <= first - second < 1000  # the handler slept 0.2 s between the two readings
    assert context["env"] == {
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "_HANDLER": "sample_handlers.describe_context",
        "AWS_LAMBDA_FUNCTION_NAME": "context",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_LOG_STREAM_NAME": context["log_stream_name"],
        "LAKEHOUSE_TEST": "yes",
    }


def test_worker_imports_the_handler_without_dagster_or_the_runtime(
    runtime: LocalLambdaRuntime,
) -> None:
    assert invoke(runtime, "modules")["body"] == []


def test_warm_worker_keeps_module_state_and_only_first_invocation_is_cold(
    runtime: LocalLambdaRuntime,
) -> None:
    first = invoke(runtime, "count", {}, LogType="Tail")
    second = invoke(runtime, "count", {}, LogType="Tail")

    assert first["body"]["pid"] == second["body"]["pid"]
    assert (first["body"]["invocations"], second["body"]["invocations"]) == (1, 2)
    cold, warm = runtime.invocations
    assert cold.cold_start and cold.init_duration_ms and cold.init_duration_ms > 0
    assert not warm.cold_start and warm.init_duration_ms is None
    assert "Init Duration:" in log_result(first) and "Init Duration:" not in log_result(second)
    # billed duration rounds up to the ms and, on a cold start, includes the init duration
    assert cold.billed_duration_ms >= cold.duration_ms + cold.init_duration_ms
    assert warm.billed_duration_ms == math.ceil(warm.duration_ms)


def test_log_has_start_end_report_lines_and_log_result_is_the_last_4_kb(
    runtime: LocalLambdaRuntime,
) -> None:
    small = invoke(runtime, "output", {}, LogType="Tail")
    rid = small["ResponseMetadata"]["RequestId"]
    lines = log_result(small).splitlines()
    assert lines[0] == f"START RequestId: {rid} Version: $LATEST"
    assert lines[-2] == f"END RequestId: {rid}"
    assert re.fullmatch(
        rf"REPORT RequestId: {rid}\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
        r"Memory Size: 256 MB\tMax Memory Used: \d+ MB\tInit Duration: \d+\.\d\d ms",
        lines[-1],
    )
    assert "init: sample_handlers imported" in runtime.last_log("output")  # before START

    big = invoke(runtime, "output", {"filler": 6000}, LogType="Tail")
    tail = base64.b64decode(big["LogResult"])
    assert len(tail) == 4096
    assert tail == runtime.last_log("output").encode()[-4096:]
    big_rid = big["ResponseMetadata"]["RequestId"]
    *_, end, report = tail.decode().splitlines()
    assert end == f"END RequestId: {big_rid}"
    assert report.startswith(f"REPORT RequestId: {big_rid}\tDuration: ")
    assert "Init Duration" not in report  # warm


def test_log_captures_file_descriptor_output_and_child_processes(
    runtime: LocalLambdaRuntime, tmp_path: Path
) -> None:
    response = invoke(runtime, "output", {}, LogType="Tail")
    log = log_result(response)
    start, end = log.index("START RequestId"), log.index("END RequestId")
    captured = log[start:end]
    for text in ("from print", "from fd 1", "from fd 2", "from a child process"):
        assert f"\n{text}\n" in captured
    group_log = (tmp_path / "logs" / "output.log").read_text()
    assert group_log == runtime.last_log("output")  # appended to the function's log group
    invoke(runtime, "output", {})
    assert (tmp_path / "logs" / "output.log").read_text().count("START RequestId") == 2


def test_the_log_directory_is_created_at_the_first_log_not_when_the_runtime_is_built(
    runtime: LocalLambdaRuntime, tmp_path: Path
) -> None:
    assert not (tmp_path / "logs").exists()  # importing the definitions builds a runtime
    invoke(runtime, "echo", {"a": 1})
    assert (tmp_path / "logs" / "echo.log").read_text() == runtime.last_log("echo")


def test_handler_exception_is_unhandled_function_error_and_worker_stays_warm(
    runtime: LocalLambdaRuntime,
) -> None:
    first = invoke(runtime, "fail", {"value": 7}, LogType="Tail")
    second = invoke(runtime, "fail", {"value": 8}, LogType="Tail")

    assert first["StatusCode"] == 200 and first["FunctionError"] == "Unhandled"
    error = first["body"]
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "bad input 7 (call 1)"
    assert error["requestId"] == first["ResponseMetadata"]["RequestId"]
    assert len(error["stackTrace"]) == 1  # the handler's frame only, not the runtime's
    assert re.fullmatch(
        r'  File ".*sample_handlers\.py", line \d+, in fail\n    raise ValueError\(.*\)\n',
        error["stackTrace"][0],
    )
    log = log_result(first)
    assert "\n[ERROR] ValueError: bad input 7 (call 1)\nTraceback (most recent call last):\n" in log
    assert log.index("[ERROR]") < log.index("END RequestId")
    assert second["body"]["errorMessage"] == "bad input 8 (call 2)"  # same warm module state
    assert [r.error_type for r in runtime.invocations] == ["ValueError", "ValueError"]
    assert [r.cold_start for r in runtime.invocations] == [True, False]


def test_unserializable_result_and_missing_handler_have_runtime_error_types(
    runtime: LocalLambdaRuntime,
) -> None:
    marshal = invoke(runtime, "unserializable", {})
    assert marshal["FunctionError"] == "Unhandled"
    assert marshal["body"]["errorType"] == "Runtime.MarshalError"
    assert marshal["body"]["errorMessage"] == (
        "Unable to marshal response: Object of type object is not JSON serializable"
    )

    no_module = invoke(runtime, "no-module", {})
    assert no_module["FunctionError"] == "Unhandled"
    assert no_module["body"] == {
        "errorMessage": "Unable to import module 'no_such_module': No module named 'no_such_module'",
        "errorType": "Runtime.ImportModuleError",
        "requestId": "",
        "stackTrace": [],
    }
    no_attribute = invoke(runtime, "no-attribute", {})
    assert no_attribute["body"]["errorType"] == "Runtime.HandlerNotFound"
    assert no_attribute["body"]["errorMessage"] == (
        "Handler 'no_such_function' missing on module 'sample_handlers'"
    )
    assert invoke(runtime, "no-module", {})["body"]["errorType"] == "Runtime.ImportModuleError"
    assert runtime.invocations[-1].cold_start  # init is retried in a new environment


def test_timeout_kills_the_environment_and_the_next_invocation_starts_cold(
    runtime: LocalLambdaRuntime,
) -> None:
    started = time.monotonic()
    response = invoke(runtime, "sleep", {"seconds": 30, "with_child": True}, LogType="Tail")
    assert time.monotonic() - started < 5

    rid = response["ResponseMetadata"]["RequestId"]
    assert response["FunctionError"] == "Unhandled"
    assert response["body"] == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {rid} Error: Task timed out after 1.00 seconds",
    }
    log = log_result(response)
    found = re.search(r"going to sleep: pid (\d+) child (\d+)\n", log)
    assert found, log  # output written before the kill is kept
    assert re.search(
        rf"\n\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z {rid} Task timed out after 1.00 seconds\n"
        rf"END RequestId: {rid}\n",
        log,
    )
    assert all(map(exits_soon, map(int, found.groups())))  # the worker and its child process
    record = runtime.invocations[-1]
    assert record.error_type == "Sandbox.Timedout" and record.duration_ms >= 1000

    after = invoke(runtime, "sleep", {"seconds": 0})
    assert "FunctionError" not in after
    assert runtime.invocations[-1].cold_start


def test_memory_over_the_limit_is_out_of_memory(runtime: LocalLambdaRuntime) -> None:
    response = invoke(runtime, "allocate", {"mb": 300}, LogType="Tail")

    rid = response["ResponseMetadata"]["RequestId"]
    assert response["FunctionError"] == "Unhandled"
    assert response["body"] == {
        "errorType": "Runtime.OutOfMemory",
        "errorMessage": f"RequestId: {rid} Error: Runtime exited with error: signal: killed",
    }
    assert "Max Memory Used: 128 MB" in log_result(response)
    assert runtime.invocations[-1].max_memory_used_mb == 128
    assert invoke(runtime, "allocate", {"mb": 1, "hold_s": 0})["body"] == 1024 * 1024
    assert runtime.invocations[-1].cold_start


def test_worker_that_exits_is_runtime_exit_error(runtime: LocalLambdaRuntime) -> None:
    response = invoke(runtime, "exit", {"code": 3})

    rid = response["ResponseMetadata"]["RequestId"]
    assert response["FunctionError"] == "Unhandled"
    assert response["body"] == {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {rid} Error: Runtime exited with error: exit status 3",
    }
    invoke(runtime, "exit", {"code": 4})
    assert runtime.invocations[-1].cold_start


def test_unknown_function_raises_resource_not_found_client_error(
    runtime: LocalLambdaRuntime,
) -> None:
    with pytest.raises(runtime.exceptions.ResourceNotFoundException) as raised:
        runtime.invoke(FunctionName="does-not-exist", Payload=b"{}")

    error = raised.value
    assert isinstance(error, ClientError) and isinstance(error, ResourceNotFoundException)
    assert error.operation_name == "Invoke"
    assert error.response["Error"] == {
        "Code": "ResourceNotFoundException",
        "Message": "Function not found: arn:aws:lambda:us-east-1:000000000000:function:does-not-exist",
    }
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError, match=r"\(ResourceNotFoundException\).*Invoke"):
        runtime.invoke(FunctionName="echo", Qualifier="3")


def test_function_arns_and_latest_qualifier_resolve(runtime: LocalLambdaRuntime) -> None:
    arn = "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert invoke(runtime, arn, {"n": 1})["body"]["event"] == {"n": 1}
    assert invoke(runtime, f"{arn}:$LATEST", {"n": 2})["body"]["event"] == {"n": 2}
    assert invoke(runtime, "echo", {"n": 3}, Qualifier="$LATEST")["body"]["event"] == {"n": 3}
    with pytest.raises(runtime.exceptions.ResourceNotFoundException):
        runtime.invoke(FunctionName="arn:aws:lambda:eu-west-1:000000000000:function:echo")


def test_invalid_requests_are_rejected_like_boto3_and_lambda(runtime: LocalLambdaRuntime) -> None:
    with pytest.raises(ParamValidationError, match='Unknown parameter in input: "Bogus"'):
        runtime.invoke(FunctionName="echo", Bogus=1)
    with pytest.raises(ParamValidationError, match=r'Missing required parameter.*"FunctionName"'):
        runtime.invoke(Payload=b"{}")
    with pytest.raises(runtime.exceptions.InvalidRequestContentException) as not_json:
        runtime.invoke(FunctionName="echo", Payload=b"{not json")
    assert not_json.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(runtime.exceptions.RequestEntityTooLargeException) as too_large:
        runtime.invoke(FunctionName="echo", Payload=json.dumps("x" * 6 * 1024 * 1024))
    assert too_large.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    event_payload = json.dumps("x" * 1024 * 1024)
    with pytest.raises(runtime.exceptions.RequestEntityTooLargeException):
        runtime.invoke(FunctionName="echo", InvocationType="Event", Payload=event_payload)
    dry_run = runtime.invoke(FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
    assert dry_run["StatusCode"] == 204 and dry_run["Payload"].read() == b""
    assert runtime.invocations == []  # nothing ran
    with pytest.raises(ValueError, match=r"\['AWS_REGION', '_HANDLER'\].*Lambda reserves"):
        LocalLambdaRuntime(FUNCTIONS, environment={"AWS_REGION": "eu-west-1", "_HANDLER": "x.y"})
    LocalLambdaRuntime(FUNCTIONS, environment={"AWS_REGION": "us-east-1"}).close()  # agrees


def test_event_invocation_returns_202_and_runs_in_the_background(
    runtime: LocalLambdaRuntime, tmp_path: Path
) -> None:
    target = tmp_path / "written.txt"
    response = runtime.invoke(
        FunctionName="write-file", InvocationType="Event", Payload=json.dumps({"path": str(target)})
    )

    assert response["StatusCode"] == 202 and response["Payload"].read() == b""
    assert "FunctionError" not in response and "ExecutedVersion" not in response
    assert not target.exists()  # the call returned before the handler ran (it sleeps 0.2 s)
    assert runtime.wait_for_background(timeout=10)
    assert target.read_text() == response["ResponseMetadata"]["RequestId"]
    assert [r.function_name for r in runtime.invocations] == ["write-file"]


def test_concurrent_invocations_run_on_separate_workers(runtime: LocalLambdaRuntime) -> None:
    results: list[dict] = []
    barrier = threading.Barrier(2)

    def call() -> None:
        barrier.wait()
        results.append(invoke(runtime, "sleep", {"seconds": 0.5})["body"])

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    first, second = results
    assert first["pid"] != second["pid"]
    assert max(first["span"][0], second["span"][0]) < min(first["span"][1], second["span"][1])
    assert [r.cold_start for r in runtime.invocations] == [True, True]
    invoke(runtime, "sleep", {"seconds": 0})
    assert not runtime.invocations[-1].cold_start  # both stayed warm; one is reused


def test_max_concurrency_throttles_with_too_many_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    marker = tmp_path / "started"
    with LocalLambdaRuntime(FUNCTIONS, max_concurrency=1) as runtime:
        busy = threading.Thread(
            target=invoke,
            args=(runtime, "sleep", {"seconds": 0.5, "started_marker": str(marker)}),
        )
        busy.start()
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

        with pytest.raises(runtime.exceptions.TooManyRequestsException) as throttled:
            runtime.invoke(FunctionName="sleep", Payload=json.dumps({"seconds": 0}))
        assert throttled.value.response["Error"]["Message"] == "Rate Exceeded."
        assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert isinstance(throttled.value, ClientError)
        invoke(runtime, "echo", {})  # the limit is per function

        busy.join()
        assert "FunctionError" not in invoke(runtime, "sleep", {"seconds": 0})


def test_close_ends_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    runtime = LocalLambdaRuntime(FUNCTIONS)
    pids = [invoke(runtime, name, {})["body"]["pid"] for name in ("echo", "count")]
    assert all(psutil.pid_exists(pid) for pid in pids)

    runtime.close()

    assert all(map(exits_soon, pids))
    with pytest.raises(RuntimeError, match="closed"):
        runtime.invoke(FunctionName="echo")


def test_workers_exit_when_the_runtime_process_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, os, sys
        sys.path.insert(0, {str(HERE)!r})
        from lakehouse_local.lambda_runtime import LocalLambdaRuntime
        from lambda_functions.registry import FunctionSpec
        runtime = LocalLambdaRuntime({{"echo": FunctionSpec("echo", "sample_handlers.echo")}})
        response = runtime.invoke(FunctionName="echo", Payload=b"{{}}")
        print(json.loads(response["Payload"].read())["pid"], flush=True)
        os._exit(0)  # no close(), no atexit: the worker must notice on its own
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    pid = int(done.stdout.strip())

    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)
