"""Parallel range snapshot: one collection's initial load captured as ``_id`` ranges by many
invocations, published as one generation.

Three calls of the capture function, told apart by the request (``CaptureRequest``):

1. **plan** (``snapshot_ranges > 1``, no ``snapshot_range``): when the collection has no capture
   state (first load) or a ``reset`` asks for it, record the stream position *first* (the reset's
   ``dropped`` marker batch carries it), then plan ranges (``range_plan``) and store the plan.
   A plan that already exists is returned as it is, with each range's progress.
2. **range** (``snapshot_range`` set): capture one range ``[lower, upper)`` in ``_id`` order into
   page files, each followed by the range's progress object; resumable: a re-run continues after
   the last page its progress lists, a finished range returns at once.
3. **publish** (the plan call again, once every range is complete): write the generation's ONE
   manifest (batch ``after_batch + 1``) listing every range's pages, its state the stream state
   at the recorded position, then capture continues on the change stream from that position.

The objects of a snapshot in the raw zone and the records reported are in ``range_state``.
Recording the position and the reset's ``dropped`` marker reuse capture's own run
(``capture._CaptureRun``), so they are exactly those of a single-worker snapshot.

Guarantees:
- Readers (the merge, the sensor) never see half a snapshot: pages belong to the table only
  through the generation's manifest, created exclusively (``put_if_absent``) after every range
  is complete.
- Nothing doubled: a page's key is fixed by (generation, range, page number), so a range re-run
  after a crash rewrites the page its progress did not list yet, never adds one; the progress
  names each page with its SHA-256, which the manifest copies.
- No gap: the stream position is recorded before the plan (before any range reads a document);
  every row carries it as ``pos``, and the stream resumes from it once the generation is
  published, so a change made while ranges are read is replayed after them (full documents:
  replaying is idempotent).
- Every ``_id`` is in exactly one range, whatever its BSON type (``range_plan``).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq

from lambda_functions.cdc_capture.batches import BatchRows, paging_id
from lambda_functions.cdc_capture.capture import _CaptureRun
from lambda_functions.cdc_capture.capture_state import (
    SnapshotState,
    StreamState,
    capture_state_from_json,
)
from lambda_functions.cdc_capture.change_source import ChangeSource
from lambda_functions.cdc_capture.edge_masking import EdgeMasking, masking_of_request
from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.cdc_capture.range_plan import (
    IdRange,
    RangePlan,
    bson_order_key,
    plan_boundaries,
    ranges_from_boundaries,
)
from lambda_functions.cdc_capture.range_state import (
    RangeProgress,
    RangeResult,
    RangeSnapshotStatus,
    SnapshotRangeError,
    open_key,
    plan_key,
    range_prefix,
    read_plan,
    read_progress,
    write_progress,
)
from lambda_functions.cdc_capture.snapshot import SNAPSHOT_PAGE_ROWS
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.extended_json import decode_document, encode_value
from lambda_functions.lake.raw_manifest import BatchFile, BatchManifest
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import RECORD_KEY_FORMAT
from lambda_functions.lake.store import ObjectExistsError, ObjectStore

__all__ = [
    "RangeProgress",
    "RangeResult",
    "RangeSnapshotStatus",
    "SnapshotRangeError",
    "advance_range_snapshot",
    "capture_range",
    "read_progress",
]


# -- 2. capture one range ---------------------------------------------------------------------------
def capture_range(
    request: CaptureRequest,
    *,
    source: ChangeSource,
    store: ObjectStore | None = None,
    deadline: Callable[[], float] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> RangeResult:
    """Capture range ``request.snapshot_range`` of its generation, resuming after its progress.

    Pages of at most ``max_rows`` rows / ``max_bytes`` bytes are read from the source in ``_id``
    order (``documents(after_id=...)``: an index range scan, never skip/limit) from the range's
    lower bound (inclusive) and stop before the first ``_id`` at or above its upper bound in BSON
    order. Each page is written to its fixed key, then the progress.

    Args:
        request: a capture request whose ``snapshot_range`` names the generation and range.
        source: the change source.
        store: the lake's object store (default: from ``request.lake_uri``).
        deadline: seconds the invocation has left; reading stops with 10% (at least 5 s) left.
        on_progress: told one line per page.

    Returns:
        A ``RangeResult``; ``progress.complete`` is false when the deadline stopped it (invoke
        the range again).

    Raises:
        SnapshotRangeError: the generation's plan is missing or has no such range.
    """
    started = time.monotonic()
    say = on_progress or (lambda message: None)
    zone = RawZone.for_request(request, store)
    wanted = request.snapshot_range or {}
    generation, index = wanted.get("generation", ""), wanted.get("index", -1)
    plan = read_plan(zone, generation)
    if not 0 <= index < len(plan.ranges) or wanted.get("count") != len(plan.ranges):
        raise SnapshotRangeError(
            f"{zone.namespace}: range {index} of {wanted.get('count')} is not in plan "
            f"{generation} ({len(plan.ranges)} ranges); plan the snapshot again"
        )
    id_range = plan.ranges[index]
    masking = _masking(request, zone)
    progress = read_progress(zone, generation, index)
    reserve = max(5.0, 0.1 * deadline()) if deadline else 0.0
    before = progress.documents
    while not progress.complete:
        if deadline is not None and deadline() <= reserve:
            break
        _capture_page(request, source, zone, plan, id_range, progress, masking)
        say(
            f"{zone.namespace}: range {index + 1}/{len(plan.ranges)} of {generation}: "
            f"{progress.documents:,} documents, {progress.bytes / 1e6:,.1f} MB"
            f"{', complete' if progress.complete else ''}"
        )
    return RangeResult(
        namespace=zone.namespace,
        generation=generation,
        index=index,
        count=len(plan.ranges),
        progress=progress,
        documents_this_run=progress.documents - before,
        duration_seconds=time.monotonic() - started,
    )


def _capture_page(
    request: CaptureRequest,
    source: ChangeSource,
    zone: RawZone,
    plan: RangePlan,
    id_range: IdRange,
    progress: RangeProgress,
    masking: EdgeMasking,
) -> None:
    """Read one page file's worth of the range after ``progress``, write it, then the progress.
    Documents (and dead letters) are masked with the collection's rules, as a single-worker
    snapshot's are (``BatchRows``)."""
    db, coll = request.database, request.collection
    rows = BatchRows(masking)
    time_ms = (plan.start_pos >> 32) * 1000 or int(plan.start_time * 1000)
    upper_key = bson_order_key(id_range.upper_id()) if id_range.upper is not None else None
    first = progress.last_id is None
    cursor = id_range.lower_id() if first else _decoded(progress.last_id)
    complete = advanced = False
    while not complete and rows.seen < request.max_rows and rows.bytes < request.max_bytes:
        wanted = min(SNAPSHOT_PAGE_ROWS, request.max_rows - rows.seen)
        page = list(source.documents(db, coll, after_id=cursor, limit=wanted))
        complete = len(page) < wanted  # a short page: the collection ends
        if first and id_range.lower is not None:  # the lower bound itself is in the range
            page = list(source.documents_by_id(db, coll, [cursor])) + page
        first = False
        if upper_key is not None:
            for position, document in enumerate(page):
                found, _id = paging_id(document)
                if found and bson_order_key(_id) >= upper_key:
                    page, complete = page[:position], True
                    break
        taken, last = rows.add_snapshot_page(page, plan.start_pos, time_ms, request.max_bytes)
        if taken < len(page):
            complete = False  # max_bytes stopped this page: the next page continues after it
        if last is not None:
            cursor, advanced = last, True
        elif page and not complete:
            raise SnapshotRangeError(
                f"{zone.namespace}: range {id_range.index} cannot page past documents without "
                "an _id; see the dead letters and fix the source documents"
            )
    if rows.seen:
        number = len(progress.pages) + 1
        prefix = f"{range_prefix(zone, plan.generation, id_range.index)}/page-{number:06d}"
        sink = io.BytesIO()
        pq.write_table(rows.table(), sink, compression="zstd")
        data = sink.getvalue()
        zone.store.put(f"{prefix}.parquet", data)
        if rows.dead_letters:
            key = f"{prefix}.quarantine.jsonl"
            zone.store.put(key, ("\n".join(rows.dead_letters) + "\n").encode())
            progress.quarantine_keys.append(key)
            progress.quarantined += len(rows.dead_letters)
        page_file = BatchFile(f"{prefix}.parquet", len(rows.ids), len(data), _sha(data))
        progress.pages.append(asdict(page_file))
        progress.documents += len(rows.ids)
        progress.bytes += len(data)
    if advanced:
        progress.last_id = encode_value(cursor)
    progress.complete = complete
    write_progress(zone, plan.generation, progress)


