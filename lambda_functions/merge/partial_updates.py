"""Partial updates: update events that carry only ``updateDescription``, applied to the stored
document at their position.

A change stream opened without ``fullDocument: "updateLookup"`` (``LAKEHOUSE_UPDATE_LOOKUP=false``)
or a relay of plain change events delivers an update as what changed (MongoDB Manual, "Change
Events" > "update Event": ``updatedFields``, ``removedFields``, ``truncatedArrays``). Capture keeps
it as a raw row with op ``update``, no ``doc`` and the update description
(``raw_manifest.UPDATE_DESCRIPTION_COLUMN``); ``plan.read_changes`` marks it ``PARTIAL_UPDATE_OP``
with the description in ``doc``. Before precombining, ``resolve_partial_updates`` turns every such
row into a full ``update`` row or sets it aside:

- **Which document it applies to.** A key's changes are walked in precombine order (``_pos``,
  the resume-token order, ``_batch``, ``_seq``: ``table_layout.stream_order``). The document before a partial update is the result of the latest earlier
  change of the same merge: a full version (snapshot, insert, replace, update with ``doc``) or an
  applied partial update; if the merge has none, the live row the lake table stores (read for the
  changed keys only, from the partitions they live in: the cost follows the change).
- **Stale ones are ignored** like any change older than the stored row: a partial update whose
  ``_pos`` is not above the stored row's (live or tombstone), at an equal ``_pos`` unless both
  carry a resume-token order and its own is later, is already reflected in it, or superseded; it is dropped, and the stored row stays.
- **Set aside, never guessed** (counted as ``partial_updates_unapplied`` and written with the
  reason to the quarantine object ``set_aside_key``, beside the raw batches): a partial update for a key without a
  document (absent from the table, a tombstone, or deleted earlier in the merge), or whose
  description does not fit the document (``UnappliableUpdateError``, MongoDB's ``$set``/``$unset``
  semantics, see ``lake.update_description``). After one is set aside, the key's document is
  unknown: later partial updates of the same merge are set aside too, until a full version.
- **Across merges too**: a key whose partial update an earlier merge set aside (its quarantine
  objects are read, only when the merge has partial updates) has an out-of-date stored copy from
  that position on; its later partial updates are set aside until a full version is stored.
- **Retried when their document arrives** (``retry_set_aside``): a queue may deliver an update
  before the insert or replace it follows; when a merge brings a full version of the key older
  than a set-aside update, the update is applied again on it, in position order. Every merge
  reads the set-aside objects for this (when there are any).
- **A later full version supersedes**: replace, insert, update with ``fullDocument`` or delete,
  as the latest change, wins as always; deletes and drops keep their meaning.

Limits: a partial update set aside leaves the stored document at its last known version, which
readers keep seeing until a full version of the document (a replace) or a re-snapshot (the source
audit reports the difference). Typed top-level columns of a row made from a partial update are
null (the document is in ``doc``). The set-aside objects are read whole by every merge (when any exist): their
size follows the updates set aside, not the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from bson.errors import InvalidDocument
from deltalake import DeltaTable

from lambda_functions.lake.extended_json import decode_document, encode_document
from lambda_functions.lake.raw_manifest import TOKEN_ORDER_BASE
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.table_layout import change_wins, key_buckets, stream_order
from lambda_functions.lake.update_description import (
    UnappliableUpdateError,
    apply_update_description,
)

__all__ = [
    "PARTIAL_UPDATE_OP",
    "PartialUpdates",
    "StoredRow",
    "earlier_set_aside",
    "resolve_partial_updates",
    "retry_set_aside",
    "set_aside_entries",
    "set_aside_key",
    "stored_rows",
    "write_set_aside",
]

# The ``_op`` of a change row that is a partial update while the merge resolves it (its ``doc``
# holds the update description's canonical extended JSON). Never written to the table.
PARTIAL_UPDATE_OP = "partial_update"
_FULL_OPS = frozenset({"snapshot", "insert", "update", "replace"})


@dataclass(frozen=True)
class StoredRow:
    """What the lake table stores for a key: its position, its document (``None`` for a
    tombstone) and, when an earlier merge set aside a partial update of the key newer than the
    row, that update's position (``set_aside_pos``): the stored copy is out of date from there.
    ``seq`` is the row's ``_seq`` (its resume-token order, when ``>= TOKEN_ORDER_BASE``)."""

    pos: int
    doc: str | None
    set_aside_pos: int | None = None
    seq: int = 0


