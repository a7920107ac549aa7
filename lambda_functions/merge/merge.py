"""Apply raw batches to the lake table: upsert by ``_id``, latest change wins, deletes applied.

``merge_batches`` is the entry point; ``plan`` chooses and reads each commit's batches, ``apply``
makes the commits, ``results`` counts what they did. Delta Lake protocol:
https://github.com/delta-io/delta/blob/master/PROTOCOL.md; delta-rs: https://delta-io.github.io/delta-rs/

Guarantees:
- **Atomic.** Each commit is one Delta log entry; readers see all of it or none, and a merge that
  dies at any point before its log entry (even after writing data files) leaves the previous
  version untouched: files no log entry names are invisible, and vacuum removes them.
- **Idempotent.** Every commit records ``app_transactions`` (app id per collection, version = last
  batch applied), so a replayed batch is recognised and skipped, even after a crash between the
  commit and anything that follows it. Two merges racing on one table cannot both apply a batch:
  every commit is made against the version it read or fails (the log entry is an exclusive
  create: ``If-None-Match: *`` on S3, a hard link locally); the loser reloads, sees the batch
  applied, and stops.
- **Event-time ordering, across deletes too.** Within the pending batches a key's changes are
  precombined on (pos, resume-token order, batch, seq): the latest wins, deterministically.
  Against the table, a change applies only if it is not older than the stored row in that order
  (``table_layout.stream_order``/``change_wins``: a position ``>=`` the stored one; at an equal
  position, events of one transaction relayed out of order compare by resume token), so a late,
  stale event never rolls a document back. A delete leaves a **tombstone** (a row with ``_op = 'delete'``, see ``lake.table_layout``)
  with the delete's position, also for a key the table never held, so an older change delivered
  later (SQS standard queues deliver at least once with best-effort ordering; DMS CDC files can
  land late) cannot resurrect the document: MongoDB orders a collection's changes by
  ``clusterTime``, and the delete is the latest. A newer insert or update replaces the tombstone
  and shows in the change feed as an ``insert``. Tombstones are invisible to readers (they filter
  ``table_layout.LIVE_ROWS``) and expire in maintenance after ``tombstone_retention_hours``; a change
  older than an *expired* tombstone is applied again (the documented limit of any retention).
- **Drops apply by position when they carry one.** A marker batch (``extra["dropped"]``) with
  ``extra["drop_pos"]`` (the drop/rename/invalidate event's ``clusterTime``, from the change
  stream or MQ) removes the rows older than that position (``_pos < drop_pos``, tombstones too)
  and keeps newer ones (a collection re-created after the drop, delivered before it); it raises
  the table's generation floor (the Delta app transaction ``lakehouse-drop-floor:<namespace>``,
  in the same commit) to ``drop_pos``, and every change below the floor is ignored from then on.
  A marker **without** a position (capture ``reset``/``auto_resnapshot``, DMS reloads, older
  batches) keeps batch-order semantics: it removes every row applied before it (tombstones
  too) and sets the floor to the new generation's start: ``extra["generation_pos"]``, the
  position capture recorded before its re-snapshot (the snapshot reflects every change older
  than that, so such a change still delivered late, e.g. by a queue, must not resurrect a
  document the tombstones no longer guard), else 0 (DMS full-load rows sit at 0). Such a marker
  supersedes every batch before it: pending batches in front of it are skipped unread
  (``batches_superseded``), which is also how a damaged batch is left behind (re-snapshot with
  ``reset``, then merge again).
- **A masking rules change is recorded for the warehouse.** When the marker's ``reason`` (or
  ``resnapshot_reason``) is ``masking_rules_changed`` and it carries a position (``drop_pos``,
  else ``generation_pos``), the same commit records that position and its own version as the
  Delta app transactions ``lakehouse-masking-generation:<namespace>`` and
  ``lakehouse-masking-generation-version:<namespace>`` (``lake.lake_table.masking_generation``):
  the warehouse load purges the history versions captured before them. Other markers
  (``reset``, a drop) record nothing: history is kept.
- **Cost follows the change.** The table is partitioned by ``_bucket`` (see ``lake.table_layout``), and each
  commit reads and rewrites only the files whose ``_id`` range the batch's keys fall in. Paths,
  reported in the result and the commit metadata: ``create`` (first batch), ``append`` (the batch
  touches only partitions the table does not have yet, so no key can match), ``rewrite`` (Arrow
  copy-on-write of the touched files with an exact change data feed, one log entry; a batch that
  touches every file is a full rewrite, see ``copy_on_write``) and ``merge`` (a delta-rs MERGE,
  for tables whose protocol the rewrite does not write and batches that add a typed column:
  restricted to the touched partitions by a literal ``_bucket IN (...)`` predicate, and with
  ``streamed_exec=False`` pruned to the touched files when they are few).
- **Exact change feed.** Every path writes the rows each commit changed as Delta change data
  (``insert``, ``delete``, ``update_preimage``/``update_postimage``), so the warehouse load reads
  only those.
- **Bounded memory.** A commit applies at most ``max_rows_per_commit`` change rows (a larger
  backlog, e.g. an initial snapshot, becomes several commits, each recorded as above), and the
  rewrite holds one partition per worker thread. A new generation (snapshot rows only) over the
  byte budget is applied page by page in ONE commit (``generation``, merge path
  ``generation``): each page is written as data files before the commit, and a reset marker
  just before it is fused into that commit, so readers never see the table empty or half
  loaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from lambda_functions.contracts import InvalidRequestError, MergeRequest
from lambda_functions.lake import BatchManifest, ObjectStore, RawZone, open_store
from lambda_functions.lake.lake_table import (
    LakeTableMissingError,
    TableLocation,
    app_id,
    open_table,
)
from lambda_functions.lake.raw_zone import RESNAPSHOT_HOW_TO
from lambda_functions.merge import plan
from lambda_functions.merge.apply import commit_segment
from lambda_functions.merge.generation import apply_generation, generation_segment
from lambda_functions.merge.rekey import upgrade_record_keys
from lambda_functions.merge.results import MergeCounts, MergeResult
from lambda_functions.merge.table_files import tombstone_count

__all__ = ["MAX_ROWS_PER_COMMIT", "MergeResult", "merge_batches", "segment_byte_budget"]

MAX_ROWS_PER_COMMIT = 1_000_000
SEGMENT_BYTES_VARIABLE = "LAKEHOUSE_MERGE_SEGMENT_BYTES"
# Batch data (decoded bytes) per commit = function memory / this. The merge holds a segment's
# rows decoded (Arrow strings, the precombine, delta-rs's merge and the rewritten files); the
# measurement in benchmarks/large_documents.py puts its peak at several times the decoded size.
SEGMENT_MEMORY_FRACTION = 16
DEFAULT_MEMORY_MB = 3008  # when not in Lambda (ECS task, tests): the merge function's setting


def segment_byte_budget(environ: Mapping[str, str] | None = None) -> int:
    """The most batch bytes (``BatchManifest.decoded_bytes``) one merge commit reads.

    Args:
        environ: the function's environment (default ``os.environ``):
            ``LAKEHOUSE_MERGE_SEGMENT_BYTES`` (a positive integer, bytes) when set, else the
            Lambda memory ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` (MB, set by the Lambda runtime:
            AWS Lambda Developer Guide, "Defined runtime environment variables"; 3008 when
            absent) divided by ``SEGMENT_MEMORY_FRACTION``.

    Returns:
        Bytes, at least 1 MiB. A single batch over the budget is still applied, alone.

    Raises:
        InvalidRequestError: ``LAKEHOUSE_MERGE_SEGMENT_BYTES`` is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    configured = environ.get(SEGMENT_BYTES_VARIABLE)
    if configured:
        try:
            value = int(configured)
        except ValueError:
            value = 0
        if value < 1:
            raise InvalidRequestError(
                f"{SEGMENT_BYTES_VARIABLE} must be a positive integer (bytes of batch data per "
                f"merge commit), not {configured!r}; unset it to derive it from the memory"
            )
        return value
    try:
        memory_mb = int(environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or DEFAULT_MEMORY_MB)
    except ValueError:
        memory_mb = DEFAULT_MEMORY_MB
    return max(1 << 20, memory_mb * (1 << 20) // SEGMENT_MEMORY_FRACTION)


def merge_batches(
    request: MergeRequest,
    *,
    store: ObjectStore | None = None,
    on_progress: Callable[[str], None] | None = None,
    max_rows_per_commit: int = MAX_ROWS_PER_COMMIT,
    max_bytes_per_commit: int | None = None,
) -> MergeResult:
    """Apply every published batch newer than the table's last applied one.

    Consecutive batches are applied together, up to ``max_rows_per_commit`` change rows and
    ``max_bytes_per_commit`` bytes of batch data per commit (a single larger batch is still
    applied alone, so a batch holding one ~16 MB document goes through). A batch marked ``dropped`` is its own
    commit: with a ``drop_pos`` it removes the rows older than that position, without one (a
    reset: a new generation) every row applied before it, and the batches pending in front of
    it are superseded (skipped unread). Each commit records its last batch, so a re-run resumes
    after it. A new generation (a batch of snapshot rows only, e.g. a range snapshot's one
    batch of many page files) over ``max_bytes_per_commit`` is applied page by page, still in
    one commit, together with the reset marker just before it (``generation``): its memory
    does not grow with the collection.

    Guarantees (see the module docstring): each commit is one atomic Delta log entry (Delta
    protocol, "Delta Log Entries"; readers see all of it or none); replaying a batch is a no-op
    (its number is recorded as the Delta app transaction ``app_id(namespace)``, protocol
    "Transaction Identifiers"); among the changes of one key the latest by (position, batch,
    sequence) wins, and a change older than the stored row, tombstones included, is ignored.

    Args:
        request: the collection (``database``, ``collection``), the lake (``lake_uri``) and
            ``max_batches``, the most pending batches this run reads (superseded ones count).
        store: the lake's object store; default ``open_store(request.lake_uri)``.
        on_progress: called with one line of text per step (the handler logs it to Dagster).
        max_rows_per_commit: the most change rows per commit (bounds memory), default 1,000,000.
        max_bytes_per_commit: the most batch bytes (``BatchManifest.decoded_bytes``) per commit
            (bounds memory when documents are large); default ``segment_byte_budget()``
            (``LAKEHOUSE_MERGE_SEGMENT_BYTES``, else the function's memory / 16).

    Returns:
        A ``MergeResult``: the run's counters summed over its commits (rows, files, bytes) and
        the table's state after it (version, live rows, tombstones, drop floor, files).

    Raises:
        CorruptBatchError: a pending batch's data does not match its manifest; the message names
            the batch, the file and the fix (a re-snapshot, whose reset marker supersedes it).
        LakeTableMissingError: there is no lake table and no batch to build it from (the lake,
            or its raw zone, was removed, or capture never ran); the message names the fix. A
            table removed while its raw zone remains is rebuilt from batch 1 instead.
        ConcurrentWriteError: another writer won the commit race ``MAX_COMMIT_ATTEMPTS`` times
            in a row (transient: retry under the merge's concurrency key).
    """
    started = time.monotonic()
    say = on_progress or (lambda _message: None)
    store = store or open_store(request.lake_uri)
    zone = RawZone(store, request.database, request.collection)
    app = app_id(zone.namespace)
    where = TableLocation.of(store, request.database, request.collection)
    uri = where.uri
    totals = MergeCounts()
    budget = request.max_batches
    max_bytes = segment_byte_budget() if max_bytes_per_commit is None else max_bytes_per_commit
    table = open_table(uri, where.options)
    if table is not None:
        upgrade_record_keys(table, zone.namespace, say)
    files = plan.files_of(table)
    superseded: list[int] = []
    known: dict[int, BatchManifest] = {}  # manifests read so far (each is read once)
    while budget > 0:
        applied = plan.last_applied(table, app)
        pending = zone.batch_numbers(after=applied)[:budget]
        if not pending:
            break
        manifests = plan.pending_manifests(zone, pending, known)
        skipped = plan.superseded(manifests)
        if skipped:
            say(
                f"{zone.namespace}: batches {skipped[0]}..{skipped[-1]} are superseded by the "
                f"reset marker batch {skipped[-1] + 1} (a new generation): skipped unread"
            )
            superseded += skipped
            budget -= len(skipped)
            manifests = manifests[len(skipped) :]
        if table is None and manifests[0].batch > 1 and not plan.starts_generation(manifests[0]):
            raise _no_table_error(zone, uri, superseded, first_batch=manifests[0].batch)
        streamed = generation_segment(manifests, files, max_bytes)
        segment = streamed or plan.next_segment(manifests, max_rows_per_commit, max_bytes)
        numbers = [m.batch for m in segment]
        say(f"{zone.namespace}: applying batches {numbers[0]}..{numbers[-1]} on top of {applied}")
        if streamed:  # a generation over the byte budget: page by page, one commit
            done, table = apply_generation(zone, where, table, segment, say)
            files = plan.files_of(table)
        else:
            done, table, files = commit_segment(zone, where, table, files, segment, say)
        totals += done
        budget -= len(segment)
    if table is None:  # nothing to build it from: never report a table that is not there
        raise _no_table_error(zone, uri, superseded)
    tombstones = tombstone_count(table)
    return MergeResult.of(
        totals,
        namespace=zone.namespace,
        table_uri=uri,
        version=table.version(),
        batches_superseded=superseded,
        last_applied_batch=plan.last_applied(table, app),
        table_rows=files.rows - tombstones,
        tombstones=tombstones,
        drop_floor=plan.drop_floor(table, zone.namespace),
        duration_s=time.monotonic() - started,
        files_in_table=files.count,
        bytes_in_table=files.bytes,
    )


def _no_table_error(
    zone: RawZone, uri: str, superseded: list[int], first_batch: int | None = None
) -> LakeTableMissingError:
    """Why a merge cannot build the table, and the fix (a success here would report version -1
    with 0 rows, or a table missing the removed batches' rows, and its check and freshness
    would pass). ``first_batch``: the raw zone's first batch, when it is not batch 1."""
    if first_batch is not None:
        return LakeTableMissingError(
            f"{zone.namespace}: there is no lake table at {uri}, and its raw zone starts at "
            f"batch {first_batch}, not at a snapshot: batches before it were removed, so a "
            "table built from it would miss their documents. Fix: re-snapshot the collection "
            "(a new table generation): " + RESNAPSHOT_HOW_TO
        )
    if superseded:  # max_batches ran out before the reset marker that supersedes them
        return LakeTableMissingError(
            f"{zone.namespace}: there is no lake table at {uri} yet: batches "
            f"{superseded[0]}..{superseded[-1]} were superseded by a reset marker that this "
            "run's max_batches did not reach. Fix: run the merge again (raise max_batches)"
        )
    found = "its raw zone has no published batch"
    return LakeTableMissingError(
        f"{zone.namespace}: there is no lake table at {uri} and {found}, so there is nothing "
        "to build it from (the lake directory or bucket prefix was removed, or capture has "
        "not run for this collection). Fix: materialize cdc_raw_batches for this collection "
        "(a capture that finds no raw zone starts a new snapshot at batch 1), then lake_table; "
        "if the raw zone is there but damaged: " + RESNAPSHOT_HOW_TO
    )
