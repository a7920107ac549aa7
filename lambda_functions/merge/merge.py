"""Apply raw batches to the lake table: upsert by ``_id``, latest change wins, deletes applied.

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
  precombined on (pos, batch, seq): the latest wins, deterministically. Against the table, a
  change applies only if its position is ``>=`` the stored one, so a late, stale event never rolls
  a document back. A delete leaves a **tombstone** (a row with ``_op = 'delete'``, see ``layout``)
  with the delete's position, also for a key the table never held, so an older change delivered
  later (SQS standard queues deliver at least once with best-effort ordering; DMS CDC files can
  land late) cannot resurrect the document: MongoDB orders a collection's changes by
  ``clusterTime``, and the delete is the latest. A newer insert or update replaces the tombstone
  and shows in the change feed as an ``insert``. Tombstones are invisible to readers (they filter
  ``layout.LIVE_ROWS``) and expire in maintenance after ``tombstone_retention_hours``; a change
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
- **Cost follows the change.** The table is partitioned by ``_bucket`` (see ``layout``), and each
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
  rewrite holds one partition per worker thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import BatchManifest, ObjectStore, RawZone, open_store
from lambda_functions.lake.raw_zone import BATCH_SCHEMA, RESNAPSHOT_HOW_TO, CorruptBatchError
from lambda_functions.merge import copy_on_write
from lambda_functions.merge.copy_on_write import VersionTakenError
from lambda_functions.merge.key_candidates import resolve_key_candidates
from lambda_functions.merge.layout import (
    PARTITION_BY,
    TABLE_CONFIGURATION,
    TABLE_SCHEMA,
    WRITER_PROPERTIES,
    is_tombstone,
    key_bucket,
    key_buckets,
    live_rows,
    precombine,
)
from lambda_functions.merge.rekey import (
    record_key_transactions,
    upgrade_batch_keys,
    upgrade_record_keys,
)
from lambda_functions.merge.schema_evolution import TypedColumns
from lambda_functions.merge.table_files import TableFiles, tombstone_count

__all__ = [
    "TABLE_CONFIGURATION",
    "TABLE_SCHEMA",
    "WRITER_PROPERTIES",
    "LakeTableMissingError",
    "MergeResult",
    "app_id",
    "drop_floor",
    "floor_app_id",
    "key_bucket",
    "key_buckets",
    "lake_table_location",
    "merge_batches",
    "open_table",
    "precombine",
]

MAX_COMMIT_ATTEMPTS = 5
MAX_ROWS_PER_COMMIT = 1_000_000
# Above this share of the table's bytes, a delta-rs MERGE without file pruning (streamed) is
# faster than a pruned one: pruning makes delta-rs materialise the target, which only pays when
# little of it is read (benchmarks/merge.py: 16 s pruned vs 8 s streamed for a batch touching
# every file of a 2M-row table).
PRUNED_MERGE_MAX_FRACTION = 0.25


# How to start a new table generation when a batch cannot be read (same as capture's advice).
class _LostRace(Exception):
    """Another writer committed first (the table is reloaded and the batches re-planned)."""


@dataclass(frozen=True)
class MergeResult:
    namespace: str
    table_uri: str
    version: int | None  # table version after the merge (None: the table does not exist yet)
    batches_applied: list[int] = field(default_factory=list)
    # Pending batches in front of a marker without a position (a new generation): skipped unread.
    batches_superseded: list[int] = field(default_factory=list)
    last_applied_batch: int = 0
    rows_in: int = 0  # change rows read from the batches
    inserted: int = 0
    updated: int = 0
    deleted: int = 0  # live rows deleted (a tombstone written over a live row counts here)
    tombstones_written: int = 0  # deletes stored as tombstones by this run (new or replacing)
    below_floor: int = 0  # changes ignored: older than the table's drop floor
    files_added: int = 0  # data files written by this run's commits
    files_removed: int = 0  # data files replaced by this run's commits (= files_rewritten)
    table_rows: int = 0  # live rows (tombstones not counted)
    tombstones: int = 0  # tombstones in the table after the merge
    drop_floor: int = 0  # changes below this position are ignored (see the module docstring)
    duplicate_keys: int = 0  # keys stored twice in the partitions this merge wrote; must be 0
    buckets_touched: list[str] = field(default_factory=list)
    commit_attempts: int = 0
    duration_s: float = 0.0
    # How the batches were applied: "create", "append", "rewrite", "merge" or "drop" per commit,
    # joined with "+" when a run made several commits; "none" when nothing was pending.
    merge_path: str = "none"
    commits: int = 0
    files_rewritten: int = 0
    bytes_rewritten: int = 0
    bytes_written: int = 0
    files_in_table: int = 0
    bytes_in_table: int = 0
    schema_changes: list[str] = field(default_factory=list)  # typed columns added or not stored
    # Deletes without a typed _id (DMS key-only rows) that match several live records: not
    # applied (see key_candidates); each entry lists the keys it could mean.
    ambiguous_deletes: list[str] = field(default_factory=list)


def lake_table_key(database: str, collection: str) -> str:
    """Where the collection's lake table lives in the lake's object store."""
    return f"tables/{database}/{collection}"


class LakeTableMissingError(RuntimeError):
    """There is no lake table yet (the merge stage has not run for this collection)."""


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


def lake_table_location(store: ObjectStore, database: str, collection: str) -> tuple[str, dict]:
    return store.delta_location(lake_table_key(database, collection))


def app_id(namespace: str) -> str:
    return f"lakehouse-merge:{namespace}"


def floor_app_id(namespace: str) -> str:
    """The Delta app transaction whose version is the table's drop floor (a position)."""
    return f"lakehouse-drop-floor:{namespace}"


