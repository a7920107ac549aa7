"""The ECS route's settings: where tasks run, which collections go there, what sizes they have.

``EcsRouteSettings.from_env`` is the one reader of the ``LAKEHOUSE_ECS_*`` variables (listed,
with their defaults, in ``settings_variables.VARIABLES`` beside every other variable);
``LakehouseSettings.from_env`` calls it and keeps the result as ``LakehouseSettings.ecs``, so
resources and assets read them from there. No AWS call: the values are only parsed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lakehouse_pipelines.settings_values import SettingsError
from lakehouse_pipelines.settings_variables import VARIABLES
from lambda_functions.routing import ecs_collections

# The container of the task definition that runs ``lambda_functions.ecs_task`` (deploy template).
DEFAULT_CONTAINER_NAME = VARIABLES["LAKEHOUSE_ECS_CONTAINER_NAME"][0] or "lakehouse-task"
# Seconds between DescribeTasks calls while waiting for the task to stop, and how long to wait.
DEFAULT_POLL_SECONDS = 6
DEFAULT_MAX_WAIT_SECONDS = 24 * 3600


@dataclass(frozen=True)
class EcsRouteSettings:
    """Where ECS tasks run. ``from_env`` reads the ``LAKEHOUSE_ECS_*`` variables.

    ``subnets`` and ``security_groups`` are the task's awsvpc network (Fargate requires it);
    ``log_group`` is the task definition's ``awslogs-group`` (the deploy template's
    ``EcsLogGroupName`` output), named in failures so the task's log can be found.
    ``collection_bytes`` is each listed collection's size in bytes, as the operator knows it
    (e.g. ``collStats`` ``size`` on the source, which the code location never reads itself):
    the initial snapshot's size estimate (``lakehouse_pipelines.defs.routing``).
    """

    cluster: str = ""
    task_definition: str = ""
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    container_name: str = DEFAULT_CONTAINER_NAME
    log_group: str = ""
    collections: frozenset[str] = field(default_factory=frozenset)
    assign_public_ip: bool = False
    poll_seconds: int = DEFAULT_POLL_SECONDS
    max_wait_seconds: int = DEFAULT_MAX_WAIT_SECONDS
    collection_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        """The route is deployed: ``LAKEHOUSE_ECS_CLUSTER`` is set."""
        return bool(self.cluster)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EcsRouteSettings:
        """Read ``LAKEHOUSE_ECS_CLUSTER``, ``LAKEHOUSE_ECS_TASK_DEFINITION``,
        ``LAKEHOUSE_ECS_SUBNETS`` and ``LAKEHOUSE_ECS_SECURITY_GROUPS`` (comma lists),
        ``LAKEHOUSE_ECS_CONTAINER_NAME``, ``LAKEHOUSE_ECS_LOG_GROUP``,
        ``LAKEHOUSE_ECS_COLLECTIONS`` (comma list of namespaces or ``*``) and
        ``LAKEHOUSE_COLLECTION_BYTES`` (JSON object: namespace -> bytes).

        Args:
            environ: the variables; ``os.environ`` when omitted.

        Returns:
            The settings; unset variables are empty (``missing()`` names the required ones when
            the route is used, so a deployment without ECS needs none of them).

        Raises:
            SettingsError: ``LAKEHOUSE_COLLECTION_BYTES`` is not a JSON object of
                ``database.collection`` -> a whole number of bytes >= 0.
        """
        env = os.environ if environ is None else environ

        def value(variable: str) -> str:
            return env.get(variable, "").strip() or (VARIABLES[variable][0] or "")

        def names(variable: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in value(variable).split(",") if p.strip())

        return cls(
            cluster=value("LAKEHOUSE_ECS_CLUSTER"),
            task_definition=value("LAKEHOUSE_ECS_TASK_DEFINITION"),
            subnets=names("LAKEHOUSE_ECS_SUBNETS"),
            security_groups=names("LAKEHOUSE_ECS_SECURITY_GROUPS"),
            container_name=value("LAKEHOUSE_ECS_CONTAINER_NAME") or DEFAULT_CONTAINER_NAME,
            log_group=value("LAKEHOUSE_ECS_LOG_GROUP"),
            collections=ecs_collections(value("LAKEHOUSE_ECS_COLLECTIONS")),
            collection_bytes=parse_collection_bytes(value("LAKEHOUSE_COLLECTION_BYTES")),
        )

    def missing(self) -> list[str]:
        """The variables the route needs and that are unset."""
        required = {
            "LAKEHOUSE_ECS_CLUSTER": self.cluster,
            "LAKEHOUSE_ECS_TASK_DEFINITION": self.task_definition,
            "LAKEHOUSE_ECS_SUBNETS": self.subnets,
        }
        return [name for name, value in required.items() if not value]

    def run_task_params(self) -> dict[str, Any]:
        """RunTask's request for one task (Amazon ECS API Reference, "RunTask"): Fargate, one
        task, the awsvpc network; ``PipesECSClient`` adds the Pipes environment overrides and
        the Dagster run tags."""
        network: dict[str, Any] = {
            "subnets": list(self.subnets),
            "assignPublicIp": "ENABLED" if self.assign_public_ip else "DISABLED",
        }
        if self.security_groups:
            network["securityGroups"] = list(self.security_groups)
        return {
            "cluster": self.cluster,
            "taskDefinition": self.task_definition,
            "launchType": "FARGATE",
            "count": 1,
            "networkConfiguration": {"awsvpcConfiguration": network},
            "overrides": {"containerOverrides": [{"name": self.container_name}]},
            "startedBy": "dagster-lakehouse",
        }


def parse_collection_bytes(value: str) -> dict[str, int]:
    """``LAKEHOUSE_COLLECTION_BYTES``: ``{"shop.orders": 250000000000}`` -> namespace -> bytes.

    Raises:
        SettingsError: not a JSON object, a key without a ``.``, or a value that is not a whole
            number >= 0 (the message quotes an example).
    """
    if not value:
        return {}
    example = '{"shop.orders": 250000000000}'
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise SettingsError(
            f"LAKEHOUSE_COLLECTION_BYTES must be a JSON object of collection -> bytes, e.g. {example}"
        )
    sizes: dict[str, int] = {}
    for namespace, size in parsed.items():
        if "." not in namespace or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise SettingsError(
                f"LAKEHOUSE_COLLECTION_BYTES: {namespace!r}: {size!r} is not 'database.collection'"
                f" -> a whole number of bytes >= 0, e.g. {example}"
            )
        sizes[namespace] = size
    return sizes
