"""The Dagster side of a parallel range snapshot: one capture step fans a collection's initial load
out over its ``_id`` ranges.

``RangeSnapshotRunner`` has ``LambdaPipes.run``'s shape (context, function, request ->
materialization), so the fan-out across collections stays ``LambdaPipes.run_partitions``; per
collection it makes the three calls of ``lambda_functions.cdc_capture.range_snapshot``:

1. the capture request with ``snapshot_ranges`` (> 1): plans the ranges (recording the stream
   position first), or, when the collection is already streaming, simply captures;
2. one invocation per unfinished range (``snapshot_range``), at most ``concurrency`` at once
   across the whole step (a semaphore shared by every collection of the step); a range stopped
   by the function's deadline is invoked again, continuing after its last page;
3. the request again: publishes the generation (its manifest written last), then reads the
   change stream from the recorded position. Its materialization is the collection's, with the
   plan and documents/bytes per range.

A step that fails half-way leaves only unpublished range pages: the next materialization picks
the same plan up and invokes only the unfinished ranges.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import Failure, MaterializeResult, MetadataValue

from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lambda_functions.contracts import CaptureRequest, CollectionRequest
from lambda_functions.registry import FunctionSpec

MAX_ROUNDS = 50  # invocations of one range at most (each continues after the last's pages)


class RangeSnapshotRunner:
    """Runs capture requests, fanning a planned snapshot out over its ranges (see the module).

    Args:
        lambda_pipes: invokes the capture function (``LambdaPipes.run``).
        concurrency: invocations in flight at once in the step (``LAKEHOUSE_FANOUT_CONCURRENCY``).
        run: what makes one invocation, with ``LambdaPipes.run``'s shape (default
            ``lambda_pipes.run``); a ``resources.routes.RoutedRunner`` sends each range to the
            route it fits (a range estimated over the function's limits to ECS).
    """

    run_partitions = LambdaPipes.run_partitions  # the fan-out across collections, over ``run``

    def __init__(
        self,
        lambda_pipes: LambdaPipes,
        concurrency: int,
        run: Callable[[Any, FunctionSpec, CollectionRequest], MaterializeResult] | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.lambda_pipes = lambda_pipes
        self.concurrency = concurrency
        self._run = run
        self._slots = threading.BoundedSemaphore(concurrency)

    def _invoke(self, context: Any, spec: FunctionSpec, request: CollectionRequest) -> Any:
        run = self._run or self.lambda_pipes.run
        with self._slots:
            return run(context, spec, request)

    def run(self, context: Any, spec: FunctionSpec, request: CollectionRequest) -> Any:
        """Capture one collection; a planned snapshot is captured range by range.

        Args:
            context: the step's asset execution context (logs go to it).
            spec: the capture function.
            request: a ``CaptureRequest``; ``snapshot_ranges`` > 1 plans a new snapshot in ranges.

        Returns:
            The collection's ``MaterializeResult``: the capture's own when nothing was planned,
            else the publishing invocation's, with ``range_invocations``.

        Raises:
            dagster.Failure: an invocation failed (the others finish; a re-run resumes), or a
                range did not complete within ``MAX_ROUNDS`` invocations.
        """
        first = self._invoke(context, spec, request)
        if _value(first, "range_step") != "in_progress":
            return first  # streaming already, or published by this very call
        assert isinstance(request, CaptureRequest)
        plan = _value(first, "range_plan")
        generation = _value(first, "range_generation")
        done = list(_value(first, "range_complete"))
        context.log.info(
            f"{request.namespace}: snapshot in {len(plan)} ranges by "
            f"{_value(first, 'range_method')} (generation {generation}); "
            f"{sum(done)} already complete"
        )
        invocations = 1
        for _round in range(MAX_ROUNDS):
            todo = [r for r in plan if not done[r["index"]]]
            if not todo:
                break
            results = self._fan_out(context, spec, request, generation, plan, todo)
            invocations += len(todo)
            for chosen, result in zip(todo, results, strict=True):
                done[chosen["index"]] = bool(_value(result, "range_complete"))
                context.log.info(
                    f"{request.namespace}: range {chosen['index'] + 1}/{len(plan)}: "
                    f"{_value(result, 'range_documents'):,} documents, "
                    f"{_value(result, 'range_bytes') / 1e6:,.1f} MB"
                    + ("" if done[chosen["index"]] else " so far (continues)")
                )
        else:
            raise Failure(
                description=(
                    f"{request.namespace}: ranges {[i for i, d in enumerate(done) if not d]} "
                    f"were not complete after {MAX_ROUNDS} invocations each; materialize again "
                    "to continue them, or raise LAKEHOUSE_SNAPSHOT_RANGES so each is smaller"
                )
            )
        final = self._invoke(context, spec, dataclasses.replace(request, reset=False))
        invocations += 1
        return final._replace(
            metadata={
                **(final.metadata or {}),
                "range_invocations": MetadataValue.int(invocations),
            }
        )

    def _fan_out(
        self,
        context: Any,
        spec: FunctionSpec,
        request: CaptureRequest,
        generation: str,
        plan: list[dict[str, Any]],
        todo: list[dict[str, Any]],
    ) -> list[Any]:
        """Invoke every range of ``todo`` (bounded by the step's slots); all finish before an
        error is raised, so completed ranges keep their pages."""
        requests = [
            dataclasses.replace(
                request,
                reset=False,
                demo_changes=0,  # the demo "application" runs once per step, not per range
                snapshot_range={
                    "generation": generation,
                    "index": chosen["index"],
                    "count": len(plan),
                    "lower": chosen["lower"],
                    "upper": chosen["upper"],
                },
            )
            for chosen in todo
        ]
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="range") as pool:
            futures = [pool.submit(self._invoke, context, spec, r) for r in requests]
        failed = [
            (r, f.exception()) for r, f in zip(requests, futures, strict=True) if f.exception()
        ]
        if failed:
            raise Failure(
                description=(
                    f"{request.namespace}: {len(failed)} of {len(requests)} ranges failed: "
                    + "; ".join(
                        f"range {r.snapshot_range['index']}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        for r, e in failed
                    )
                    + ". Completed ranges keep their pages; materialize again to finish."
                )
            )
        return [f.result() for f in futures]


def _value(result: MaterializeResult, key: str) -> Any:
    """A metadata entry's plain value (``None`` when absent)."""
    entry = (result.metadata or {}).get(key)
    return getattr(entry, "value", entry)