@dataclass(frozen=True)
class PartialUpdates:
    """The outcome of ``resolve_partial_updates``.

    Attributes:
        rows: the change rows with every partial update resolved: applied ones are ``update``
            rows with the document after the update in ``doc``; stale and set-aside ones are
            removed. Same schema as the input.
        applied: partial updates applied.
        set_aside: one JSON object per partial update set aside: ``_id``, ``pos``, ``batch``,
            ``seq``, ``event_time_us`` (the change's ``_event_time``, microseconds since the
            epoch, UTC), ``reason`` and the ``update_description`` (canonical extended JSON).
        stale: partial updates older than the stored row: ignored.
    """

    rows: pa.Table
    applied: int = 0
    set_aside: list[dict[str, Any]] = field(default_factory=list)
    stale: int = 0

    @property
    def unapplied(self) -> int:
        """Partial updates set aside."""
        return len(self.set_aside)

    def quarantine_lines(self) -> bytes:
        """The set-aside partial updates as JSON lines (one object per line)."""
        return "".join(json.dumps(entry) + "\n" for entry in self.set_aside).encode()


def resolve_partial_updates(
    changes: pa.Table, stored: Callable[[list[str], list[str]], Mapping[str, StoredRow]]
) -> PartialUpdates:
    """Apply the partial updates among ``changes`` (see the module docstring for the rules).

    Args:
        changes: change rows with the lake columns (``_id``, ``_bucket``, ``doc``, ``_op``,
            ``_pos``, ``_batch``, ``_seq``, typed columns), every change (not yet precombined),
            at or above the drop floor; partial updates have ``_op`` ``PARTIAL_UPDATE_OP`` and
            their update description in ``doc``.
        stored: given keys and the partitions (``_bucket``) they live in, the rows the table
            stores for those keys (``stored_rows``); called once, only when there are partial
            updates, with only their keys.

    Returns:
        ``PartialUpdates``: the rows to precombine (no ``PARTIAL_UPDATE_OP`` left) and counts.
        Deterministic: the same changes and table give the same rows.
    """
    ops = changes.column("_op")
    is_partial = pc.equal(ops, PARTIAL_UPDATE_OP)
    if not pc.any(is_partial).as_py():
        return PartialUpdates(changes)
    partial_keys = pc.unique(changes.filter(is_partial).column("_id").combine_chunks())
    involved = pc.is_in(changes.column("_id"), value_set=partial_keys)
    untouched = changes.filter(pc.invert(involved))
    keyed = stream_order(changes.filter(involved), by_key=True)
    buckets = pc.unique(keyed.column("_bucket")).to_pylist()
    table_rows = stored(partial_keys.to_pylist(), buckets)
    ids = keyed.column("_id").to_pylist()
    op_list = keyed.column("_op").to_pylist()
    docs = keyed.column("doc").to_pylist()
    positions = keyed.column("_pos").to_pylist()
    batches = keyed.column("_batch").to_pylist()
    seqs = keyed.column("_seq").to_pylist()
    times = (
        keyed.column("_event_time").cast(pa.int64()).to_pylist()
        if "_event_time" in keyed.column_names
        else [None] * len(ids)
    )
    keep = [True] * len(ids)
    applied = stale = 0
    set_aside: list[dict[str, Any]] = []
    previous_key: str | None = None
    document: dict[str, Any] | None = None
    why_none = ""
    stored_pos, stored_seq = -1, 0
    unknown_from: int | None = None
    for i, key in enumerate(ids):
        if key != previous_key:  # a key's changes start: its stored row is the document before
            previous_key = key
            row = table_rows.get(key)
            stored_pos, stored_seq = (row.pos, row.seq) if row is not None else (-1, 0)
            document, why_none = _stored_document(row)
            unknown_from = row.set_aside_pos if row is not None else None
            if unknown_from is not None and unknown_from <= stored_pos:
                unknown_from = None  # a later full version was stored since
        if unknown_from is not None and positions[i] > unknown_from:
            why_none = (
                f"an earlier update of this document (position {unknown_from}) was set aside, "
                "so the stored copy is out of date until its next full version"
            )
            document, unknown_from = None, None
        op = op_list[i]
        if op != PARTIAL_UPDATE_OP:
            if not change_wins(positions[i], seqs[i], stored_pos, stored_seq):
                continue  # older than the stored row: the merge ignores it, so must the walk
            if op == "delete":
                document, why_none = None, "the document was deleted before this update"
            elif op in _FULL_OPS and docs[i] is not None:
                document, why_none = _decoded(docs[i], "the document before this update")
            continue
        if not _after_stored(positions[i], seqs[i], stored_pos, stored_seq):
            # already reflected in the stored row, or superseded
            keep[i] = False
            stale += 1
            continue
        reason = why_none
        if document is not None:
            try:
                description = decode_document(docs[i])
                if not isinstance(description, dict):
                    raise UnappliableUpdateError("", "updateDescription is not a document")
                document = apply_update_description(document, description)
                text = encode_document(document)
            except (UnappliableUpdateError, ValueError, InvalidDocument) as error:
                reason, document = str(error), None
                why_none = "an earlier update of this document in the merge was set aside"
            else:
                docs[i], op_list[i] = text, "update"
                applied += 1
                continue
        keep[i] = False
        set_aside.append(
            {
                "_id": key,
                "pos": positions[i],
                "batch": batches[i],
                "seq": seqs[i],
                "event_time_us": times[i],
                "reason": reason,
                "update_description": docs[i],
            }
        )
    resolved = keyed.set_column(
        keyed.schema.get_field_index("doc"), "doc", pa.array(docs, pa.string())
    )
    resolved = resolved.set_column(
        resolved.schema.get_field_index("_op"), "_op", pa.array(op_list, pa.string())
    ).filter(pa.array(keep))
    resolved = resolved.cast(changes.schema)
    return PartialUpdates(
        pa.concat_tables([untouched, resolved]), applied=applied, set_aside=set_aside, stale=stale
    )


