"""Run one data-plane request as an ECS Fargate task through dagster-aws's ``PipesECSClient``.

The ECS route (issue 13) for work beyond Lambda's limits: the same container image, the same
request contract and the same Pipes messages as the Lambda route. The task runs
``python -m lambda_functions.ecs_task``, which reads the request from the Pipes context's
``extras`` and calls the function's own handler; its messages travel as JSON lines on the task's
stdout, which the ``awslogs`` driver ships to CloudWatch Logs, where ``PipesCloudWatchMessageReader``
reads them (dagster-aws docs, "Dagster Pipes: AWS ECS"; ``dagster_aws/pipes/clients/ecs.py``).

What this adds to a bare ``PipesECSClient``:
- the RunTask parameters from ``EcsRouteSettings`` (cluster, task definition, Fargate, awsvpc
  subnets and security groups; Amazon ECS API Reference, "RunTask");
- one client and one message reader per task (the reader keeps per-session state);
- a reader that reads the messages only (``TaskMessagesReader``, see why there);
- a RunTask that starts no task (its ``failures``) or a task that exits non-zero raised as a
  ``dagster.Failure`` naming the cause and where the task's log is;
- the route and its reason in the metadata, beside what the handler reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError, NoRegionError
from dagster import Failure, MaterializeResult, MetadataValue
from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesECSClient
from dagster_aws.pipes.clients.utils import WaiterConfig

from lakehouse_pipelines.resources.lambda_failures import (
    NO_REGION_HINT,
    MissingAwsSettingError,
    kind_failure,
)
from lakehouse_pipelines.settings_ecs import EcsRouteSettings
from lambda_functions.contracts import CollectionRequest
from lambda_functions.errors import ErrorKind, TerminalError, TransientError, exit_code_kind
from lambda_functions.registry import FUNCTIONS


class EcsSettingsError(TerminalError, ValueError):
    """The ECS route is used but not configured; the message names the variables to set."""


class EcsTaskNotStartedError(TransientError, RuntimeError):
    """RunTask answered without starting the task (its ``failures``: no Fargate capacity, a
    resource limit): nothing ran, the same request may start later."""


class TaskMessagesReader(PipesCloudWatchMessageReader):
    """``PipesCloudWatchMessageReader`` that reads the task's Pipes messages and nothing else.

    ``PipesECSClient`` also adds a ``PipesCloudWatchLogReader`` per container to copy the task's
    other log lines to the step's stdout. That reader's loop (``tail_cloudwatch_events``, dagster-aws
    0.29) calls GetLogEvents back to back with no pause and checks for the end of the session only
    after new events arrive: once the task has stopped it spins on GetLogEvents (against the
    account's GetLogEvents quota, CloudWatch Logs "Service quotas") and its non-daemon thread never
    ends. The handlers' logs reach Dagster as Pipes log messages anyway; the full task log stays
    in CloudWatch (named in failures). ``interval`` spaces the reads while the task runs.
    """

    def __init__(self, client: Any, interval: float) -> None:
        super().__init__(client=client)
        self.interval = interval

    def add_log_reader(self, log_reader: Any) -> None:
        return None


class _RecordingEcsClient:
    """Passes every call to the ECS client; keeps RunTask's and DescribeTasks' answers for the
    metadata and for failures, and refuses a RunTask that started no task."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.task: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def run_task(self, **params: Any) -> dict[str, Any]:
        response = self._client.run_task(**params)
        if not response.get("tasks"):
            reasons = "; ".join(
                f"{f.get('arn', '')} {f.get('reason', '')} {f.get('detail', '')}".strip()
                for f in response.get("failures", [])
            )
            raise EcsTaskNotStartedError(
                f"ECS started no task on cluster {params.get('cluster')!r}: {reasons or 'no reason'}"
                ". Nothing ran; re-run the step (for RESOURCE:* or capacity reasons, later)."
            )
        self.task = response["tasks"][0]
        return response

    def describe_tasks(self, **params: Any) -> dict[str, Any]:
        response = self._client.describe_tasks(**params)
        if response.get("tasks"):
            self.task = response["tasks"][0]
        return response


class EcsPipes:
    """Runs a data-plane function's request as an ECS task and returns what it reported."""

    def __init__(self, *, settings: EcsRouteSettings, ecs_client: Any, logs_client: Any) -> None:
        """Args:
        settings: where tasks run (``EcsRouteSettings.from_env()``).
        ecs_client: a botocore ECS client (``boto3.client("ecs")``).
        logs_client: a botocore CloudWatch Logs client (``boto3.client("logs")``), same region.
        """
        self.settings = settings
        self.ecs_client = ecs_client
        self.logs_client = logs_client

    @classmethod
    def aws(cls, settings: EcsRouteSettings, region: str | None = None) -> EcsPipes:
        """ECS and CloudWatch Logs clients of ``region`` (the default chain when ``None``).

        Args:
            settings: where tasks run (``LakehouseSettings.ecs``).
            region: the AWS region of the cluster; ``None`` uses the profile's or ``AWS_REGION``.

        Returns:
            An ``EcsPipes``; no AWS call is made here.

        Raises:
            MissingAwsSettingError: no region is configured (the message names the setting).
        """
        import boto3

        try:
            return cls(
                settings=settings,
                ecs_client=boto3.client("ecs", region_name=region or None),
                logs_client=boto3.client("logs", region_name=region or None),
            )
        except NoRegionError:
            raise MissingAwsSettingError(NO_REGION_HINT) from None

    def run(
        self,
        context: Any,
        function_name: str,
        request: CollectionRequest,
        route_reason: str = "",
    ) -> MaterializeResult:
        """Run ``request`` as one ECS task of ``function_name``'s handler; wait until it stops.

        Uses ``PipesECSClient.run`` (dagster-aws API docs, "PipesECSClient"): DescribeTaskDefinition
        to find the containers' log configuration, RunTask with the Pipes bootstrap in the
        container overrides, then DescribeTasks until the task is STOPPED (the ``tasks_stopped``
        waiter, every ``poll_seconds``; Amazon ECS API Reference, "RunTask", "DescribeTasks").
        If the Dagster step is interrupted while waiting, the task is stopped (StopTask).
        Not idempotent by itself: a re-run starts a new task; the handlers' own guarantees
        (merge skips applied batches, capture resumes from its checkpoint) make that safe.

        Args:
            context: the asset or op execution context of the step.
            function_name: a ``lambda_functions.registry.FUNCTIONS`` name, e.g.
                ``"lakehouse-merge"``; the task runs that function's handler.
            request: the request, exactly as the Lambda route would send it.
            route_reason: why this request runs on ECS (``choose_route``), for the metadata.

        Returns:
            The materialization the handler reported (metadata, data version, check results),
            plus ``route`` (``"ecs"``), ``route_reason``, ``ecs/task_arn`` and ``AWS ECS Task
            URL`` (the task's console URL, as ``PipesECSClient`` reports it).

        Raises:
            EcsSettingsError: cluster, task definition or subnets are not configured, or
                ``function_name`` is not registered.
            dagster.Failure: RunTask was refused or started no task, or the task failed to start
                or exited non-zero; the description names the cause and the task's log stream.
        """
        missing = self.settings.missing()
        if missing:
            raise EcsSettingsError(
                f"the ECS route needs {', '.join(missing)}: set them to the deploy template's "
                "outputs (EcsClusterName, EcsTaskDefinitionArn) and the VPC subnets the tasks run in"
            )
        if function_name not in FUNCTIONS:
            raise EcsSettingsError(
                f"unknown function {function_name!r} (registered: {sorted(FUNCTIONS)})"
            )
        ecs = _RecordingEcsClient(self.ecs_client)
        reader = TaskMessagesReader(self.logs_client, interval=self.settings.poll_seconds)
        pipes = PipesECSClient(client=ecs, message_reader=reader, forward_termination=True)
        context.log.info(
            f"Running {function_name} for {request.namespace} as an ECS task of "
            f"{self.settings.task_definition} on {self.settings.cluster}"
        )
        poll = max(1, self.settings.poll_seconds)
        try:
            invocation = pipes.run(
                context=context,
                run_task_params=self.settings.run_task_params(),  # type: ignore[arg-type]
                extras={"function": function_name, "request": request.to_event()},
                pipes_container_name=self.settings.container_name,
                waiter_config=WaiterConfig(
                    Delay=poll, MaxAttempts=max(1, self.settings.max_wait_seconds // poll)
                ),
            )
        except EcsTaskNotStartedError as error:
            raise kind_failure(str(error), "transient") from None
        except ClientError as error:
            raise kind_failure(_refused(error), _refusal_kind(error)) from None
        except RuntimeError as error:
            if ecs.task:
                raise _task_failure(function_name, ecs.task, self.settings, error) from None
            raise
        reported = invocation.get_materialize_result()  # with PipesECSClient's task URL
        return MaterializeResult(
            asset_key=reported.asset_key,
            metadata={
                **(reported.metadata or {}),
                "route": MetadataValue.text("ecs"),
                "route_reason": MetadataValue.text(route_reason or "ECS route requested"),
                "ecs/task_arn": MetadataValue.text(ecs.task.get("taskArn", "")),
            },
            check_results=reported.check_results,
            data_version=reported.data_version,
            tags=reported.tags,
        )


def _refused(error: ClientError) -> str:
    code = error.response.get("Error", {}).get("Code", "ClientError")
    message = error.response.get("Error", {}).get("Message", str(error))
    hint = {
        "ClusterNotFoundException": "check LAKEHOUSE_ECS_CLUSTER and AWS_REGION",
        "AccessDeniedException": "grant the orchestrator's role ecs:RunTask, ecs:DescribeTasks, "
        "ecs:StopTask, ecs:DescribeTaskDefinition, iam:PassRole on the task's roles, and "
        "logs:GetLogEvents, logs:DescribeLogStreams on the task's log group",
        "InvalidParameterException": "check LAKEHOUSE_ECS_TASK_DEFINITION, LAKEHOUSE_ECS_SUBNETS "
        "and LAKEHOUSE_ECS_SECURITY_GROUPS",
    }.get(code, "the task did not start; fix the cause and re-run")
    return f"ECS refused the task: {code}: {message}. Fix: {hint}."


# ECS API errors (Amazon ECS API Reference, "Common Errors" and RunTask "Errors"): the first are
# refusals a retry cannot change, the second may clear by themselves.
_REFUSALS = {"ClusterNotFoundException", "AccessDeniedException", "InvalidParameterException"}
_MAY_CLEAR = {"ThrottlingException", "ServerException", "ServiceUnavailableException"}


def _refusal_kind(error: ClientError) -> ErrorKind:
    code = error.response.get("Error", {}).get("Code", "")
    return "terminal" if code in _REFUSALS else "transient" if code in _MAY_CLEAR else "unknown"


def _task_failure(
    function_name: str, task: Mapping[str, Any], settings: EcsRouteSettings, error: Exception
) -> Failure:
    task_id = task.get("taskArn", "").rsplit("/", 1)[-1]
    containers = {c.get("name"): c for c in task.get("containers", [])}
    container = containers.get(settings.container_name, {})
    stream = f"ecs/{settings.container_name}/{task_id}"
    exit_code = container.get("exitCode")
    return kind_failure(
        (
            f"ECS task {task.get('taskArn', '')} of {function_name} failed: {error} "
            f"(stop code {task.get('stopCode', '?')}: {task.get('stoppedReason', '?')}; exit code "
            f"{container.get('exitCode', '?')}). The stack trace is in the task's log: "
            f"{settings.log_group or '<LAKEHOUSE_ECS_LOG_GROUP>'} / {stream}. Nothing was "
            "committed by a failed merge; fix the cause and re-run."
        ),
        exit_code_kind(exit_code if isinstance(exit_code, int) else None),
        {
            "function_name": MetadataValue.text(function_name),
            "ecs/task_arn": MetadataValue.text(task.get("taskArn", "")),
            "ecs/stop_code": MetadataValue.text(str(task.get("stopCode", ""))),
            "ecs/stopped_reason": MetadataValue.text(str(task.get("stoppedReason", ""))),
            "ecs/exit_code": MetadataValue.text(str(container.get("exitCode", ""))),
        },
    )
