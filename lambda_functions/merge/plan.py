"""Planning a merge: which pending batches go into the next commit, reading them as lake rows,
the drop floor they are held against, and which commit path applies them.

Reads only (the raw zone's manifests and batches, the table's app transactions and the files'
statistics); ``apply`` makes the commits. See ``merge`` for the guarantees this serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lambda_functions.lake.lake_table import MASKING_RULES_CHANGED
from lambda_functions.lake.raw_zone import (
    BATCH_SCHEMA,
    UPDATE_DESCRIPTION_COLUMN,
    BatchManifest,
    CorruptBatchError,
    RawZone,
)
from lambda_functions.lake.table_layout import TABLE_SCHEMA, key_buckets, live_rows, precombine
from lambda_functions.merge import copy_on_write
from lambda_functions.merge.key_candidates import resolve_key_candidates
from lambda_functions.merge.partial_updates import (
    PARTIAL_UPDATE_OP,
    PartialUpdates,
    StoredRow,
    resolve_partial_updates,
    retry_set_aside,
    set_aside_entries,
    stored_rows,
)
from lambda_functions.merge.rekey import upgrade_batch_keys
from lambda_functions.merge.schema_evolution import TypedColumns
from lambda_functions.merge.table_files import TableFiles

# Above this share of the table's bytes, a delta-rs MERGE without file pruning (streamed) is
# faster than a pruned one: pruning makes delta-rs materialise the target, which only pays when
# little of it is read (benchmarks/merge.py: 16 s pruned vs 8 s streamed for a batch touching
# every file of a 2M-row table).
PRUNED_MERGE_MAX_FRACTION = 0.25


def floor_app_id(namespace: str) -> str:
    """The Delta app transaction whose version is the table's drop floor (a position)."""
    return f"lakehouse-drop-floor:{namespace}"


def drop_floor(table: DeltaTable | None, namespace: str) -> int:
    """Changes with a ``_pos`` below this are older than the last positional drop: ignored."""
    return (table.transaction_version(floor_app_id(namespace)) or 0) if table is not None else 0


def last_applied(table: DeltaTable | None, app: str) -> int:
    """The last batch the table records as applied (0: none, or no table yet)."""
    return (table.transaction_version(app) or 0) if table is not None else 0


def files_of(table: DeltaTable | None) -> TableFiles:
    """The data files of ``table`` (none when there is no table yet)."""
    return TableFiles.of(table) if table is not None else TableFiles({})


def pending_manifests(
    zone: RawZone, pending: list[int], known: dict[int, BatchManifest]
) -> list[BatchManifest]:
    """The manifests of the pending batches (small JSON objects; the data is not read), so a
    new-generation marker can be found ahead of the batches it supersedes."""
    for number in pending:
        if number not in known:
            known[number] = zone.read_manifest(number)
    return [known[number] for number in pending]


def drop_position(manifest: BatchManifest) -> int | None:
    value = manifest.extra.get("drop_pos")
    return int(value) if value is not None else None


def generation_position(manifest: BatchManifest) -> int:
    """The drop floor a new-generation marker sets: its snapshot's start position, else 0."""
    return int(manifest.extra.get("generation_pos") or 0)


def masking_generation_position(manifest: BatchManifest) -> int:
    """For a marker published because the masking rules changed (``reason`` or
    ``resnapshot_reason`` ``masking_rules_changed``): the position from which changes were
    captured under the new rules (``drop_pos``, else ``generation_pos``); 0 otherwise (another
    marker, e.g. a ``reset`` or a collection drop, or a marker without a position)."""
    extra = manifest.extra
    reasons = (extra.get("reason"), extra.get("resnapshot_reason"))
    if not extra.get("dropped") or MASKING_RULES_CHANGED not in reasons:
        return 0
    position = drop_position(manifest)
    return position if position is not None else generation_position(manifest)


def starts_generation(manifest: BatchManifest) -> bool:
    """A dropped marker without a position: a new generation that supersedes every batch
    before it (capture ``reset``/``auto_resnapshot``, a DMS reload)."""
    return bool(manifest.extra.get("dropped")) and drop_position(manifest) is None


def superseded(manifests: list[BatchManifest]) -> list[int]:
    """The pending batches in front of the last new-generation marker: its commit removes every
    row applied before it, so they need not (and, if damaged, cannot) be read."""
    markers = [i for i, m in enumerate(manifests) if starts_generation(m)]
    return [m.batch for m in manifests[: markers[-1]]] if markers else []


def next_segment(
    manifests: list[BatchManifest], max_rows: int, max_bytes: int | None = None
) -> list[BatchManifest]:
    """The batches of the next commit: a dropped marker alone, else consecutive batches up to
    ``max_rows`` change rows and ``max_bytes`` bytes of batch data (``decoded_bytes``: the JSON
    size capture recorded, else the Parquet files' size; ``None``: no byte bound). Always at
    least one batch, so a single batch over either bound (e.g. one holding a ~16 MB document)
    is applied alone."""
    first = manifests[0]
    if first.extra.get("dropped"):
        return [first]
    segment, rows, size = [first], first.rows, first.decoded_bytes
    for manifest in manifests[1:]:
        if manifest.extra.get("dropped") or rows + manifest.rows > max_rows:
            break
        if max_bytes is not None and size + manifest.decoded_bytes > max_bytes:
            break
        segment.append(manifest)
        rows += manifest.rows
        size += manifest.decoded_bytes
    return segment


