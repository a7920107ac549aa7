"""Benchmark: peak memory of the merge and the load for a few ~15 MB documents (issue 15, item 4).

The scenario the issue names: documents near the 16 MiB BSON limit, each captured alone in its
batch (capture's ``max_bytes`` lets one big document through). Two shapes: int arrays (~1.2M
int32 each, which canonical extended JSON writes as ``{"$numberInt": "..."}``: ~27 MB of JSON per
document, and compresses well in Parquet) and random hex strings (incompressible).

Each stage (and the build) runs in its own process so its peak RSS (``ru_maxrss``) is its own: the merge with no
byte bound (``max_bytes_per_commit`` huge: every batch in one commit, the behaviour before the
bound) and with the bound (``LAKEHOUSE_MERGE_SEGMENT_BYTES``-style budget), then the load of the
merged table into DuckDB. Prints a table, then one JSON line.

Usage: ``python benchmarks/large_documents.py [--documents 4] [--budget-mib 4]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DB, COLL = "bench", "large"


def build(root: Path, shape: str, documents: int) -> None:
    """The source, its snapshot, then ``documents`` big inserts captured one per batch."""
    from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
    from lambda_functions.cdc_capture import capture_changes
    from lambda_functions.contracts import CaptureRequest

    source = EmbeddedChangeStreamSource(root / "store.db")
    source.enable_change_streams(DB, COLL)
    request = CaptureRequest(lake_uri=str(root / "lake"), database=DB, collection=COLL)
    capture_changes(request, source=source)
    for n in range(documents):
        if shape == "ints":
            doc = {"_id": n, "values": list(range(n, n + 1_150_000))}
        else:
            doc = {"_id": n, "blob": os.urandom(7_500_000).hex()}
        source.insert_one(DB, COLL, doc)
    for _ in range(documents):
        small = CaptureRequest(
            lake_uri=str(root / "lake"), database=DB, collection=COLL, max_bytes=1
        )
        capture_changes(small, source=source)
    source.close()


def child(stage: str, root: Path, budget: int) -> None:
    """One stage in this process; prints its JSON figures."""
    started = time.monotonic()
    if stage == "merge":
        from lambda_functions.contracts import MergeRequest
        from lambda_functions.merge import merge_batches

        request = MergeRequest(lake_uri=str(root / "lake"), database=DB, collection=COLL)
        result = merge_batches(request, max_bytes_per_commit=budget)
        extra = {"commits": result.commits}
    else:
        from lambda_functions.contracts import LoadRequest
        from lambda_functions.warehouse_load.load import load_changes

        load_changes(
            LoadRequest(
                lake_uri=str(root / "lake"),
                database=DB,
                collection=COLL,
                warehouse_location=str(root / "warehouse.duckdb"),
            )
        )
        extra = {}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"peak_mb": round(peak_mb), "s": round(time.monotonic() - started, 1)} | extra)
    )


def run(stage: str, root: Path, arg: int | str) -> dict:
    """One child process (the parent stays small: a forked child's peak RSS counts the pages it
    shares with its parent)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", stage, str(root), str(arg)],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--budget-mib", type=int, default=4)
    parser.add_argument("--shapes", default="ints,random")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "ROOT", "ARG"))
    args = parser.parse_args()
    if args.child:
        stage, root, arg = args.child
        if stage == "build":
            shape, documents = arg.split(":")
            build(Path(root), shape, int(documents))
        else:
            child(stage, Path(root), int(arg))
        return
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            base = Path(tmp) / shape / "base"
            base.mkdir(parents=True)
            run("build", base, f"{shape}:{args.documents}")
            for label, budget in (("unbounded", 1 << 62), ("bounded", args.budget_mib << 20)):
                root = Path(tmp) / shape / label
                shutil.copytree(base, root)
                merged = run("merge", root, budget)
                loaded = run("load", root, budget)
                figures[f"{shape}/{label}"] = {"merge": merged, "load": loaded}
                shutil.rmtree(root)
    print(f"{'case':<20} {'merge MB':>9} {'commits':>8} {'load MB':>8}")
    for case, f in figures.items():
        print(
            f"{case:<20} {f['merge']['peak_mb']:>9} {f['merge']['commits']:>8} "
            f"{f['load']['peak_mb']:>8}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
