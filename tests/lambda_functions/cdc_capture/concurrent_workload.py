"""A demo workload run in a worker process, for the tests of several processes sharing one file.

Module-level so that ``multiprocessing``'s spawn start method (a fresh interpreter, as the Dagster
workers are) can import it.
"""

from __future__ import annotations

from typing import Any

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource

FIXED_TIME = 1_717_200_000.0  # a fixed clock: the workload's data then depends only on its runs


def fixed_clock() -> float:
    return FIXED_TIME


def run_workload(
    path: str, collection: str, runs: int, changes: int, start: Any, results: Any
) -> None:
    """Wait at ``start`` (a barrier shared with the other workers), then open the source and apply
    ``runs`` workload runs to ``shop.<collection>``; put ``(collection, ops, error)`` on
    ``results``."""
    start.wait()
    try:
        with EmbeddedChangeStreamSource(path, clock=fixed_clock) as source:
            workload = DemoWorkload(source, "shop", collection)
            done = [dict(workload.run(changes).ops) for _ in range(runs)]
        results.put((collection, done, None))
    except BaseException as error:  # reported to the test, which fails with it
        results.put((collection, [], f"{type(error).__name__}: {error}"))
