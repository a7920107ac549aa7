"""Copy-on-write in Arrow: rewrite the files a batch touches, commit them as one Delta log entry.

This is how the merge applies a batch to an existing table (``merge_path`` "rewrite"). For each
partition the batch touches, a worker thread reads the files whose ``_id`` range the batch's keys
fall in, applies the changes with the merge's rules (a change wins if its ``_pos`` is ``>=`` the
stored one, a tombstone's included; a delete replaces the row with a tombstone; a stale event is
ignored), and writes:

- the partition's new data files (Parquet settings of ``lake.table_layout``, sorted as read, inserts last);
- a change data file with exactly the live rows that changed: ``insert``, ``delete``,
  ``update_preimage`` and ``update_postimage``, as a Delta MERGE writes them, so the warehouse
  load reads only the changed rows. Tombstones never appear in it: a live row turned into a
  tombstone is a ``delete``, a tombstone replaced by a document an ``insert``.

``expire_tombstones`` uses the same machinery for maintenance: it rewrites the files holding
expired tombstones in a commit marked ``dataChange=false`` with no change data.

Data and change files go through pyarrow's filesystem (streamed, as delta-rs writes them). Then
one log entry ``_delta_log/<version + 1>.json`` (commit info, the batch's app transaction,
``remove`` for the replaced files, ``add`` with statistics, ``cdc``) is written with
``put_if_absent``: an exclusive create (``If-None-Match: *`` on S3, a hard link locally), which is
all Delta's optimistic concurrency asks of a writer. If another writer committed that version
first, nothing is visible and the caller re-plans on the new version (``VersionTakenError``).
Everything written before the log entry is invisible until it exists: a writer killed at any
point leaves the table at its previous version, and vacuum deletes its files.

Cost follows the change: untouched partitions and files are not read; a partition where the
batch changes nothing (all events stale) is not rewritten; a batch that touches every file is a
full rewrite, with the same exact change feed. Memory holds one partition per worker.

Only tables whose protocol this writer honours are written this way (``supports``): reader 1,
writer up to 4, not append-only, no constraints, i.e. what the merge's ``create`` makes; and only
batches that keep the table's schema (a batch adding a typed column goes through delta-rs MERGE,
which evolves the schema). Everything else goes through delta-rs MERGE.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable

from lambda_functions.errors import TerminalError, TransientError
from lambda_functions.lake import ObjectExistsError, ObjectStore
from lambda_functions.lake.table_layout import (
    TABLE_CONFIGURATION,
    TARGET_FILE_SIZE,
    change_wins,
    is_tombstone,
)
from lambda_functions.merge.table_files import TableFiles

ENGINE = "lakehouse-merge (Arrow copy-on-write)"
CHECKPOINT_INTERVAL = 100  # Delta's default delta.checkpointInterval


class VersionTakenError(TransientError, RuntimeError):
    """Another writer committed the version this commit was planned for; nothing was changed
    (the merge reloads the table and retries)."""


class ConcurrentWriteError(TransientError, RuntimeError):
    """Another writer kept winning the commit race on the lake table; nothing was changed.
    Retry, with one writer per table (the Dagster concurrency key)."""


class UnsupportedTableLocationError(TerminalError, ValueError):
    """The lake table is neither on a local path nor on ``s3://``."""


@dataclass
class Rewritten:
    """What a rewrite changed and wrote."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    duplicate_keys: int = 0  # keys stored twice in the partitions rewritten; must be 0
    tombstones_written: int = 0  # deletes stored as tombstones (new, or replacing one)
    rows_changed: int = 0  # stored rows written: live rows and tombstones
    removed: list[dict[str, Any]] = field(default_factory=list)  # Delta ``remove`` actions
    added: list[dict[str, Any]] = field(default_factory=list)  # Delta ``add`` actions
    changes: list[dict[str, Any]] = field(default_factory=list)  # Delta ``cdc`` actions

    def absorb(self, other: Rewritten) -> None:
        for f in fields(self):  # every field is a count or a list: both add up with +
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def supports(table: DeltaTable) -> bool:
    """True if this writer honours every rule the table's protocol and settings impose."""
    protocol = table.protocol()
    configuration = table.metadata().configuration
    return (
        protocol.min_reader_version == 1
        and protocol.min_writer_version <= 4
        and configuration.get("delta.appendOnly", "false") != "true"
        and not any(key.startswith("delta.constraints.") for key in configuration)
    )


