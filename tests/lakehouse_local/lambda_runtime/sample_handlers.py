"""Handlers for the local Lambda runtime's tests, imported by its worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

INVOCATIONS = 0  # module state: survives between invocations of a warm environment
print("init: sample_handlers imported")


def echo(event: Any, context: Any) -> Any:
    return {"event": event, "pid": os.getpid()}


def count(event: Any, context: Any) -> dict[str, int]:
    global INVOCATIONS
    INVOCATIONS += 1
    return {"invocations": INVOCATIONS, "pid": os.getpid()}


def describe_context(event: Any, context: Any) -> dict[str, Any]:
    first = context.get_remaining_time_in_millis()
    time.sleep(0.2)
    return {
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "client_context": None if context.client_context is None else context.client_context.custom,
        "cognito_identity_id": context.identity.cognito_identity_id,
        "remaining_ms": [first, context.get_remaining_time_in_millis()],
        "env": {k: os.environ.get(k) for k in event.get("env", [])},
    }


def write_output(event: Any, context: Any) -> str:
    print("from print")
    os.write(1, b"from fd 1\n")
    os.write(2, b"from fd 2\n")
    subprocess.run(["echo", "from a child process"], check=True)
    sys.stdout.write("x" * event.get("filler", 0) + "\n")
    return "done"


def fail(event: Any, context: Any) -> None:
    global INVOCATIONS
    INVOCATIONS += 1
    raise ValueError(f"bad input {event['value']} (call {INVOCATIONS})")


def return_unserializable(event: Any, context: Any) -> object:
    return object()


def sleep(event: Any, context: Any) -> dict[str, Any]:
    """Sleep ``seconds``; optionally start a long-running child process first."""
    started = time.time()
    child = subprocess.Popen(["sleep", "60"]) if event.get("with_child") else None
    print(f"going to sleep: pid {os.getpid()} child {child and child.pid}", flush=True)
    if "started_marker" in event:
        Path(event["started_marker"]).write_text(str(os.getpid()))
    time.sleep(event["seconds"])
    if child is not None:
        child.kill()
        child.wait()
    return {"pid": os.getpid(), "span": [started, time.time()]}


def allocate(event: Any, context: Any) -> int:
    block = b"x" * (event["mb"] * 1024 * 1024)  # written, so resident
    time.sleep(event.get("hold_s", 1.0))
    return len(block)


def exit_process(event: Any, context: Any) -> None:
    os._exit(event.get("code", 3))


def loaded_modules(event: Any, context: Any) -> list[str]:
    prefixes = ("dagster", "botocore", "boto3", "lakehouse_pipelines")
    return sorted(name for name in sys.modules if name.startswith(prefixes))


def write_file(event: Any, context: Any) -> None:
    time.sleep(0.2)
    Path(event["path"]).write_text(context.aws_request_id)


def environment(event: Any, context: Any) -> dict[str, str]:
    """The whole environment the handler sees."""
    return {**os.environ, "pid": str(os.getpid())}


def read_setting(event: Any, context: Any) -> str:
    """Depends on a variable: works only where the function is configured with it."""
    return os.environ["LAKEHOUSE_SETTING_FOR_TEST"]
