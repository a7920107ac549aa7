"""Benchmark: one 20,000-change batch merged into a 2M-row and a 10M-row lake table.

What it measures (issue 4), each merge in its own process so its peak memory is its own:

- (a) pandas: read the whole table, full outer join with the precombined batch, rewrite it all
  (the "before" design);
- (b) DuckDB: the same full outer join in SQL, rewritten to one Parquet file;
- (c) ours: ``merge_batches`` on the Delta table, end to end (open the table, read and verify the
  raw batch, precombine, commit, count, duplicate check), exactly what the merge Lambda runs.

All three do the same work: a delete that wins leaves a tombstone row (``_op`` 'delete', no
document), as the merge keeps (key, position) of deleted documents.

Two key distributions: *recent* (updates and deletes on documents created in the last weeks, as in
an operational collection whose ObjectIds grow with time; inserts are new documents) and *uniform*
(updates and deletes spread over the whole table). Documents are ~330-byte order documents in
extended JSON; the 2M-row table is six years at ~28,000 documents a month (73 monthly partitions,
about 135 MB of zstd Parquet, 230 MB as snappy). The 10M-row table is the same collection five
times older (same rate, thirty years of ObjectIds): its newest months are the 2M table's, so the
very same recent batch applies to it. The results of the three methods are compared row for row
(at 10M rows, ours against DuckDB's).

*Partial updates* (issue 15): the recent batch again, with half of its updates delivered as
``updateDescription`` deltas without a document (``partial_update_batch``), merged by ours into
the 2M-row table; its ratio to the same batch with whole documents is reported in the same run.

Prints a human table, then one JSON line with the figures. Timings are medians of ``--repeats``
runs (``--merge-repeats`` for ours), measured inside each child process around the work only
(imports excluded), taken round-robin over every scenario and method so that load from other
work on the shared machine slows them alike; expect noise all the same. Data lives in a temporary directory,
removed at the end unless ``--keep``.

    .venv/bin/python benchmarks/merge.py            # 2M + 10M rows, ~10 minutes
    .venv/bin/python benchmarks/merge.py --quick    # 200k + 1M rows, ~1 minute
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake  # noqa: E402
from partial_update_batch import (  # noqa: E402
    PARTIAL_SHARE,
    as_partial_updates,
    check_partial_documents,
)

from lambda_functions.contracts import MergeRequest  # noqa: E402
from lambda_functions.lake import RawZone, open_store  # noqa: E402
from lambda_functions.lake.lake_table import app_id, lake_table_location  # noqa: E402
from lambda_functions.lake.raw_zone import BATCH_SCHEMA, Checkpoint  # noqa: E402
from lambda_functions.lake.table_layout import (  # noqa: E402
    TABLE_CONFIGURATION,
    TABLE_SCHEMA,
    WRITER_PROPERTIES,
    key_buckets,
)
from lambda_functions.merge.rekey import record_key_transactions  # noqa: E402

DATABASE, COLLECTION = "bench", "orders"
END = datetime(2025, 12, 28, tzinfo=UTC)  # the newest document; the batch's inserts follow it
BASE_POS = 1 << 40  # stream position of the snapshot that built the table
SNAPSHOT_BATCH = 1  # the table records this batch as applied; the measured batch is the next
UPDATE_SHARE, INSERT_SHARE = 0.70, 0.20  # deletes: the rest
RECENT_MEAN_AGE_DAYS = 10.0  # recent distribution: age of the changed documents ~ Exp(10 days)
RECENT_MAX_AGE_DAYS = 90.0
SEED = 20240501


# -- data ---------------------------------------------------------------------------------------
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_WORDS = pa.array(
    [
        "express",
        "standard",
        "gift",
        "fragile",
        "returned",
        "priority",
        "fast",
        "morning",
        "evening",
        "door",
        "weekend",
        "office",
        "leave-at-reception",
        "call-first",
        "signature-required",
        "eco-packaging",
    ]
)
_NAMES = pa.array(
    ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Ken", "Dennis", "Linus", "Margaret"]
)
_SURNAMES = pa.array(
    ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Thompson", "Ritchie"]
)
_STATUSES = pa.array(["created", "paid", "packed", "shipped", "delivered", "cancelled"])
_CHANNELS = pa.array(["web", "ios", "android", "store", "partner"])
_TIERS = pa.array(["bronze", "silver", "gold", "platinum"])


def object_ids(seconds: np.ndarray, counter: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """ObjectId hex strings: 4-byte timestamp, 5-byte process id (one of 8), 3-byte counter."""
    n = len(seconds)
    raw = np.empty((n, 12), np.uint8)
    raw[:, :4] = seconds.astype(">u4").view(np.uint8).reshape(n, 4)
    processes = np.frombuffer(np.random.default_rng(7).bytes(40), np.uint8).reshape(8, 5)
    raw[:, 4:9] = processes[rng.integers(0, 8, n)]
    raw[:, 9:] = (counter.astype(">u4").view(np.uint8).reshape(n, 4))[:, 1:]
    text = np.empty((n, 24), np.uint8)
    text[:, 0::2] = _HEX[raw >> 4]
    text[:, 1::2] = _HEX[raw & 15]
    return pa.array(text.view("S24").ravel()).cast(pa.string())


def documents(
    ids: pa.Array, created: np.ndarray, rng: np.random.Generator, *, revision: int
) -> pa.Array:
    """An order document as canonical extended JSON, ~330 bytes, realistic enough to compress."""
    n = len(ids)

    def pick(values: pa.Array) -> pa.Array:
        return values.take(pa.array(rng.integers(0, len(values), n)))

    def number(low: int, high: int) -> pa.Array:
        return pa.array(rng.integers(low, high, n)).cast(pa.string())

    def money() -> pa.Array:
        cents = rng.integers(100, 50_000, n)
        return pa.array(np.char.mod("%.2f", cents / 100.0)).cast(pa.string())

    # ISO 8601 with a "T" (extended JSON's $date; Arrow's cast puts a space there).
    iso = pc.replace_substring(
        pa.array(created.astype("datetime64[s]")).cast(pa.string()), " ", "T"
    )
    parts = [
        '{"_id":{"$oid":"', ids,
        '"},"customer":{"id":"c', number(100_000, 999_999),
        '","name":"', pick(_NAMES), " ", pick(_SURNAMES),
        '","tier":"', pick(_TIERS),
        '"},"status":"', pick(_STATUSES),
        '","items":[{"sku":"SKU-', number(10_000, 99_999),
        '","qty":', number(1, 5), ',"price":', money(),
        '},{"sku":"SKU-', number(10_000, 99_999),
        '","qty":', number(1, 5), ',"price":', money(),
        '}],"total":', money(),
        ',"currency":"EUR","channel":"', pick(_CHANNELS),
        '","createdAt":{"$date":"', iso,
        'Z"},"note":"', pick(_WORDS), " ", pick(_WORDS), " ", pick(_WORDS),
        '","rev":', str(revision), "}",
    ]  # fmt: skip
    columns = [p if isinstance(p, pa.Array) else pa.array([p] * n) for p in parts]
    return pc.binary_join_element_wise(*columns, "")


@dataclass(frozen=True)
class Collection:
    """A collection of ``rows`` documents inserted at a constant rate, ending at ``END``."""

    rows: int
    docs_per_day: float

    @functools.cached_property
    def _months(self) -> list[tuple[datetime, datetime, int, int]]:
        cut, remaining, hi = [], self.rows, END
        while remaining > 0:
            lo = datetime(hi.year, hi.month, 1, tzinfo=UTC)
            if lo == hi:  # hi is a month's first instant: cut the month before it
                lo = (lo - timedelta(days=1)).replace(day=1)
            count = min(remaining, round((hi - lo).total_seconds() * self.docs_per_day / 86400))
            if count == remaining:  # the oldest month holds only its newest documents
                lo = hi - timedelta(days=count / self.docs_per_day)
            cut.append((lo, hi, count))
            remaining, hi = remaining - count, lo
        months, first = [], 0
        for lo, hi, count in reversed(cut):
            months.append((lo, hi, first, count))
            first += count
        return months

    def months(self) -> list[tuple[datetime, datetime, int, int]]:
        """(month start, month end, first row, row count), oldest first; row 0 is the oldest.

        Months are cut backwards from ``END`` at the constant rate, and a month's documents
        depend only on its dates: a larger table holds the very same newest months."""
        return self._months

    def month_rows(self, lo: datetime, hi: datetime, first: int, count: int) -> pa.Table:
        """The rows of one month; a month's rows depend only on its date (same in any table)."""
        rng = np.random.default_rng([SEED, lo.year, lo.month, lo.day, count])
        span = (hi - lo).total_seconds()
        seconds = np.sort(lo.timestamp() + rng.random(count) * span).astype(np.int64)
        counter = ((lo.year * 12 + lo.month) * 65_536 + np.arange(count)) % (1 << 24)
        ids = object_ids(seconds, counter, rng)
        rows = lake_rows(
            ids,
            documents(ids, seconds.astype("datetime64[s]"), rng, revision=0),
            op="snapshot",
            pos=np.full(count, BASE_POS),
            batch=SNAPSHOT_BATCH,
            seq=np.arange(count),
            event_time=np.full(count, int(END.timestamp() * 1e6)),
        )
        return rows.sort_by("_id")


