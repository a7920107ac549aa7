"""The raw zone: captured changes as atomic, numbered batches.

Layout under the lake root, per collection::

    raw/<database>/<collection>/data/<batch>/<uuid>.parquet   data files, written first
    raw/<database>/<collection>/manifests/<batch>.json        the manifest, written last
    raw/<database>/<collection>/_checkpoint.json              pointer to the newest manifest
    raw/<database>/<collection>/<folder>/<batch>-<uuid>.<ext> a batch's side files (dead letters,
                                                              an input's ledger), written first
    raw/<database>/<collection>/unapplied_updates/<first>-<last>.jsonl  partial updates the merge
                                                              set aside (``merge.partial_updates``)

``list_namespaces`` finds the collections present by listing these key names.

Guarantees:
- A batch exists for readers only once its manifest exists; the manifest lists its data files with
  row counts and SHA-256 checksums, so a half-written batch is invisible and a damaged file is caught.
- Manifests are created with ``put_if_absent``: two writers can never both publish batch N.
- Everything a batch writes besides its manifest has a name no other writer can produce (a fresh
  uuid per attempt: ``data_key``, ``side_key``) and belongs to the batch only through the manifest,
  which names it. Two writers preparing the same batch number therefore never overwrite one
  another's files; the manifest (the exclusive claim) decides whose files count, and the loser's
  are removed. Readers follow the manifest's pointers and never guess a name (older batches wrote
  side files at shared names such as ``quarantine/<batch>.jsonl``; their manifests point there).
- The capture state after a batch (resume token, snapshot progress) is stored *in* its manifest. The
  checkpoint file only saves a listing: if a run dies after the manifest and before the checkpoint,
  ``read_checkpoint`` rolls forward over the newer manifests, so no batch is captured twice. A
  checkpoint that is unreadable or of the wrong shape is rebuilt from the newest manifest.
- Damage is named, never skipped: a manifest that cannot be parsed or a data file that does not
  match its manifest raises ``CorruptBatchError`` naming the batch, the object, what is wrong and
  the fix (``DAMAGED_BATCH_FIX``).

The batch format itself (columns, manifest, checkpoint, damage errors) is in ``raw_manifest``;
this module reads and writes it in the object store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_functions.lake.raw_manifest import (
    BATCH_SCHEMA,
    DAMAGED_BATCH_FIX,
    FORMAT,
    FORMAT_VERSION,
    OPS,
    PARTIAL_UPDATES_FORMAT_VERSION,
    RESNAPSHOT_HOW_TO,
    UPDATE_DESCRIPTION_COLUMN,
    BatchFile,
    BatchManifest,
    Checkpoint,
    CorruptBatchError,
    CorruptManifestError,
)
from lambda_functions.lake.record_key import RECORD_KEY_FORMAT
from lambda_functions.lake.store import ObjectExistsError, ObjectStore, new_file_name, open_store


class RawZone:
    def __init__(self, store: ObjectStore, database: str, collection: str):
        self.store = store
        self.namespace = f"{database}.{collection}"
        self.prefix = f"raw/{database}/{collection}"

    @classmethod
    def for_request(cls, request: Any, store: ObjectStore | None = None) -> RawZone:
        """The raw zone of a collection request (``lake_uri``, ``database``, ``collection``)."""
        return cls(store or open_store(request.lake_uri), request.database, request.collection)

    # -- keys ---------------------------------------------------------------------------------
    def manifest_key(self, batch: int) -> str:
        return f"{self.prefix}/manifests/{batch:012d}.json"

    def _data_key(self, batch: int) -> str:
        return f"{self.prefix}/data/{batch:012d}/{new_file_name('.parquet')}"

    def side_key(self, folder: str, batch: int, suffix: str, *, stem: str = "") -> str:
        """A fresh key for a file written beside batch ``batch`` before its manifest:
        ``<prefix>/<folder>/<stem><batch>-<uuid><suffix>``.

        Unique per call, so writers racing for the same batch number never overwrite each
        other's side files; the batch's manifest must name the key (its state or extra), and
        readers follow that pointer. Pass the key to ``write_batch(side_files=...)``.

        Args:
            folder: folder under the collection's prefix, e.g. ``"quarantine"`` or ``"_mq"``.
            batch: the batch number the file is prepared for.
            suffix: the file name's ending, with its dot (``".jsonl"``).
            stem: text before the batch number (``"seen-"``).

        Returns:
            The key, relative to the store root.
        """
        return f"{self.prefix}/{folder}/{stem}{batch:012d}-{new_file_name(suffix)}"

    @property
    def checkpoint_key(self) -> str:
        return f"{self.prefix}/_checkpoint.json"

    # -- reading --------------------------------------------------------------------------------
    def batch_numbers(self, after: int = 0) -> list[int]:
        """Published batches with a number greater than ``after``, ascending."""
        numbers = []
        for key in self.store.list(f"{self.prefix}/manifests/"):
            name = key.rsplit("/", 1)[-1]
            if _is_manifest_name(name):
                number = int(name[:-5])
                if number > after:
                    numbers.append(number)
        return sorted(numbers)

    def read_manifest(self, batch: int) -> BatchManifest:
        """The manifest of a published batch.

        Raises:
            FileNotFoundError: batch ``batch`` is not published.
            CorruptManifestError: the manifest exists but is not a valid manifest (names the
                batch, the key and ``DAMAGED_BATCH_FIX``).
        """
        key = self.manifest_key(batch)
        data = self.store.get(key)
        try:
            manifest = BatchManifest.from_json(data)
        except CorruptBatchError as problem:
            raise self._damage(CorruptManifestError, batch, key, f"manifest: {problem}") from None
        if manifest.batch != batch:
            raise self._damage(
                CorruptManifestError, batch, key, f"manifest says batch {manifest.batch}"
            )
        return manifest

    def read_batch(self, manifest: BatchManifest) -> pa.Table:
        """All rows of a batch, checked against the manifest's sizes, checksums and counts.

        Raises:
            CorruptBatchError: a data file is missing, truncated (size differs), altered
                (SHA-256 differs) or unreadable, or the row count differs; the message names
                the batch, the file, expected vs found, and ``DAMAGED_BATCH_FIX``.
        """
        tables = []
        batch = manifest.batch
        for f in manifest.files:
            try:
                data = self.store.get(f.key)
            except FileNotFoundError:
                raise self._damage(CorruptBatchError, batch, f.key, "is missing") from None
            if len(data) != f.bytes:
                raise self._damage(
                    CorruptBatchError,
                    batch,
                    f.key,
                    f"is {len(data)} bytes, the manifest says {f.bytes} "
                    f"({'truncated' if len(data) < f.bytes else 'longer than written'})",
                )
            found = hashlib.sha256(data).hexdigest()
            if found != f.sha256:
                raise self._damage(
                    CorruptBatchError,
                    batch,
                    f.key,
                    f"has SHA-256 {found}, the manifest says {f.sha256} (altered after writing)",
                )
            try:
                table = pq.read_table(io.BytesIO(data))
            except (pa.ArrowException, OSError) as error:
                raise self._damage(
                    CorruptBatchError, batch, f.key, f"is not readable Parquet: {error}"
                ) from None
            if table.num_rows != f.rows:
                raise self._damage(
                    CorruptBatchError,
                    batch,
                    f.key,
                    f"has {table.num_rows} rows, the manifest says {f.rows}",
                )
            tables.append(table)
        table = (
            pa.concat_tables(tables, promote_options="permissive")
            if tables
            else BATCH_SCHEMA.empty_table()
        )
        if table.num_rows != manifest.rows:
            raise self._damage(
                CorruptBatchError,
                batch,
                self.manifest_key(batch),
                f"lists files of {table.num_rows} rows in all but says {manifest.rows}",
            )
        return table

    def _damage(
        self, kind: type[CorruptBatchError], batch: int, key: str, problem: str
    ) -> CorruptBatchError:
        return kind(
            f"{self.namespace} batch {batch} is damaged: {key} {problem}. Fix: {DAMAGED_BATCH_FIX}",
            batch=batch,
            key=key,
        )

    def read_checkpoint(self, on_repair: Callable[[str], None] | None = None) -> Checkpoint:
        """The newest published batch and its state.

        Reads the checkpoint file, then rolls forward over manifests published after it (a run
        that died between manifest and checkpoint, or a concurrent writer). The file is only a
        cache: when it is missing, not JSON or of the wrong shape, the newest manifest in the
        listing is taken instead (one listing call) and the file is rewritten.

        Args:
            on_repair: told, in one line, when a damaged checkpoint file was rebuilt.

        Raises:
            CorruptManifestError: the manifest read (the newest, or one rolled over) is damaged;
                the message names it and the fix. Such a manifest is never skipped: the batch's
                rows would be lost.
        """
        cached = self._cached_checkpoint()
        checkpoint = cached if cached is not None else self._newest_published()
        if cached is None and checkpoint.batch > 0 and self.store.exists(self.checkpoint_key):
            (on_repair or (lambda _line: None))(
                f"{self.namespace}: {self.checkpoint_key} was damaged (not the JSON of a "
                f"checkpoint); rebuilt from the newest manifest, batch {checkpoint.batch}"
            )
        rolled = checkpoint
        while self.store.exists(self.manifest_key(rolled.batch + 1)):
            manifest = self.read_manifest(rolled.batch + 1)
            rolled = Checkpoint(batch=manifest.batch, state=manifest.state)
        if rolled != cached and rolled.batch > 0:  # a collection with no batch gets no file
            self._save_checkpoint(rolled)
        return rolled

    def newest_batch_number(self) -> int:
        """The highest published batch number by listing (0: none), without reading manifests:
        what a reset publishes after when the newest manifest itself is damaged."""
        numbers = self.batch_numbers()
        return numbers[-1] if numbers else 0

    def _cached_checkpoint(self) -> Checkpoint | None:
        """The checkpoint file's content, or ``None`` when it is missing or damaged."""
        try:
            raw = json.loads(self.store.get(self.checkpoint_key))
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, ValueError):
            return None
        if (
            not isinstance(raw, dict)
            or type(raw.get("batch")) is not int
            or raw["batch"] < 0
            or not isinstance(raw.get("state"), dict)
        ):
            return None
        return Checkpoint(batch=raw["batch"], state=raw["state"])

    def _newest_published(self) -> Checkpoint:
        number = self.newest_batch_number()
        if number == 0:
            return Checkpoint()
        manifest = self.read_manifest(number)
        return Checkpoint(batch=manifest.batch, state=manifest.state)

    # -- writing --------------------------------------------------------------------------------
    def write_batch(
        self,
        parts: Iterable[pa.Table],
        *,
        after: Checkpoint,
        state: dict[str, Any],
        quarantined: int = 0,
        extra: dict[str, Any] | None = None,
        side_files: Mapping[str, bytes] | None = None,
    ) -> BatchManifest:
        """Publish batch ``after.batch + 1``: side files and data files, then the manifest (the
        exclusive claim), then the checkpoint.

        Args:
            parts: the batch's rows, one data file per non-empty table (``BATCH_SCHEMA`` first;
                a table with partial updates adds ``UPDATE_DESCRIPTION_COLUMN`` and makes the
                manifest ``format_version`` 2).
            after: the checkpoint this batch follows.
            state: capture state after this batch, stored in the manifest.
            quarantined: dead letters counted in the manifest.
            extra: free-form manifest fields (``dropped``, pointers to side files, ...).
            side_files: objects written before the manifest, at keys from ``side_key`` (unique
                to this attempt) that ``state`` or ``extra`` point to.

        Returns:
            The published manifest.

        Raises:
            ObjectExistsError: another writer published that batch number meanwhile (a
                concurrent capture). This attempt's data and side files are removed; the caller
                must re-read the checkpoint instead of publishing the same changes.
        """
        batch = after.batch + 1
        written: list[str] = []
        for key, data in (side_files or {}).items():
            self.store.put(key, data)
            written.append(key)
        files, ops = [], dict.fromkeys(OPS, 0)
        min_pos = max_pos = max_time = None
        partial_updates = False
        for part in parts:
            if part.num_rows == 0:
                continue
            if UPDATE_DESCRIPTION_COLUMN in part.column_names:
                partial_updates |= part.column(UPDATE_DESCRIPTION_COLUMN).null_count < len(part)
            sink = io.BytesIO()
            pq.write_table(part, sink, compression="zstd")
            data = sink.getvalue()
            key = self._data_key(batch)
            self.store.put(key, data)
            written.append(key)
            files.append(BatchFile(key, part.num_rows, len(data), hashlib.sha256(data).hexdigest()))
            for op, count in _value_counts(part.column("op")):
                ops[op] = ops.get(op, 0) + count
            lo, hi = _min_max(part.column("pos"))
            min_pos = lo if min_pos is None else min(min_pos, lo)
            max_pos = hi if max_pos is None else max(max_pos, hi)
            _, t = _min_max(part.column("event_time"))
            max_time = t if max_time is None else max(max_time, t)
        manifest = BatchManifest(
            namespace=self.namespace,
            batch=batch,
            files=files,
            rows=sum(f.rows for f in files),
            ops={k: v for k, v in ops.items() if v},
            min_pos=min_pos,
            max_pos=max_pos,
            max_event_time=max_time.isoformat() if max_time is not None else None,
            state=state,
            created_at=datetime.now(UTC).isoformat(),
            quarantined=quarantined,
            key_format=RECORD_KEY_FORMAT,
            extra=extra or {},
            # Readers older than partial updates refuse such a batch instead of misreading it.
            format_version=PARTIAL_UPDATES_FORMAT_VERSION if partial_updates else FORMAT_VERSION,
        )
        self._claim(manifest, written)
        self._save_checkpoint(Checkpoint(batch=batch, state=state))
        return manifest

    def publish_manifest(self, manifest: BatchManifest) -> BatchManifest:
        """Publish a manifest whose data files are already written (a parallel snapshot's range
        pages): the exclusive claim, then the checkpoint.

        Raises:
            ObjectExistsError: another writer published that batch number (nothing is removed:
                the files belong to the caller's own bookkeeping).
        """
        self._claim(manifest, [])
        self._save_checkpoint(Checkpoint(batch=manifest.batch, state=manifest.state))
        return manifest

    def _claim(self, manifest: BatchManifest, written: list[str]) -> None:
        """Create the manifest exclusively; on losing, remove this attempt's files.

        A lost response can make a retried create fail although the first one succeeded (S3
        answers the retry with 412): the manifest found is compared with ours, and an identical
        one is this attempt's own win.
        """
        key, data = self.manifest_key(manifest.batch), manifest.to_json()
        try:
            self.store.put_if_absent(key, data)
        except ObjectExistsError:
            try:
                ours = self.store.get(key) == data
            except FileNotFoundError:
                ours = False
            if ours:
                return
            for orphan in written:  # unique to this attempt: no other writer refers to them
                with contextlib.suppress(Exception):  # best effort: an orphan is garbage
                    self.store.delete(orphan)
            raise

    def _save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.store.put(
            self.checkpoint_key,
            json.dumps({"batch": checkpoint.batch, "state": checkpoint.state}).encode(),
        )

    def manifests(self, after: int = 0) -> Iterator[BatchManifest]:
        for number in self.batch_numbers(after):
            yield self.read_manifest(number)