def drop_floor(table: DeltaTable | None, namespace: str) -> int:
    """Changes with a ``_pos`` below this are older than the last positional drop: ignored."""
    return (table.transaction_version(floor_app_id(namespace)) or 0) if table is not None else 0


def merge_batches(
    request: MergeRequest,
    *,
    store: ObjectStore | None = None,
    on_progress: Callable[[str], None] | None = None,
    max_rows_per_commit: int = MAX_ROWS_PER_COMMIT,
) -> MergeResult:
    """Apply every published batch newer than the table's last applied one.

    Consecutive batches are applied together, up to ``max_rows_per_commit`` change rows per
    commit (a single larger batch is still applied alone). A batch marked ``dropped`` is its own
    commit: with a ``drop_pos`` it removes the rows older than that position, without one (a
    reset: a new generation) every row applied before it, and the batches pending in front of
    it are superseded (skipped unread). Each commit records its last batch, so a re-run resumes
    after it.

    Raises:
        CorruptBatchError: a pending batch's data does not match its manifest; the message names
            the batch, the file and the fix (a re-snapshot, whose reset marker supersedes it).
        LakeTableMissingError: there is no lake table and no batch to build it from (the lake,
            or its raw zone, was removed, or capture never ran); the message names the fix. A
            table removed while its raw zone remains is rebuilt from batch 1 instead.
    """
    started = time.monotonic()
    say = on_progress or (lambda _message: None)
    store = store or open_store(request.lake_uri)
    zone = RawZone(store, request.database, request.collection)
    app = app_id(zone.namespace)
    uri, options = lake_table_location(store, request.database, request.collection)
    where = _Where(store, lake_table_key(request.database, request.collection), uri, options)
    totals = _Totals()
    budget = request.max_batches
    table = open_table(uri, options)
    if table is not None:
        upgrade_record_keys(table, zone.namespace, say)
    files = _files_of(table)
    superseded: list[int] = []
    known: dict[int, BatchManifest] = {}  # manifests read so far (each is read once)
    while budget > 0:
        applied = _last_applied(table, app)
        pending = zone.batch_numbers(after=applied)[:budget]
        if not pending:
            break
        manifests = _pending_manifests(zone, pending, known)
        skipped = _superseded(manifests)
        if skipped:
            say(
                f"{zone.namespace}: batches {skipped[0]}..{skipped[-1]} are superseded by the "
                f"reset marker batch {skipped[-1] + 1} (a new generation): skipped unread"
            )
            superseded += skipped
            budget -= len(skipped)
            manifests = manifests[len(skipped) :]
        if table is None and manifests[0].batch > 1 and not _starts_generation(manifests[0]):
            raise _no_table_error(zone, uri, superseded, first_batch=manifests[0].batch)
        segment = _next_segment(manifests, max_rows_per_commit)
        numbers = [m.batch for m in segment]
        say(f"{zone.namespace}: applying batches {numbers[0]}..{numbers[-1]} on top of {applied}")
        done, table, files = _commit_segment(zone, where, table, files, segment, say)
        totals.add(done)
        budget -= len(segment)
    if table is None:  # nothing to build it from: never report a table that is not there
        raise _no_table_error(zone, uri, superseded)
    tombstones = tombstone_count(table) if table is not None else 0
    return MergeResult(
        namespace=zone.namespace,
        table_uri=uri,
        version=table.version() if table else None,
        batches_applied=totals.batches,
        batches_superseded=superseded,
        last_applied_batch=_last_applied(table, app),
        rows_in=totals.rows_in,
        inserted=totals.inserted,
        updated=totals.updated,
        deleted=totals.deleted,
        tombstones_written=totals.tombstones_written,
        below_floor=totals.below_floor,
        files_added=totals.files_written,
        files_removed=totals.files_rewritten,
        table_rows=files.rows - tombstones,
        tombstones=tombstones,
        drop_floor=drop_floor(table, zone.namespace),
        duplicate_keys=totals.duplicate_keys,
        buckets_touched=sorted(set(totals.buckets)),
        commit_attempts=totals.attempts,
        duration_s=time.monotonic() - started,
        merge_path="+".join(totals.paths) if totals.paths else "none",
        commits=len(totals.paths),
        files_rewritten=totals.files_rewritten,
        bytes_rewritten=totals.bytes_rewritten,
        bytes_written=totals.bytes_written,
        files_in_table=files.count,
        bytes_in_table=files.bytes,
        schema_changes=totals.notes,
        ambiguous_deletes=totals.ambiguous_deletes,
    )


