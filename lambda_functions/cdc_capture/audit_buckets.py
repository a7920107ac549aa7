"""The source audit's buckets and figures: which audit bucket a record key falls in, the
order-independent digest of a bucket on each side, the differences between the sides, the result
a run reports (``SourceAuditResult``) and the cursor that spreads the buckets over runs. The
reading and the race with the change stream are in ``source_audit``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lambda_functions.contracts import SOURCE_AUDIT_BUCKETS
from lambda_functions.lake.raw_zone import RESNAPSHOT_HOW_TO
from lambda_functions.lake.store import ObjectStore
from lambda_functions.pipes import typed_metadata

__all__ = [
    "AUDITED",
    "NOT_AUDITED_REASONS",
    "AuditCursor",
    "BucketFigures",
    "SampledSide",
    "SourceAuditResult",
    "audit_bucket",
    "bucket_figures",
    "bucket_ranges",
    "differences",
    "row_hash",
]

_MASK = (1 << 64) - 1

# Outcomes: "audited" compared the sampled buckets; every other status says why it could not.
AUDITED = "audited"
NOT_AUDITED_REASONS = {
    "no_lake_table": "the collection has no lake table yet (no merge has run)",
    "snapshot_in_progress": "the lake holds a snapshot still being loaded",
    "no_stream_position": "the lake's last batch came from an input without a change-stream "
    "position (DMS or MQ), so there is no point in the source to compare at",
    "lake_lagging": "the change stream no longer reaches back to the lake's position, or holds "
    "more events after it than max_in_flight: run capture and merge, then audit again",
    "collection_dropped": "the collection was dropped or renamed after the lake's position",
    "over_budget": "the sampled buckets hold more than max_rows documents or the scan ran out of "
    "time: lower buckets_per_run (LAKEHOUSE_AUDIT_BUCKETS_PER_RUN)",
}


def bucket_ranges(buckets: Iterable[int]) -> str:
    """Bucket numbers as ranges, e.g. ``0-15, 32-47`` (``-`` when there are none)."""
    ranges: list[list[int]] = []
    for bucket in sorted(buckets):
        if ranges and bucket == ranges[-1][1] + 1:
            ranges[-1][1] = bucket
        else:
            ranges.append([bucket, bucket])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) or "-"


def audit_bucket(key: str) -> int:
    """The audit bucket of a record key: ``blake2b(key) mod SOURCE_AUDIT_BUCKETS``."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SOURCE_AUDIT_BUCKETS


def row_hash(key: str, doc: str) -> int:
    """64-bit hash of one (record key, canonical document) pair."""
    data = key.encode("utf-8", "surrogatepass") + b"\x00" + doc.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class BucketFigures:
    """One audited bucket on both sides: counts and digests, in-flight keys left out."""

    bucket: int
    source_count: int
    lake_count: int
    source_digest: str
    lake_digest: str

    @property
    def matches(self) -> bool:
        return (self.source_count, self.source_digest) == (self.lake_count, self.lake_digest)


