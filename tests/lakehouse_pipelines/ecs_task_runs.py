"""The ECS route in tests: real botocore ECS and CloudWatch Logs clients under ``Stubber``, and the
task run locally as a subprocess through its real entry point.

No ECS stand-in: every call ``PipesECSClient`` makes goes through a real ``boto3.client("ecs")`` /
``boto3.client("logs")``, whose request parameters botocore validates against the service models
before ``Stubber`` answers (and ``Stubber`` validates each queued answer against the operation's
output shape). When RunTask is called, ``StubbedEcsRoute`` runs ``python -m
lambda_functions.ecs_task`` with exactly the environment RunTask's container overrides carry,
then queues what ECS and CloudWatch would answer next: DescribeTasks with the task STOPPED and the
process's exit code, and the task's log stream holding its stdout and stderr lines, one log event
per line, as the ``awslogs`` driver stores them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.stub import ANY, Stubber
from dagster._core.errors import DagsterExecutionInterruptedError

from lakehouse_pipelines.resources.ecs_pipes import EcsPipes
from lakehouse_pipelines.settings_ecs import EcsRouteSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
ACCOUNT = "123456789012"
CLUSTER = "lakehouse"
CLUSTER_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{CLUSTER}"
TASK_DEFINITION = "lakehouse-data-plane-task:1"
TASK_DEFINITION_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{TASK_DEFINITION}"
CONTAINER = "lakehouse-task"
LOG_GROUP = "/lakehouse/ecs-task"
SUBNETS = ("subnet-0a1b2c3d4e5f60001",)
SECURITY_GROUPS = ("sg-0a1b2c3d4e5f60001",)


def route_settings(**changes: Any) -> EcsRouteSettings:
    values: dict[str, Any] = {
        "cluster": CLUSTER,
        "task_definition": TASK_DEFINITION,
        "subnets": SUBNETS,
        "security_groups": SECURITY_GROUPS,
        "container_name": CONTAINER,
        "log_group": LOG_GROUP,
        "collections": frozenset({"*"}),
        "poll_seconds": 1,
        "max_wait_seconds": 60,
    }
    return EcsRouteSettings(**{**values, **changes})


@dataclass
class LocalTaskRun:
    """One run of the task's container command on this machine."""

    exit_code: int
    stdout: list[str]
    stderr: list[str]