@dataclass
class _Totals:
    """What commits applied: one commit's (``_commit_segment``), or a run's (the sum of those).
    A segment a concurrent merge applied counts only its attempts."""

    batches: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # one per commit
    rows_in: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    tombstones_written: int = 0
    below_floor: int = 0
    files_rewritten: int = 0
    bytes_rewritten: int = 0
    files_written: int = 0
    bytes_written: int = 0
    buckets: list[str] = field(default_factory=list)
    duplicate_keys: int = 0
    attempts: int = 0
    notes: list[str] = field(default_factory=list)
    ambiguous_deletes: list[str] = field(default_factory=list)

    def add(self, other: _Totals) -> None:
        for f in fields(self):  # every field is a count or a list: both add up with +
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _last_applied(table: DeltaTable | None, app: str) -> int:
    """The last batch the table records as applied (0: none, or no table yet)."""
    return (table.transaction_version(app) or 0) if table is not None else 0


def _files_of(table: DeltaTable | None) -> TableFiles:
    return TableFiles.of(table) if table is not None else TableFiles({})


def _pending_manifests(
    zone: RawZone, pending: list[int], known: dict[int, BatchManifest]
) -> list[BatchManifest]:
    """The manifests of the pending batches (small JSON objects; the data is not read), so a
    new-generation marker can be found ahead of the batches it supersedes."""
    for number in pending:
        if number not in known:
            known[number] = zone.read_manifest(number)
    return [known[number] for number in pending]


def _drop_position(manifest: BatchManifest) -> int | None:
    value = manifest.extra.get("drop_pos")
    return int(value) if value is not None else None


def _generation_position(manifest: BatchManifest) -> int:
    """The drop floor a new-generation marker sets: its snapshot's start position, else 0."""
    return int(manifest.extra.get("generation_pos") or 0)


