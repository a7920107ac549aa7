"""Helpers of the range snapshot tests: a mixed-``_id`` collection, the three calls of a range
snapshot run in order, and a range capture killed mid-way in its own process.

    python -m tests.lambda_functions.cdc_capture.range_runs SOURCE LAKE GENERATION INDEX COUNT N

captures range INDEX of GENERATION and SIGKILLs itself just before its N-th write of the range's
``progress.json`` (the page before it is written, its progress is not): no cleanup, as when
Lambda's sandbox dies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture.range_snapshot import (
    RangeSnapshotStatus,
    advance_range_snapshot,
    capture_range,
)
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.store import ObjectStore
from tests.lambda_functions.cdc_capture.conftest import HookedStore


def mixed_documents(count: int) -> list[dict[str, Any]]:
    """``count`` documents whose ``_id``s span many BSON types: ObjectIds (60%), numbers of every
    kind (25%: int, Int64, double, Decimal128), strings (10%), and dates, booleans, binary, null
    and embedded documents; so range boundaries fall in several type brackets."""
    base = datetime(2024, 1, 1, tzinfo=UTC)
    ids: list[Any] = []
    for i in range(count):
        slot = i % 20
        if slot < 12:
            ids.append(ObjectId())
        elif slot < 14:
            ids.append(i)
        elif slot == 14:
            ids.append(Int64(10**12 + i))
        elif slot == 15:
            ids.append(i + 0.5)
        elif slot == 16:
            ids.append(Decimal128(f"{i}.25"))
        elif slot < 19:
            ids.append(f"key-{i:08d}")
        else:
            ids.append(
                [
                    base + timedelta(days=i),
                    {"k": i},
                    Binary(i.to_bytes(4, "big"), 0),
                    f"zz-{i}",
                ][(i // 20) % 4]
            )
    ids[:3] = [None, True, False]
    return [
        {"_id": _id, "n": i, "name": f"doc {i}", "tags": ["a", i % 7]} for i, _id in enumerate(ids)
    ]


def range_request(base: CaptureRequest, status: RangeSnapshotStatus, index: int) -> CaptureRequest:
    """The request of range ``index`` of ``status``'s plan (what the Dagster side sends)."""
    assert status.plan is not None
    chosen = status.plan.ranges[index]
    fields = {
        "generation": status.plan.generation,
        "index": chosen.index,
        "count": len(status.plan.ranges),
        "lower": chosen.lower,
        "upper": chosen.upper,
    }
    return dataclasses.replace(base, snapshot_range=fields)


def run_all_ranges(
    request: CaptureRequest, source: Any, store: ObjectStore | None = None
) -> RangeSnapshotStatus:
    """Plan (or pick up the plan), capture every unfinished range, publish."""
    status = advance_range_snapshot(request, source=source, store=store)
    for chosen in status.unfinished:
        capture_range(range_request(request, status, chosen.index), source=source, store=store)
    return advance_range_snapshot(request, source=source, store=store)


class KillingStore(HookedStore):
    def __init__(self, root: str, marker: str, occurrence: int):
        super().__init__(root)
        self.marker, self.occurrence, self.seen = marker, occurrence, 0

    def before_write(self, key: str) -> None:
        if key.endswith(self.marker):
            self.seen += 1
            if self.seen == self.occurrence:
                os.kill(os.getpid(), signal.SIGKILL)


def main(source_path: str, lake: str, generation: str, index: str, count: str, n: str) -> None:
    store = KillingStore(lake, f"range-{int(index):05d}/progress.json", int(n))
    plan = json.loads(store.get(f"raw/shop/orders/ranges/{generation}/plan.json"))
    chosen = plan["ranges"][int(index)]
    request = CaptureRequest(
        lake_uri=lake,
        database="shop",
        collection="orders",
        source_location=source_path,
        max_rows=2_000,
        snapshot_range={
            "generation": generation,
            "index": int(index),
            "count": int(count),
            "lower": chosen["lower"],
            "upper": chosen["upper"],
        },
    )
    with EmbeddedChangeStreamSource(source_path) as source:
        capture_range(request, source=source, store=store)


if __name__ == "__main__":
    main(*sys.argv[1:])
