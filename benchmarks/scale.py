"""Benchmark: a sizing model that is measured, not guessed (issue 13, item 4).

What it measures on this machine, in one run:

1. **Per-worker snapshot throughput** (documents/s, MB/s of canonical JSON read): one range
   capture (``capture_range``, the code a range invocation runs) of an embedded collection of
   ``--docs`` ~450-byte documents (canonical JSON), in a worker process of its own.
2. **Parallel snapshot**: the same collection planned as ``--ranges`` ranges and captured by
   ``--workers`` worker processes (a process pool: real parallel processes, as Lambda runs one
   range per execution environment), then published as one generation. ``speedup_parallel_snapshot``
   = wall time with 1 range / wall time with ``--ranges`` ranges, both in this run. With 2 cores
   the ceiling is 2 (other work on a shared machine lowers it). Each is run ``--repeats`` times,
   alternated, and the fastest run of each counts.
3. **Merge** of a snapshot batch (pages of 50,000 rows) into a new Delta table (the initial
   load's merge: a generation is one batch, applied in one commit), then of a 1% update batch
   into it, at growing table sizes (``--merge-sizes``), each in its own process so its peak
   resident memory is its own: page by page (``merge.generation``, what the merge does with a
   generation over its byte budget) and, for comparison, one-shot (the batch read whole).

Then the model: wall time and cost of the initial load of 100 GB, 1 TB and 2 TB collections at the
configured concurrency (``LAKEHOUSE_FANOUT_CONCURRENCY`` ranges in flight; the deployed functions'
reserved concurrency is the ceiling), on Lambda (the capture function's memory) and on ECS
Fargate (a 1 vCPU / 2 GB task), and the largest table one Lambda merge invocation loads within
10 GB / 15 minutes (a generation is one raw batch, which the merge applies page by page in one
commit: measured slopes of time and peak memory, 80% of the memory usable), and the same on the
largest Fargate task (no time limit: memory only). Assumptions, printed with the figures: a Lambda worker or a 1-vCPU task
captures at this machine's per-worker rate (Lambda gives one full vCPU at 1,769 MB, "Lambda
quotas" / "Configuring function memory"; a 1,024 MB capture function gets ~0.58 vCPU, so its rate
is scaled by that share); the source serves every range at that rate (a DocumentDB instance's
read capacity is the real ceiling: size the instance, or lower the concurrency); merge time grows
linearly with rows (measured slope).

Prices (constants below): list prices for us-east-1 from the AWS pricing pages named beside them,
as recorded on 2026-12-01 from the project's pricing notes (not fetched by this script; check the
pages before quoting a figure).

Prints a human table, then one JSON line with the figures.

    .venv/bin/python benchmarks/scale.py                     # 1M documents (~5 minutes here)
    .venv/bin/python benchmarks/scale.py --docs 200000       # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bson import ObjectId  # noqa: E402

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource  # noqa: E402
from lambda_functions.cdc_capture.range_snapshot import (  # noqa: E402
    advance_range_snapshot,
    capture_range,
)
from lambda_functions.contracts import CaptureRequest  # noqa: E402
from lambda_functions.lake.raw_zone import RawZone  # noqa: E402
from lambda_functions.lake.store import LocalObjectStore  # noqa: E402
from lambda_functions.registry import CDC_CAPTURE, MERGE  # noqa: E402

# AWS Lambda pricing (https://aws.amazon.com/lambda/pricing/), x86, us-east-1, first 6 billion
# GB-seconds a month; requests $0.20 per million. Recorded 2026-12-01.
LAMBDA_PRICE_PER_GB_SECOND = 0.0000166667
LAMBDA_PRICE_PER_REQUEST = 0.20 / 1_000_000
# AWS Fargate pricing (https://aws.amazon.com/fargate/pricing/), Linux/x86, us-east-1, per hour.
# Recorded 2026-12-01.
FARGATE_PRICE_PER_VCPU_HOUR = 0.04048
FARGATE_PRICE_PER_GB_HOUR = 0.004445
FARGATE_TASK_VCPU, FARGATE_TASK_GB = 1.0, 2.0
LAMBDA_FULL_VCPU_MB = 1769  # memory at which a function gets one full vCPU (Lambda docs)
LAMBDA_MAX_MEMORY_GB, LAMBDA_MAX_SECONDS = 10.0, 900.0
FARGATE_MAX_MEMORY_GB = 120.0  # the largest Fargate task (16 vCPU, 120 GB; Fargate task sizes)
COLLECTION_SIZES_GB = (100, 1000, 2000)
BATCH_PAGE_ROWS = 20_000  # rows per range page in the benchmark (one Parquet file each)


def document(n: int) -> dict[str, Any]:
    """A ~450-byte operational document (canonical extended JSON)."""
    return {
        "_id": ObjectId(),
        "n": n,
        "customer": {"name": f"customer {n % 9973}", "tier": ["gold", "silver", "bronze"][n % 3]},
        "items": [{"sku": f"SKU-{(n * 7 + i) % 100_000:06d}", "qty": i + 1} for i in range(3)],
        "status": "paid",
        "note": "x" * 80,
    }


def build_source(path: Path, docs: int) -> float:
    """Write ``docs`` documents into a new embedded store; returns canonical JSON MB."""
    from lambda_functions.lake.extended_json import encode_document

    sample = sum(len(encode_document(document(i))) for i in range(1000)) / 1000
    with EmbeddedChangeStreamSource(path) as source:
        source.enable_change_streams("bench", "orders")
        for start in range(0, docs, 50_000):
            with source.bulk():
                source.insert_many(
                    "bench",
                    "orders",
                    [document(i) for i in range(start, min(docs, start + 50_000))],
                )
    return sample * docs / 1e6


def _capture_one_range(args: tuple[dict[str, Any], str]) -> tuple[int, float, float]:
    """Worker process: capture one range; (documents, wall seconds, CPU seconds)."""
    event, source_path = args
    request = CaptureRequest.from_event(event)
    started, cpu = time.perf_counter(), time.process_time()
    with EmbeddedChangeStreamSource(source_path) as source:
        result = capture_range(request, source=source)
    return result.progress.documents, time.perf_counter() - started, time.process_time() - cpu


def parallel_snapshot(source_path: Path, lake: Path, ranges: int, workers: int) -> dict[str, Any]:
    """Plan ``ranges`` ranges, capture them with ``workers`` processes, publish; timed."""
    request = CaptureRequest(
        lake_uri=str(lake),
        database="bench",
        collection="orders",
        source_location=str(source_path),
        max_rows=BATCH_PAGE_ROWS,
        max_bytes=256 * 1024 * 1024,
        snapshot_ranges=ranges,
    )
    started = time.perf_counter()
    with EmbeddedChangeStreamSource(source_path) as source:
        status = advance_range_snapshot(request, source=source)
    plan = status.plan
    assert plan is not None
    jobs = [
        (
            replace(
                request,
                snapshot_range={
                    "generation": plan.generation,
                    "index": r.index,
                    "count": len(plan.ranges),
                    "lower": r.lower,
                    "upper": r.upper,
                },
            ).to_event(),
            str(source_path),
        )
        for r in plan.ranges
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        per_range = list(pool.map(_capture_one_range, jobs))
    with EmbeddedChangeStreamSource(source_path) as source:
        final = advance_range_snapshot(request, source=source)
    wall = time.perf_counter() - started
    assert final.step == "published"
    return {
        "ranges": len(plan.ranges),
        "method": plan.method,
        "workers": workers,
        "documents": sum(d for d, _, _ in per_range),
        "wall_seconds": wall,
        "range_seconds": [round(s, 2) for _, s, _ in per_range],
        "cpu_seconds": sum(c for _, _, c in per_range),
    }


def snapshot_digest(lake: Path) -> str:
    """SHA-256 over the published snapshot's (record key, document) pairs in key order: equal
    digests mean the same keys with the same documents (canonical extended JSON)."""
    zone = RawZone(LocalObjectStore(lake), "bench", "orders")
    pairs = sorted(
        (row["_id"], row["doc"])
        for manifest in zone.manifests()
        for row in zone.read_batch(manifest).select(["_id", "doc"]).to_pylist()
    )
    digest = hashlib.sha256()
    for key, doc in pairs:
        digest.update(f"{key}\0{doc}\0".encode())
    return digest.hexdigest()


MERGE_CHILD = r"""
import json, resource, sys, time
from datetime import UTC, datetime
import pyarrow as pa
from bson import ObjectId
from deltalake import DeltaTable
sys.path.insert(0, sys.argv[3])
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.lake.raw_manifest import BATCH_SCHEMA
from lambda_functions.lake.record_key import record_key
from lambda_functions.merge import merge_batches

