"""Applying a large new generation (an initial snapshot, or a re-snapshot after ``reset``) page
by page: bounded memory, still ONE atomic Delta commit.

A range snapshot publishes a generation as one raw batch of many page files (see
``cdc_capture.range_snapshot``); the ordinary paths read a batch whole, so one merge function
could not hold a large collection's first load. Here, for a generation batch over the merge's
byte budget (``merge.segment_byte_budget``):

1. each page file is read alone (``plan.read_changes`` of a one-file manifest: record keys
   upgraded, typed columns admitted, changes below the drop floor dropped), precombined, and
   appended, sorted by ``_id``, as row groups to one open Parquet data file per ``_bucket``
   partition in the table location (``lake.table_layout``; a file is closed at
   ``delta.targetFileSize`` bytes of Arrow data), without committing: a file no log entry names
   is invisible to readers (Delta protocol, "Delta Table Specification": the log defines the
   table);
2. a key on two pages is possible only if two pages' ``_id`` ranges overlap, which range
   pages never do (every ``_id`` is in exactly one range, and a range is read in ``_id``
   order): that is checked from each page's min and max key. Only if ranges overlap are the
   partitions written by several pages scanned (their new files' ``_id`` only, one partition
   at a time), and a partition with a repeated key rewritten precombined (the latest by
   position, batch, sequence wins, ``table_layout.precombine``);
3. one commit adds every file, with the app transactions of any merge commit (the batch
   number under ``app_id(namespace)``, the record key format, and for a reset marker fused
   into it the new drop floor and the masking generation): ``create_table_with_add_actions``
   when there is no table, else ``DeltaTable.create_write_transaction(mode="overwrite")``,
   which removes every older file in the same commit, so readers never see half a generation
   nor the empty table between a reset marker and its snapshot. The commit is made against
   the version read (``max_commit_retries=0``); a lost race is re-checked (a concurrent merge
   that applied the batch makes this a no-op) and retried with the same files.

Change data: the commit writes no ``_change_data`` files; per the Delta protocol ("Change Data
Files"), a commit without them is read by change feed readers from its ``add`` (inserts) and
``remove`` actions (deletes of the removed files' rows), which is what the warehouse load needs;
a key in both generations is then deleted and inserted in one commit, and the load keeps the
insert (``warehouse_load.lake_changes``, ``lake_versions.commit_versions``).

What it relies on: a generation batch holds snapshot rows only (``GENERATION_OPS``: no deletes,
no partial updates, so no key-only delete to resolve and no stored document to read); partial
updates set aside before the generation are not retried by its commit (the snapshot already
reflects every change before its start position).

A merge killed before the commit leaves only unreferenced files: the table is unchanged, the
re-run writes new files, and ``DeltaTable.vacuum`` (maintenance) deletes the orphans once they
are older than the retention period.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import pairwise

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction, create_table_with_add_actions

from lambda_functions.lake.lake_table import (
    MaskingGeneration,
    TableLocation,
    app_id,
    masking_generation_transactions,
    open_table,
)
from lambda_functions.lake.raw_zone import BatchManifest, RawZone
from lambda_functions.lake.table_layout import (
    PARTITION_BY,
    TABLE_CONFIGURATION,
    TABLE_SCHEMA,
    is_tombstone,
    precombine,
)
from lambda_functions.merge import plan
from lambda_functions.merge.apply import MAX_COMMIT_ATTEMPTS, lost_commit_race
from lambda_functions.merge.copy_on_write import (
    WriteSettings,
    data_file_target,
    file_statistics,
    parquet_options,
    pyarrow_filesystem,
    write_parquet,
)
from lambda_functions.merge.rekey import record_key_transactions
from lambda_functions.merge.results import MergeCounts
from lambda_functions.merge.schema_evolution import TypedColumns
from lambda_functions.merge.table_files import TableFiles

GENERATION_OPS = frozenset({"snapshot"})  # the ops of a snapshot page: full documents


def is_generation_batch(manifest: BatchManifest) -> bool:
    """A batch of snapshot rows only (no deletes, no partial updates), not a marker."""
    return (
        not manifest.extra.get("dropped")
        and manifest.rows > 0
        and set(manifest.ops) <= GENERATION_OPS
    )


def generation_segment(
    manifests: list[BatchManifest], files: TableFiles, max_bytes: int
) -> list[BatchManifest] | None:
    """The batches to apply page by page, or None (the ordinary paths apply them).

    Args:
        manifests: the pending batches, oldest first (superseded ones already skipped).
        files: the table's data files now.
        max_bytes: the merge's byte budget per commit (``decoded_bytes``).

    Returns:
        ``[marker, generation]`` when a reset marker without a position and no rows is followed
        by a generation batch over ``max_bytes`` (one commit replaces the table); ``[generation]``
        when the next batch is such a batch and the table has no data file (a first load); else
        None.
    """
    first = manifests[0]
    if plan.starts_generation(first) and first.rows == 0 and len(manifests) > 1:
        second = manifests[1]
        if is_generation_batch(second) and second.decoded_bytes > max_bytes:
            return [first, second]
        return None
    if is_generation_batch(first) and first.decoded_bytes > max_bytes and files.count == 0:
        return [first]
    return None


@dataclass
class _Written:
    """The files written so far (not committed), by partition."""

    adds: dict[str, list[AddAction]] = field(default_factory=dict)
    open: dict[str, _OpenFile] = field(default_factory=dict)
    pages: dict[str, int] = field(default_factory=dict)  # pages that wrote rows, by partition
    key_ranges: list[tuple[str, str]] = field(default_factory=list)  # each page's min, max _id
    rows: int = 0
    tombstones: int = 0
    max_pos: int | None = None

    def pages_overlap(self) -> bool:
        """Whether two pages' ``_id`` ranges overlap (only then can a key be on two pages)."""
        ranges = sorted(self.key_ranges)
        return any(later[0] <= earlier[1] for earlier, later in pairwise(ranges))

    def all(self) -> list[AddAction]:
        return [a for bucket in sorted(self.adds) for a in self.adds[bucket]]