@dataclass(frozen=True)
class SourceAuditResult:
    """What one audit run compared and found; ``passed`` only when it audited and found nothing."""

    namespace: str
    status: str  # AUDITED or a key of NOT_AUDITED_REASONS
    reason: str = ""
    lake_version: int | None = None
    lake_batch: int | None = None  # the last raw batch the pinned lake version holds
    buckets: tuple[int, ...] = ()
    sampled_rate: float = 0.0
    source_count: int = 0  # sampled source documents
    lake_count: int = 0  # sampled lake rows (tombstones excluded)
    source_scanned: int = 0  # every source document read (sampled or not)
    in_flight: int = 0  # sampled keys changed after the lake's position: left out
    resolved_on_recheck: int = 0  # differences gone when re-read
    unencodable: int = 0  # source documents capture quarantines (not comparable)
    missing: tuple[str, ...] = ()  # every persisting key of each kind (samples are cut later)
    extra: tuple[str, ...] = ()
    different: tuple[str, ...] = ()
    bucket_figures: tuple[BucketFigures, ...] = ()
    next_bucket: int = 0  # where the next run starts
    pass_complete: bool = False  # this run finished a pass over all buckets
    duration_s: float = 0.0

    @property
    def audited(self) -> bool:
        return self.status == AUDITED

    @property
    def passed(self) -> bool:
        return self.audited and not (self.missing or self.extra or self.different)

    @property
    def severity(self) -> str:
        """ERROR for differences found, WARN when the run could not audit."""
        return "WARN" if not self.audited else "ERROR"

    def findings(self, sample_keys: int) -> list[str]:
        """One line per kind of difference, naming up to ``sample_keys`` keys, then the fix; or
        why the run could not audit. Empty when the audit passed."""
        if not self.audited:
            return [f"{self.namespace}: not audited: {self.reason}"]
        lines = [
            f"{self.namespace}: {len(keys)} {kind}: {', '.join(keys[:sample_keys])}"
            + (" ..." if len(keys) > sample_keys else "")
            for kind, keys in (
                ("keys missing from the lake", self.missing),
                ("keys in the lake but not in the source", self.extra),
                ("keys whose lake document differs from the source", self.different),
            )
            if keys
        ]
        if lines:
            lines.append(f"{self.namespace}: to load the collection anew: {RESNAPSHOT_HOW_TO}")
        return lines

    def metadata(self, sample_keys: int) -> dict[str, dict[str, Any]]:
        """Check metadata in the typed form ``dagster_pipes`` accepts."""
        differing = [f.bucket for f in self.bucket_figures if not f.matches]
        return typed_metadata(
            {
                "status": self.status,
                "reason": self.reason or "-",
                "lake_version": -1 if self.lake_version is None else self.lake_version,
                "lake_batch": -1 if self.lake_batch is None else self.lake_batch,
                "buckets_compared": len(self.buckets) if self.audited else 0,
                "buckets": bucket_ranges(self.buckets),
                "buckets_differing": differing,
                "sampled_rate": float(self.sampled_rate),
                "source_count": self.source_count,
                "lake_count": self.lake_count,
                "source_scanned": self.source_scanned,
                "in_flight": self.in_flight,
                "resolved_on_recheck": self.resolved_on_recheck,
                "unencodable": self.unencodable,
                "missing_count": len(self.missing),
                "extra_count": len(self.extra),
                "different_count": len(self.different),
                "missing_keys": list(self.missing[:sample_keys]),
                "extra_keys": list(self.extra[:sample_keys]),
                "different_keys": list(self.different[:sample_keys]),
                "next_bucket": self.next_bucket,
                "pass_complete": self.pass_complete,
                "duration_seconds": float(round(self.duration_s, 3)),
            }
        )


@dataclass
class SampledSide:
    """One side's sampled rows: key -> row hash, by bucket."""

    hashes: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, int] = field(default_factory=dict)


def differences(source: SampledSide, lake: SampledSide, in_flight: set[str]) -> dict[str, set[str]]:
    """Keys by kind (``missing``, ``extra``, ``different``) between the sides, ``in_flight``
    keys left out."""
    source_keys = set(source.hashes) - in_flight
    lake_keys = set(lake.hashes) - in_flight
    both = source_keys & lake_keys
    return {
        "missing": source_keys - lake_keys,
        "extra": lake_keys - source_keys,
        "different": {k for k in both if source.hashes[k] != lake.hashes[k]},
    }


def bucket_figures(
    buckets: list[int], source: SampledSide, lake: SampledSide, in_flight: set[str]
) -> Iterable[BucketFigures]:
    """Each bucket's count and digest (sum mod 2^64 of row hashes) on both sides."""
    totals = {b: [0, 0, 0, 0] for b in buckets}  # source count, source sum, lake count, lake sum
    for side, offset in ((source, 0), (lake, 2)):
        for key, value in side.hashes.items():
            if key in in_flight:
                continue
            entry = totals[side.buckets[key]]
            entry[offset] += 1
            entry[offset + 1] = (entry[offset + 1] + (value & _MASK)) & _MASK
    for bucket, (sc, ss, lc, ls) in totals.items():
        yield BucketFigures(bucket, sc, lc, f"{ss:016x}", f"{ls:016x}")


class AuditCursor:
    """The bucket the next audit of a collection starts at, kept in the lake's object store."""

    def __init__(self, store: ObjectStore, database: str, collection: str):
        self.store = store
        self.key = f"audit/{database}/{collection}/_cursor.json"

    def read(self) -> int:
        try:
            value = json.loads(self.store.get(self.key))["next_bucket"]
        except FileNotFoundError:
            return 0
        return int(value) % SOURCE_AUDIT_BUCKETS

    def write(self, next_bucket: int) -> None:
        self.store.put(self.key, json.dumps({"next_bucket": next_bucket}).encode())
