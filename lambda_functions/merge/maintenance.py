"""Lake table maintenance: expire old tombstones, compact cold partitions, vacuum unreferenced files.

Merges are copy-on-write and write a few files per touched partition each time, so partitions
that stopped changing end up with many small, unsorted files. ``compact_table``:

- first expires **tombstones** (rows of deleted documents, see ``lake.table_layout``) whose
  delete happened more than ``tombstone_retention_hours`` ago, by the delete's ``_event_time`` (the source's
  clock, which is what a change stream's retention is measured in: no change older than the
  retention can still be read from the stream, so none can still arrive from it). Only files
  whose statistics show a tombstone old enough are read (``min(_op) = 'delete'`` and
  ``min(_event_time)`` before the cutoff). The commit changes no live row: its files are marked
  ``dataChange=false`` and it writes no change data, so the warehouse load reads nothing from it
  (tables the Arrow rewrite does not write use a delta-rs DELETE, whose change rows are
  tombstones, which readers skip). **Limit:** a change older than an expired tombstone that
  still arrives (a raw batch left unmerged longer than the retention, a DMS file delivered a
  week late) is applied like any change to an absent key: the document comes back. Keep the
  retention at or above the longest delay any input can have (default 168 h = DocumentDB's
  longest change-stream retention);

- rewrites every **cold** partition (no file written for ``cold_after_hours``) that holds more than
  one file into files of ``delta.targetFileSize``, clustered by ``_id`` (``z_order``, which orders
  by the key's leading bytes: an ObjectId's creation time) so their ``_id`` statistics prune
  merges again; hot partitions are left alone (the next merge rewrites them anyway,
  and compacting them would conflict with it);
- then vacuums: deletes files that no version within ``vacuum_retention_hours`` references (files
  replaced by merges and compactions, and files of merges that died before their commit: a full
  vacuum, which lists the table's directory).

Guarantees: compaction is one Delta commit marked ``dataChange=false``, so it changes no row, adds
nothing to the change data feed (the warehouse load reads no change from it), and keeps the merge's
app transactions. It conflicts with a concurrent merge that rewrote the same files, in which case
it fails without effect and can be re-run; run it under the merge's concurrency key. Vacuum only
deletes files older than the retention, so time travel and the change feed keep working for every
version inside it. A merge's data files are written before its commit, so a retention shorter
than a merge lasts could delete the files of a merge in flight: never run maintenance beside a
merge (same concurrency key), and keep the retention in hours, not minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from lambda_functions.contracts import CompactRequest
from lambda_functions.lake import ObjectStore, open_store
from lambda_functions.lake.lake_table import (
    LakeTableMissingError,
    lake_table_key,
    lake_table_location,
    open_table,
)
from lambda_functions.lake.table_layout import LIVE_ROWS, TOMBSTONE_OP, WRITER_PROPERTIES
from lambda_functions.merge import copy_on_write
from lambda_functions.merge.copy_on_write import ConcurrentWriteError
from lambda_functions.merge.table_files import TableFiles, tombstone_count

# Delta's default for delta.deletedFileRetentionDuration; vacuum refuses shorter unless told.
DEFAULT_RETENTION_HOURS = 168


@dataclass(frozen=True)
class MaintenanceResult:
    """What ``compact_table`` did: table versions before and after, files and bytes compacted,
    written and vacuumed (counts of files, sizes in bytes), tombstones expired and left, and the
    wall time in seconds. On a dry run, what it would have done (nothing expired)."""

    namespace: str
    table_uri: str
    version_before: int
    version_after: int
    dry_run: bool
    partitions_compacted: list[str] = field(default_factory=list)
    hot_partitions: int = 0  # left alone: written within cold_after_hours
    files_compacted: int = 0  # files replaced by compaction
    files_written: int = 0
    bytes_compacted: int = 0
    bytes_written: int = 0
    files_vacuumed: int = 0  # deleted (or, on a dry run, that would be)
    files_in_table: int = 0
    tombstones_expired: int = 0  # older than the retention: removed (dry run: 0)
    tombstones: int = 0  # left in the table
    duration_s: float = 0.0


def compact_table(
    request: CompactRequest,
    *,
    store: ObjectStore | None = None,
    on_progress: Callable[[str], None] | None = None,
    now_ms: int | None = None,
) -> MaintenanceResult:
    """Expire old tombstones, compact the cold partitions of the collection's lake table, then
    vacuum it (see the module docstring).

    Guarantees: tombstone expiry and compaction are each one atomic Delta commit that changes
    no live row (compaction is ``dataChange=false``: Delta protocol, "Add File and Remove File";
    delta-rs ``DeltaTable.optimize.z_order``/``compact``) and keeps the merge's app
    transactions, so re-running after a failure is safe. Vacuum (delta-rs ``DeltaTable.vacuum``,
    ``full=True``) deletes only files no version within ``vacuum_retention_hours`` references.

    Args:
        request: the collection, the lake, and the policy: ``cold_after_hours``, ``z_order``,
            ``vacuum``, ``vacuum_retention_hours``, ``tombstone_retention_hours`` (hours), and
            ``dry_run`` (report, change nothing).
        store: the lake's object store; default ``open_store(request.lake_uri)``.
        on_progress: called with one line of text per step.
        now_ms: the current time in epoch milliseconds (tests pin it); default the clock.

    Returns:
        A ``MaintenanceResult``.

    Raises:
        LakeTableMissingError: the collection has no lake table yet (run the merge first).
        ConcurrentWriteError: a merge committed to the same files meanwhile; nothing was
            changed (transient: re-run under the merge's concurrency key).
    """
    started = time.monotonic()
    say = on_progress or (lambda _message: None)
    store = store or open_store(request.lake_uri)
    uri, options = lake_table_location(store, request.database, request.collection)
    table = open_table(uri, options)
    if table is None:
        raise LakeTableMissingError(
            f"{request.namespace}: no lake table at {uri}; run the merge stage first"
        )
    version_before = table.version()
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    expired = 0
    if not request.dry_run:
        expired = _expire_tombstones(table, store, request, now_ms)
        if expired:
            table.update_incremental()
        say(
            f"{request.namespace}: {expired} tombstones older than "
            f"{request.tombstone_retention_hours} h expired"
        )
    before = TableFiles.of(table)
    cold, hot = _cold_partitions(table, request.cold_after_hours, now_ms)
    candidates = sorted(b for b, count in cold.items() if count > 1)
    say(
        f"{request.namespace}: {len(candidates)} cold partitions to compact "
        f"({len(hot)} hot left alone) of {len(before.buckets)}"
    )
    after = before  # unless compacted below
    if candidates and not request.dry_run:
        _compact(table, candidates, request, say)
        table.update_incremental()
        table.create_checkpoint()  # loads read one file instead of every commit since the last
        after = TableFiles.of(table)
    vacuumed = []
    if request.vacuum:
        vacuumed = table.vacuum(
            retention_hours=request.vacuum_retention_hours,
            dry_run=request.dry_run,
            enforce_retention_duration=request.vacuum_retention_hours >= DEFAULT_RETENTION_HOURS,
            full=True,  # also files no log entry ever named (merges killed before committing)
        )
        say(
            f"{request.namespace}: vacuum {'would delete' if request.dry_run else 'deleted'} "
            f"{len(vacuumed)} files older than {request.vacuum_retention_hours} h"
        )
    compacted = before.minus(after) if not request.dry_run else _in(before, candidates)
    written = after.minus(before)
    return MaintenanceResult(
        namespace=request.namespace,
        table_uri=uri,
        version_before=version_before,
        version_after=table.version(),
        dry_run=request.dry_run,
        partitions_compacted=candidates,
        hot_partitions=len(hot),
        files_compacted=compacted.count,
        files_written=written.count,
        bytes_compacted=compacted.bytes,
        bytes_written=written.bytes,
        files_vacuumed=len(vacuumed),
        files_in_table=after.count,
        tombstones_expired=expired,
        tombstones=tombstone_count(table),
        duration_s=time.monotonic() - started,
    )


def _expire_tombstones(
    table: DeltaTable, store: ObjectStore, request: CompactRequest, now_ms: int
) -> int:
    """Remove the tombstones older than the retention (see the module docstring)."""
    cutoff = datetime.fromtimestamp(now_ms / 1000, UTC) - timedelta(
        hours=request.tombstone_retention_hours
    )
    actions = pa.table(table.get_add_actions(flatten=True))
    if "min._op" not in actions.column_names or "min._event_time" not in actions.column_names:
        return 0
    holding = TableFiles.of(table)
    candidates = {}
    for path, low_op, oldest in zip(
        actions.column("path").to_pylist(),
        actions.column("min._op").to_pylist(),
        actions.column("min._event_time").to_pylist(),
        strict=True,
    ):
        if low_op == TOMBSTONE_OP and oldest is not None and _utc(oldest) < cutoff:
            candidates[path] = holding.files[path]
    if not candidates:
        return 0
    metadata = {"lakehouse.namespace": request.namespace, "lakehouse.maintenance": "expire"}
    try:
        if copy_on_write.supports(table):
            return copy_on_write.expire_tombstones(
                table,
                store,
                lake_table_key(request.database, request.collection),
                lake_table_location(store, request.database, request.collection)[1],
                TableFiles(candidates),
                cutoff,
                commit_info=metadata,
            )
        stamp = cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")
        metrics = table.delete(
            predicate=f"NOT ({LIVE_ROWS}) AND _event_time < '{stamp}'",
            commit_properties=CommitProperties(custom_metadata=metadata),
        )
        return int(metrics.get("num_deleted_rows", 0))
    except (CommitFailedError, copy_on_write.VersionTakenError):
        raise ConcurrentWriteError(
            f"{request.namespace}: a merge committed while tombstones were being expired; "
            "nothing was changed. Re-run the maintenance under the merge's concurrency key."
        ) from None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _cold_partitions(
    table: DeltaTable, cold_after_hours: int, now_ms: int
) -> tuple[dict[str, int], set[str]]:
    """(cold partition -> file count, hot partitions), by the newest file of each partition."""
    actions = pa.table(table.get_add_actions(flatten=True))
    newest: dict[str, int] = {}
    counts: dict[str, int] = {}
    for bucket, written in zip(
        actions.column("partition._bucket").to_pylist(),
        actions.column("modification_time").to_pylist(),
        strict=True,
    ):
        newest[bucket] = max(newest.get(bucket, 0), written)
        counts[bucket] = counts.get(bucket, 0) + 1
    limit = now_ms - cold_after_hours * 3600 * 1000
    hot = {b for b, written in newest.items() if written > limit}
    return {b: c for b, c in counts.items() if b not in hot}, hot


def _compact(
    table: DeltaTable, buckets: list[str], request: CompactRequest, say: Callable[[str], None]
) -> None:
    commit = CommitProperties(
        custom_metadata={
            "lakehouse.namespace": request.namespace,
            "lakehouse.maintenance": "z_order" if request.z_order else "compact",
        }
    )
    filters = [("_bucket", "in", buckets)]
    try:
        if request.z_order:
            metrics = table.optimize.z_order(
                ["_id"],
                partition_filters=filters,
                writer_properties=WRITER_PROPERTIES,
                commit_properties=commit,
            )
        else:
            metrics = table.optimize.compact(
                partition_filters=filters,
                writer_properties=WRITER_PROPERTIES,
                commit_properties=commit,
            )
    except CommitFailedError:
        raise ConcurrentWriteError(
            f"{request.namespace}: a merge rewrote files of the partitions being compacted; "
            "nothing was changed. Re-run the maintenance, and run it under the merge's "
            "concurrency key so the two do not overlap."
        ) from None
    say(
        f"{request.namespace}: compacted {metrics.get('numFilesRemoved', 0)} files into "
        f"{metrics.get('numFilesAdded', 0)} in {len(buckets)} partitions"
    )


def _in(files: TableFiles, buckets: list[str]) -> TableFiles:
    wanted = set(buckets)
    return TableFiles({p: f for p, f in files.files.items() if f[0] in wanted})