def apply_generation(
    zone: RawZone,
    where: TableLocation,
    table: DeltaTable | None,
    segment: list[BatchManifest],
    say: Callable[[str], None],
) -> tuple[MergeCounts, DeltaTable]:
    """Apply ``segment`` (from ``generation_segment``) in one commit, reading one page at a time.

    Args:
        zone: the collection's raw zone.
        where: the lake table's location.
        table: the table as read (None: not created yet).
        segment: ``[marker, generation]`` or ``[generation]``.
        say: progress lines.

    Returns:
        What was applied (``merge_paths`` ``["generation"]``) and the table after the commit.
        Peak memory: about one page file's rows (a page is bounded by capture) plus one
        partition's ``_id`` column.

    Raises:
        CorruptBatchError: a page does not match the manifest (nothing is committed).
        ConcurrentWriteError: another writer won the commit race ``MAX_COMMIT_ATTEMPTS`` times.
    """
    app = app_id(zone.namespace)
    numbers = [m.batch for m in segment]
    marker = segment[0] if len(segment) == 2 else None
    generation = segment[-1]
    floor = (
        plan.generation_position(marker)
        if marker is not None
        else plan.drop_floor(table, zone.namespace)
    )
    typed = TypedColumns.of_table(plan.arrow_schema(table))
    fs, root = pyarrow_filesystem(where.uri, where.options)
    settings = WriteSettings(
        fs=fs,
        root=root,
        schema=TABLE_SCHEMA,
        target_file_size=int(TABLE_CONFIGURATION["delta.targetFileSize"]),
        stats_columns=TABLE_CONFIGURATION["delta.dataSkippingStatsColumns"].split(","),
        bytes_per_row=400.0,
    )
    written = _Written()
    below_floor = 0
    for number, page in enumerate(generation.files, start=1):
        one = replace(generation, files=[page], rows=page.rows)
        rows = plan.read_changes(zone, [one], typed)
        current = rows.filter(pc.greater_equal(rows.column("_pos"), floor))
        below_floor += rows.num_rows - current.num_rows
        _write_page(settings, precombine(current), written)
        say(
            f"{zone.namespace}: batch {generation.batch}: page {number}/{len(generation.files)} "
            f"written ({written.rows:,} rows so far, not committed)"
        )
    _close_all(written)
    duplicates = _precombine_overlaps(settings, written) if written.pages_overlap() else 0
    schema = pa.schema(
        list(TABLE_SCHEMA) + [pa.field(name, kind) for name, kind in typed.types.items()]
    )
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        if plan.last_applied(table, app) >= numbers[0]:
            say(f"{zone.namespace}: batches {numbers} were applied by a concurrent merge")
            _remove_files(settings, written.all())
            assert table is not None
            return MergeCounts(commit_attempts=attempt), table
        commit = _commit_properties(zone.namespace, table, segment, written, floor)
        try:
            if table is None:
                create_table_with_add_actions(
                    where.uri,
                    DeltaSchema.from_arrow(schema),
                    written.all(),
                    mode="error",  # two first writers cannot both create the table
                    partition_by=PARTITION_BY,
                    configuration=TABLE_CONFIGURATION,
                    storage_options=where.options,
                    commit_properties=commit,
                )
            else:
                table.create_write_transaction(
                    written.all(),
                    mode="overwrite",  # removes every older file in this commit
                    schema=schema,
                    partition_by=PARTITION_BY,
                    commit_properties=commit,
                )
        except DeltaError as error:
            lost = isinstance(error, CommitFailedError) or (
                table is None and open_table(where.uri, where.options) is not None
            )
            if not lost:
                raise
            lost_commit_race(zone.namespace, attempt, say)
            table = open_table(where.uri, where.options)
            continue
        after = open_table(where.uri, where.options)
        assert after is not None
        removed = plan.files_of(table)
        adds = written.all()
        counts = MergeCounts(
            batches_applied=numbers,
            merge_paths=["generation"],
            inserted=written.rows - written.tombstones,
            tombstones_written=written.tombstones,
            rows_in=generation.rows,
            below_floor=below_floor,
            files_rewritten=removed.count,
            bytes_rewritten=removed.bytes,
            files_added=len(adds),
            bytes_written=sum(a.size for a in adds),
            buckets_touched=sorted(written.adds),
            commit_attempts=attempt,
            schema_changes=typed.notes,
        )
        if duplicates:
            say(f"{zone.namespace}: {duplicates} keys were on two pages: the latest kept")
        return counts, after
    raise AssertionError("unreachable")