def _starts_generation(manifest: BatchManifest) -> bool:
    """A dropped marker without a position: a new generation that supersedes every batch
    before it (capture ``reset``/``auto_resnapshot``, a DMS reload)."""
    return bool(manifest.extra.get("dropped")) and _drop_position(manifest) is None


def _superseded(manifests: list[BatchManifest]) -> list[int]:
    """The pending batches in front of the last new-generation marker: its commit removes every
    row applied before it, so they need not (and, if damaged, cannot) be read."""
    markers = [i for i, m in enumerate(manifests) if _starts_generation(m)]
    return [m.batch for m in manifests[: markers[-1]]] if markers else []


def _next_segment(manifests: list[BatchManifest], max_rows: int) -> list[BatchManifest]:
    """The batches of the next commit: a dropped marker alone, else consecutive batches up to
    ``max_rows`` change rows (at least one batch)."""
    first = manifests[0]
    if first.extra.get("dropped"):
        return [first]
    segment, rows = [first], first.rows
    for manifest in manifests[1:]:
        if manifest.extra.get("dropped") or rows + manifest.rows > max_rows:
            break
        segment.append(manifest)
        rows += manifest.rows
    return segment


@dataclass(frozen=True)
class _Where:
    """Where the lake table is: in the lake's object store, and for delta-rs."""

    store: ObjectStore
    key: str
    uri: str
    options: dict


