"""Benchmark: an incremental load of a 1% change vs a full reload of the same DuckDB table.

Setup (not timed): a lake table of ``--rows`` documents (2M by default) written with deltalake in
the merge stage's layout (same columns, partitioning and change data feed), then one raw batch of
``--change-share`` of the rows (1%: 75% updates, 12.5% deletes, 12.5% inserts, keys spread over
the whole table) applied by the project's own ``merge_batches``, so the change data feed is the
one the merge really writes. The warehouse is loaded once at the table's first version and that
DuckDB file is kept as the starting point.

Timed, ``--repeats`` times each from a fresh copy of that starting point (so both reach the same
final state): ``load_changes`` incremental (change feed → stage → delete + insert + control row in
one transaction) and ``load_changes(force_full_reload=True)`` (whole table → same transaction
shape). Both with the default local projection (status, total, created_at as typed columns),
reconciliation excluded (timed once, separately). Medians are reported: the machine has 2 cores
and is shared, expect noise.

Prints a table, then one JSON line; ``speedup_incremental_vs_full`` = full reload seconds ÷
incremental seconds (medians).

    .venv/bin/python benchmarks/warehouse_load.py            # 2M rows, ~2-3 minutes
    .venv/bin/python benchmarks/warehouse_load.py --quick    # 200k rows, ~20 seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deltalake import CommitProperties, write_deltalake  # noqa: E402

from lambda_functions.contracts import LoadRequest, MergeRequest  # noqa: E402
from lambda_functions.lake import Checkpoint, RawZone, open_store  # noqa: E402
from lambda_functions.lake.raw_zone import BATCH_SCHEMA  # noqa: E402
from lambda_functions.lake.table_layout import TABLE_CONFIGURATION, TABLE_SCHEMA  # noqa: E402
from lambda_functions.merge import lake_table_location, merge_batches  # noqa: E402
from lambda_functions.merge.rekey import record_key_transactions  # noqa: E402
from lambda_functions.warehouse_load import load_changes  # noqa: E402

DATABASE, COLLECTION = "bench", "orders"
PROJECTION = {"status": "VARCHAR(32)", "total": "DECIMAL(18,2)", "created_at": "TIMESTAMPTZ"}
START = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
SPAN_S = 730 * 86400  # documents created over two years: 24 monthly partitions
BASE_POS = 1 << 40
STATUSES = pa.array(["pending", "paid", "shipped", "delivered", "cancelled"])
SEED = 20240501


def object_ids(seconds: np.ndarray, counters: np.ndarray) -> pa.Array:
    """24-hex ObjectId-like keys: 8 hex digits of creation time, 16 of a counter."""
    text = np.char.add(
        np.char.zfill(np.char.mod("%x", seconds), 8), np.char.zfill(np.char.mod("%x", counters), 16)
    )
    return pa.array(text.astype(str))


def documents(rng: np.random.Generator, seconds: np.ndarray, version: int) -> pa.Array:
    """Canonical extended JSON documents, about 200 bytes each."""
    n = len(seconds)
    cents = rng.integers(100, 100_000, n)
    status = STATUSES.take(pa.array(rng.integers(0, len(STATUSES), n)))
    parts = [
        '{"status": "',
        status,
        '", "total": {"$numberDecimal": "',
        pa.array((cents // 100).astype(str)),
        ".",
        pa.array(np.char.zfill((cents % 100).astype(str), 2)),
        '"}, "created_at": {"$date": {"$numberLong": "',
        pa.array((seconds.astype(np.int64) * 1000).astype(str)),
        '"}}, "items": {"$numberInt": "',
        pa.array(rng.integers(1, 9, n).astype(str)),
        f'"}}, "revision": {version}, "note": "standard delivery, leave at the door"}}',
    ]
    return pc.binary_join_element_wise(*parts, "")


def build_lake(lake: str, rows: int) -> tuple[str, dict]:
    """The lake table at version 0: ``rows`` documents, as the merge would have written them."""
    rng = np.random.default_rng(SEED)
    seconds = np.sort(rng.integers(START, START + SPAN_S, rows))
    ids = object_ids(seconds, np.arange(rows))
    created = pa.array(seconds * 1_000_000, pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "_id": ids,
            "_bucket": pc.strftime(created, "%Y-%m"),
            "doc": documents(rng, seconds, 0),
            "_op": pa.array(["snapshot"] * rows),
            "_pos": pa.array(np.full(rows, BASE_POS)),
            "_batch": pa.array(np.zeros(rows, np.int64)),
            "_seq": pa.array(np.arange(rows)),
            "_event_time": created,
        },
        schema=TABLE_SCHEMA,
    )
    uri, options = lake_table_location(open_store(lake), DATABASE, COLLECTION)
    write_deltalake(
        uri,
        table,
        partition_by=["_bucket"],
        configuration=TABLE_CONFIGURATION,
        storage_options=options,
        # written in the current record key format, as the merge's first commit would be
        commit_properties=CommitProperties(app_transactions=record_key_transactions()),
    )
    return uri, options


def change_lake(lake: str, rows: int, share: float) -> int:
    """Publish one raw batch changing ``share`` of the rows and merge it; return the changes."""
    rng = np.random.default_rng(SEED + 1)
    changes = max(8, round(rows * share))
    n_update, n_delete = round(changes * 0.75), round(changes * 0.125)
    n_insert = changes - n_update - n_delete
    picked = rng.choice(rows, n_update + n_delete, replace=False)
    base_seconds = np.sort(np.random.default_rng(SEED).integers(START, START + SPAN_S, rows))
    seconds = np.concatenate(
        [base_seconds[picked], np.full(n_insert, START + SPAN_S + 3600, dtype=np.int64)]
    )
    counters = np.concatenate([picked, rows + np.arange(n_insert)])
    ops = ["update"] * n_update + ["delete"] * n_delete + ["insert"] * n_insert
    docs = documents(rng, seconds, 1)
    mask = pa.array([op == "delete" for op in ops])
    batch = pa.table(
        {
            "_id": object_ids(seconds, counters),
            "op": pa.array(ops),
            "pos": pa.array(BASE_POS + 1 + np.arange(changes)),
            "seq": pa.array(np.arange(changes)),
            "event_time": pa.array([datetime.now(UTC)] * changes, pa.timestamp("ms", tz="UTC")),
            "doc": pc.if_else(mask, pa.scalar(None, pa.string()), docs),
        },
        schema=BATCH_SCHEMA,
    )
    zone = RawZone(open_store(lake), DATABASE, COLLECTION)
    zone.write_batch([batch], after=Checkpoint(), state={})
    merge_batches(MergeRequest(lake_uri=lake, database=DATABASE, collection=COLLECTION))
    return changes


def request(lake: str, warehouse: Path, **extra) -> LoadRequest:
    return LoadRequest(
        lake_uri=lake,
        database=DATABASE,
        collection=COLLECTION,
        warehouse_location=str(warehouse),
        projection=PROJECTION,
        **extra,
    )


def fingerprint(warehouse: Path) -> tuple:
    with duckdb.connect(str(warehouse), read_only=True) as db:
        return db.execute(
            "SELECT count(*), sum(hash(_id || doc::VARCHAR || coalesce(CAST(total AS VARCHAR), ''), "
            "status, created_at, _pos)) "
            f'FROM "analytics"."{COLLECTION}"'
        ).fetchone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--change-share", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200k rows, for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    rows = 200_000 if args.quick else args.rows
    work = Path(tempfile.mkdtemp(prefix="bench-warehouse-load-"))
    lake = str(work / "lake")
    try:
        t = time.perf_counter()
        build_lake(lake, rows)
        build_s = time.perf_counter() - t
        base = work / "base.duckdb"
        t = time.perf_counter()
        first = load_changes(request(lake, base), check=False)
        first_s = time.perf_counter() - t
        assert first.full_reload and first.rows_inserted == rows, first
        t = time.perf_counter()
        changes = change_lake(lake, rows, args.change_share)
        merge_s = time.perf_counter() - t

        incremental_s: list[float] = []
        full_s: list[float] = []
        staged = 0
        for n in range(args.repeats):
            for kind, times in (("incremental", incremental_s), ("full", full_s)):
                target = work / f"{kind}.duckdb"
                shutil.copyfile(base, target)
                extra = {"force_full_reload": True} if kind == "full" else {}
                t = time.perf_counter()
                result = load_changes(request(lake, target, **extra), check=False)
                times.append(time.perf_counter() - t)
                assert result.full_reload == (kind == "full"), result
                if kind == "incremental":
                    staged = result.rows_staged
                print(f"  run {n + 1} {kind:<11} {times[-1]:8.3f} s", file=sys.stderr)
        incremental = work / "incremental.duckdb"
        same_result = fingerprint(incremental) == fingerprint(work / "full.duckdb")
        t = time.perf_counter()
        checked = load_changes(request(lake, incremental))
        reconcile_s = time.perf_counter() - t
        inc, full = statistics.median(incremental_s), statistics.median(full_s)
        figures = {
            "benchmark": "warehouse_load",
            "rows": rows,
            "changed_rows": changes,
            "rows_staged_incremental": staged,
            "repeats": args.repeats,
            "incremental_s_median": round(inc, 3),
            "full_reload_s_median": round(full, 3),
            "speedup_incremental_vs_full": round(full / inc, 1),
            "incremental_s_runs": [round(x, 3) for x in incremental_s],
            "full_reload_s_runs": [round(x, 3) for x in full_s],
            "reconcile_s": round(reconcile_s, 3),
            "reconciliation_matches": checked.reconciliation.matches,
            "incremental_equals_full_reload": same_result,
            "setup_build_lake_s": round(build_s, 1),
            "setup_first_full_load_s": round(first_s, 1),
            "setup_merge_change_s": round(merge_s, 1),
            "cpus": os.cpu_count(),
            "duckdb": duckdb.__version__,
        }
        print()
        print(f"warehouse load: {rows:,} rows, {changes:,} changed ({args.change_share:.1%})")
        print(f"{'load':<34}{'median s':>10}{'runs':>30}")
        runs = ", ".join(f"{x:.2f}" for x in incremental_s)
        print(f"{'incremental (change feed)':<34}{inc:>10.3f}{runs:>30}")
        runs = ", ".join(f"{x:.2f}" for x in full_s)
        print(f"{'full reload (whole table)':<34}{full:>10.3f}{runs:>30}")
        print(f"{'speedup incremental vs full':<34}{full / inc:>9.1f}x")
        print(f"{'reconciliation (separate)':<34}{reconcile_s:>10.3f}")
        print(
            f"both loads give the same table: {same_result}; reconciliation matches: "
            f"{checked.reconciliation.matches}"
        )
        print(json.dumps(figures))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