def peak_bytes():  # this process's own peak: VmHWM (ru_maxrss keeps the parent's across exec)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rows, lake, streamed = int(sys.argv[1]), sys.argv[2], sys.argv[4] == "streamed"
store = open_store(lake)
zone = RawZone(store, "bench", "orders")
doc = json.dumps({"status": "paid", "note": "x" * 200})
def batch(keys, op, pos):
    now = datetime.now(UTC)
    return pa.table({"_id": keys, "op": [op] * len(keys), "pos": [pos] * len(keys),
        "seq": list(range(len(keys))), "event_time": [now] * len(keys), "doc": [doc] * len(keys)},
        schema=BATCH_SCHEMA)
page = 50_000  # rows per page file, as a range snapshot writes its generation
def pages():  # one page in memory at a time: the merge's peak is the process's peak
    for start in range(0, rows, page):
        yield batch([record_key(ObjectId()) for _ in range(min(page, rows - start))], "snapshot", 1)
json_bytes = rows * (len(doc) + 40)  # what capture records: the rows as JSON
zone.write_batch(pages(), after=zone.read_checkpoint(), state={}, extra={"json_bytes": json_bytes})
request = MergeRequest(lake_uri=lake, database="bench", collection="orders")
budget = 1 << 20 if streamed else 1 << 40  # streamed: page by page; else one-shot
t = time.perf_counter(); done = merge_batches(request, max_bytes_per_commit=budget)
load = time.perf_counter() - t
assert done.merge_path == ("generation" if streamed else "create"), done.merge_path
rss_load = peak_bytes()
keys = DeltaTable(done.table_uri).to_pyarrow_table(columns=["_id"]).column("_id")
updates = keys.cast(pa.string()).to_pylist()[:: 100]
zone.write_batch([batch(updates, "update", 2)], after=zone.read_checkpoint(), state={})
t = time.perf_counter(); merge_batches(request); incremental = time.perf_counter() - t
print(json.dumps({"rows": rows, "mode": sys.argv[4], "load_seconds": load, "load_peak_bytes": rss_load,
    "update_rows": len(updates), "incremental_seconds": incremental,
    "peak_bytes": peak_bytes()}))