def rewrite_touched_files(
    table: DeltaTable,
    store: ObjectStore,
    table_key: str,
    storage_options: dict[str, str],
    touched: TableFiles,
    changes: pa.Table,
    commit_info: dict[str, Any],
    app_transaction: tuple[str, int],
) -> Rewritten:
    """Apply ``changes`` (one row per key, deletes included, with the table's columns) by
    rewriting the ``touched`` files of ``table`` (as of its loaded version), and commit. Raises
    ``VersionTakenError`` if the next version was taken."""
    configuration = table.metadata().configuration
    fs, root = pyarrow_filesystem(table.table_uri, storage_options)
    settings = WriteSettings(
        fs=fs,
        root=root,
        schema=changes.schema,
        target_file_size=int(configuration.get("delta.targetFileSize", TARGET_FILE_SIZE)),
        stats_columns=configuration.get(
            "delta.dataSkippingStatsColumns",
            TABLE_CONFIGURATION["delta.dataSkippingStatsColumns"],
        ).split(","),
        bytes_per_row=touched.bytes / touched.rows if touched.rows else 400.0,
    )
    by_bucket: dict[str, list[tuple[str, int]]] = {}
    for path, (bucket, size, *_rest) in touched.files.items():
        by_bucket.setdefault(bucket, []).append((path, size))
    change_buckets = changes.column("_bucket")
    buckets = sorted(pc.unique(change_buckets).to_pylist())

    def rewrite(bucket: str) -> Rewritten:
        mine = changes.filter(pc.equal(change_buckets, bucket))
        return _rewrite_partition(settings, bucket, by_bucket.get(bucket, []), mine)

    workers = max(1, min(len(buckets), os.cpu_count() or 2, 4))
    total = Rewritten()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done in pool.map(rewrite, buckets):
            total.absorb(done)
    version = table.version() + 1
    commit_entry(store, table_key, version, _log_entry(table, commit_info, app_transaction, total))
    if version % int(configuration.get("delta.checkpointInterval", CHECKPOINT_INTERVAL)) == 0:
        table.update_incremental()
        table.create_checkpoint()
    return total


def expire_tombstones(
    table: DeltaTable,
    store: ObjectStore,
    table_key: str,
    storage_options: dict[str, str],
    files: TableFiles,
    cutoff: datetime,
    commit_info: dict[str, Any],
) -> int:
    """Remove the tombstones whose ``_event_time`` is before ``cutoff`` from ``files``, in one
    commit whose ``remove``/``add`` actions are ``dataChange=false`` and which writes no change
    data: no live row changes, so change-feed readers (the warehouse load) see nothing, as for
    a compaction. Returns the tombstones removed (0: nothing committed). Raises
    ``VersionTakenError`` if another writer committed first."""
    configuration = table.metadata().configuration
    fs, root = pyarrow_filesystem(table.table_uri, storage_options)
    schema = pa.schema(table.schema().to_arrow())
    schema = pa.schema(
        pa.field(f.name, pa.string(), f.nullable) if pa.types.is_string_view(f.type) else f
        for f in schema
    )
    settings = WriteSettings(
        fs=fs,
        root=root,
        schema=schema,
        target_file_size=int(configuration.get("delta.targetFileSize", TARGET_FILE_SIZE)),
        stats_columns=configuration.get(
            "delta.dataSkippingStatsColumns",
            TABLE_CONFIGURATION["delta.dataSkippingStatsColumns"],
        ).split(","),
        bytes_per_row=files.bytes / files.rows if files.rows else 400.0,
    )
    done = Rewritten()
    expired = 0
    now = int(time.time() * 1000)
    limit = pa.scalar(cutoff, pa.timestamp("us", tz="UTC"))
    for path, (bucket, size, *_rest) in sorted(files.files.items()):
        rows = _read_files(settings, [path])
        old = pc.and_(
            is_tombstone(rows), pc.less(rows.column("_event_time").cast(limit.type), limit)
        )
        count = int(pc.sum(old).as_py() or 0)
        if count == 0:
            continue
        expired += count
        kept = rows.filter(pc.invert(old))
        done.removed.append(
            {
                "path": path,
                "dataChange": False,
                "deletionTimestamp": now,
                "extendedFileMetadata": True,
                "partitionValues": {"_bucket": bucket},
                "size": size,
            }
        )
        if kept.num_rows:
            new_path = f"_bucket={bucket}/part-{uuid.uuid4()}-c000.zstd.parquet"
            done.added.append(
                {
                    "path": new_path,
                    "partitionValues": {"_bucket": bucket},
                    "size": write_parquet(settings, new_path, kept),
                    "modificationTime": int(time.time() * 1000),
                    "dataChange": False,
                    "stats": json.dumps(file_statistics(kept, settings.stats_columns)),
                }
            )
    if not expired:
        return 0
    info = {"operation": "DELETE", "operationParameters": {"predicate": "expired tombstones"}}
    lines = _log_entry(table, {**info, **commit_info}, None, done)
    commit_entry(store, table_key, table.version() + 1, lines)
    return expired