def run_task_locally(environment: Mapping[str, str], timeout_s: float = 300) -> LocalTaskRun:
    """Run ``python -m lambda_functions.ecs_task`` as the container would, with ``environment``
    added to this process's environment (the task definition's and the overrides' variables)."""
    env = {**os.environ, **environment}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    done = subprocess.run(
        [sys.executable, "-m", "lambda_functions.ecs_task"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return LocalTaskRun(done.returncode, done.stdout.splitlines(), done.stderr.splitlines())


def _task(task_id: str, status: str, exit_code: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "containerArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:container/{CLUSTER}/{task_id}/c1",
        "name": CONTAINER,
        "lastStatus": status,
        "runtimeId": f"{task_id}-1234567890",
    }
    task: dict[str, Any] = {
        "taskArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{task_id}",
        "clusterArn": CLUSTER_ARN,
        "taskDefinitionArn": TASK_DEFINITION_ARN,
        "lastStatus": status,
        "launchType": "FARGATE",
        "containers": [container],
    }
    if exit_code is not None:
        container["exitCode"] = exit_code
        task["stopCode"] = "EssentialContainerExited"
        task["stoppedReason"] = "Essential container in task exited"
    return task


@dataclass
class StubbedEcsRoute:
    """An ``EcsPipes`` on Stubbed clients; ``expect_task`` queues one task's calls."""

    settings: EcsRouteSettings = field(default_factory=route_settings)
    runs: list[LocalTaskRun] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.ecs = boto3.client("ecs", region_name=REGION, **credentials)
        self.logs = boto3.client("logs", region_name=REGION, **credentials)
        self.ecs_stub = Stubber(self.ecs)
        self.logs_stub = Stubber(self.logs)
        self._task_ids: list[str] = []
        self._interrupt = False
        # before Stubber checks the call (before-parameter-build) and answers it (before-call)
        self.ecs.meta.events.register_first("provide-client-params.*.*", self._on_params)
        self.ecs.meta.events.register_first("before-call.*.*", self._on_call)
        self.ecs_stub.activate()
        self.logs_stub.activate()
        self.pipes = EcsPipes(settings=self.settings, ecs_client=self.ecs, logs_client=self.logs)

    def expect_task(self, task_id: str, *, interrupt_wait: bool = False) -> None:
        """Queue DescribeTaskDefinition and RunTask for one task (and, when the step is to be
        interrupted while it waits, StopTask); the rest is queued once the task has run."""
        self._task_ids.append(task_id)
        self._interrupt = interrupt_wait
        self.ecs_stub.add_response(
            "describe_task_definition",
            {
                "taskDefinition": {
                    "taskDefinitionArn": TASK_DEFINITION_ARN,
                    "family": "lakehouse-data-plane-task",
                    "containerDefinitions": [
                        {
                            "name": CONTAINER,
                            "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/lakehouse:1",
                            "entryPoint": ["python"],
                            "command": ["-m", "lambda_functions.ecs_task"],
                            "logConfiguration": {
                                "logDriver": "awslogs",
                                "options": {
                                    "awslogs-group": LOG_GROUP,
                                    "awslogs-region": REGION,
                                    "awslogs-stream-prefix": "ecs",
                                },
                            },
                        }
                    ],
                }
            },
            {"taskDefinition": TASK_DEFINITION},
        )
        self.ecs_stub.add_response(
            "run_task",
            {"tasks": [_task(task_id, "PROVISIONING")], "failures": []},
            {
                "cluster": CLUSTER,
                "taskDefinition": TASK_DEFINITION,
                "launchType": "FARGATE",
                "count": 1,
                "networkConfiguration": {
                    "awsvpcConfiguration": {
                        "subnets": list(SUBNETS),
                        "securityGroups": list(SECURITY_GROUPS),
                        "assignPublicIp": "DISABLED",
                    }
                },
                "overrides": ANY,
                "startedBy": "dagster-lakehouse",
                "tags": ANY,
            },
        )
        if interrupt_wait:
            self.ecs_stub.add_response(
                "stop_task",
                {"task": _task(task_id, "STOPPED", 0)},
                {
                    "cluster": CLUSTER,
                    "task": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{task_id}",
                    "reason": "Dagster process was interrupted",
                },
            )

    def _on_params(self, event_name: str, **_: Any) -> None:
        if event_name == "provide-client-params.ecs.DescribeTasks" and self._interrupt:
            # the Dagster run is terminated while the step waits for the task
            raise DagsterExecutionInterruptedError()

    def _on_call(self, event_name: str, params: dict[str, Any], **_: Any) -> None:
        if event_name == "before-call.ecs.RunTask":  # validated against the service model
            self._run_the_task(params)

    def _run_the_task(self, params: dict[str, Any]) -> None:
        """RunTask passed validation: run the task's command with its container overrides."""
        body = json.loads(params["body"])
        self.overrides.append(body["overrides"])
        (container,) = [
            c for c in body["overrides"]["containerOverrides"] if c["name"] == CONTAINER
        ]
        run = run_task_locally({v["name"]: v["value"] for v in container["environment"]})
        self.runs.append(run)
        task_id = self._task_ids[-1]
        if not self._interrupt:
            for _ in range(2):  # the tasks_stopped waiter's poll, then PipesECSClient's own read
                self.ecs_stub.add_response(
                    "describe_tasks",
                    {"tasks": [_task(task_id, "STOPPED", run.exit_code)], "failures": []},
                    {"cluster": CLUSTER, "tasks": [_task(task_id, "STOPPED")["taskArn"]]},
                )
        stream = f"ecs/{CONTAINER}/{task_id}"
        now = int(time.time() * 1000)
        self.logs_stub.add_response(
            "describe_log_streams",
            {"logStreams": [{"logStreamName": stream, "creationTime": now}]},
            {"logGroupName": LOG_GROUP, "logStreamNamePrefix": stream},
        )
        self.logs_stub.add_response(
            "get_log_events",
            {
                "events": [
                    {"timestamp": now, "message": line, "ingestionTime": now}
                    for line in run.stdout + run.stderr
                    if line
                ],
                "nextForwardToken": "f/00000000000000000000000000000000000000000000000000000001",
                "nextBackwardToken": "b/00000000000000000000000000000000000000000000000000000000",
            },
            {"logGroupName": LOG_GROUP, "logStreamName": stream, "startTime": ANY},
        )

    def assert_all_calls_made(self) -> None:
        self.ecs_stub.assert_no_pending_responses()
        self.logs_stub.assert_no_pending_responses()
