"""Apply raw batches to the lake table: upsert by ``_id``, latest change wins, deletes applied.

Guarantees:
- **Atomic.** All pending batches are applied as one Delta commit; readers see all of it or none,
  and a merge that dies before the commit leaves the previous version untouched.
- **Idempotent.** The commit records ``app_transactions`` (app id per collection, version = last
  batch applied), so a replayed batch is recognised and skipped, even after a crash between the
  commit and anything that follows it.
- **Event-time ordering.** Within the pending batches a key's changes are precombined on
  (pos, batch, seq): the latest wins, deterministically. Against the table, a change applies only if
  its position is ``>=`` the stored one, so a late, stale event never rolls a document back.
- **Cost follows the change.** The table is partitioned by ``_bucket`` (the month in the key's
  ObjectId timestamp, which never changes for a document and is known for deletes too) and the
  merge joins on it with ``streamed_exec=False``, so only the partitions a batch touches are read.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import BatchManifest, ObjectStore, RawZone, open_store

# Columns of the lake table, in order.
TABLE_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("_bucket", pa.string(), nullable=False),
        pa.field("doc", pa.string()),
        pa.field("_op", pa.string(), nullable=False),
        pa.field("_pos", pa.int64(), nullable=False),
        pa.field("_batch", pa.int64(), nullable=False),
        pa.field("_seq", pa.int64(), nullable=False),
        pa.field("_event_time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
TABLE_CONFIGURATION = {
    "delta.enableChangeDataFeed": "true",
    "delta.targetFileSize": str(128 * 1024 * 1024),
}
MAX_COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class MergeResult:
    namespace: str
    table_uri: str
    version: int | None  # table version after the merge (None: the table does not exist yet)
    batches_applied: list[int] = field(default_factory=list)
    last_applied_batch: int = 0
    rows_in: int = 0  # change rows read from the batches
    keys_changed: int = 0  # distinct keys after precombining
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    files_added: int = 0
    files_removed: int = 0
    table_rows: int = 0
    duplicate_keys: int = 0  # in the partitions this merge touched; must be 0
    buckets_touched: list[str] = field(default_factory=list)
    commit_attempts: int = 0
    duration_s: float = 0.0


def lake_table_location(store: ObjectStore, database: str, collection: str) -> tuple[str, dict]:
    return store.delta_location(f"tables/{database}/{collection}")


def app_id(namespace: str) -> str:
    return f"lakehouse-merge:{namespace}"


def key_bucket(key: str) -> str:
    """The partition of a key: the month of an ObjectId's timestamp, else one of 16 hash buckets."""
    if len(key) == 24:
        try:
            seconds = int(key[:8], 16)
        except ValueError:
            pass
        else:
            return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m")
    return f"h{zlib.crc32(key.encode()) % 16:02d}"


def precombine(changes: pa.Table) -> pa.Table:
    """One row per ``_id``: the change with the greatest (pos, batch, seq)."""
    ordered = changes.sort_by(
        [
            ("_id", "ascending"),
            ("_pos", "ascending"),
            ("_batch", "ascending"),
            ("_seq", "ascending"),
        ]
    )
    ids = ordered.column("_id").combine_chunks()
    if len(ids) == 0:
        return ordered
    is_last = pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1))
    mask = pa.concat_arrays([is_last, pa.array([True])])
    return ordered.filter(mask)