@dataclass(frozen=True)
class SegmentChanges:
    """A segment's change rows as lake rows (every change, not yet precombined), the typed
    columns they carry, and the key-only deletes that could not be resolved."""

    rows: pa.Table
    typed: TypedColumns
    ambiguous_deletes: list[str]

    @property
    def max_pos(self) -> int | None:
        return pc.max(self.rows.column("_pos")).as_py() if self.rows.num_rows else None

    def latest(self, floor: int, table: DeltaTable | None, zone: RawZone) -> LatestChanges:
        """One change per key (``precombine``: the latest by position wins) among the changes
        at or above the drop ``floor``, after resolving partial updates against ``table``
        (``partial_updates``: only the rows stored for their keys are read, and the partial
        updates set aside in ``zone`` before; those a full version of this segment now precedes
        are applied again, ``retry_set_aside``)."""
        current = self.rows.filter(pc.greater_equal(self.rows.column("_pos"), floor))
        current, retried = retry_set_aside(current, set_aside_entries(zone), floor)

        def stored(keys: list[str], buckets: list[str]) -> dict[str, StoredRow]:
            rows = stored_rows(table, zone, keys, buckets)
            # a retried key's set-aside updates are back in the walk, in position order
            return {
                k: replace(r, set_aside_pos=None) if k in retried else r for k, r in rows.items()
            }

        partial = resolve_partial_updates(current, stored)
        return LatestChanges(
            precombine(partial.rows), self.rows.num_rows - current.num_rows, partial
        )


@dataclass(frozen=True)
class LatestChanges:
    """What a commit applies: one change per key (``rows``), how many changes were older than
    the drop floor (``below_floor``, ignored), and the partial updates' outcome (``partial``:
    counts and the set-aside ones)."""

    rows: pa.Table
    below_floor: int
    partial: PartialUpdates


def read_segment(
    zone: RawZone,
    table: DeltaTable | None,
    segment: list[BatchManifest],
    say: Callable[[str], None],
) -> SegmentChanges:
    """Read the segment's batches (``read_changes``) and resolve its key-only deletes against
    the table's live keys (``key_candidates``); each ambiguous delete is said."""
    typed = TypedColumns.of_table(arrow_schema(table))
    rows, resolution = resolve_key_candidates(
        read_changes(zone, segment, typed), lambda buckets: live_keys(table, buckets)
    )
    for keys in resolution.ambiguous:
        say(
            f"{zone.namespace}: a delete without a typed _id (DMS key-only row) matches several "
            f"documents ({keys}); it was not applied. The source audit shows the survivor"
        )
    return SegmentChanges(rows, typed, resolution.ambiguous)


def arrow_schema(table: DeltaTable | None) -> pa.Schema | None:
    return pa.schema(table.schema().to_arrow()) if table is not None else None


def read_changes(zone: RawZone, manifests: list[BatchManifest], typed: TypedColumns) -> pa.Table:
    """The batches' rows as lake rows: the core columns, then the typed columns (see
    ``schema_evolution``), with ``_bucket`` derived from the key. A partial update (a row with
    ``UPDATE_DESCRIPTION_COLUMN``) gets ``_op`` ``PARTIAL_UPDATE_OP`` and its update description
    in ``doc``, for ``partial_updates`` to resolve."""
    core = set(BATCH_SCHEMA.names) | {UPDATE_DESCRIPTION_COLUMN}
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
        docs, ops = batch.column("doc"), batch.column("op")
        if UPDATE_DESCRIPTION_COLUMN in batch.column_names:
            descriptions = batch.column(UPDATE_DESCRIPTION_COLUMN)
            partial = pc.is_valid(descriptions)
            docs = pc.if_else(partial, descriptions, docs)
            ops = pc.if_else(partial, PARTIAL_UPDATE_OP, ops)
        columns = [
            batch.column("_id"),
            key_buckets(batch.column("_id")),
            docs,
            ops,
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


def live_keys(table: DeltaTable | None, buckets: list[str]) -> set[str]:
    """Keys of the live rows (not deletes) stored in ``buckets``."""
    if table is None or not buckets:
        return set()
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("_bucket", "in", buckets)])
    live = live_rows(dataset.to_table(columns=["_id", "_op"]))
    return set(live.column("_id").cast(pa.string()).to_pylist())


@dataclass(frozen=True)
class CommitPlan:
    """How one commit applies its changes (see ``merge``'s module docstring for the paths)."""

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


def plan_commit(
    table: DeltaTable | None,
    files: TableFiles,
    latest: pa.Table,
    buckets: list[str],
    dropped: bool,
    typed: TypedColumns,
) -> CommitPlan:
    """Choose how to commit ``latest``, whose keys fall in ``buckets``."""
    if dropped:
        return CommitPlan("drop", files, files)
    touched = files.touched_by(latest)
    if table is None:
        return CommitPlan("create", files, touched)
    if files.buckets.isdisjoint(buckets):
        return CommitPlan("append", files, touched)
    if copy_on_write.supports(table) and not typed.new:
        return CommitPlan("rewrite", files, touched)
    return CommitPlan("merge", files, touched)