def _stored_document(row: StoredRow | None) -> tuple[dict[str, Any] | None, str]:
    """The stored document of a key and, when there is none, why (for the set-aside reason)."""
    if row is None:
        return None, (
            "the lake table does not hold this document (never captured, or removed by a drop)"
        )
    if row.doc is None:
        return None, "the lake table holds this document as deleted (a tombstone)"
    return _decoded(row.doc, "the stored document")


def _decoded(text: str, what: str) -> tuple[dict[str, Any] | None, str]:
    """A document from its extended JSON and ``""``, or ``None`` and why it cannot be read (a
    document stored before capture checked its JSON: never a reason to fail the merge)."""
    try:
        document = decode_document(text)
    except ValueError as error:  # json.JSONDecodeError, InvalidExtendedJSONError
        return None, f"{what} is not readable extended JSON: {error}"
    if not isinstance(document, dict):
        return None, f"{what} is not a JSON object"
    return document, ""


def stored_rows(
    table: DeltaTable | None, zone: RawZone, keys: list[str], buckets: list[str]
) -> dict[str, StoredRow]:
    """The rows ``table`` stores for ``keys`` (live rows and tombstones), reading only the
    partitions ``buckets`` (those the keys live in: ``lake.table_layout.key_bucket``), and of
    those only the columns ``_id``, ``_pos``, ``_seq``, ``_op`` and ``doc``; with the position of the
    newest partial update of each key that an earlier merge set aside (``earlier_set_aside``).

    Args:
        table: the lake table (``None``: no table yet, nothing stored).
        zone: the collection's raw zone (where set-aside partial updates are written).
        keys: record keys (``_id`` strings).
        buckets: the ``_bucket`` partitions of ``keys``.

    Returns:
        Key -> ``StoredRow`` for the keys the table holds (a tombstone's ``doc`` is ``None``).
    """
    if table is None or not keys:
        return {}
    set_aside = earlier_set_aside(zone, keys)
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("_bucket", "in", buckets)])
    rows = dataset.to_table(columns=["_id", "_pos", "_seq", "_op", "doc"])
    # Filtered here, not in the scan: merge-written files store ``_id`` as string_view, whose
    # statistics Arrow cannot compare with string literals (see ``apply._stored_keys``).
    ids = rows.column("_id").cast(pa.string())
    rows = rows.filter(pc.is_in(ids, value_set=pa.array(keys, pa.string())))
    found: dict[str, StoredRow] = {}
    for key, pos, seq, op, doc in zip(
        rows.column("_id").cast(pa.string()).to_pylist(),
        rows.column("_pos").to_pylist(),
        rows.column("_seq").to_pylist(),
        rows.column("_op").to_pylist(),
        rows.column("doc").cast(pa.string()).to_pylist(),
        strict=True,
    ):
        found[key] = StoredRow(pos, None if op == "delete" else doc, set_aside.get(key), seq)
    return found


def _after_stored(pos: int, seq: int, stored_pos: int, stored_seq: int) -> bool:
    """Whether a partial update is newer than the stored row: a later ``_pos``, or the same one
    and a later resume-token order than the stored row's (both must carry one: otherwise the
    stored row, written at that position, already reflects it)."""
    if pos != stored_pos:
        return pos > stored_pos
    return stored_seq >= TOKEN_ORDER_BASE and seq > stored_seq


def earlier_set_aside(zone: RawZone, keys: list[str]) -> dict[str, int]:
    """Key -> the newest position of its partial updates set aside so far (every object under
    ``<zone>/unapplied_updates/``; keys without one are left out)."""
    wanted, newest = set(keys), {}
    for entry in set_aside_entries(zone):
        key = entry.get("_id")
        if key in wanted:
            newest[key] = max(newest.get(key, entry["pos"]), entry["pos"])
    return newest


