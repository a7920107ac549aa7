"""Benchmark: per-invocation overhead of the Pipes message paths (issue 16, item 1).

One no-op handler (open Pipes, report one materialization, close) is invoked through
``LambdaPipes.run`` on the local Lambda runtime, warm, over three message paths:

- ``file``: the local path (``PipesTempFileMessageReader`` + the default file writer), the
  baseline, measured in the same run;
- ``s3``: the AWS path as shipped (``S3PipesMessageReader`` + ``PromptS3MessageWriter``);
- ``s3_stock``: the AWS path as it was before (dagster-aws's ``PipesS3MessageReader`` with
  ``interval=2`` and dagster-pipes' ``PipesS3MessageWriter`` with ``interval=2``, a new S3 client
  per invocation).

S3 is moto's server, run in a separate process (``ThreadedMotoServer`` in a child), so it does not
share this process's GIL. The handler does nothing, so the wall time of one ``run`` is the
per-invocation overhead of the path (invoke + message transport + Dagster session); the billed
duration is the REPORT line's (what Lambda would charge: the part of the overhead spent inside
the function). Invocations are taken round-robin over the paths so that load from other work on
the shared machine slows them alike; figures are medians. The ``s3`` path deletes the messages it
read in a background thread after the session (off the step's path): the objects left under
``_dagster_pipes/`` are counted once those deletes are done.

    PYTHONPATH=. .venv/bin/python benchmarks/pipes_overhead.py [--invocations 10]

Prints a table, then one JSON line with ``s3_over_file_overhead_ratio`` and per-path ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.moto_process import moto_server_process  # noqa: E402  (moto in its own process)

HANDLER_MODULE = Path(__file__).stem  # workers import this file (its directory is on sys.path)


# --- handlers (run inside the local Lambda runtime's workers) ---


def noop(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The shipped writer: ``lambda_functions.pipes.open_pipes``."""
    from lambda_functions.pipes import open_pipes

    with open_pipes(event) as pipes:
        pipes.report_asset_materialization(metadata={"rows": {"raw_value": 0, "type": "int"}})
    return {}


def noop_stock(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The writer as it was: dagster-pipes' ``PipesS3MessageWriter(interval=2)``."""
    import boto3
    from dagster_pipes import (
        PipesContext,
        PipesMappingParamsLoader,
        PipesS3MessageWriter,
        open_dagster_pipes,
    )

    PipesContext._instance = None
    writer = PipesS3MessageWriter(client=boto3.client("s3"), interval=2)
    with open_dagster_pipes(
        params_loader=PipesMappingParamsLoader(event), context_loader=None, message_writer=writer
    ) as pipes:
        pipes.report_asset_materialization(metadata={"rows": {"raw_value": 0, "type": "int"}})
    PipesContext._instance = None
    return {}


# --- measurement ---


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=10, help="timed invocations per path")
    args = parser.parse_args()

    with moto_server_process() as moto:
        endpoint = moto.endpoint
        aws_env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_SESSION_TOKEN": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        os.environ.update(aws_env)
        results = measure(args.invocations, aws_env)
    report(results, args.invocations)


def measure(invocations: int, aws_env: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    import boto3
    from dagster import asset, materialize
    from dagster_aws.pipes import PipesS3MessageReader

    from lakehouse_local.lambda_runtime import LocalLambdaRuntime
    from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
    from lambda_functions.contracts import MergeRequest
    from lambda_functions.registry import FunctionSpec

    noop_spec = FunctionSpec("bench-noop", f"{HANDLER_MODULE}.noop", timeout_s=60, memory_mb=512)
    stock_spec = FunctionSpec(
        "bench-noop-stock", f"{HANDLER_MODULE}.noop_stock", timeout_s=60, memory_mb=512
    )
    request = MergeRequest(lake_uri="/unused", database="bench", collection="noop")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench-pipes")
    functions = {s.name: s for s in (noop_spec, stock_spec)}
    figures: dict[str, dict[str, list[float]]] = {}

    with (
        LocalLambdaRuntime(functions) as local_runtime,
        LocalLambdaRuntime(functions, environment=aws_env) as aws_runtime,
    ):
        paths = {
            "file": (LambdaPipes.local(local_runtime), noop_spec),
            "s3": (
                LambdaPipes.aws(
                    pipes_bucket="bench-pipes", lambda_client=aws_runtime, s3_client=s3
                ),
                noop_spec,
            ),
            "s3_stock": (
                LambdaPipes(
                    lambda_client=aws_runtime,
                    message_reader_factory=lambda: PipesS3MessageReader(
                        bucket="bench-pipes", client=s3, interval=2
                    ),
                ),
                stock_spec,
            ),
        }

        @asset(name="bench")
        def bench(context):  # one step: every invocation in it, round-robin over the paths
            result = None
            for round_number in range(invocations + 2):  # two warm-up rounds
                for name, (lambda_pipes, spec) in paths.items():
                    started = time.perf_counter()
                    result = lambda_pipes.run(context, spec, request)
                    wall_ms = (time.perf_counter() - started) * 1000
                    if round_number >= 2:
                        path = figures.setdefault(name, {"wall_ms": [], "billed_ms": []})
                        path["wall_ms"].append(wall_ms)
                        billed = result.metadata["lambda/billed_duration_ms"]
                        path["billed_ms"].append(float(billed.value))
            return result

        materialize([bench])
    from lakehouse_pipelines.resources.pipes_messages import _CLEANUP

    _CLEANUP.shutdown(wait=True)  # every delete queued by the s3 path has run
    left = s3.list_objects_v2(Bucket="bench-pipes", Prefix="_dagster_pipes/")["KeyCount"]
    figures["_left_behind"] = {"objects": [float(left)]}
    return figures


def report(figures: dict[str, dict[str, list[float]]], invocations: int) -> None:
    medians = {
        name: {k: statistics.median(v) for k, v in values.items()}
        for name, values in figures.items()
        if not name.startswith("_")
    }
    file_ms = medians["file"]["wall_ms"]
    print(f"Pipes message paths, no-op handler, warm, median of {invocations} invocations each")
    print(f"{'path':<10} {'overhead ms':>12} {'billed ms':>10} {'x file':>8}")
    for name, values in medians.items():
        ratio = values["wall_ms"] / file_ms
        print(f"{name:<10} {values['wall_ms']:>12.1f} {values['billed_ms']:>10.0f} {ratio:>8.2f}")
    left = int(figures["_left_behind"]["objects"][0])
    print(f"message objects left under _dagster_pipes/ by the s3 path: {left}")
    print(
        json.dumps(
            {
                "benchmark": "pipes_overhead",
                "invocations_per_path": invocations,
                "s3_over_file_overhead_ratio": round(medians["s3"]["wall_ms"] / file_ms, 2),
                "s3_stock_over_file_overhead_ratio": round(
                    medians["s3_stock"]["wall_ms"] / file_ms, 2
                ),
                "overhead_ms": {k: round(v["wall_ms"], 1) for k, v in medians.items()},
                "billed_ms": {k: round(v["billed_ms"], 1) for k, v in medians.items()},
                "s3_message_objects_left": left,
            }
        )
    )


if __name__ == "__main__":
    main()