def list_namespaces(store: ObjectStore) -> list[str]:
    """``"database.collection"`` of every collection with a published batch in the raw zone, sorted.

    A collection counts once it has a batch manifest or a checkpoint. Only folder and key names
    are listed (no manifest is read, and no data file is listed: one call per database and two
    at most per collection); folders outside the layout, such as ``raw/_mq_quarantine/`` or a
    collection's ``quarantine/`` and ``data/`` objects, do not make a collection appear.
    """
    found = []
    for database in store.list_folders("raw/"):
        for collection in store.list_folders(f"raw/{database}/"):
            prefix = f"raw/{database}/{collection}/"
            manifests = prefix + "manifests/"
            if store.exists(prefix + "_checkpoint.json") or any(
                _is_manifest_name(key[len(manifests) :]) for key in store.list(manifests)
            ):
                found.append(f"{database}.{collection}")
    return sorted(found)


def _is_manifest_name(name: str) -> bool:
    return name.endswith(".json") and name[:-5].isdigit()


def _value_counts(column: pa.ChunkedArray) -> list[tuple[str, int]]:
    import pyarrow.compute as pc

    counts = pc.value_counts(column)
    return [(v["values"], v["counts"]) for v in counts.to_pylist()]


def _min_max(column: pa.ChunkedArray) -> tuple[Any, Any]:
    import pyarrow.compute as pc

    result = pc.min_max(column).as_py()
    return result["min"], result["max"]


__all__ = [  # the format's names (raw_manifest) are re-exported: every stage reads them here
    "BATCH_SCHEMA",
    "DAMAGED_BATCH_FIX",
    "FORMAT",
    "FORMAT_VERSION",
    "OPS",
    "PARTIAL_UPDATES_FORMAT_VERSION",
    "RESNAPSHOT_HOW_TO",
    "UPDATE_DESCRIPTION_COLUMN",
    "BatchFile",
    "BatchManifest",
    "Checkpoint",
    "CorruptBatchError",
    "CorruptManifestError",
    "ObjectExistsError",
    "RawZone",
    "list_namespaces",
]