def _cast(column: pa.ChunkedArray | pa.Array, kind: pa.DataType) -> Any:
    if pa.types.is_timestamp(kind):  # microseconds since the epoch, UTC
        return column.cast(pa.int64()).cast(pa.timestamp("us", tz="UTC")).cast(kind)
    return column.cast(kind)


def set_aside_entries(zone: RawZone) -> list[dict[str, Any]]:
    """Every partial update set aside so far (``write_set_aside``'s JSON objects), in file order."""
    entries = []
    for name in zone.store.list(f"{zone.prefix}/unapplied_updates/"):
        for line in zone.store.get(name).decode().splitlines():
            if line.strip():
                entries.append(json.loads(line))
    return entries


def retry_set_aside(
    changes: pa.Table, entries: list[dict[str, Any]], floor: int
) -> tuple[pa.Table, set[str]]:
    """Add back the set-aside partial updates that a full version in ``changes`` now precedes.

    Queues do not order (SQS): an update may arrive, and be set aside for want of a document,
    before the insert or replace it follows. When a later merge brings a full version (snapshot,
    insert, replace, update with a document) of the key *older* than a set-aside update, the
    update is applied again in position order (MongoDB applies changes in ``clusterTime``
    order), instead of leaving the stored copy without it.

    Args:
        changes: change rows as ``resolve_partial_updates`` takes them.
        entries: ``set_aside_entries`` of the collection.
        floor: the drop floor: set-aside updates below it stay ignored.

    Returns:
        ``changes`` with those updates added as ``PARTIAL_UPDATE_OP`` rows (at their position,
        batch and sequence; typed columns null), and the keys they were added for (whose
        ``StoredRow.set_aside_pos`` the walk must then ignore). Deterministic.
    """
    if not entries or not changes.num_rows:
        return changes, set()
    full = changes.filter(pc.is_in(changes.column("_op"), value_set=pa.array(sorted(_FULL_OPS))))
    full = full.filter(pc.is_valid(full.column("doc")))
    earliest: dict[str, int] = {}
    for key, pos in zip(
        full.column("_id").cast(pa.string()).to_pylist(),
        full.column("_pos").to_pylist(),
        strict=True,
    ):
        earliest[key] = min(earliest.get(key, pos), pos)
    seen, rows = set(), []
    for entry in entries:
        key, pos = entry.get("_id"), entry.get("pos")
        mark = (key, pos, entry.get("batch"), entry.get("seq"))
        if key not in earliest or not isinstance(pos, int) or pos < floor or mark in seen:
            continue
        if pos > earliest[key]:
            seen.add(mark)
            rows.append(
                {
                    "_id": key,
                    "doc": entry["update_description"],
                    "_op": PARTIAL_UPDATE_OP,
                    "_pos": pos,
                    "_batch": entry.get("batch"),
                    "_seq": entry.get("seq"),
                    # written since retries exist; before: the cluster time's seconds
                    "_event_time": entry.get("event_time_us") or (pos >> 32) * 1_000_000,
                }
            )
    if not rows:
        return changes, set()
    added = pa.Table.from_pylist(rows)
    ids = added.column("_id")
    columns = {"_bucket": key_buckets(ids), **{n: added.column(n) for n in added.column_names}}
    retried = pa.table(
        [
            _cast(columns[f.name], f.type) if f.name in columns else pa.nulls(len(rows), f.type)
            for f in changes.schema
        ],
        schema=changes.schema,
    )
    return pa.concat_tables([changes, retried]), {row["_id"] for row in rows}


def set_aside_key(zone: RawZone, first_batch: int, last_batch: int) -> str:
    """Where a commit of batches ``first_batch..last_batch`` writes its set-aside partial
    updates: ``raw/<database>/<collection>/unapplied_updates/<first>-<last>.jsonl`` (12-digit
    batch numbers). The same segment always gets the same key, so a retried or repeated commit
    overwrites its own file and never leaves a second copy."""
    return f"{zone.prefix}/unapplied_updates/{first_batch:012d}-{last_batch:012d}.jsonl"


def write_set_aside(zone: RawZone, numbers: list[int], partial: PartialUpdates) -> str | None:
    """Write the set-aside partial updates of the commit of batches ``numbers`` (JSON lines:
    ``_id``, ``pos``, ``batch``, ``seq``, ``event_time_us``, ``reason``, ``update_description``)
    before the commit.

    Returns:
        The object's key (``set_aside_key``), or ``None`` when nothing was set aside (nothing is
        written). Idempotent: a re-run of the same segment writes the same key.
    """
    if not partial.set_aside:
        return None
    key = set_aside_key(zone, numbers[0], numbers[-1])
    zone.store.put(key, partial.quarantine_lines())
    return key