def commit_entry(store: ObjectStore, table_key: str, version: int, lines: list[dict]) -> None:
    """Write the log entry of ``version``, or raise ``VersionTakenError`` if it exists."""
    payload = "\n".join(json.dumps(line, separators=(",", ":")) for line in lines).encode()
    try:
        store.put_if_absent(f"{table_key}/_delta_log/{version:020d}.json", payload)
    except ObjectExistsError:
        raise VersionTakenError(f"version {version} was committed by another writer") from None


@dataclass(frozen=True)
class WriteSettings:
    """Where and how data files are written: the filesystem and table root, the schema, the
    target file size (bytes), the columns Delta statistics cover, and the expected bytes per
    row (to split a partition into files)."""

    fs: pafs.FileSystem  # data and change files: pyarrow's filesystem, streamed, no fsync
    root: str
    schema: pa.Schema  # the table's columns (with the partition column) after this commit
    target_file_size: int
    stats_columns: list[str]
    bytes_per_row: float

    @property
    def data_schema(self) -> pa.Schema:
        """Columns stored in data files: the partition column lives in the path."""
        return self.schema.remove(self.schema.get_field_index("_bucket"))


def _rewrite_partition(
    settings: WriteSettings, bucket: str, files: list[tuple[str, int]], changes: pa.Table
) -> Rewritten:
    done = Rewritten()
    old = _read_files(settings, [path for path, _ in files])
    changes = changes.select(settings.data_schema.names).cast(settings.data_schema)
    rows, feed = apply_changes(old, changes, done)
    if done.rows_changed == 0:  # nothing changes here (all events stale): leave the files alone
        return done
    done.duplicate_keys = rows.num_rows - pc.count_distinct(rows.column("_id")).as_py()
    now = int(time.time() * 1000)
    for path, size in files:
        done.removed.append(
            {
                "path": path,
                "dataChange": True,
                "deletionTimestamp": now,
                "extendedFileMetadata": True,
                "partitionValues": {"_bucket": bucket},
                "size": size,
            }
        )
    rows_per_file = max(1, int(settings.target_file_size / settings.bytes_per_row))
    for start in range(0, rows.num_rows, rows_per_file):
        part = rows.slice(start, rows_per_file)
        path = f"_bucket={bucket}/part-{uuid.uuid4()}-c000.zstd.parquet"
        size = write_parquet(settings, path, part)
        done.added.append(
            {
                "path": path,
                "partitionValues": {"_bucket": bucket},
                "size": size,
                "modificationTime": int(time.time() * 1000),
                "dataChange": True,
                "stats": json.dumps(file_statistics(part, settings.stats_columns)),
            }
        )
    path = f"_change_data/_bucket={bucket}/cdc-{uuid.uuid4()}-c000.zstd.parquet"
    size = write_parquet(settings, path, feed)
    done.changes.append(
        {"path": path, "partitionValues": {"_bucket": bucket}, "size": size, "dataChange": False}
    )
    return done


