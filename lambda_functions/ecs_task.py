"""Run one data-plane request as an ECS task: ``python -m lambda_functions.ecs_task``.

The ECS route's task side. It runs in the same container image as the Lambda functions
(``deploy/Dockerfile``; the task definition overrides the image's Lambda entry point with this
module) and calls the same handler the Lambda function would, with the same event, so the same
Pipes messages, logs and metadata reach Dagster.

What dagster-aws's ``PipesECSClient`` gives the task (dagster-aws 0.29, ``pipes/clients/ecs.py``):
- the Pipes bootstrap as two environment variables of every container, set through RunTask's
  ``overrides.containerOverrides[].environment`` (Amazon ECS API Reference, "RunTask",
  "ContainerOverride"): ``DAGSTER_PIPES_CONTEXT`` carries the whole context (its ``extras`` hold
  the request: ``{"function": <registry name>, "request": <request event>}``) and
  ``DAGSTER_PIPES_MESSAGES`` says where messages go;
- with its default reader, ``PipesCloudWatchMessageReader``, the messages params are
  ``{"stdio": "stdout"}``: the task prints each message as a JSON line on stdout, the ``awslogs``
  log driver ships stdout to CloudWatch Logs, and the reader reads them back with
  ``GetLogEvents``. ``lambda_functions.pipes.open_pipes`` picks dagster-pipes' default writer for
  these params, so the handlers need no change. Stdout is made line-buffered here so messages
  (and progress logs) reach CloudWatch while the task runs, not only when it exits.

The process exits 0 when the handler returns and, when it raises, with the exit code of the
error's kind (65 terminal, 75 transient, 1 unplanned) (the error is also reported to
Dagster through Pipes before); ``PipesECSClient`` fails the step on a non-zero exit code.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesDefaultContextLoader,
    PipesMappingParamsLoader,
)

from lambda_functions.errors import TerminalError, exit_code
from lambda_functions.registry import FUNCTIONS, FunctionSpec
from lambda_functions.request_fields import closest_names

# Seconds a handler that works to a deadline (capture: it stops at a batch boundary before the
# deadline and resumes on the next run) may run as a task. Lambda gives it at most 900 s; a task
# has no limit, so the route gives it this, overridable per task definition.
DEFAULT_TASK_TIME_LIMIT_S = 3 * 3600
TIME_LIMIT_VARIABLE = "LAKEHOUSE_TASK_TIME_LIMIT_SECONDS"


class EcsTaskRequestError(TerminalError, ValueError):
    """The task was started without a usable request: no Pipes bootstrap in its environment, no
    ``function``/``request`` in the Pipes extras, or a function the registry does not know."""


@dataclass
class TaskContext:
    """The subset of Lambda's context object the handlers use, for a handler run as a task.

    ``get_remaining_time_in_millis`` counts down from ``time_limit_s`` (Lambda's counts down
    from the function timeout), so a handler that stops at its deadline behaves the same way.
    """

    function_name: str
    memory_limit_in_mb: int
    time_limit_s: float
    started_at: float
    aws_request_id: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started_at + self.time_limit_s - time.monotonic()) * 1000))


@dataclass(frozen=True)
class TaskRequest:
    """What the task was asked to do: the function (its registry spec) and its request event."""

    spec: FunctionSpec
    request: dict[str, Any]


def read_task_request(environ: Mapping[str, str]) -> TaskRequest:
    """The function and request ``PipesECSClient.run(extras=...)`` passed to this task.

    Args:
        environ: the task's environment, holding ``DAGSTER_PIPES_CONTEXT`` and
            ``DAGSTER_PIPES_MESSAGES`` (base64 of zlib-compressed JSON, as dagster-pipes encodes).

    Returns:
        The registry spec named by ``extras["function"]`` and the request event
        ``extras["request"]`` (a ``lambda_functions.contracts`` request's ``to_event()``).

    Raises:
        EcsTaskRequestError: the bootstrap variables are missing, ``extras`` lacks ``function``
            or ``request``, or the function is not in ``lambda_functions.registry.FUNCTIONS``.
    """
    loader = PipesMappingParamsLoader(environ)
    missing = [
        name
        for name in (DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR)
        if name not in environ
    ]
    if missing:
        raise EcsTaskRequestError(
            f"the task's environment has no {' or '.join(missing)}: start it through "
            "dagster-aws's PipesECSClient (lakehouse_pipelines.resources.ecs_pipes), which sets "
            "them in the RunTask container overrides"
        )
    with PipesDefaultContextLoader().load_context(loader.load_context_params()) as data:
        extras = dict(data.get("extras") or {})
    name, request = extras.get("function"), extras.get("request")
    if not isinstance(name, str) or not isinstance(request, dict):
        raise EcsTaskRequestError(
            "the Pipes context extras must be {'function': <function name>, 'request': "
            f"<request event>}}, got keys {sorted(extras)}"
        )
    if name not in FUNCTIONS:
        raise EcsTaskRequestError(
            f"unknown function {name!r}; did you mean {closest_names(name, list(FUNCTIONS))}? "
            f"(registered: {sorted(FUNCTIONS)})"
        )
    return TaskRequest(FUNCTIONS[name], request)


def load_handler(spec: FunctionSpec) -> Callable[[dict[str, Any], Any], Any]:
    """The handler ``spec.handler`` names ("package.module.attribute", Lambda's Handler)."""
    module, _, attribute = spec.handler.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def run_task(environ: Mapping[str, str]) -> Any:
    """Run the request this task was started for, through the function's own handler.

    The handler receives the Lambda event shape: the request's fields plus the two Pipes
    bootstrap keys, exactly as ``PipesLambdaClient`` injects them (same names, same encoding), so
    ``open_pipes`` inside the handler opens the session Dagster started for this task.

    Args:
        environ: the task's environment (see ``read_task_request``); ``LAKEHOUSE_TASK_TIME_LIMIT_
            SECONDS`` optionally sets the handler's deadline (default 3 hours).

    Returns:
        What the handler returns (Lambda would discard it too; results travel as Pipes messages).

    Raises:
        EcsTaskRequestError: see ``read_task_request``.
        Exception: whatever the handler raises, after it has reported it through Pipes.
    """
    task = read_task_request(environ)
    event = {
        **task.request,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: environ[DAGSTER_PIPES_CONTEXT_ENV_VAR],
        DAGSTER_PIPES_MESSAGES_ENV_VAR: environ[DAGSTER_PIPES_MESSAGES_ENV_VAR],
    }
    context = TaskContext(
        function_name=task.spec.name,
        memory_limit_in_mb=task.spec.memory_mb,
        time_limit_s=float(environ.get(TIME_LIMIT_VARIABLE) or DEFAULT_TASK_TIME_LIMIT_S),
        started_at=time.monotonic(),
        aws_request_id=environ.get("ECS_CONTAINER_METADATA_URI_V4", "").rsplit("/", 1)[-1],
    )
    return load_handler(task.spec)(event, context)


def main() -> int:
    """Entry point of the ECS task: 0 when the handler returned; when it raised, the exit code
    of the error's kind (``lambda_functions.errors.EXIT_CODES``: 65 terminal, 75 transient, 1
    unplanned), so the orchestrator decides on a retry as it does for a Lambda error type."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        run_task(os.environ)
    except Exception as error:  # reported through Pipes already when the session was open
        traceback.print_exc()  # the task's log (CloudWatch) keeps the stack trace
        return exit_code(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