def _commit_properties(
    namespace: str,
    table: DeltaTable | None,
    segment: list[BatchManifest],
    written: _Written,
    floor: int,
) -> CommitProperties:
    """What a merge commit records (``apply.commit_segment``): the last batch under
    ``app_id(namespace)``, the record key format, and for a reset marker the new drop floor
    and, after a masking rules change, the masking generation (this commit's version)."""
    numbers = [m.batch for m in segment]
    transactions = [Transaction(app_id(namespace), numbers[-1]), *record_key_transactions()]
    marker = segment[0] if len(segment) == 2 else None
    if marker is not None:
        transactions.append(Transaction(plan.floor_app_id(namespace), floor))
        masked_from = plan.masking_generation_position(marker)
        if masked_from:
            version = table.version() + 1 if table is not None else 0
            generation = MaskingGeneration(masked_from, version)
            transactions += masking_generation_transactions(namespace, generation)
    return CommitProperties(
        app_transactions=transactions,
        max_commit_retries=0,  # against the version read, or fail (see ``apply``)
        custom_metadata={
            "lakehouse.namespace": namespace,
            "lakehouse.batches": f"{numbers[0]}-{numbers[-1]}",
            "lakehouse.dropped": str(marker is not None).lower(),
            "lakehouse.drop_pos": "None",
            "lakehouse.merge_path": "generation",
            "lakehouse.max_pos": str(written.max_pos),
        },
    )


def _write_page(settings: WriteSettings, rows: pa.Table, written: _Written) -> None:
    """Append one page's lake rows (one per key) to each partition's open data file, as row
    groups sorted by ``_id``; a file is closed (its add action recorded, not committed) once it
    holds ``target_file_size`` bytes of Arrow data, or when a page brings a new typed column."""
    if rows.num_rows == 0:
        return
    written.rows += rows.num_rows
    bounds = pc.min_max(rows.column("_id")).as_py()
    written.key_ranges.append((bounds["min"], bounds["max"]))
    written.tombstones += int(pc.sum(is_tombstone(rows)).as_py() or 0)
    top = pc.max(rows.column("_pos")).as_py()
    written.max_pos = top if written.max_pos is None else max(written.max_pos, top)
    buckets = rows.column("_bucket")
    for bucket in sorted(pc.unique(buckets).to_pylist()):
        part = rows.filter(pc.equal(buckets, bucket)).sort_by("_id").drop_columns(["_bucket"])
        written.pages[bucket] = written.pages.get(bucket, 0) + 1
        current = written.open.get(bucket)
        if current is not None and not current.schema.equals(part.schema):
            written.adds.setdefault(bucket, []).append(current.close())
            current = None
        if current is None:
            current = written.open[bucket] = _OpenFile(settings, bucket, part.schema)
        current.append(part)
        if current.arrow_bytes >= settings.target_file_size:
            written.adds.setdefault(bucket, []).append(current.close())
            del written.open[bucket]


