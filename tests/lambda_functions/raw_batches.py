"""Build raw batches by hand for merge and load tests (the capture stage has its own tests)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from lambda_functions.lake import RawZone
from lambda_functions.lake.raw_zone import BATCH_SCHEMA

# ObjectId-shaped keys in two different months (2024-01 and 2024-06), so two partitions.
JAN = "65920080" + "0" * 16
JUN = "665a6480" + "0" * 16


def key(month_prefix: str, n: int) -> str:
    return month_prefix[:8] + f"{n:016x}"


def publish(
    zone: RawZone,
    changes: list[tuple[str, str, int, str | None]],
    *,
    event_time: datetime | None = None,
) -> int:
    """Publish one batch of (key, op, pos, doc) changes, all at ``event_time`` (default: now);
    return its number."""
    now = event_time or datetime.now(UTC)
    table = pa.table(
        {
            "_id": [c[0] for c in changes],
            "op": [c[1] for c in changes],
            "pos": [c[2] for c in changes],
            "seq": list(range(len(changes))),
            "event_time": [now] * len(changes),
            "doc": [c[3] for c in changes],
        },
        schema=BATCH_SCHEMA,
    )
    return zone.write_batch([table], after=zone.read_checkpoint(), state={}).batch