def lake_rows(ids, docs, *, op, pos, batch, seq, event_time) -> pa.Table:
    buckets = key_buckets(ids)
    n = len(ids)
    return pa.table(
        {
            "_id": ids,
            "_bucket": buckets,
            "doc": docs,
            "_op": pa.array([op] * n) if isinstance(op, str) else op,
            "_pos": pa.array(pos, pa.int64()),
            "_batch": pa.array(np.full(n, batch), pa.int64()),
            "_seq": pa.array(seq, pa.int64()),
            "_event_time": pa.array(event_time, pa.timestamp("us", tz="UTC")),
        },
        schema=TABLE_SCHEMA,
    )


def build_table(collection: Collection, uri: str) -> tuple[int, int]:
    """Write the table month group by month group (bounded memory) in the merge's layout, and
    checkpoint it; return (files, bytes)."""
    # As the merge's first commit would: batch 1 applied, written in the current record key format.
    commit = CommitProperties(
        app_transactions=[
            Transaction(app_id(f"{DATABASE}.{COLLECTION}"), 1),
            *record_key_transactions(),
        ]
    )
    group: list[pa.Table] = []
    months = collection.months()
    for i, month in enumerate(months):
        group.append(collection.month_rows(*month))
        if sum(t.num_rows for t in group) >= 1_000_000 or i == len(months) - 1:
            write_deltalake(
                uri,
                pa.concat_tables(group),
                mode="append",
                partition_by=["_bucket"],
                configuration=TABLE_CONFIGURATION,
                writer_properties=WRITER_PROPERTIES,
                commit_properties=commit,
            )
            group = []
    table = DeltaTable(uri)
    table.create_checkpoint()  # as the maintenance job leaves a table: one file to load
    actions = pa.table(table.get_add_actions(flatten=True))
    return actions.num_rows, pc.sum(actions.column("size_bytes")).as_py()


