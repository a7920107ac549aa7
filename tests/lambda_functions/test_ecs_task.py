"""The ECS task's entry point reads its request from the Pipes context's extras and refuses,
naming the fix, to run without one."""

import subprocess
import sys

import pytest
from dagster_pipes import encode_param

from lambda_functions.ecs_task import EcsTaskRequestError, TaskContext, read_task_request
from lambda_functions.errors import TERMINAL_ERROR_TYPES
from lambda_functions.registry import MERGE


def bootstrap(extras: dict) -> dict[str, str]:
    """The two variables PipesECSClient sets (PipesEnvContextInjector: the context inline)."""
    return {
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": {"extras": extras}}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"stdio": "stdout"}),
    }


def test_request_and_function_come_from_the_extras():
    request = {"request": "merge", "lake_uri": "/tmp/lake"}
    task = read_task_request(bootstrap({"function": MERGE.name, "request": request}))
    assert task.spec == MERGE and task.request == request


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({}, "DAGSTER_PIPES_CONTEXT"),
        (bootstrap({"request": {}}), "'function'"),
        (bootstrap({"function": "lakehouse-merj", "request": {}}), "lakehouse-merge"),
    ],
)
def test_a_task_without_a_usable_request_is_refused(environ, says):
    with pytest.raises(EcsTaskRequestError, match=says) as refused:
        read_task_request(environ)
    assert isinstance(refused.value, ValueError)
    assert "EcsTaskRequestError" in TERMINAL_ERROR_TYPES


def test_handlers_deadline_counts_down_from_the_task_time_limit():
    context = TaskContext("lakehouse-cdc-capture", 1024, time_limit_s=60, started_at=0)
    assert context.get_remaining_time_in_millis() == 0  # long past
    import time

    context = TaskContext("lakehouse-cdc-capture", 1024, 60, started_at=time.monotonic())
    assert 59_000 < context.get_remaining_time_in_millis() <= 60_000


def test_entry_point_exits_non_zero_when_started_outside_pipes():
    done = subprocess.run(
        [sys.executable, "-m", "lambda_functions.ecs_task"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
        check=False,
    )
    assert done.returncode == 65  # EX_DATAERR: a terminal error (errors.EXIT_CODES)
    assert "EcsTaskRequestError" in done.stderr and "PipesECSClient" in done.stderr
