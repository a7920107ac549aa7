"""Benchmark: snapshot capture throughput against plain ``bson.decode_all`` on the same documents.

What it measures (issue 3): ``capture_changes`` taking the initial snapshot of a collection of
~1 KB order documents with nesting (customer and address sub-documents, an array of line items,
Decimal128, datetimes, Int64, Binary), end to end exactly as the capture Lambda runs it: pages of
raw BSON documents from the source (what pymongo returns with ``RawBSONDocument``: the batch bytes
split by ``bson.decode_all``), the key and canonical extended JSON of each document, Parquet data
files (zstd) with checksums, manifests and checkpoints in a local lake. The source serves the
documents from memory (a pool of distinct documents, each copy with its own ObjectId), so no
network or database time is in the figure.

Baseline: ``bson.decode_all`` of the same documents into dicts, in the same run. The ratio is
capture documents/s (median over the published chunks) / ``decode_all`` documents/s (median of
repeats before and after the capture); the machine is shared, hence medians. Also reported: the
old encoder (``json_util.dumps`` of decoded documents) on a sample, and resident memory sampled
at every chunk (bounded: the newest chunk's RSS is about the first's, whatever ``--docs`` is).

Prints a human table, then one JSON line with the figures.

    .venv/bin/python benchmarks/cdc_capture.py                 # 1M documents, ~1 minute
    .venv/bin/python benchmarks/cdc_capture.py --docs 100000   # quick
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import bson
import psutil
from bson import Binary, Decimal128, Int64, ObjectId, json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lambda_functions.cdc_capture import capture_changes  # noqa: E402
from lambda_functions.contracts import CaptureRequest  # noqa: E402

RAW = CodecOptions(document_class=RawBSONDocument)
EPOCH_SECONDS = 1_704_067_200  # 2024-01-01: the ObjectIds' timestamp


def order(rng: random.Random, n: int) -> dict[str, Any]:
    """One ~1 KB order with nesting and the BSON types an operational collection holds."""
    created = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(15_000_000))
    items = [
        {
            "sku": f"SKU-{rng.randrange(1000, 9999)}",
            "name": rng.choice(["Desk lamp", "Notebook A5", "USB-C cable 2m", "Espresso cup"]),
            "qty": rng.randint(1, 5),
            "price": Decimal128(Decimal(rng.randrange(99, 99_999)) / 100),
            "attributes": {"color": rng.choice(["red", "blue", "black"]), "size": "M"},
        }
        for _ in range(rng.randint(2, 5))
    ]
    document: dict[str, Any] = {
        "_id": ObjectId(),
        "number": n,
        "customer": {
            "name": rng.choice(["Ana Silva", "Chen Wang", "Dana Novak", "Emil Keller"]),
            "email": f"customer{rng.randrange(10**6)}@example.com",
            "address": {
                "street": f"{rng.randrange(1, 300)} {rng.choice(['Main', 'Oak', 'Rua Augusta'])}",
                "city": rng.choice(["Lisbon", "Berlin", "Osaka", "Austin"]),
                "zip": f"{rng.randrange(10000, 99999)}",
                "country": rng.choice(["PT", "DE", "JP", "US"]),
            },
        },
        "items": items,
        "total": Decimal128(sum((i["price"].to_decimal() * i["qty"] for i in items), Decimal(0))),
        "status": rng.choice(["pending", "paid", "shipped", "delivered"]),
        "created_at": created,
        "updated_at": created + timedelta(minutes=rng.randrange(10_000)),
        "tags": rng.sample(["gift", "express", "b2b", "promo", "fragile"], 2),
        "loyalty_points": Int64(rng.randrange(5_000_000_000)),
        "score": rng.random(),
        "signature": Binary(rng.randbytes(16), 0),
        "notes": "x" * rng.randrange(100, 300),
    }
    return document


def build_pool(size: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [bson.encode(order(rng, n)) for n in range(size)]


class RawBsonSource:
    """A ``ChangeSource`` serving ``total`` documents as raw BSON pages, like pymongo's ``find``
    with ``RawBSONDocument``: document ``i`` is ``pool[i % len(pool)]`` with its own ObjectId
    (the index sits in the ObjectId's last 8 bytes, so paging by ``_id`` finds the next one)."""

    def __init__(self, pool: list[bytes], total: int):
        self.pool, self.total = pool, total

    def current_position(self, database: str, collection: str) -> dict[str, str]:
        return {"_data": f"82{EPOCH_SECONDS:08X}{1:08X}"}

    def documents(
        self, database: str, collection: str, after_id: Any = None, limit: int | None = None
    ) -> list[RawBSONDocument]:
        start = 0 if after_id is None else int.from_bytes(after_id.binary[4:], "big") + 1
        stop = min(self.total, start + (limit or self.total))
        prefix, pool, size = struct.pack(">I", EPOCH_SECONDS), self.pool, len(self.pool)
        chunks = []
        for i in range(start, stop):
            raw = pool[i % size]
            chunks.append(raw[:9] + prefix + i.to_bytes(8, "big") + raw[21:])
        return bson.decode_all(b"".join(chunks), RAW)  # what pymongo does with a reply batch

    def watch(self, database: str, collection: str, **options: Any) -> Any:
        return _Empty()

    def close(self) -> None:
        pass


class _Empty:
    resume_token = None

    def try_next(self) -> None:
        return None

    def close(self) -> None:
        pass


def decode_all_rate(buffer: bytes, count: int, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        bson.decode_all(buffer)
        rates.append(count / (time.perf_counter() - started))
    return rates


def json_util_rate(pool: list[bytes], count: int) -> float:
    sample = b"".join(pool[:count])
    started = time.perf_counter()
    for document in bson.decode_all(sample):
        json_util.dumps(document, json_options=json_util.CANONICAL_JSON_OPTIONS)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="documents to snapshot")
    parser.add_argument("--pool", type=int, default=20_000, help="distinct documents")
    parser.add_argument(
        "--chunk", type=int, default=None, help="max_rows per batch (default: the request's)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="decode_all repeats each side")
    parser.add_argument("--keep", action="store_true", help="keep the lake directory")
    args = parser.parse_args()

    pool = build_pool(args.pool)
    buffer = b"".join(pool)
    avg_bson = len(buffer) / len(pool)
    process = psutil.Process()
    baseline = decode_all_rate(buffer, len(pool), args.repeats)
    old_encoder = json_util_rate(pool, min(5_000, len(pool)))

    lake = Path(tempfile.mkdtemp(prefix="cdc-capture-bench-"))
    limits = {"max_rows": args.chunk} if args.chunk else {}
    request = CaptureRequest(lake_uri=str(lake), database="shop", collection="orders", **limits)
    marks: list[tuple[float, int, int]] = []  # (time, rss, documents) per published chunk

    def on_progress(message: str) -> None:
        chunk = re.search(r"snapshot batch \d+: (\d+) documents", message)
        if chunk:
            marks.append((time.perf_counter(), process.memory_info().rss, int(chunk.group(1))))

    rss_before = process.memory_info().rss
    started = time.perf_counter()
    result = capture_changes(
        request, source=RawBsonSource(pool, args.docs), on_progress=on_progress
    )
    elapsed = time.perf_counter() - started
    baseline += decode_all_rate(buffer, len(pool), args.repeats)

    assert result.rows == args.docs, f"captured {result.rows} of {args.docs} documents"
    chunk_rates, previous = [], started
    for moment, _rss, size in marks:
        chunk_rates.append(size / (moment - previous))
        previous = moment
    capture_rate = statistics.median(chunk_rates)
    decode_rate = statistics.median(baseline)
    figures = {
        "documents": args.docs,
        "avg_document_bytes": round(avg_bson),
        "batches": len(result.batches),
        "capture_docs_per_s": round(capture_rate),
        "capture_mb_per_s": round(capture_rate * avg_bson / 1e6, 1),
        "capture_end_to_end_docs_per_s": round(args.docs / elapsed),
        "bson_decode_all_docs_per_s": round(decode_rate),
        "bson_decode_all_mb_per_s": round(decode_rate * avg_bson / 1e6, 1),
        "json_util_docs_per_s": round(old_encoder),
        "ratio_vs_bson_decode": round(capture_rate / decode_rate, 3),
        "lake_bytes": result.bytes,
        "rss_before_capture_mb": round(rss_before / 2**20),
        "rss_first_chunk_mb": round(marks[0][1] / 2**20),
        "rss_last_chunk_mb": round(marks[-1][1] / 2**20),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "elapsed_s": round(elapsed, 1),
    }
    if not args.keep:
        shutil.rmtree(lake, ignore_errors=True)

    print(f"snapshot capture of {args.docs:,} documents of ~{avg_bson:,.0f} B (BSON)")
    print(f"{'':36}{'docs/s':>12}{'MB/s':>10}")
    print(
        f"{'bson.decode_all (dicts)':36}{decode_rate:>12,.0f}{figures['bson_decode_all_mb_per_s']:>10}"
    )
    print(f"{'capture (median chunk)':36}{capture_rate:>12,.0f}{figures['capture_mb_per_s']:>10}")
    print(f"{'capture (end to end)':36}{figures['capture_end_to_end_docs_per_s']:>12,}")
    print(f"{'json_util.dumps (the old encoder)':36}{old_encoder:>12,.0f}")
    print(
        f"ratio vs decode_all {figures['ratio_vs_bson_decode']}; RSS before "
        f"{figures['rss_before_capture_mb']} MB, first chunk {figures['rss_first_chunk_mb']} MB, "
        f"last chunk {figures['rss_last_chunk_mb']} MB, peak {figures['peak_rss_mb']} MB"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