def merge_batches(
    request: MergeRequest,
    *,
    store: ObjectStore | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> MergeResult:
    """Apply every published batch newer than the table's last applied one.

    Consecutive batches are applied as one commit. A batch marked ``dropped`` (the collection was
    dropped, or capture was reset for a new snapshot) is its own commit that removes every row
    applied before it. Each commit records its last batch, so a re-run resumes after it.
    """
    started = time.monotonic()
    say = on_progress or (lambda _message: None)
    store = store or open_store(request.lake_uri)
    zone = RawZone(store, request.database, request.collection)
    uri, options = lake_table_location(store, request.database, request.collection)
    totals = _Totals()
    budget = request.max_batches
    while budget > 0:
        table = _open_table(uri, options)
        applied = (table.transaction_version(app_id(zone.namespace)) or 0) if table else 0
        pending = zone.batch_numbers(after=applied)[:budget]
        if not pending:
            break
        manifests = [zone.read_manifest(n) for n in pending]
        if manifests[0].extra.get("dropped"):
            segment = manifests[:1]
        else:
            segment = list(itertools.takewhile(lambda m: not m.extra.get("dropped"), manifests))
        numbers = [m.batch for m in segment]
        say(f"{zone.namespace}: applying batches {numbers[0]}..{numbers[-1]} on top of {applied}")
        totals.add(_commit_segment(zone, uri, options, table, segment, say))
        budget -= len(segment)
    table = _open_table(uri, options)
    return MergeResult(
        namespace=zone.namespace,
        table_uri=uri,
        version=table.version() if table else None,
        batches_applied=totals.batches,
        last_applied_batch=(table.transaction_version(app_id(zone.namespace)) or 0) if table else 0,
        rows_in=totals.rows_in,
        keys_changed=totals.keys_changed,
        inserted=totals.metrics.get("num_target_rows_inserted", 0),
        updated=totals.metrics.get("num_target_rows_updated", 0),
        deleted=totals.metrics.get("num_target_rows_deleted", 0),
        files_added=totals.metrics.get("num_target_files_added", 0),
        files_removed=totals.metrics.get("num_target_files_removed", 0),
        table_rows=table.count() if table else 0,
        duplicate_keys=_duplicate_keys(table, sorted(totals.buckets)) if table else 0,
        buckets_touched=sorted(totals.buckets),
        commit_attempts=totals.attempts,
        duration_s=time.monotonic() - started,
    )


@dataclass
class _Totals:
    batches: list[int] = field(default_factory=list)
    rows_in: int = 0
    keys_changed: int = 0
    metrics: dict[str, int] = field(default_factory=dict)
    buckets: set[str] = field(default_factory=set)
    attempts: int = 0

    def add(self, applied: _Applied) -> None:
        self.batches.extend(applied.batches)
        self.rows_in += applied.rows_in
        self.keys_changed += applied.keys_changed
        for name, value in applied.metrics.items():
            if isinstance(value, int):
                self.metrics[name] = self.metrics.get(name, 0) + value
        self.buckets.update(applied.buckets)
        self.attempts += applied.attempts


@dataclass(frozen=True)
class _Applied:
    batches: list[int]
    rows_in: int
    keys_changed: int
    metrics: dict[str, Any]
    buckets: list[str]
    attempts: int


def _commit_segment(
    zone: RawZone,
    uri: str,
    options: dict,
    table: DeltaTable | None,
    segment: list[BatchManifest],
    say: Callable[[str], None],
) -> _Applied:
    """One atomic commit for ``segment``, retried on a lost commit race (the table is reloaded)."""
    numbers = [m.batch for m in segment]
    dropped = bool(segment[0].extra.get("dropped"))
    changes = _read_changes(zone, segment)
    latest = precombine(changes)
    buckets = pc.unique(latest.column("_bucket")).to_pylist()
    app = app_id(zone.namespace)
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        commit = CommitProperties(
            app_transactions=[Transaction(app, numbers[-1])],
            custom_metadata={
                "lakehouse.namespace": zone.namespace,
                "lakehouse.batches": f"{numbers[0]}-{numbers[-1]}",
                "lakehouse.dropped": str(dropped).lower(),
            },
        )
        try:
            if table is not None and (table.transaction_version(app) or 0) >= numbers[0]:
                return _Applied([], 0, 0, {}, [], attempt)  # a concurrent merge applied them
            if dropped:
                metrics = _drop_all(table, app, numbers[0], commit)
            elif table is None:
                metrics = _create_table(uri, options, _upserts(latest), commit)
            else:
                metrics = _merge_into(table, _actionable(table, latest, buckets), commit)
            return _Applied(numbers, changes.num_rows, latest.num_rows, metrics, buckets, attempt)
        except CommitFailedError:
            if attempt == MAX_COMMIT_ATTEMPTS:
                raise RuntimeError(
                    f"{zone.namespace}: lost the commit race {attempt} times in a row; another "
                    "merge keeps writing this table. Run one merge per table (the Dagster "
                    "concurrency key does this) and retry."
                ) from None
            say(f"{zone.namespace}: a concurrent commit won; reloading and retrying")
            table = _open_table(uri, options)
    raise AssertionError("unreachable")


def _open_table(uri: str, options: dict) -> DeltaTable | None:
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None


def _read_changes(zone: RawZone, manifests: list[BatchManifest]) -> pa.Table:
    parts = []
    for manifest in manifests:
        number = manifest.batch
        batch = zone.read_batch(manifest)
        parts.append(
            pa.table(
                {
                    "_id": batch.column("_id"),
                    "_bucket": pa.array(
                        [key_bucket(k) for k in batch.column("_id").to_pylist()], pa.string()
                    ),
                    "doc": batch.column("doc"),
                    "_op": batch.column("op"),
                    "_pos": batch.column("pos"),
                    "_batch": pa.array([number] * batch.num_rows, pa.int64()),
                    "_seq": batch.column("seq"),
                    "_event_time": batch.column("event_time").cast(pa.timestamp("us", tz="UTC")),
                },
                schema=TABLE_SCHEMA,
            )
        )
    return pa.concat_tables(parts) if parts else TABLE_SCHEMA.empty_table()


def _deleted(rows: pa.Table) -> pa.ChunkedArray:
    return pc.equal(rows.column("_op"), "delete")


def _upserts(latest: pa.Table) -> pa.Table:
    return latest.filter(pc.invert(_deleted(latest)))


def _actionable(table: DeltaTable, latest: pa.Table, buckets: list[str]) -> pa.Table:
    """The merge source: upserts, plus deletes of keys the table holds (a delete of an absent key
    has nothing to do). Dropping the latter lets the insert clause go without a predicate, which
    delta-rs needs: a predicated WHEN NOT MATCHED INSERT that skips some rows writes null rows.
    The lookup reads only ``_id`` in the partitions the batch touches."""
    deleted = _deleted(latest)
    delete_ids = latest.filter(deleted).column("_id")
    if len(delete_ids) == 0:
        return latest.append_column("_deleted", deleted)
    # Filter on the partition column only: merge-written files store ``_id`` as string_view, and
    # Arrow cannot compare those statistics with a string literal.
    touched = (
        table.to_pyarrow_dataset()
        .to_table(columns=["_id"], filter=pc.field("_bucket").isin(buckets))
        .column("_id")
    )
    present = pc.filter(delete_ids, pc.is_in(delete_ids, value_set=touched.cast(pa.string())))
    keep = pc.or_(pc.invert(deleted), pc.is_in(latest.column("_id"), value_set=present))
    source = latest.filter(keep)
    return source.append_column("_deleted", _deleted(source))


def _create_table(uri: str, options: dict, rows: pa.Table, commit: CommitProperties) -> dict:
    write_deltalake(
        uri,
        rows.sort_by("_id"),
        mode="error",  # two first writers cannot both create the table
        partition_by=["_bucket"],
        configuration=TABLE_CONFIGURATION,
        storage_options=options,
        commit_properties=commit,
    )
    return {"num_target_rows_inserted": rows.num_rows}


def _merge_into(table: DeltaTable, source: pa.Table, commit: CommitProperties) -> dict[str, Any]:
    if source.num_rows == 0:
        _record_only(table, commit)
        return {}
    values = {name: f"s.{name}" for name in TABLE_SCHEMA.names}
    newer = "s._pos >= t._pos"
    version = table.version()
    metrics = (
        table.merge(
            source=source.sort_by("_id"),
            predicate="t._bucket = s._bucket AND t._id = s._id",
            source_alias="s",
            target_alias="t",
            streamed_exec=False,  # lets the join prune partitions the batch does not touch
            commit_properties=commit,
        )
        .when_matched_delete(predicate=f"s._deleted AND {newer}")
        .when_matched_update(updates=values, predicate=f"NOT s._deleted AND {newer}")
        .when_not_matched_insert(updates=values)  # source holds no delete of an absent key
        .execute()
    )
    table.update_incremental()
    if table.version() == version:  # nothing changed, so delta-rs wrote no commit
        _record_only(table, commit)
    return metrics


def _record_only(table: DeltaTable, commit: CommitProperties) -> None:
    """A commit with no data actions: records the batches as applied (stale or no-op batches)."""
    table.create_write_transaction(
        actions=[],
        mode="append",
        schema=table.schema(),
        partition_by=table.metadata().partition_columns,
        commit_properties=commit,
    )


def _drop_all(
    table: DeltaTable | None, app: str, batch: int, commit: CommitProperties
) -> dict[str, Any]:
    """The collection was dropped (or capture reset): remove every row applied before ``batch``."""
    if table is None:
        return {}
    metrics = table.delete(predicate=f"_batch < {batch}", commit_properties=commit)
    table.update_incremental()
    if table.transaction_version(app) != batch:
        _record_only(table, commit)
    return metrics


def _duplicate_keys(table: DeltaTable, buckets: list[str]) -> int:
    """Keys stored more than once in the given partitions (a merge can only add them there)."""
    if not buckets:
        return 0
    ids = (
        table.to_pyarrow_dataset()
        .to_table(columns=["_id"], filter=pc.field("_bucket").isin(buckets))
        .column("_id")
    )
    return len(ids) - pc.count_distinct(ids).as_py()
