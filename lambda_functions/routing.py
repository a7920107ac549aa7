"""Where one request runs: in its Lambda function, or as an ECS Fargate task of the same image.

Both routes run the same handler with the same request contract and report the same Pipes messages
(``lambda_functions.ecs_task``); the route only decides which engine has room for the work. Lambda
stops a function at 15 minutes and at its configured memory (AWS Lambda Developer Guide, "Lambda
quotas": timeout 900 s, memory 128-10,240 MB); a request estimated to need more, with a safety
margin, or a collection an operator configured for ECS, goes to ECS. This module is in the
contract layer because both sides need it: the orchestrator chooses, the metadata shows why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

from lambda_functions.errors import TerminalError
from lambda_functions.registry import FunctionSpec

Route = Literal["lambda", "ecs"]

# Lambda's hard limit on one invocation (AWS Lambda Developer Guide, "Lambda quotas").
LAMBDA_MAX_TIMEOUT_S = 900
# An estimate must fit this many times over in the function's memory and timeout to stay on
# Lambda: estimates of a merge's peak memory and of a snapshot's duration are rough, and a
# Lambda that runs out of either fails after having been billed for all of it.
SAFETY_FACTOR = 1.5
# The value of LAKEHOUSE_ECS_COLLECTIONS that sends every collection to ECS.
ALL_COLLECTIONS = "*"


class RouteEstimateError(TerminalError, ValueError):
    """An estimate given to ``choose_route`` is not a size or a duration (negative, or not a
    number): the caller's estimator is wrong, a retry gives the same answer."""


class RouteChoice(NamedTuple):
    """The route for one request and the reason, as shown in the materialization metadata."""

    route: Route
    reason: str


def ecs_collections(setting: str) -> frozenset[str]:
    """The collections ``LAKEHOUSE_ECS_COLLECTIONS`` sends to ECS.

    Args:
        setting: the variable's value: a comma-separated list of ``database.collection``
            namespaces, ``*`` for every collection, or empty for none. Spaces are ignored.

    Returns:
        The namespaces, or ``{"*"}`` when every collection is configured for ECS.
    """
    names = frozenset(part.strip() for part in setting.split(",") if part.strip())
    return frozenset({ALL_COLLECTIONS}) if ALL_COLLECTIONS in names else names


def configured_for_ecs(namespace: str, collections: Iterable[str]) -> bool:
    """Whether ``namespace`` is configured for ECS by ``ecs_collections(...)``'s answer."""
    names = frozenset(collections)
    return ALL_COLLECTIONS in names or namespace in names


def choose_route(
    function_spec: FunctionSpec,
    estimated_bytes: int | float | None,
    estimated_seconds: int | float | None,
    configured: bool,
) -> RouteChoice:
    """Choose Lambda or ECS for one request of ``function_spec``.

    ECS when the collection is configured for it, or when an estimate times ``SAFETY_FACTOR``
    exceeds what the function may use: its configured memory (``FunctionSpec.memory_mb``) or its
    timeout (``FunctionSpec.timeout_s``, at most Lambda's 900 s). Otherwise Lambda. Pure and
    deterministic: the same inputs always give the same route and reason.

    Args:
        function_spec: the registry entry of the function that would run the request.
        estimated_bytes: peak memory the request is expected to need, in bytes; ``None`` if
            unknown (then memory does not send the request to ECS).
        estimated_seconds: the request's expected duration, in seconds; ``None`` if unknown.
        configured: the collection is configured for ECS (``configured_for_ecs``).

    Returns:
        ``RouteChoice(route, reason)``: ``route`` is ``"lambda"`` or ``"ecs"``; ``reason`` is
        one sentence naming the setting or the estimate and the limit it was compared with.

    Raises:
        RouteEstimateError: an estimate is negative or not a number.
    """
    for name, value in (
        ("estimated_bytes", estimated_bytes),
        ("estimated_seconds", estimated_seconds),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise RouteEstimateError(f"{name} must be a number >= 0 or None, got {value!r}")
    if configured:
        return RouteChoice("ecs", "collection configured for ECS (LAKEHOUSE_ECS_COLLECTIONS)")
    memory_bytes = function_spec.memory_mb * 2**20
    if estimated_bytes is not None and estimated_bytes * SAFETY_FACTOR > memory_bytes:
        return RouteChoice(
            "ecs",
            f"estimated memory {estimated_bytes / 2**20:,.0f} MB x {SAFETY_FACTOR} exceeds "
            f"{function_spec.name}'s {function_spec.memory_mb} MB",
        )
    timeout_s = min(function_spec.timeout_s, LAMBDA_MAX_TIMEOUT_S)
    if estimated_seconds is not None and estimated_seconds * SAFETY_FACTOR > timeout_s:
        return RouteChoice(
            "ecs",
            f"estimated duration {estimated_seconds:,.0f} s x {SAFETY_FACTOR} exceeds "
            f"{function_spec.name}'s {timeout_s} s timeout",
        )
    return RouteChoice(
        "lambda", f"fits {function_spec.name} ({function_spec.memory_mb} MB, {timeout_s} s)"
    )