def apply_changes(old: pa.Table, changes: pa.Table, done: Rewritten) -> tuple[pa.Table, pa.Table]:
    """``old`` rows (unique keys, tombstones included) with ``changes`` (unique keys, same
    columns) applied, and the change feed of that, which shows live rows only.

    A change wins over the stored row of its key if its ``_pos`` is ``>=`` the stored one, at
    equal ``_pos`` if its resume-token order is too (``table_layout.change_wins``; a tombstone
    included: that is how a late, older change is refused). A winning change:

    - live row, upsert: an update (``update_preimage`` + ``update_postimage``);
    - live row, delete: the row becomes a tombstone (``delete`` of the live row);
    - tombstone or no row, upsert: an ``insert``;
    - tombstone or no row, delete: a tombstone is written or replaced (nothing in the feed).
    """
    at = pc.index_in(old.column("_id"), value_set=changes.column("_id"))
    matched = np.flatnonzero(pc.is_valid(at).to_numpy(zero_copy_only=False))
    change_at = pc.take(at, pa.array(matched)).cast(pa.int64()).to_numpy()
    stored_pos = pc.take(old.column("_pos"), pa.array(matched)).to_numpy()
    change_pos = pc.take(changes.column("_pos"), pa.array(change_at)).to_numpy()
    is_delete = is_tombstone(changes).to_numpy(zero_copy_only=False)
    old_live = ~is_tombstone(old).to_numpy(zero_copy_only=False)
    stored_seq = pc.take(old.column("_seq"), pa.array(matched)).to_numpy()
    change_seq = pc.take(changes.column("_seq"), pa.array(change_at)).to_numpy()
    wins = change_wins(change_pos, change_seq, stored_pos, stored_seq)  # per matched old row
    live = old_live[matched]  # per matched old row: the stored row is live
    deleted_rows = matched[wins & live & is_delete[change_at]]
    updated_rows = matched[wins & live & ~is_delete[change_at]]
    replaced_rows = matched[wins]  # stored rows the changes replace (tombstones included)
    stale = np.zeros(changes.num_rows, bool)
    stale[change_at[~wins]] = True
    updated_changes = np.zeros(changes.num_rows, bool)
    updated_changes[change_at[wins & live & ~is_delete[change_at]]] = True
    inserted_changes = ~is_delete & ~stale & ~updated_changes  # over a tombstone or no row
    written = ~stale  # every winning change is stored: upserts and tombstones
    keep = np.ones(old.num_rows, bool)
    keep[replaced_rows] = False
    stored = changes.filter(pa.array(written))
    rows = pa.concat_tables([old if keep.all() else old.filter(pa.array(keep)), stored])
    done.deleted += len(deleted_rows)
    done.updated += len(updated_rows)
    done.inserted += int(inserted_changes.sum())
    done.tombstones_written += int((is_delete & written).sum())
    done.rows_changed += int(written.sum())
    feed = pa.concat_tables(
        [
            _typed(old.take(pa.array(deleted_rows)), "delete"),
            _typed(old.take(pa.array(updated_rows)), "update_preimage"),
            _typed(changes.filter(pa.array(updated_changes)), "update_postimage"),
            _typed(changes.filter(pa.array(inserted_changes)), "insert"),
        ]
    )
    return rows, feed


def _typed(rows: pa.Table, change_type: str) -> pa.Table:
    return rows.append_column("_change_type", pa.array([change_type] * rows.num_rows, pa.string()))