def _commit_segment(
    zone: RawZone,
    where: _Where,
    table: DeltaTable | None,
    files: TableFiles,
    segment: list[BatchManifest],
    say: Callable[[str], None],
) -> tuple[_Totals, DeltaTable | None, TableFiles]:
    """One atomic commit for ``segment``, retried on a lost commit race (the table is reloaded).
    ``files`` are ``table``'s data files. Returns what was applied, and the table as of the
    commit with its files."""
    numbers = [m.batch for m in segment]
    dropped = bool(segment[0].extra.get("dropped"))
    drop_pos = _drop_position(segment[0]) if dropped else None
    typed = TypedColumns.of_table(_arrow_schema(table))
    changes, resolution = resolve_key_candidates(
        _read_changes(zone, segment, typed), lambda buckets: _live_keys(table, buckets)
    )
    for keys in resolution.ambiguous:
        say(
            f"{zone.namespace}: a delete without a typed _id (DMS key-only row) matches several "
            f"documents ({keys}); it was not applied. The source audit shows the survivor"
        )
    max_pos = pc.max(changes.column("_pos")).as_py() if changes.num_rows else None
    app = app_id(zone.namespace)
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            if _last_applied(table, app) >= numbers[0]:
                say(f"{zone.namespace}: batches {numbers} were applied by a concurrent merge")
                return _Totals(attempts=attempt), table, files  # nothing committed by this run
            floor = drop_floor(table, zone.namespace)
            current = changes.filter(pc.greater_equal(changes.column("_pos"), floor))
            if current.num_rows < changes.num_rows:
                say(
                    f"{zone.namespace}: {changes.num_rows - current.num_rows} changes are older "
                    f"than the drop at position {floor}: ignored"
                )
            latest = precombine(current)
            buckets = pc.unique(latest.column("_bucket")).to_pylist()
            plan = _plan(table, files, latest, buckets, dropped, typed)
            say(plan.describe(zone.namespace, numbers, latest))
            transactions = [Transaction(app, numbers[-1]), *record_key_transactions()]
            if dropped:  # a positional drop raises the floor; a new generation resets it
                new_floor = (
                    max(floor, drop_pos)
                    if drop_pos is not None
                    else _generation_position(segment[0])
                )
                transactions.append(Transaction(floor_app_id(zone.namespace), new_floor))
            commit = CommitProperties(
                app_transactions=transactions,
                # Commit against the version read, or fail: delta-rs would otherwise rebase a
                # lost race onto the winner's version, and does not always notice that the
                # winner applied the same batches (two first commits both succeed).
                max_commit_retries=0,
                custom_metadata={
                    "lakehouse.namespace": zone.namespace,
                    "lakehouse.batches": f"{numbers[0]}-{numbers[-1]}",
                    "lakehouse.dropped": str(dropped).lower(),
                    "lakehouse.drop_pos": str(drop_pos),
                    "lakehouse.merge_path": plan.path,
                    "lakehouse.max_pos": str(max_pos),
                },
            )
            counts = _apply(plan, where, app, table, latest, typed, commit, numbers[-1], drop_pos)
            if table is None:
                table = open_table(where.uri, where.options)
                assert table is not None
            else:
                table.update_incremental()  # reads only the commits after the one it had
            after = TableFiles.of(table)
            removed, added = files.minus(after), after.minus(files)
            # The rewrite counted duplicates in every partition it wrote; a drop writes no key.
            duplicates = (
                counts.duplicate_keys
                if plan.path in ("rewrite", "drop")
                else _duplicate_keys(table, buckets)
            )
            applied = _Totals(
                batches=numbers,
                paths=[plan.path],
                rows_in=changes.num_rows,
                inserted=counts.inserted,
                updated=counts.updated,
                deleted=counts.deleted,
                tombstones_written=counts.tombstones_written,
                below_floor=changes.num_rows - current.num_rows,
                files_rewritten=removed.count,
                bytes_rewritten=removed.bytes,
                files_written=added.count,
                bytes_written=added.bytes,
                buckets=buckets,
                duplicate_keys=duplicates,
                attempts=attempt,
                notes=typed.notes,
                ambiguous_deletes=resolution.ambiguous,
            )
            return applied, table, after
        except (CommitFailedError, VersionTakenError, _LostRace):
            if attempt == MAX_COMMIT_ATTEMPTS:
                raise RuntimeError(
                    f"{zone.namespace}: lost the commit race {attempt} times in a row; another "
                    "merge keeps writing this table. Run one merge per table (the Dagster "
                    "concurrency key does this) and retry."
                ) from None
            say(f"{zone.namespace}: a concurrent commit won; reloading and retrying")
            table = open_table(where.uri, where.options)
            files = _files_of(table)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Plan:
    path: str  # "drop", "create", "append", "rewrite" or "merge"
    files: TableFiles  # the table's files before the commit
    touched: TableFiles  # those the batch touches

    @property
    def touched_share(self) -> float:
        return self.touched.bytes / self.files.bytes if self.files.bytes else 1.0

    @property
    def streamed(self) -> bool:
        return self.touched_share > PRUNED_MERGE_MAX_FRACTION

    def describe(self, namespace: str, numbers: list[int], latest: pa.Table) -> str:
        return (
            f"{namespace}: batches {numbers[0]}..{numbers[-1]}: {latest.num_rows:,} keys touch "
            f"{self.touched.count} of {self.files.count} files ({self.touched.bytes / 1e6:.1f} "
            f"of {self.files.bytes / 1e6:.1f} MB) -> {self.path}"
        )


def _plan(
    table: DeltaTable | None,
    files: TableFiles,
    latest: pa.Table,
    buckets: list[str],
    dropped: bool,
    typed: TypedColumns,
) -> _Plan:
    """Choose how to commit ``latest``, whose keys fall in ``buckets`` (see the module
    docstring)."""
    if dropped:
        return _Plan("drop", files, files)
    touched = files.touched_by(latest)
    if table is None:
        return _Plan("create", files, touched)
    if files.buckets.isdisjoint(buckets):
        return _Plan("append", files, touched)
    if copy_on_write.supports(table) and not typed.new:
        return _Plan("rewrite", files, touched)
    return _Plan("merge", files, touched)


