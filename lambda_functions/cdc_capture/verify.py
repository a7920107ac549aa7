"""The read-back check of published raw-zone batches (``verify_batches``): every batch a capture
run published is re-read through its manifest (files present, sizes, SHA-256 checksums, row counts
and columns as the manifest says). Damage is reported with the fix, never repaired here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.raw_zone import (
    BATCH_SCHEMA,
    DAMAGED_BATCH_FIX,
    CorruptBatchError,
    RawZone,
)
from lambda_functions.lake.store import ObjectStore
from lambda_functions.pipes import typed_metadata

__all__ = ["BatchVerification", "verify_batches"]


@dataclass(frozen=True)
class BatchVerification:
    """Whether published batches read back intact (files present, sizes, checksums and counts
    match). ``damaged`` names the batches that did not, ``fix`` says what to do about them."""

    passed: bool
    batches: tuple[int, ...]
    rows: int
    problems: tuple[str, ...]
    damaged: tuple[int, ...] = ()
    fix: str | None = None

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Asset-check metadata in the typed form ``dagster_pipes`` accepts."""
        values: dict[str, Any] = {
            "batches": list(self.batches),
            "rows_read": self.rows,
            "problems": list(self.problems),
            "damaged_batches": list(self.damaged),
        }
        if self.fix is not None:
            values["fix"] = self.fix
        return typed_metadata(values)


def verify_batches(
    request: CaptureRequest, batches: tuple[int, ...], *, store: ObjectStore | None = None
) -> BatchVerification:
    """Re-read published batches through their manifests; a run that published nothing passes.

    Read-only and idempotent: nothing is written or repaired.

    Args:
        request: the collection (``lake_uri``, ``database``, ``collection``).
        batches: the batch numbers to re-read (capture passes the ones it just published).
        store: the lake's object store (default: opened from ``request.lake_uri``).

    Returns:
        A ``BatchVerification``: each damaged batch by number in ``damaged``, one problem line
        per batch naming the object and what is wrong (a missing manifest or data file, a size,
        SHA-256 or row count that differs from the manifest, a missing column), and ``fix``
        (``DAMAGED_BATCH_FIX``) when any is damaged.

    Raises:
        Nothing for damage (it is reported); errors of the store itself (e.g.
        ``LakeBucketMissingError``) propagate.
    """
    zone = RawZone.for_request(request, store)
    rows, problems, damaged = 0, [], []
    for number in batches:
        try:
            manifest = zone.read_manifest(number)
            table = zone.read_batch(manifest)
        except FileNotFoundError:
            problems.append(
                f"{zone.namespace} batch {number}: manifest {zone.manifest_key(number)} is "
                f"missing. Fix: {DAMAGED_BATCH_FIX}"
            )
            damaged.append(number)
            continue
        except CorruptBatchError as error:
            problems.append(str(error))
            damaged.append(number)
            continue
        rows += table.num_rows
        missing = set(BATCH_SCHEMA.names) - set(table.column_names)
        if missing:
            problems.append(
                f"{zone.namespace} batch {number}: columns {sorted(missing)} are missing. "
                f"Fix: {DAMAGED_BATCH_FIX}"
            )
            damaged.append(number)
    return BatchVerification(
        passed=not problems,
        batches=tuple(batches),
        rows=rows,
        problems=tuple(problems),
        damaged=tuple(damaged),
        fix=DAMAGED_BATCH_FIX if damaged else None,
    )