def _close_all(written: _Written) -> None:
    for bucket, current in sorted(written.open.items()):
        written.adds.setdefault(bucket, []).append(current.close())
    written.open.clear()


class _OpenFile:
    """One data file being written row group by row group (streamed to the store), with the
    Delta statistics of what it holds so far."""

    def __init__(self, settings: WriteSettings, bucket: str, schema: pa.Schema) -> None:
        self.settings, self.bucket, self.schema = settings, bucket, schema
        self.path = f"_bucket={bucket}/part-{uuid.uuid4()}-c000.zstd.parquet"
        self.writer = pq.ParquetWriter(
            data_file_target(settings, self.path), schema, **parquet_options(settings, schema.names)
        )
        self.arrow_bytes = 0
        self.stats: dict | None = None

    def append(self, rows: pa.Table) -> None:
        self.writer.write_table(rows)
        self.arrow_bytes += rows.nbytes
        self.stats = _merged(self.stats, file_statistics(rows, self.settings.stats_columns))

    def close(self) -> AddAction:
        self.writer.close()
        target = f"{self.settings.root}/{self.path}"
        return AddAction(
            path=self.path,
            size=self.settings.fs.get_file_info(target).size,
            partition_values={"_bucket": self.bucket},
            modification_time=int(time.time() * 1000),
            data_change=True,
            stats=json.dumps(self.stats),
        )


def _merged(total: dict | None, part: dict) -> dict:
    """Delta file statistics of two row sets together (``numRecords``, ``nullCount`` summed;
    ``minValues``/``maxValues`` compared: strings by code point as Arrow compares UTF-8,
    timestamps in their fixed ISO form)."""
    if total is None:
        return part
    lows, highs = dict(total["minValues"]), dict(total["maxValues"])
    for name, value in part["minValues"].items():
        lows[name] = min(lows[name], value) if name in lows else value
    for name, value in part["maxValues"].items():
        highs[name] = max(highs[name], value) if name in highs else value
    nulls = dict(total["nullCount"])
    for name, count in part["nullCount"].items():
        nulls[name] = nulls.get(name, 0) + count
    return {
        "numRecords": total["numRecords"] + part["numRecords"],
        "minValues": lows,
        "maxValues": highs,
        "nullCount": nulls,
    }


def _write_file(settings: WriteSettings, bucket: str, rows: pa.Table) -> AddAction:
    data = rows.drop_columns(["_bucket"])
    path = f"_bucket={bucket}/part-{uuid.uuid4()}-c000.zstd.parquet"
    size = write_parquet(settings, path, data)
    return AddAction(
        path=path,
        size=size,
        partition_values={"_bucket": bucket},
        modification_time=int(time.time() * 1000),
        data_change=True,
        stats=json.dumps(file_statistics(data, settings.stats_columns)),
    )


def _precombine_overlaps(settings: WriteSettings, written: _Written) -> int:
    """Keys written by two pages: per partition, read the new files' ``_id`` only; where a key
    repeats, rewrite that partition's new files precombined (the latest wins) and delete the
    replaced ones. Returns the rows dropped."""
    dropped = 0
    for bucket, adds in written.adds.items():
        if written.pages[bucket] < 2:  # one page's rows: precombined already
            continue
        paths = [f"{settings.root}/{a.path}" for a in adds]
        ids = pa.chunked_array(
            [pq.read_table(p, columns=["_id"], filesystem=settings.fs).column("_id") for p in paths]
        )
        if pc.count_distinct(ids).as_py() == len(ids):
            continue
        rows = pa.concat_tables(
            [pq.read_table(p, filesystem=settings.fs) for p in paths], promote_options="default"
        )
        rows = rows.append_column("_bucket", pa.array([bucket] * rows.num_rows, pa.string()))
        latest = precombine(rows)
        dropped += rows.num_rows - latest.num_rows
        written.rows -= rows.num_rows - latest.num_rows
        written.tombstones += int(pc.sum(is_tombstone(latest)).as_py() or 0) - int(
            pc.sum(is_tombstone(rows)).as_py() or 0
        )
        _remove_files(settings, adds)
        written.adds[bucket] = [_write_file(settings, bucket, latest.sort_by("_id"))]
    return dropped


def _remove_files(settings: WriteSettings, adds: list[AddAction]) -> None:
    """Delete files no commit references (never ones a commit added)."""
    for add in adds:
        settings.fs.delete_file(f"{settings.root}/{add.path}")