@dataclass(frozen=True)
class _Counts:
    """Live-row changes of a commit (as its change feed shows them), and tombstones written."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    duplicate_keys: int = 0  # found while writing (rewrite path)
    tombstones_written: int = 0


def _apply(
    plan: _Plan,
    where: _Where,
    app: str,
    table: DeltaTable | None,
    latest: pa.Table,
    typed: TypedColumns,
    commit: CommitProperties,
    last_batch: int,
    drop_pos: int | None,
) -> _Counts:
    """Commit ``latest`` (one change per key, deletes included: they become tombstones) the
    way ``plan`` says."""
    uri, options = where.uri, where.options
    if plan.path == "drop":
        return _drop(where, table, app, last_batch, commit, drop_pos)
    written = _Counts(
        inserted=latest.num_rows - _tombstones_in(latest),
        tombstones_written=_tombstones_in(latest),
    )
    if plan.path == "create":
        try:
            write_deltalake(
                uri,
                latest.sort_by("_id"),  # tombstones included: no key can match yet
                mode="error",  # two first writers cannot both create the table
                partition_by=PARTITION_BY,
                configuration=TABLE_CONFIGURATION,
                writer_properties=WRITER_PROPERTIES,
                storage_options=options,
                commit_properties=commit,
            )
        except DeltaError as error:
            if isinstance(error, CommitFailedError) or open_table(uri, options) is not None:
                raise _LostRace("another merge created the table first") from error
            raise
        return written
    assert table is not None
    if plan.path == "append":
        if latest.num_rows == 0:
            _record_only(table, commit)
        else:
            write_deltalake(
                table,
                latest.sort_by("_id"),  # tombstones included: no key can match here
                mode="append",
                partition_by=PARTITION_BY,
                schema_mode="merge" if typed.new else None,
                writer_properties=WRITER_PROPERTIES,
                commit_properties=commit,
            )
        return written
    if plan.path == "rewrite":
        done = copy_on_write.rewrite_touched_files(
            table,
            where.store,
            where.key,
            where.options,
            plan.touched,
            latest,
            commit_info=commit.custom_metadata or {},
            app_transaction=(app, last_batch),
        )
        return _Counts(
            done.inserted, done.updated, done.deleted, done.duplicate_keys, done.tombstones_written
        )
    version = _merge_into(table, latest, commit, typed, plan.streamed)
    return _feed_counts(where, version) if version is not None else _Counts()


def open_table(uri: str, options: dict) -> DeltaTable | None:
    """The Delta table at ``uri`` as of its latest version, or None if there is none yet."""
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None


def _arrow_schema(table: DeltaTable | None) -> pa.Schema | None:
    return pa.schema(table.schema().to_arrow()) if table is not None else None


def _read_changes(zone: RawZone, manifests: list[BatchManifest], typed: TypedColumns) -> pa.Table:
    """The batches' rows as lake rows: the core columns, then the typed columns (see
    ``schema_evolution``), with ``_bucket`` derived from the key."""
    core = set(BATCH_SCHEMA.names)
    batches = []
    for m in manifests:
        batch = upgrade_batch_keys(_read_batch(zone, m), m.key_format)
        extras = batch.select([n for n in batch.column_names if n not in core])
        typed.admit(m.batch, extras)
        batches.append((m.batch, batch, extras))
    schema = pa.schema(
        list(TABLE_SCHEMA) + [pa.field(name, kind) for name, kind in typed.types.items()]
    )
    parts = []
    for number, batch, extras in batches:
        columns = [
            batch.column("_id"),
            key_buckets(batch.column("_id")),
            batch.column("doc"),
            batch.column("op"),
            batch.column("pos"),
            pa.array([number] * batch.num_rows, pa.int64()),
            batch.column("seq"),
            batch.column("event_time").cast(pa.timestamp("us", tz="UTC")),
        ] + [values for _name, values in typed.conform(number, extras)]
        parts.append(pa.table(columns, schema=schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _read_batch(zone: RawZone, manifest: BatchManifest) -> pa.Table:
    """The batch's rows. A damaged batch raises ``CorruptBatchError``: the raw zone's message
    names the batch, the file, what is wrong and the fix (``DAMAGED_BATCH_FIX``); this adds what
    the merge does meanwhile."""
    try:
        return zone.read_batch(manifest)
    except CorruptBatchError as error:
        raise CorruptBatchError(
            f"{error}. Until then the lake table stays at its last applied batch; after the "
            "reset, materialize lake_table again",
            batch=error.batch,
            key=error.key,
        ) from None


def _tombstones_in(rows: pa.Table) -> int:
    return int(pc.sum(is_tombstone(rows)).as_py() or 0)


def _feed_counts(where: _Where, version: int) -> _Counts:
    """What the commit ``version`` did to live rows, from its change data, in which delta-rs
    writes tombstones like any row (a tombstone written over a live row is an update from the
    live row to the tombstone). Reads only that commit's change files."""
    feed = _commit_feed(where, version)
    kinds = feed.column("_change_type").to_pylist()
    tombstone = is_tombstone(feed).to_pylist()
    ids = feed.column("_id").to_pylist()
    before: dict[str, bool] = {}  # _id -> the preimage is a tombstone
    after: dict[str, bool] = {}  # _id -> the postimage is a tombstone
    inserted = deleted = tombstones = 0
    for key, kind, dead in zip(ids, kinds, tombstone, strict=True):
        if kind == "insert":
            inserted += not dead
            tombstones += dead
        elif kind == "delete":
            deleted += not dead  # removing a tombstone changes no live row
        elif kind == "update_preimage":
            before[key] = dead
        elif kind == "update_postimage":
            after[key] = dead
    updated = 0
    for key, dead_after in after.items():
        dead_before = before.get(key, False)
        tombstones += dead_after
        if not dead_before and not dead_after:
            updated += 1
        elif not dead_before:
            deleted += 1
        elif not dead_after:
            inserted += 1
    return _Counts(inserted, updated, deleted, 0, tombstones)