# -- 1 and 3. plan, then publish -----------------------------------------------------------------------
def advance_range_snapshot(
    request: CaptureRequest,
    *,
    source: ChangeSource,
    store: ObjectStore | None = None,
    on_progress: Callable[[str], None] | None = None,
    reset: bool = False,
) -> RangeSnapshotStatus:
    """Plan a collection's range snapshot, or publish it once every range is complete.

    Args:
        request: the collection; ``snapshot_ranges`` is the number of ranges to plan.
        source: the change source (planning asks it for boundaries: ``range_plan``).
        store: the lake's object store (default: from ``request.lake_uri``).
        on_progress: told what was planned or published.
        reset: start a new generation: publish the ``dropped`` marker (recording the position),
            then plan. Pass it on the first call of a reset only.

    Returns:
        A ``RangeSnapshotStatus``: ``not_planned`` (capture as usual), ``in_progress`` (the
        ranges in ``unfinished`` remain) or ``published``.

    Raises:
        The errors of ``capture_changes`` about the source and the checkpoint;
        ``ConcurrentCaptureError`` when another writer published the generation's batch number
        first (transient: call again, the stale plan is replaced).

    Guarantees:
        Idempotent: calling again returns the same plan until it is published; the position is
        recorded before the plan exists; the manifest is the generation's last write.
    """
    say = on_progress or (lambda message: None)
    zone = RawZone.for_request(request, store)
    run = _CaptureRun(request, source, zone, None, say, _masking(request, zone))
    checkpoint = zone.read_checkpoint(on_repair=say)
    plan = None if reset else _open_plan(zone, checkpoint.batch)
    state = capture_state_from_json(checkpoint.state, zone.namespace)
    if reset:
        with run._source_errors(None):
            checkpoint, state = run._resnapshot(checkpoint, "reset")
    if plan is None:
        if state is None:
            state = run._start_snapshot()  # the position first: nothing can fall in between
        elif not (isinstance(state, SnapshotState) and state.last_id is None and not state.rows):
            return RangeSnapshotStatus("not_planned")
        plan = _new_plan(request, source, zone, run, state, checkpoint.batch)
        say(
            f"{zone.namespace}: snapshot planned as {len(plan.ranges)} ranges by {plan.method} "
            f"(generation {plan.generation}, stream position {plan.start_pos})"
        )
    progress = tuple(read_progress(zone, plan.generation, r.index) for r in plan.ranges)
    if not all(p.complete for p in progress):
        return RangeSnapshotStatus("in_progress", plan, progress)
    manifest = _publish_generation(zone, plan, progress, run)
    say(
        f"{zone.namespace}: generation {plan.generation} published as batch {manifest.batch}: "
        f"{manifest.rows:,} documents in {len(plan.ranges)} ranges"
    )
    return RangeSnapshotStatus("published", plan, progress, manifest.batch)


