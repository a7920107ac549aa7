"""Run one collection's request on the route ``choose_route`` picks: Lambda or ECS.

``RoutedRunner`` has the shape of ``LambdaPipes.run`` (context, function spec, request ->
materialization), so a fan-out that calls it per collection (``LambdaPipes.run_partitions``, given a
``run=`` hook) keeps its bounded concurrency, per-partition metadata and combined checks whatever
the route of each collection. Both routes add ``route`` and ``route_reason`` to the metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagster import MaterializeResult, MetadataValue

from lakehouse_pipelines.resources.ecs_pipes import EcsPipes
from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lambda_functions.contracts import CollectionRequest
from lambda_functions.registry import FunctionSpec
from lambda_functions.routing import RouteChoice, choose_route, configured_for_ecs

# (estimated peak memory in bytes, estimated duration in seconds) of one request; None: unknown.
Estimate = tuple[float | None, float | None]


@dataclass
class RoutedRunner:
    """Chooses the route per request and runs it there.

    ``ecs_pipes`` is ``None`` where the ECS route is not deployed: every request then runs on
    Lambda, and the reason says so when the estimate would have sent it to ECS.
    ``estimate`` gives a request's size and duration (``None`` parts: unknown; no estimator:
    only ``LAKEHOUSE_ECS_COLLECTIONS`` sends collections to ECS).
    """

    lambda_pipes: LambdaPipes
    ecs_pipes: EcsPipes | None = None
    estimate: Callable[[FunctionSpec, CollectionRequest], Estimate] | None = None

    def choose(self, spec: FunctionSpec, request: CollectionRequest) -> RouteChoice:
        """The route of ``request`` and why (see ``lambda_functions.routing.choose_route``).

        Args:
            spec: the function that runs the request.
            request: the request; its namespace is matched against LAKEHOUSE_ECS_COLLECTIONS.

        Returns:
            ``RouteChoice(route, reason)``; ``"lambda"`` whenever no ECS route is configured.
            A Lambda reason ends with the estimate when there is one ("; estimated 412 MB, 3 s").

        Raises:
            RouteEstimateError: the estimator returned a negative or non-numeric figure.
        """
        estimated_bytes, estimated_seconds = (
            self.estimate(spec, request) if self.estimate else (None, None)
        )
        collections = self.ecs_pipes.settings.collections if self.ecs_pipes else frozenset()
        choice = choose_route(
            spec,
            estimated_bytes,
            estimated_seconds,
            configured_for_ecs(request.namespace, collections),
        )
        if choice.route == "ecs" and self.ecs_pipes is None:
            return RouteChoice("lambda", f"{choice.reason}, but no ECS route is configured")
        if choice.route == "lambda" and (estimated_bytes, estimated_seconds) != (None, None):
            figures = [
                f"{estimated_bytes / 2**20:,.0f} MB" if estimated_bytes is not None else "",
                f"{estimated_seconds:,.0f} s" if estimated_seconds is not None else "",
            ]
            estimate = ", ".join(f for f in figures if f)
            return RouteChoice("lambda", f"{choice.reason}; estimated {estimate}")
        return choice

    def __call__(
        self, context: Any, spec: FunctionSpec, request: CollectionRequest
    ) -> MaterializeResult:
        """Run ``request`` on its route; same contract as ``LambdaPipes.run``.

        Args:
            context: the step's asset execution context.
            spec: the function whose handler runs the request (on either route).
            request: the request, identical on both routes.

        Returns:
            The materialization the handler reported, with the route's own figures
            (``lambda/*`` or ``ecs/*``) and ``route``/``route_reason``.

        Raises:
            dagster.Failure: the function or the task failed (see ``LambdaPipes.run`` and
                ``EcsPipes.run``).
        """
        choice = self.choose(spec, request)
        if choice.route == "ecs" and self.ecs_pipes is not None:
            return self.ecs_pipes.run(context, spec.name, request, route_reason=choice.reason)
        result = self.lambda_pipes.run(context, spec, request)
        return result._replace(
            metadata={
                **(result.metadata or {}),
                "route": MetadataValue.text("lambda"),
                "route_reason": MetadataValue.text(choice.reason),
            }
        )