def _commit_feed(where: _Where, version: int) -> pa.Table:
    """(``_id``, ``_op``, ``_change_type``) of the rows commit ``version`` changed: its change
    data files, or, for a commit without any, the rows of the files it removed (``delete``) and
    added (``insert``), as the Delta protocol defines the change feed. Read from the log entry
    and the files themselves (``DeltaTable.load_cdf`` stalls on S3 emulators)."""
    entry = where.store.get(f"{where.key}/_delta_log/{version:020d}.json").decode()
    actions = [json.loads(line) for line in entry.splitlines() if line.strip()]
    changed = [(a["cdc"]["path"], None) for a in actions if "cdc" in a]
    if not changed:
        changed = [
            (a[kind]["path"], "delete" if kind == "remove" else "insert")
            for a in actions
            for kind in ("remove", "add")
            if kind in a and a[kind].get("dataChange", True)
        ]
    fs, root = copy_on_write.pyarrow_filesystem(where.uri, where.options)
    parts = []
    for path, kind in changed:
        columns = ["_id", "_op"] + (["_change_type"] if kind is None else [])
        rows = pq.read_table(f"{root}/{unquote(path)}", columns=columns, filesystem=fs)
        if kind is not None:
            rows = rows.append_column("_change_type", pa.array([kind] * rows.num_rows))
        parts.append(rows.cast(pa.schema([(n, pa.string()) for n in rows.column_names])))
    if not parts:
        return pa.table({n: pa.array([], pa.string()) for n in ("_id", "_op", "_change_type")})
    return pa.concat_tables(parts)


def _stored_keys(table: DeltaTable, buckets: list[str]) -> pa.Array:
    """Every ``_id`` stored in ``buckets``, reading only those partitions' files. Filters on the
    partition column only: merge-written files store ``_id`` as string_view, and Arrow cannot
    compare those statistics with a string literal."""
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("_bucket", "in", buckets)])
    ids = dataset.to_table(columns=["_id"]).column("_id")
    return ids.cast(pa.string()).combine_chunks()