def _read_files(settings: WriteSettings, paths: list[str]) -> pa.Table:
    """Rows of the given data files, with the columns of ``settings.data_schema``."""
    schema = settings.data_schema
    parts = []
    for path in paths:
        stored = pq.read_table(f"{settings.root}/{path}", filesystem=settings.fs, use_threads=False)
        columns = [
            stored.column(f.name).cast(f.type)
            if f.name in stored.column_names
            else pa.nulls(stored.num_rows, f.type)  # a typed column added after this file
            for f in schema
        ]
        parts.append(pa.table(columns, schema=schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def write_parquet(settings: WriteSettings, path: str, rows: pa.Table) -> int:
    """Write ``rows`` to ``path`` under the table root (zstd level 1, dictionary encoding except
    ``_id`` and ``doc``, Parquet statistics on the stats columns). Returns its size in bytes.
    Not atomic on S3 beyond a single PUT; only a commit makes the file part of the table."""
    target = data_file_target(settings, path)
    pq.write_table(rows, target, **parquet_options(settings, rows.column_names))
    return settings.fs.get_file_info(target).size


def data_file_target(settings: WriteSettings, path: str) -> str:
    """The full path of a data file under the table root, its directory made where the file
    system needs one (local; S3 has no directories)."""
    target = f"{settings.root}/{path}"
    if isinstance(settings.fs, pafs.LocalFileSystem):
        settings.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    return target


def parquet_options(settings: WriteSettings, columns: list[str]) -> dict[str, Any]:
    """The Parquet writer options of every data file the merge writes: zstd level 1, dictionary
    encoding except ``_id`` and ``doc``, statistics on the stats columns only."""
    return {
        "filesystem": settings.fs,
        "compression": "zstd",
        "compression_level": 1,
        "use_dictionary": [n for n in columns if n not in ("_id", "doc")],
        "write_statistics": [n for n in columns if n in settings.stats_columns],
    }


def file_statistics(rows: pa.Table, stats_columns: list[str]) -> dict[str, Any]:
    """Delta file statistics: row count, and min, max and null count of the stats columns."""
    minimum, maximum, nulls = {}, {}, {}
    for name in stats_columns:
        if name not in rows.column_names:
            continue
        column = rows.column(name)
        nulls[name] = column.null_count
        bounds = pc.min_max(column).as_py()
        if bounds["min"] is not None:
            minimum[name], maximum[name] = _json_value(bounds["min"]), _json_value(bounds["max"])
    return {
        "numRecords": rows.num_rows,
        "minValues": minimum,
        "maxValues": maximum,
        "nullCount": nulls,
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def _log_entry(
    table: DeltaTable,
    commit_info: dict[str, Any],
    app_transaction: tuple[str, int] | None,
    done: Rewritten,
) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    info = {
        "timestamp": now,
        "operation": "MERGE",
        "operationParameters": {"predicate": "_id IN (changed keys)"},
        "readVersion": table.version(),
        "isolationLevel": "Serializable",
        "isBlindAppend": False,
        "engineInfo": ENGINE,
        "operationMetrics": {
            "numTargetRowsInserted": str(done.inserted),
            "numTargetRowsUpdated": str(done.updated),
            "numTargetRowsDeleted": str(done.deleted),
            "numTargetFilesRemoved": str(len(done.removed)),
            "numTargetFilesAdded": str(len(done.added)),
        },
        **commit_info,
    }
    return [
        {"commitInfo": info},
        *(
            [
                {
                    "txn": {
                        "appId": app_transaction[0],
                        "version": app_transaction[1],
                        "lastUpdated": now,
                    }
                }
            ]
            if app_transaction
            else []
        ),
        *({"remove": action} for action in done.removed),
        *({"add": action} for action in done.added),
        *({"cdc": action} for action in done.changes),
    ]


def pyarrow_filesystem(table_uri: str, options: dict[str, str]) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the table's root in it, from the delta-rs storage options (the
    same endpoint and region; credentials from the environment, as for delta-rs and boto3)."""
    parsed = urlparse(table_uri)
    if parsed.scheme == "s3":
        kwargs: dict[str, Any] = {"region": options.get("AWS_REGION")}
        endpoint = options.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint_override"] = urlparse(endpoint).netloc
            kwargs["scheme"] = urlparse(endpoint).scheme or "https"
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme in ("file", ""):
        return pafs.LocalFileSystem(), (parsed.path if parsed.scheme else table_uri).rstrip("/")
    raise UnsupportedTableLocationError(
        f"{table_uri}: the lake table must be on a local path or s3://"
    )