"""


def merge_at(rows: int, workdir: Path, mode: str = "streamed") -> dict[str, Any]:
    """One initial-load merge of ``rows`` documents (then a 1% update) in a child process of its
    own, ``mode`` "streamed" (the generation applied page by page, ``merge.generation``: what a
    merge does with a generation over its byte budget) or "one_shot" (the batch read whole)."""
    lake = workdir / f"merge-{rows}-{mode}"
    done = subprocess.run(
        [sys.executable, "-c", MERGE_CHILD, str(rows), str(lake), str(ROOT), mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def model(
    docs_per_s: float,
    mb_per_s: float,
    concurrency: int,
    merges: list[dict[str, Any]],
    doc_bytes: float,
) -> dict[str, Any]:
    """Wall time and cost of initial loads, and the largest table one Lambda merge loads."""
    lambda_gb = CDC_CAPTURE.memory_mb / 1024
    lambda_share = min(1.0, CDC_CAPTURE.memory_mb / LAMBDA_FULL_VCPU_MB)
    lambda_rate = mb_per_s * lambda_share  # MB/s per Lambda worker
    ecs_rate = mb_per_s * FARGATE_TASK_VCPU  # MB/s per 1-vCPU task
    # merge: least-squares slope of time and memory against rows (initial-load merge)
    xs = [m["rows"] for m in merges]
    slope_t = _slope(xs, [m["load_seconds"] for m in merges])
    slope_m = _slope(xs, [m["load_peak_bytes"] for m in merges])
    base_m = min(m["load_peak_bytes"] for m in merges) - slope_m * min(xs)
    loads = {}
    for size_gb in COLLECTION_SIZES_GB:
        mb = size_gb * 1000
        lambda_worker_s = mb / lambda_rate
        ecs_worker_s = mb / ecs_rate
        invocations = math.ceil(lambda_worker_s / (LAMBDA_MAX_SECONDS * 0.9))
        documents = size_gb * 1e9 / doc_bytes
        loads[f"{size_gb}GB"] = {
            "documents": documents,
            "merge_hours_one_writer": documents * slope_t / 3600,
            "lambda_wall_hours": lambda_worker_s / concurrency / 3600,
            "lambda_cost_usd": lambda_worker_s * lambda_gb * LAMBDA_PRICE_PER_GB_SECOND
            + invocations * LAMBDA_PRICE_PER_REQUEST,
            "lambda_invocations": invocations,
            "ecs_wall_hours": ecs_worker_s / concurrency / 3600,
            "ecs_cost_usd": ecs_worker_s
            / 3600
            * (
                FARGATE_TASK_VCPU * FARGATE_PRICE_PER_VCPU_HOUR
                + FARGATE_TASK_GB * FARGATE_PRICE_PER_GB_HOUR
            ),
        }
    rows_by_time = LAMBDA_MAX_SECONDS * 0.9 / slope_t if slope_t > 0 else math.inf
    rows_by_memory = (
        (LAMBDA_MAX_MEMORY_GB * 1e9 * 0.8 - base_m) / slope_m if slope_m > 0 else math.inf
    )
    largest_rows = min(rows_by_time, rows_by_memory)
    ecs_rows = (FARGATE_MAX_MEMORY_GB * 1e9 * 0.8 - base_m) / slope_m if slope_m > 0 else math.inf
    return {
        "loads": loads,
        "merge_seconds_per_million_rows": slope_t * 1e6,
        "merge_bytes_per_row": slope_m,
        "largest_lambda_merge_rows": largest_rows,
        "largest_lambda_merge_gb": largest_rows * doc_bytes / 1e9,
        "largest_lambda_merge_bound": "time" if rows_by_time <= rows_by_memory else "memory",
        "largest_ecs_merge_rows": ecs_rows,
        "largest_ecs_merge_gb": ecs_rows * doc_bytes / 1e9,
        "lambda_cpu_share": lambda_share,
    }


def _rounded(value: float) -> float | int:
    """``value`` rounded, or ``value`` itself when it is infinite (not bound by memory)."""
    return value if math.isinf(value) else round(value)


def _json_rows(value: float) -> int | None:
    """Rows for the JSON line: ``None`` when not bound within the measured range (infinite)."""
    return None if math.isinf(value) else round(value)


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--ranges", type=int, default=8)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("LAKEHOUSE_FANOUT_CONCURRENCY", "4"))
    )
    parser.add_argument("--merge-sizes", default="50000,200000,500000")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="snapshot runs of each kind, alternated; the fastest counts (other work on a "
        "shared machine only ever slows a run down)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        workdir = Path(tmp)
        source_path = workdir / "source.db"
        t = time.perf_counter()
        json_mb = build_source(source_path, args.docs)
        build_s = time.perf_counter() - t
        doc_bytes = json_mb * 1e6 / args.docs
        ones, manys = [], []
        for repeat in range(args.repeats):  # alternated, so drift on the machine hits both
            order = [(1, 1, ones), (args.ranges, args.workers, manys)]
            for ranges, workers, runs in order if repeat % 2 == 0 else order[::-1]:
                lake = workdir / f"lake-{ranges}-{repeat}"
                runs.append(parallel_snapshot(source_path, lake, ranges, workers))
        assert all(run["documents"] == args.docs for run in ones + manys), "a run lost documents"
        # the N-range snapshot equals the 1-range one exactly: same keys, same documents
        digests = {snapshot_digest(workdir / f"lake-{r}-0") for r in (1, args.ranges)}
        assert len(digests) == 1, "the parallel snapshot differs from the single-range one"
        one = min(ones, key=lambda run: run["wall_seconds"])
        many = min(manys, key=lambda run: run["wall_seconds"])
        sizes = [int(s) for s in args.merge_sizes.split(",")]
        merge_at(5_000, workdir / "warm-up", "streamed")  # a cold first child would skew the slope
        merges = [merge_at(n, workdir, "streamed") for n in sizes]
        one_shots = [merge_at(n, workdir, "one_shot") for n in sizes]

    docs_per_s = one["documents"] / one["wall_seconds"]
    mb_per_s = json_mb / one["wall_seconds"]
    speedup = one["wall_seconds"] / many["wall_seconds"]
    # Derived, not measured: the speedup if every worker had a core of its own (the CPU work
    # of N ranges against 1, times the workers that can run at once).
    work_ratio = one["cpu_seconds"] / many["cpu_seconds"]
    speedup_free = min(many["workers"], many["ranges"], os.cpu_count() or 1) * work_ratio
    figures = model(docs_per_s, mb_per_s, args.concurrency, merges, doc_bytes)
    one_shot = model(docs_per_s, mb_per_s, args.concurrency, one_shots, doc_bytes)

    print(
        f"collection: {args.docs:,} documents, {json_mb:,.0f} MB canonical JSON "
        f"(~{doc_bytes:.0f} B each), built in {build_s:.0f} s; {os.cpu_count()} CPUs"
    )
    print(f"{'snapshot':<28}{'ranges':>7}{'workers':>8}{'wall s':>9}{'docs/s':>11}{'MB/s':>8}")
    for label, run in (("single worker", one), (f"parallel ({many['method']})", many)):
        print(
            f"{label:<28}{run['ranges']:>7}{run['workers']:>8}{run['wall_seconds']:>9.1f}"
            f"{run['documents'] / run['wall_seconds']:>11,.0f}"
            f"{json_mb / run['wall_seconds']:>8.1f}"
        )
    overlap = sum(many["range_seconds"]) / many["wall_seconds"]
    print(
        f"CPU seconds of the range workers: 1 range {one['cpu_seconds']:.1f} s, "
        f"{many['ranges']} ranges {many['cpu_seconds']:.1f} s; CPU share they got: "
        f"{many['cpu_seconds'] / sum(many['range_seconds']):.0%} (1 range: "
        f"{one['cpu_seconds'] / sum(one['range_seconds']):.0%})"
    )
    print(
        f"speedup {many['ranges']} ranges vs 1: {speedup:.2f}x (ranges in flight on average: "
        f"{overlap:.2f}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: "
        "other processes share them)"
    )
    print(
        f"\n{'merge rows':>12}{'mode':>10}{'load s':>9}{'load peak MB':>14}{'1% update s':>13}"
        f"{'peak MB':>9}"
    )
    for m in merges + one_shots:
        print(
            f"{m['rows']:>12,}{m['mode']:>10}{m['load_seconds']:>9.1f}"
            f"{m['load_peak_bytes'] / 1e6:>14,.0f}"
            f"{m['incremental_seconds']:>13.2f}{m['peak_bytes'] / 1e6:>9,.0f}"
        )
    print(
        f"peak memory per row of the initial-load merge: streamed "
        f"{figures['merge_bytes_per_row']:,.0f} B, one-shot {one_shot['merge_bytes_per_row']:,.0f} B"
    )
    print(
        f"\ninitial load at concurrency {args.concurrency} (capture only; Lambda "
        f"{CDC_CAPTURE.memory_mb} MB = {figures['lambda_cpu_share']:.2f} vCPU; "
        f"Fargate {FARGATE_TASK_VCPU:g} vCPU/{FARGATE_TASK_GB:g} GB)"
    )
    print(
        f"{'size':>8}{'documents':>16}{'Lambda h':>10}{'Lambda $':>10}{'invocations':>13}"
        f"{'ECS h':>8}{'ECS $':>8}{'merge h':>9}"
    )
    for size, load in figures["loads"].items():
        print(
            f"{size:>8}{load['documents']:>16,.0f}{load['lambda_wall_hours']:>10.1f}"
            f"{load['lambda_cost_usd']:>10.2f}{load['lambda_invocations']:>13,}"
            f"{load['ecs_wall_hours']:>8.1f}{load['ecs_cost_usd']:>8.2f}"
            f"{load['merge_hours_one_writer']:>9.1f}"
        )
    print(
        "(merge h: the generation merged by one writer at the measured rate, if it fitted one "
        "commit: see the next lines)"
    )
    print(
        f"largest table one Lambda merge loads (a generation is one batch, merged page by page "
        f"in one commit) within {LAMBDA_MAX_MEMORY_GB:g} GB / "
        f"{LAMBDA_MAX_SECONDS / 60:g} min: ~{figures['largest_lambda_merge_rows']:,.0f} rows "
        f"(~{figures['largest_lambda_merge_gb']:,.1f} GB of documents; bound by "
        f"{figures['largest_lambda_merge_bound']}); merge function memory "
        f"{MERGE.memory_mb} MB"
    )
    print(
        f"largest generation one ECS merge task applies within {FARGATE_MAX_MEMORY_GB:g} GB: "
        + (
            "not bound by memory (peak memory did not grow with rows)"
            if math.isinf(figures["largest_ecs_merge_rows"])
            else f"~{figures['largest_ecs_merge_rows']:,.0f} rows "
            f"(~{figures['largest_ecs_merge_gb']:,.1f} GB of documents)"
        )
    )
    print(
        f"one-shot (the batch read whole, before merge.generation): ~"
        f"{one_shot['largest_lambda_merge_rows']:,.0f} rows in one Lambda merge (bound by "
        f"{one_shot['largest_lambda_merge_bound']})"
    )
    print(
        json.dumps(
            {
                "docs": args.docs,
                "ranges": many["ranges"],
                "workers": many["workers"],
                "cpus": os.cpu_count(),
                "snapshot_docs_per_s_per_worker": round(docs_per_s),
                "snapshot_mb_per_s_per_worker": round(mb_per_s, 2),
                "speedup_parallel_snapshot": round(speedup, 2),
                "ranges_in_flight": round(overlap, 2),
                "range_cpu_work_ratio": round(work_ratio, 2),
                "speedup_if_cores_free": round(speedup_free, 2),
                "load_average": round(os.getloadavg()[0], 2),
                "merge_seconds_per_million_rows": round(
                    figures["merge_seconds_per_million_rows"], 1
                ),
                "merge_bytes_per_row": round(figures["merge_bytes_per_row"]),
                "largest_lambda_merge_rows": _json_rows(figures["largest_lambda_merge_rows"]),
                "largest_ecs_merge_rows": _rounded(figures["largest_ecs_merge_rows"]),
                "one_shot_merge_bytes_per_row": round(one_shot["merge_bytes_per_row"]),
                "one_shot_largest_lambda_merge_rows": _json_rows(
                    one_shot["largest_lambda_merge_rows"]
                ),
                "concurrency": args.concurrency,
                "initial_load": {
                    size: {k: round(v, 2) for k, v in load.items()}
                    for size, load in figures["loads"].items()
                },
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