def change_batch(collection: Collection, changes: int, distribution: str) -> pa.Table:
    """``changes`` raw change rows: 70% updates, 20% inserts, 10% deletes.

    Updates and deletes hit distinct existing documents, except that one update in ten hits a
    document inserted earlier in the same batch (insert then update, so precombining matters).
    """
    rng = np.random.default_rng([SEED, changes, 1 if distribution == "recent" else 2])
    n_insert = round(changes * INSERT_SHARE)
    n_update = round(changes * UPDATE_SHARE)
    n_delete = changes - n_insert - n_update
    n_update_new = min(n_update // 10, n_insert)
    n_existing = n_update - n_update_new + n_delete
    if distribution == "recent":
        ages = rng.exponential(RECENT_MEAN_AGE_DAYS, n_existing * 3)
        ages = ages[ages < RECENT_MAX_AGE_DAYS]
        rows = np.unique(collection.rows - 1 - (ages * collection.docs_per_day).astype(np.int64))
        rows = rng.permutation(rows[rows >= 0])[:n_existing]
        if len(rows) < n_existing:
            raise SystemExit("the recent window holds too few documents; lower --changes")
    else:
        rows = rng.choice(collection.rows, n_existing, replace=False)
    existing = existing_ids(collection, np.sort(rows))
    existing = existing.take(pa.array(rng.permutation(len(existing))))
    start = END.timestamp()
    seconds = np.sort(start + rng.random(n_insert) * 86_400).astype(np.int64)
    new_ids = object_ids(seconds, (collection.rows + np.arange(n_insert)) % (1 << 24), rng)
    upd_new = new_ids.take(pa.array(rng.choice(n_insert, n_update_new, replace=False)))
    ids = pa.concat_arrays(
        [
            new_ids,
            existing.slice(0, n_update - n_update_new),
            upd_new,
            existing.slice(n_update - n_update_new),
        ]
    )
    ops = ["insert"] * n_insert + ["update"] * n_update + ["delete"] * n_delete
    docs = documents(ids, np.full(len(ids), int(start), "datetime64[s]"), rng, revision=1)
    docs = pc.if_else(
        pa.array([op == "delete" for op in ops]), pa.nulls(len(ids), pa.string()), docs
    )
    seq = np.arange(len(ids))
    return pa.table(
        {
            "_id": ids,
            "op": pa.array(ops),
            "pos": pa.array(BASE_POS + 1 + seq, pa.int64()),
            "seq": pa.array(seq, pa.int64()),
            "event_time": pa.array(
                (start * 1000 + seq).astype(np.int64), pa.timestamp("ms", tz="UTC")
            ),
            "doc": docs,
        },
        schema=BATCH_SCHEMA,
    )


def existing_ids(collection: Collection, rows: np.ndarray) -> pa.Array:
    """The ``_id`` of the given row numbers (row 0 = oldest), regenerating only their months."""
    picked = []
    for lo, hi, first, count in collection.months():
        inside = rows[(rows >= first) & (rows < first + count)]
        if len(inside):
            ids = collection.month_rows(lo, hi, first, count).column("_id")
            picked.append(ids.take(pa.array(inside - first)).combine_chunks())
    return pa.concat_arrays(picked)


# -- runs (each in its own process) -------------------------------------------------------------
def link_copy(source: Path, target: Path) -> None:
    """A copy of a Delta table that costs nothing: data files are hard links (Delta never
    rewrites a file in place), the log is copied."""
    for dirpath, _dirs, files in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if "_delta_log" in rel.parts:
                shutil.copy2(Path(dirpath, name), target / rel / name)
            else:
                os.link(Path(dirpath, name), target / rel / name)


def child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one measured operation in a fresh interpreter; return its figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(kind: str, args: dict[str, Any]) -> None:
    import duckdb  # noqa: F401  (imports are not part of any method's time)
    import pandas  # noqa: F401

    from lambda_functions.merge import merge_batches  # noqa: F401

    started = time.perf_counter()
    figures = {"ours": _ours, "pandas": _pandas, "duckdb": _duckdb}[kind](args)
    figures["seconds"] = time.perf_counter() - started
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent through fork and exec, so a child started by a big parent would report the
    parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def _ours(args: dict[str, Any]) -> dict[str, Any]:
    from lambda_functions.merge import merge_batches

    result = merge_batches(
        MergeRequest(lake_uri=args["lake"], database=DATABASE, collection=COLLECTION)
    )
    return {
        "version": result.version,
        "merge_path": result.merge_path,
        "files_rewritten": result.files_rewritten,
        "bytes_rewritten": result.bytes_rewritten,
        "files_in_table": result.files_in_table,
        "duplicate_keys": result.duplicate_keys,
        "partial_updates_applied": result.partial_updates_applied,
        "partial_updates_unapplied": result.partial_updates_unapplied,
    }


def _pandas(args: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    table = DeltaTable(args["table"]).to_pandas()
    changes = pq.read_table(args["batch"]).to_pandas()
    changes = changes.sort_values(["_id", "pos", "seq"]).drop_duplicates("_id", keep="last")
    seconds = changes["_id"].str.slice(0, 8).apply(int, base=16)
    changes["_bucket"] = pd.to_datetime(seconds, unit="s", utc=True).dt.strftime("%Y-%m")
    changes = changes.rename(
        columns={"op": "_op", "pos": "_pos", "seq": "_seq", "event_time": "_event_time"}
    )
    changes["_batch"] = args["batch_number"]
    joined = table.merge(changes, on="_id", how="outer", suffixes=("_t", "_s"), indicator=True)
    take_source = (joined["_merge"] == "right_only") | (
        (joined["_merge"] == "both") & (joined["_pos_s"] >= joined["_pos_t"])
    )
    merged = pd.DataFrame({"_id": joined["_id"]})
    for column in TABLE_SCHEMA.names[1:]:
        merged[column] = joined[f"{column}_s"].where(take_source, joined[f"{column}_t"])
    # A winning delete stays as a tombstone row (_op 'delete', doc null), as the merge keeps it.
    merged.to_parquet(args["out"], index=False)
    return {"rows": len(merged)}


def _duckdb(args: dict[str, Any]) -> dict[str, Any]:
    import duckdb

    files = DeltaTable(args["table"]).file_uris()
    with duckdb.connect() as db:
        db.execute(
            f"""
            COPY (
              WITH c AS (
                SELECT * FROM read_parquet($batch)
                QUALIFY row_number() OVER (PARTITION BY _id ORDER BY pos DESC, seq DESC) = 1
              ),
              t AS (SELECT * FROM read_parquet($files, hive_partitioning = true)),
              j AS (
                SELECT t.*, c._id AS s_id, c.op, c.pos, c.seq, c.event_time, c.doc AS s_doc,
                       c._id IS NOT NULL AND (t._id IS NULL OR c.pos >= t._pos) AS take
                FROM t FULL OUTER JOIN c ON t._id = c._id
              )
              SELECT
                CASE WHEN take THEN s_id ELSE _id END AS _id,
                CASE WHEN take
                  THEN strftime(to_timestamp(('0x' || left(s_id, 8))::BIGINT), '%Y-%m')
                  ELSE _bucket END AS _bucket,
                CASE WHEN take THEN s_doc ELSE doc END AS doc,
                CASE WHEN take THEN op ELSE _op END AS _op,
                CASE WHEN take THEN pos ELSE _pos END AS _pos,
                CASE WHEN take THEN {int(args["batch_number"])} ELSE _batch END AS _batch,
                CASE WHEN take THEN seq ELSE _seq END AS _seq,
                CASE WHEN take THEN event_time ELSE _event_time END AS _event_time
              FROM j  -- a winning delete stays as a tombstone row, as the merge keeps it
            ) TO '{args["out"]}' (FORMAT parquet)
            """,
            {"batch": args["batch"], "files": files},
        )
        rows = db.execute(f"SELECT count(*) FROM '{args['out']}'").fetchone()[0]
    return {"rows": rows}


# -- orchestration -----------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    collection: Collection
    base_uri: str
    batch_dir: Path  # a raw zone holding the measured batch (number SNAPSHOT_BATCH + 1)
    batch_files: list[str]


def publish_batch(root: Path, batch: pa.Table) -> tuple[Path, list[str]]:
    zone = RawZone(open_store(str(root)), DATABASE, COLLECTION)
    manifest = zone.write_batch([batch], after=Checkpoint(batch=SNAPSHOT_BATCH), state={})
    return root, [str(root / f.key) for f in manifest.files]


def run_once(kind: str, scenario: Scenario, run: Path) -> tuple[dict, Path]:
    """One run of ``kind`` on a fresh copy of the base table, in ``run``; returns its figures and
    its result (a Delta table for ours, a Parquet file for the baselines)."""
    if kind == "ours":
        lake = run / "lake"
        uri, _ = lake_table_location(open_store(str(lake)), DATABASE, COLLECTION)
        shutil.rmtree(uri)
        link_copy(Path(scenario.base_uri), Path(uri))
        shutil.copytree(scenario.batch_dir / "raw", lake / "raw")
        return child("ours", {"lake": str(lake)}), Path(uri)
    run.mkdir(parents=True)
    out = run / "result.parquet"
    args = {
        "table": scenario.base_uri,
        "batch": scenario.batch_files,
        "batch_number": SNAPSHOT_BATCH + 1,
        "out": str(out),
    }
    return child(kind, args), out


def result_relation(path: Path) -> str:
    """DuckDB SQL reading one method's result: a Parquet file, or our Delta table's live files."""
    if path.suffix == ".parquet":
        return f"read_parquet('{path}')"
    files = ", ".join(f"'{f}'" for f in DeltaTable(str(path)).file_uris())
    return f"read_parquet([{files}], hive_partitioning = true)"


def difference(got: Path, expected: Path, names: list[str] = TABLE_SCHEMA.names) -> str | None:
    """None if both results hold exactly the same rows (as multisets) in the columns ``names``,
    else how they differ. DuckDB compares them: a 10M-row result does not fit one Arrow string
    array."""
    import duckdb

    columns = ", ".join(names)
    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        a = f"SELECT {columns} FROM {result_relation(got)}"
        b = f"SELECT {columns} FROM {result_relation(expected)}"
        extra = db.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})").fetchone()[0]
        missing = db.execute(f"SELECT count(*) FROM ({b} EXCEPT ALL {a})").fetchone()[0]
    if extra or missing:
        return f"{extra:,} rows not expected, {missing:,} expected rows missing"
    return None


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the base table")
    parser.add_argument(
        "--growth", type=int, default=5, help="the large table is this times --rows"
    )
    parser.add_argument("--changes", type=int, default=20_000, help="change rows in the batch")
    parser.add_argument("--months", type=int, default=72, help="history of the base table")
    parser.add_argument("--repeats", type=int, default=3, help="runs per baseline figure")
    parser.add_argument("--merge-repeats", type=int, default=7, help="runs per merge figure")
    parser.add_argument("--quick", action="store_true", help="200k rows, 2,000 changes, 1 run")
    parser.add_argument("--skip-large", action="store_true", help="no large-table figures")
    parser.add_argument("--workdir", help="where to build the tables (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], json.loads(args.child[1]))
        return
    if args.quick:
        args.rows, args.changes, args.repeats, args.merge_repeats = 200_000, 2_000, 1, 1
    work = Path(tempfile.mkdtemp(prefix="merge-bench-", dir=args.workdir))
    try:
        report(args, work)
    finally:
        if args.keep:
            print(f"data kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, work: Path) -> None:
    rate = args.rows / (args.months * 30.44)
    small = Collection(args.rows, rate)
    large = Collection(args.rows * args.growth, rate)
    load = os.getloadavg()
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    tables: dict[str, tuple[Collection, str]] = {}
    for label, collection in [("small", small)] + ([] if args.skip_large else [("large", large)]):
        uri = str(work / f"base-{label}")
        started = time.perf_counter()
        files, size = build_table(collection, uri)
        say(
            f"built {collection.rows:,} rows: {files} files, {size / 1e6:.0f} MB Parquet "
            f"in {time.perf_counter() - started:.0f}s"
        )
        tables[label] = (collection, uri)

    scenarios = []
    delta_fields: dict[str, dict[str, object]] = {}
    for distribution in ("recent", "uniform"):
        batch = change_batch(small, args.changes, distribution)
        batch_dir, files = publish_batch(work / f"batch-{distribution}", batch)
        for label, (collection, uri) in tables.items():
            if label == "large" and distribution == "uniform":
                continue
            scenarios.append(Scenario(f"{distribution}-{label}", collection, uri, batch_dir, files))
        if distribution == "recent":  # the same batch, a share of its updates as deltas
            partial, delta_fields = as_partial_updates(batch, SEED)
            batch_dir, files = publish_batch(work / "batch-partial", partial)
            scenarios.append(Scenario("partial-small", small, tables["small"][1], batch_dir, files))

    def methods(scenario: Scenario) -> dict[str, int]:
        """Method -> runs. Baselines on the large table run once (they verify its result); the
        partial-update batch is ours alone (the baselines cannot apply deltas)."""
        if scenario.name.startswith("partial"):
            return {"ours": args.merge_repeats}
        large_table = scenario.name.endswith("large")
        return {
            **({} if large_table else {"pandas": args.repeats}),
            "duckdb": 1 if large_table else args.repeats,
            "ours": args.merge_repeats,
        }

    # Round-robin over every scenario and method, so that a burst of load from other work on
    # the machine slows all of them alike instead of one figure.
    figures: dict[tuple[str, str], list[dict]] = {}
    results: dict[tuple[str, str], Path] = {}
    rounds = max(max(methods(s).values()) for s in scenarios)
    for i in range(rounds):
        for scenario in scenarios:
            for kind, runs in methods(scenario).items():
                if i >= runs:
                    continue
                say(f"{scenario.name}: {kind} run {i + 1} of {runs}")
                if (scenario.name, kind) in results:  # keep only the last run's result
                    shutil.rmtree(work / f"{scenario.name}-{kind}-{i - 1}")
                done, results[(scenario.name, kind)] = run_once(
                    kind, scenario, work / f"{scenario.name}-{kind}-{i}"
                )
                figures.setdefault((scenario.name, kind), []).append(done)

    rows = []
    for scenario in scenarios:
        partial = scenario.name.startswith("partial")
        expected = results[("recent-small" if partial else scenario.name, "duckdb")]
        for kind in methods(scenario):
            if kind != "duckdb":
                got = results[(scenario.name, kind)]
                if partial:  # documents differ (deltas); keys, ops and positions must not
                    problem = difference(
                        got, expected, [n for n in TABLE_SCHEMA.names if n != "doc"]
                    ) or check_partial_documents(str(got), delta_fields)
                else:
                    problem = difference(got, expected)
                if problem:
                    raise SystemExit(f"{scenario.name}: {kind} and duckdb differ: {problem}")
            runs = figures[(scenario.name, kind)]
            extra = ""
            if kind == "ours":
                last = runs[-1]
                extra = (
                    f"{last['merge_path']}: {last['files_rewritten']} of {last['files_in_table']} "
                    f"files, {last['bytes_rewritten'] / 1e6:.1f} MB rewritten"
                )
                if partial:
                    extra += f", {last['partial_updates_applied']:,} deltas applied"
            worst = max(r["seconds"] for r in runs)
            peak = median(runs, "peak_rss_mb")
            rows.append((scenario.name, kind, median(runs, "seconds"), worst, peak, extra))

    print(
        f"\n{small.rows:,}-row table ({small.months()[0][0]:%Y-%m}..{END:%Y-%m}), "
        f"{large.rows:,}-row table; {args.changes:,} changes "
        f"(70% updates, 20% inserts, 10% deletes; partial-small: "
        f"{PARTIAL_SHARE:.0%} of the updates as deltas); medians of {args.repeats} runs "
        f"({args.merge_repeats} for ours, 1 for DuckDB on the large table), round-robin; "
        f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}\n"
    )
    print(f"{'scenario':<16} {'method':<8} {'median s':>9} {'max s':>7} {'peak MB':>8}  detail")
    for name, kind, med, worst, peak, extra in rows:
        print(f"{name:<16} {kind:<8} {med:>9.3f} {worst:>7.3f} {peak:>8.0f}  {extra}")

    def t(name: str, kind: str) -> float:
        return median(figures[(name, kind)], "seconds")

    summary = {
        "rows": small.rows,
        "large_rows": None if args.skip_large else large.rows,
        "changes": args.changes,
        "repeats": args.repeats,
        "merge_repeats": args.merge_repeats,
        "load_average_start": round(load[0], 2),
        "speedup_vs_pandas_recent": round(
            t("recent-small", "pandas") / t("recent-small", "ours"), 2
        ),
        "speedup_vs_duckdb_recent": round(
            t("recent-small", "duckdb") / t("recent-small", "ours"), 2
        ),
        "ratio_vs_duckdb_uniform": round(
            t("uniform-small", "ours") / t("uniform-small", "duckdb"), 2
        ),
        "partial_update_share": PARTIAL_SHARE,
        # ours with deltas / ours with whole documents, same batch and table (1.0: no cost)
        "ratio_partial_vs_full_recent": round(
            t("partial-small", "ours") / t("recent-small", "ours"), 2
        ),
    }
    if not args.skip_large:
        summary["growth_5x_table_recent"] = round(
            t("recent-large", "ours") / t("recent-small", "ours"), 2
        )
        summary["peak_rss_mb_recent_10m"] = round(
            median(figures[("recent-large", "ours")], "peak_rss_mb")
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
