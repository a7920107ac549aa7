"""The raw zone's batch format: the columns of a batch (``BATCH_SCHEMA``), the manifest that
publishes it (``BatchManifest``: data files with row counts and SHA-256 checksums, the capture
state after the batch), the checkpoint that caches the newest one, and the errors for damage
(terminal: the fix is a re-snapshot, quoted in ``DAMAGED_BATCH_FIX``). ``raw_zone.RawZone``
reads and writes them; their names are importable from ``lambda_functions.lake.raw_zone``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from lambda_functions.errors import TerminalError

__all__ = [
    "BATCH_SCHEMA",
    "DAMAGED_BATCH_FIX",
    "FORMAT",
    "FORMAT_VERSION",
    "OPS",
    "PARTIAL_UPDATES_FORMAT_VERSION",
    "READABLE_FORMAT_VERSIONS",
    "RESNAPSHOT_HOW_TO",
    "TOKEN_ORDER_BASE",
    "UPDATE_DESCRIPTION_COLUMN",
    "BatchFile",
    "BatchManifest",
    "Checkpoint",
    "CorruptBatchError",
    "CorruptManifestError",
]

FORMAT = "lakehouse-raw-batch"
FORMAT_VERSION = 1
# Version 2: the batch may hold partial updates (``UPDATE_DESCRIPTION_COLUMN``). Only batches that
# hold one are written as version 2, so readers older than partial updates refuse those batches
# (instead of reading an update without a document) and still read every other batch.
PARTIAL_UPDATES_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (FORMAT_VERSION, PARTIAL_UPDATES_FORMAT_VERSION)

# Columns every batch has; capture may add typed top-level columns after these.
OPS = ("snapshot", "insert", "update", "replace", "delete")
# Manifest ``extra`` key: the batch rows' size as canonical JSON (capture's ``BatchRows.bytes``).
JSON_BYTES_KEY = "json_bytes"
BATCH_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),  # canonical string form of the key
        pa.field("op", pa.string(), nullable=False),  # one of OPS
        pa.field("pos", pa.int64(), nullable=False),  # stream position: clusterTime (t << 32 | i)
        # Ties on pos: the delivery order within the batch, or TOKEN_ORDER_BASE + the event's
        # resume-token order (comparable across batches: see ``table_layout.stream_order``).
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("doc", pa.string()),  # canonical extended JSON of the document; null on delete
    ]
)
# ``seq`` values from this one up are a change event's resume-token order (``positions.token_order``,
# 62 bits of the token after its clusterTime), not a delivery counter: comparable between batches.
TOKEN_ORDER_BASE = 1 << 62
# Optional column after the core ones (only in batches that hold a partial update, manifest
# ``format_version`` 2): the canonical extended JSON of an update event's ``updateDescription``
# (MongoDB Manual, "Change Events" > "update Event") when the event came without ``fullDocument``
# (a change stream opened without ``fullDocument: "updateLookup"``, a relay of plain events).
# Such a row is a *partial update*: op ``"update"``, ``doc`` null, this column set; the merge
# applies it to the stored document (``merge.partial_updates``). Null in every other row; a
# batch without the column (every batch written before partial updates) has none.
UPDATE_DESCRIPTION_COLUMN = "update_description"


# How to re-snapshot a collection from Dagster. Capture's expired-token error and every damaged-batch
# error quote it word for word (defined here, in the shared ground, so the merge's errors can too).
RESNAPSHOT_HOW_TO = (
    "materialize the asset cdc_raw_batches with the run config "
    '{"ops": {"cdc_raw_batches": {"config": {"reset": true}}}} (Dagster UI: the asset\'s '
    "Materialize menu > Open launchpad), or set LAKEHOUSE_AUTO_RESNAPSHOT=true so capture does "
    "it by itself; outside Dagster call capture_changes(..., reset=True)"
)
# The fix for a damaged batch: its rows cannot be trusted, so the collection is loaded anew.
DAMAGED_BATCH_FIX = (
    "re-snapshot the collection: "
    + RESNAPSHOT_HOW_TO
    + ". The reset publishes a batch marked dropped after the damaged one, then a new snapshot; "
    "the merge starts a new table generation there and skips the batches it supersedes, so the "
    "damaged batch is never read again. Do not delete or rewrite the damaged objects by hand: a "
    "batch number that reappears would be taken for one already merged"
)


class CorruptBatchError(TerminalError, RuntimeError):
    """A batch's data does not match its manifest (missing file, wrong size, checksum or row
    count), or its manifest cannot be read. ``batch`` and ``key`` name the damage when known;
    the message quotes the fix (``DAMAGED_BATCH_FIX``)."""

    def __init__(self, message: str, *, batch: int | None = None, key: str | None = None):
        super().__init__(message)
        self.batch = batch
        self.key = key


class CorruptManifestError(CorruptBatchError):
    """A published manifest is not a valid manifest (truncated, garbled or of another format).

    Manifests are created atomically (``put_if_absent``), so this is real damage, never a write
    in progress: the batch's contents are unknown and it is not skipped.
    """


@dataclass(frozen=True)
class BatchFile:
    """One Parquet data file of a batch: its key, row count, size in bytes and SHA-256 (hex)."""

    key: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class BatchManifest:
    """What makes a batch exist: created once, exclusively (``put_if_absent``), after its data
    files, at ``<prefix>/manifests/<batch>.json``. It lists the files, counts rows by op, the
    ``pos`` range and newest event time, and holds the capture state after the batch (``state``,
    a JSON object whose shape belongs to the input that wrote it) and free-form ``extra``
    (``dropped``, ``quarantine_key``, ...)."""

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

    @property
    def decoded_bytes(self) -> int:
        """What the batch's rows take once read (bytes): the JSON size capture recorded
        (``extra["json_bytes"]``) or, for batches without it, the Parquet files' size, whichever
        is larger (Parquet compresses repetitive documents, e.g. int arrays, many times)."""
        recorded = self.extra.get(JSON_BYTES_KEY)
        return max(self.bytes, recorded if isinstance(recorded, int) else 0)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BatchManifest:
        """Parse a manifest.

        Raises:
            CorruptBatchError: ``data`` is not JSON, or not a manifest of this format and
                version (the message says what is wrong, not where: ``RawZone.read_manifest``
                adds the batch, the key and the fix).
        """
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, ValueError) as error:
            raise CorruptBatchError(f"not JSON ({len(data)} bytes): {error}") from None
        if not isinstance(raw, dict):
            raise CorruptBatchError(f"a JSON {type(raw).__name__}, not a manifest object")
        if raw.get("format") != FORMAT or raw.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise CorruptBatchError(
                f"not a {FORMAT} v{FORMAT_VERSION} or v{PARTIAL_UPDATES_FORMAT_VERSION} manifest: "
                f"{raw.get('format')!r} "
                f"v{raw.get('format_version')!r}"
            )
        try:
            raw["files"] = [BatchFile(**f) for f in raw["files"]]
            manifest = cls(**raw)
        except (KeyError, TypeError) as error:
            raise CorruptBatchError(f"fields missing or unknown: {error}") from None
        if not isinstance(manifest.batch, int) or not isinstance(manifest.state, dict):
            raise CorruptBatchError("batch is not a number or state is not an object")
        return manifest


@dataclass(frozen=True)
class Checkpoint:
    """Where capture resumes: the last published batch and the state stored with it."""

    batch: int = 0
    state: dict[str, Any] = field(default_factory=dict)