def _open_plan(zone: RawZone, newest_batch: int) -> RangePlan | None:
    """The plan in progress, if it still follows the newest batch (else it is stale)."""
    try:
        generation = json.loads(zone.store.get(open_key(zone)))["generation"]
    except FileNotFoundError:
        return None
    plan = read_plan(zone, generation)
    return plan if plan.after_batch == newest_batch else None


def _new_plan(
    request: CaptureRequest,
    source: ChangeSource,
    zone: RawZone,
    run: _CaptureRun,
    state: SnapshotState,
    after_batch: int,
) -> RangePlan:
    with run._source_errors(None):
        method, boundaries, total = plan_boundaries(
            source, request.database, request.collection, request.snapshot_ranges
        )
    plan = RangePlan(
        generation=RangePlan.new_generation(state.start_pos),
        namespace=zone.namespace,
        method=method,
        ranges=ranges_from_boundaries(boundaries),
        start_token=state.start_token,
        start_pos=state.start_pos,
        start_time=state.start_time if state.start_time is not None else time.time(),
        after_batch=after_batch,
        estimated_documents=total,
        created_at=datetime.now(UTC).isoformat(),
    )
    zone.store.put(plan_key(zone, plan.generation), plan.to_json())
    zone.store.put(open_key(zone), json.dumps({"generation": plan.generation}).encode())
    return plan


