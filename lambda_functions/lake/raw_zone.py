"""The raw zone: captured changes as atomic, numbered batches.

Layout under the lake root, per collection::

    raw/<database>/<collection>/data/<batch>/<uuid>.parquet   data files, written first
    raw/<database>/<collection>/manifests/<batch>.json        the manifest, written last
    raw/<database>/<collection>/_checkpoint.json              pointer to the newest manifest

``list_namespaces`` finds the collections present by listing these key names.

Guarantees:
- A batch exists for readers only once its manifest exists; the manifest lists its data files with
  row counts and SHA-256 checksums, so a half-written batch is invisible and a damaged file is caught.
- Manifests are created with ``put_if_absent``: two writers can never both publish batch N.
- The capture state after a batch (resume token, snapshot progress) is stored *in* its manifest. The
  checkpoint file only saves a listing: if a run dies after the manifest and before the checkpoint,
  ``read_checkpoint`` rolls forward over the newer manifests, so no batch is captured twice.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_functions.lake.record_key import RECORD_KEY_FORMAT
from lambda_functions.lake.store import ObjectExistsError, ObjectStore, new_file_name, open_store

FORMAT = "lakehouse-raw-batch"
FORMAT_VERSION = 1

# Columns every batch has; capture may add typed top-level columns after these.
OPS = ("snapshot", "insert", "update", "replace", "delete")
BATCH_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),  # canonical string form of the key
        pa.field("op", pa.string(), nullable=False),  # one of OPS
        pa.field("pos", pa.int64(), nullable=False),  # stream position: clusterTime (t << 32 | i)
        pa.field("seq", pa.int64(), nullable=False),  # order within the batch: ties on pos
        pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("doc", pa.string()),  # canonical extended JSON of the document; null on delete
    ]
)


class CorruptBatchError(RuntimeError):
    """A batch's data does not match its manifest (missing file, wrong checksum or row count)."""


@dataclass(frozen=True)
class BatchFile:
    key: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BatchManifest:
    namespace: str
    batch: int
    files: list[BatchFile]
    rows: int
    ops: dict[str, int]
    min_pos: int | None
    max_pos: int | None
    max_event_time: str | None
    state: dict[str, Any]  # capture state after this batch (resume token, snapshot progress)
    created_at: str
    quarantined: int = 0
    # The record key format of the rows' ``_id`` (``record_key.RECORD_KEY_FORMAT``); manifests
    # written before the field existed are format 1, which the merge re-keys when it reads them.
    key_format: int = 1
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BatchManifest:
        raw = json.loads(data)
        if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
            raise CorruptBatchError(
                f"not a {FORMAT} v{FORMAT_VERSION} manifest: {raw.get('format')!r} "
                f"v{raw.get('format_version')!r}"
            )
        raw["files"] = [BatchFile(**f) for f in raw["files"]]
        return cls(**raw)


@dataclass(frozen=True)
class Checkpoint:
    """Where capture resumes: the last published batch and the state stored with it."""

    batch: int = 0
    state: dict[str, Any] = field(default_factory=dict)


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
        return BatchManifest.from_json(self.store.get(self.manifest_key(batch)))

    def read_batch(self, manifest: BatchManifest) -> pa.Table:
        """All rows of a batch, checked against the manifest's checksums and counts."""
        tables = []
        for f in manifest.files:
            try:
                data = self.store.get(f.key)
            except FileNotFoundError:
                raise CorruptBatchError(
                    f"{self.namespace} batch {manifest.batch}: data file {f.key} is missing"
                ) from None
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise CorruptBatchError(
                    f"{self.namespace} batch {manifest.batch}: checksum mismatch on {f.key}"
                )
            tables.append(pq.read_table(io.BytesIO(data)))
        table = (
            pa.concat_tables(tables, promote_options="permissive")
            if tables
            else BATCH_SCHEMA.empty_table()
        )
        if table.num_rows != manifest.rows:
            raise CorruptBatchError(
                f"{self.namespace} batch {manifest.batch}: {table.num_rows} rows, manifest says "
                f"{manifest.rows}"
            )
        return table

    def read_checkpoint(self) -> Checkpoint:
        """The newest published batch, rolling forward over manifests the checkpoint missed."""
        try:
            raw = json.loads(self.store.get(self.checkpoint_key))
            checkpoint = Checkpoint(batch=raw["batch"], state=raw["state"])
        except FileNotFoundError:
            checkpoint = Checkpoint()
        rolled = checkpoint
        while self.store.exists(self.manifest_key(rolled.batch + 1)):
            manifest = self.read_manifest(rolled.batch + 1)
            rolled = Checkpoint(batch=manifest.batch, state=manifest.state)
        if rolled != checkpoint:
            self._save_checkpoint(rolled)
        return rolled

    # -- writing --------------------------------------------------------------------------------
    def write_batch(
        self,
        parts: Iterable[pa.Table],
        *,
        after: Checkpoint,
        state: dict[str, Any],
        quarantined: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> BatchManifest:
        """Publish batch ``after.batch + 1``: data files, then the manifest, then the checkpoint.

        Raises ``ObjectExistsError`` if that batch number was published meanwhile (a concurrent
        capture): the caller must re-read the checkpoint instead of publishing the same changes.
        """
        batch = after.batch + 1
        files, ops = [], dict.fromkeys(OPS, 0)
        min_pos = max_pos = max_time = None
        for part in parts:
            if part.num_rows == 0:
                continue
            sink = io.BytesIO()
            pq.write_table(part, sink, compression="zstd")
            data = sink.getvalue()
            key = self._data_key(batch)
            self.store.put(key, data)
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
        )
        self.store.put_if_absent(self.manifest_key(batch), manifest.to_json())
        self._save_checkpoint(Checkpoint(batch=batch, state=state))
        return manifest

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


__all__ = [
    "BATCH_SCHEMA",
    "OPS",
    "BatchFile",
    "BatchManifest",
    "Checkpoint",
    "CorruptBatchError",
    "ObjectExistsError",
    "RawZone",
    "list_namespaces",
]