def _merge_into(
    table: DeltaTable,
    source: pa.Table,
    commit: CommitProperties,
    typed: TypedColumns,
    streamed: bool,
) -> int | None:
    """delta-rs MERGE of ``source`` (one change per key). Every change, delete or not, replaces
    the stored row of its key if it is not older (a delete stores a tombstone, and a tombstone
    refuses older changes like any row), or is inserted if the key has no row: one WHEN MATCHED
    UPDATE and an unconditional WHEN NOT MATCHED INSERT (a predicated insert that skips rows
    writes null rows in delta-rs, still so in 1.6). Returns the version written, None if the
    commit changed no row."""
    if source.num_rows == 0:
        _record_only(table, commit)
        return None
    values = {delta_column(name): f"s.{delta_column(name)}" for name in source.column_names}
    newer = "s._pos >= t._pos"
    buckets = ", ".join(_sql_string(b) for b in pc.unique(source.column("_bucket")).to_pylist())
    version = table.version()
    metrics = (
        table.merge(
            source=source,  # sorted by _id already (precombine)
            # The literal IN list prunes partitions even when streamed; the join on _bucket lets
            # the pruned (not streamed) execution also skip files by their _id range.
            predicate=f"t._bucket IN ({buckets}) AND t._bucket = s._bucket AND t._id = s._id",
            source_alias="s",
            target_alias="t",
            merge_schema=bool(typed.new),
            writer_properties=WRITER_PROPERTIES,
            streamed_exec=streamed,
            commit_properties=commit,
        )
        .when_matched_update(updates=values, predicate=newer)
        .when_not_matched_insert(updates=values)
        .execute()
    )
    table.update_incremental()
    if table.version() == version:  # nothing changed, so delta-rs wrote no commit
        _record_only(table, commit)
        return None
    changed = metrics.get("num_target_rows_inserted", 0) + metrics.get("num_target_rows_updated", 0)
    return table.version() if changed else None


def delta_column(name: str) -> str:
    """``name`` as a quoted identifier in delta-rs SQL (backticks, a backtick doubled): typed
    columns may have any name Delta accepts (``order-id``, ``first name``, ``1st``, ``a.b``),
    which unquoted would parse as an expression, a number or a struct field."""
    return "`" + name.replace("`", "``") + "`"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _record_only(table: DeltaTable, commit: CommitProperties) -> None:
    """A commit with no data actions: records the batches as applied (stale or no-op batches)."""
    table.create_write_transaction(
        actions=[],
        mode="append",
        schema=table.schema(),
        partition_by=table.metadata().partition_columns,
        commit_properties=commit,
    )


def _drop(
    where: _Where,
    table: DeltaTable | None,
    app: str,
    batch: int,
    commit: CommitProperties,
    drop_pos: int | None,
) -> _Counts:
    """The collection was dropped (or capture reset). With ``drop_pos``, remove the rows (live
    rows and tombstones) older than the drop; without, every row applied before ``batch`` (all
    rows: batches are applied in order). The commit records the batch and the new floor; with no
    table yet, an empty one is created to hold them, so a later older change is still refused."""
    if table is None:
        try:
            DeltaTable.create(
                where.uri,
                TABLE_SCHEMA,
                partition_by=PARTITION_BY,
                configuration=TABLE_CONFIGURATION,
                storage_options=where.options,
                commit_properties=commit,
            )
        except DeltaError as error:
            if open_table(where.uri, where.options) is not None:
                raise _LostRace("another merge created the table first") from error
            raise
        return _Counts()
    predicate = f"_pos < {int(drop_pos)}" if drop_pos is not None else f"_batch < {batch}"
    version = table.version()
    table.delete(predicate=predicate, commit_properties=commit)
    table.update_incremental()
    if table.transaction_version(app) != batch:  # nothing to delete: delta-rs wrote no commit
        _record_only(table, commit)
        return _Counts()
    return _feed_counts(where, version + 1)


def _live_keys(table: DeltaTable | None, buckets: list[str]) -> set[str]:
    """Keys of the live rows (not deletes) stored in ``buckets``."""
    if table is None or not buckets:
        return set()
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("_bucket", "in", buckets)])
    live = live_rows(dataset.to_table(columns=["_id", "_op"]))
    return set(live.column("_id").cast(pa.string()).to_pylist())


def _duplicate_keys(table: DeltaTable, buckets: list[str]) -> int:
    """Keys stored more than once in the given partitions (a merge can only add them there)."""
    if not buckets:
        return 0
    ids = _stored_keys(table, buckets)
    return len(ids) - pc.count_distinct(ids).as_py()