def _publish_generation(
    zone: RawZone, plan: RangePlan, progress: tuple[RangeProgress, ...], run: _CaptureRun
) -> BatchManifest:
    """The generation's one manifest (every range's pages, in range order), created
    exclusively, then the checkpoint; the open-plan pointer is removed last."""
    batch = plan.after_batch + 1
    files = [BatchFile(**page) for p in progress for page in p.pages]
    rows = sum(f.rows for f in files)
    extra: dict[str, Any] = {
        "snapshot": {"documents": rows, "complete": True},
        "stopped_by": "drained",
        "generation": plan.generation,
        "range_method": plan.method,
        "ranges": [
            {**asdict(r), "documents": p.documents, "bytes": p.bytes, "pages": len(p.pages)}
            for r, p in zip(plan.ranges, progress, strict=True)
        ],
    }
    if run.masking.active:
        extra.update(run.masking.manifest_fields())
    dead_letters = [key for p in progress for key in p.quarantine_keys]
    if dead_letters:
        key = zone.side_key("quarantine", batch, ".jsonl")
        zone.store.put(key, b"".join(zone.store.get(k) for k in dead_letters))
        extra["quarantine_key"] = key
    time_ms = (plan.start_pos >> 32) * 1000 or int(plan.start_time * 1000)
    state = run._stored_state(
        StreamState(resume_token=plan.start_token, token_time=plan.start_time)
    )  # with the masking rules' fingerprint, as every capture state
    manifest = BatchManifest(
        namespace=zone.namespace,
        batch=batch,
        files=files,
        rows=rows,
        ops={"snapshot": rows} if rows else {},
        min_pos=plan.start_pos if rows else None,
        max_pos=plan.start_pos if rows else None,
        max_event_time=datetime.fromtimestamp(time_ms / 1000, UTC).isoformat() if rows else None,
        state=state,
        created_at=datetime.now(UTC).isoformat(),
        quarantined=sum(p.quarantined for p in progress),
        key_format=RECORD_KEY_FORMAT,
        extra=extra,
    )
    try:
        zone.publish_manifest(manifest)
    except ObjectExistsError:
        raise ConcurrentCaptureError(
            f"{zone.namespace}: batch {batch} was published by another writer while the range "
            f"snapshot {plan.generation} ran; capture again (the stale plan is replaced). Run "
            "one capture per collection at a time."
        ) from None
    zone.store.delete(open_key(zone))
    return manifest


def _masking(request: CaptureRequest, zone: RawZone) -> EdgeMasking:
    """The collection's masking (PII masking at the edge), as ``capture_changes`` builds it."""
    return masking_of_request(
        zone.namespace, request.masking, key_secret_arn=request.masking_key_secret_arn
    )


def _decoded(ejson: str | None) -> Any:
    return None if ejson is None else decode_document(ejson)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
