"""Executing a merge: one atomic Delta commit per segment of batches, by the path its plan
chose (create, append, rewrite, merge, drop), retried when another writer wins the version.

Every commit is made against the version it read or fails (``max_commit_retries=0``; the log
entry is an exclusive create), so a lost race reloads the table and re-plans; the Delta app
transactions it records make a replayed batch a no-op (Delta protocol, "Transaction
Identifiers"). Also counts what each commit changed, from the commit's own change data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from lambda_functions.lake.lake_table import (
    MaskingGeneration,
    TableLocation,
    app_id,
    masking_generation_transactions,
    open_table,
)
from lambda_functions.lake.raw_zone import BatchManifest, RawZone
from lambda_functions.lake.table_layout import (
    CHANGE_WINS_SQL,
    PARTITION_BY,
    TABLE_CONFIGURATION,
    TABLE_SCHEMA,
    WRITER_PROPERTIES,
    is_tombstone,
)
from lambda_functions.merge import copy_on_write, plan
from lambda_functions.merge.commit_counts import feed_counts
from lambda_functions.merge.copy_on_write import ConcurrentWriteError, VersionTakenError
from lambda_functions.merge.partial_updates import write_set_aside
from lambda_functions.merge.rekey import record_key_transactions
from lambda_functions.merge.results import MergeCounts
from lambda_functions.merge.schema_evolution import TypedColumns
from lambda_functions.merge.table_files import TableFiles

MAX_COMMIT_ATTEMPTS = 5


def commit_segment(
    zone: RawZone,
    where: TableLocation,
    table: DeltaTable | None,
    files: TableFiles,
    segment: list[BatchManifest],
    say: Callable[[str], None],
) -> tuple[MergeCounts, DeltaTable | None, TableFiles]:
    """One atomic commit for ``segment``, retried on a lost commit race (the table is reloaded).
    ``files`` are ``table``'s data files. Returns what was applied, and the table as of the
    commit with its files.

    Raises:
        ConcurrentWriteError: the race was lost ``MAX_COMMIT_ATTEMPTS`` times in a row.
    """
    numbers = [m.batch for m in segment]
    dropped = bool(segment[0].extra.get("dropped"))
    drop_pos = plan.drop_position(segment[0]) if dropped else None
    changes = plan.read_segment(zone, table, segment, say)
    app = app_id(zone.namespace)
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            if plan.last_applied(table, app) >= numbers[0]:
                say(f"{zone.namespace}: batches {numbers} were applied by a concurrent merge")
                return MergeCounts(commit_attempts=attempt), table, files  # nothing committed
            floor = plan.drop_floor(table, zone.namespace)
            resolved = changes.latest(floor, table, zone)
            latest, below_floor, partial = resolved.rows, resolved.below_floor, resolved.partial
            set_aside = write_set_aside(zone, numbers, partial)
            if set_aside is not None:
                say(
                    f"{zone.namespace}: {partial.unapplied} partial updates could not be applied "
                    f"(no stored document, or it does not fit): set aside in {set_aside}"
                )
            if below_floor:
                say(
                    f"{zone.namespace}: {below_floor} changes are older than the drop at "
                    f"position {floor}: ignored"
                )
            buckets = pc.unique(latest.column("_bucket")).to_pylist()
            chosen = plan.plan_commit(table, files, latest, buckets, dropped, changes.typed)
            say(chosen.describe(zone.namespace, numbers, latest))
            transactions = [Transaction(app, numbers[-1]), *record_key_transactions()]
            if dropped:  # a positional drop raises the floor; a new generation resets it
                new_floor = (
                    max(floor, drop_pos)
                    if drop_pos is not None
                    else plan.generation_position(segment[0])
                )
                transactions.append(Transaction(plan.floor_app_id(zone.namespace), new_floor))
                masked_from = plan.masking_generation_position(segment[0])
                if masked_from:  # the warehouse purges history captured under the old rules
                    # This commit's version: made against the version read, or it fails.
                    version = table.version() + 1 if table is not None else 0
                    generation = MaskingGeneration(masked_from, version)
                    transactions += masking_generation_transactions(zone.namespace, generation)
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
                    "lakehouse.merge_path": chosen.path,
                    "lakehouse.max_pos": str(changes.max_pos),
                }
                | ({"lakehouse.unapplied_updates": set_aside} if set_aside else {}),
            )
            counts = apply_plan(
                chosen, where, app, table, latest, changes.typed, commit, numbers[-1], drop_pos
            )
            if table is None:
                table = open_table(where.uri, where.options)
                assert table is not None
            else:
                table.update_incremental()  # reads only the commits after the one it had
            after = TableFiles.of(table)
            removed, added = files.minus(after), after.minus(files)
            # The rewrite counted duplicates in every partition it wrote; a drop writes no key.
            if chosen.path not in ("rewrite", "drop"):
                counts = replace(counts, duplicate_keys=_duplicate_keys(table, buckets))
            applied = counts + MergeCounts(
                batches_applied=numbers,
                merge_paths=[chosen.path],
                rows_in=changes.rows.num_rows,
                below_floor=below_floor,
                files_rewritten=removed.count,
                bytes_rewritten=removed.bytes,
                files_added=added.count,
                bytes_written=added.bytes,
                buckets_touched=buckets,
                commit_attempts=attempt,
                schema_changes=changes.typed.notes,
                ambiguous_deletes=changes.ambiguous_deletes,
                partial_updates_applied=partial.applied,
                partial_updates_unapplied=partial.unapplied,
            )
            return applied, table, after
        except (CommitFailedError, VersionTakenError):
            lost_commit_race(zone.namespace, attempt, say)
            table = open_table(where.uri, where.options)
            files = plan.files_of(table)
    raise AssertionError("unreachable")


def lost_commit_race(namespace: str, attempt: int, say: Callable[[str], None]) -> None:
    """Another writer committed the version this merge meant to write (Delta's conditional
    commit): say so, so the caller reloads the table and retries.

    Raises:
        ConcurrentWriteError: the race was lost ``MAX_COMMIT_ATTEMPTS`` times in a row
            (transient: retry the merge later).
    """
    if attempt == MAX_COMMIT_ATTEMPTS:
        raise ConcurrentWriteError(
            f"{namespace}: lost the commit race {attempt} times in a row; another merge keeps "
            "writing this table. Run one merge per table (the Dagster concurrency key does "
            "this) and retry."
        ) from None
    say(f"{namespace}: a concurrent commit won; reloading and retrying")


def apply_plan(
    chosen: plan.CommitPlan,
    where: TableLocation,
    app: str,
    table: DeltaTable | None,
    latest: pa.Table,
    typed: TypedColumns,
    commit: CommitProperties,
    last_batch: int,
    drop_pos: int | None,
) -> MergeCounts:
    """Commit ``latest`` (one change per key, deletes included: they become tombstones) the
    way ``chosen`` says. Returns the live-row changes of the commit (as its change feed shows
    them) and the tombstones written; the rewrite also counts duplicate keys.

    Raises:
        VersionTakenError: another writer committed first (the caller reloads and retries).
    """
    uri, options = where.uri, where.options
    if chosen.path == "drop":
        return _drop(where, table, app, last_batch, commit, drop_pos)
    written = MergeCounts(
        inserted=latest.num_rows - _tombstones_in(latest),
        tombstones_written=_tombstones_in(latest),
    )
    if chosen.path == "create":
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
                raise VersionTakenError("another merge created the table first") from error
            raise
        return written
    assert table is not None
    if chosen.path == "append":
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
    if chosen.path == "rewrite":
        done = copy_on_write.rewrite_touched_files(
            table,
            where.store,
            where.key,
            where.options,
            chosen.touched,
            latest,
            commit_info=commit.custom_metadata or {},
            app_transaction=(app, last_batch),
        )
        return MergeCounts(
            inserted=done.inserted,
            updated=done.updated,
            deleted=done.deleted,
            duplicate_keys=done.duplicate_keys,
            tombstones_written=done.tombstones_written,
        )
    version = _merge_into(table, latest, commit, typed, chosen.streamed)
    return feed_counts(where, version) if version is not None else MergeCounts()


def _tombstones_in(rows: pa.Table) -> int:
    return int(pc.sum(is_tombstone(rows)).as_py() or 0)


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
    newer = CHANGE_WINS_SQL  # not older in stream order (``_pos``, then the resume token's)
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
    where: TableLocation,
    table: DeltaTable | None,
    app: str,
    batch: int,
    commit: CommitProperties,
    drop_pos: int | None,
) -> MergeCounts:
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
                raise VersionTakenError("another merge created the table first") from error
            raise
        return MergeCounts()
    predicate = f"_pos < {int(drop_pos)}" if drop_pos is not None else f"_batch < {batch}"
    version = table.version()
    table.delete(predicate=predicate, commit_properties=commit)
    table.update_incremental()
    if table.transaction_version(app) != batch:  # nothing to delete: delta-rs wrote no commit
        _record_only(table, commit)
        return MergeCounts()
    return feed_counts(where, version + 1)


def _duplicate_keys(table: DeltaTable, buckets: list[str]) -> int:
    """Keys stored more than once in the given partitions (a merge can only add them there)."""
    if not buckets:
        return 0
    ids = _stored_keys(table, buckets)
    return len(ids) - pc.count_distinct(ids).as_py()
