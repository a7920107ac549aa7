"""An embedded, file-backed change-stream source that stands in for DocumentDB locally and in tests.

One SQLite file holds the current documents of any number of collections and a cluster-wide log of
change events. Reads return what pymongo returns for DocumentDB, in the same shapes and types:

- ``watch()`` yields change events shaped like pymongo's (``_id`` resume token ``{"_data": hex}``,
  ``operationType``, ``clusterTime`` as ``bson.Timestamp``, ``wallTime``, ``ns``, ``documentKey``,
  ``fullDocument``, ``updateDescription``), strictly after ``resume_after``, in log order.
- ``full_document="updateLookup"`` returns an update's document as it is *at read time* (``None``
  once deleted), as the server does; inserts and replaces carry the written document.
- Values are stored as canonical extended JSON, so ObjectId, Decimal128, datetime (milliseconds, as
  in BSON), Binary, Int64 and nested documents and arrays come back exactly as written. What a
  server holds but Python's defaults refuse is held too, as pymongo reads it with
  ``extended_json.RAW_DOCUMENT_OPTIONS``: dates outside years 1-9999 (``DatetimeMS``) and strings
  that are not valid UTF-8 (written and read with surrogate escapes, stored as ``\\udcXX``
  JSON escapes; ``_id`` order compares their original bytes, as the server does).
- Like DocumentDB, change streams are off until enabled per collection (or database) with
  ``enable_change_streams``, and the log is retained for ``retention_seconds`` (3 hours by default)
  and at most ``max_events`` events. Resuming from a position whose later events were purged
  raises ``OperationFailure`` code 136 ``CappedPositionLost``, as DocumentDB does.
- Change events over ``max_event_bytes`` (16 MiB by default, the BSON limit; tests set it small)
  fail the read with ``OperationFailure`` code 10334 ``BSONObjectTooLarge``, as MongoDB does; a
  stream opened with ``pipeline=[{"$changeStreamSplitLargeEvent": {}}]`` returns them as
  fragments instead (top-level fields in order, as many per fragment as fit, each fragment with
  ``_id`` and ``splitEvent: {fragment, of}``; a single field too large still fails). The last
  fragment's token is the event's; a middle fragment's token is the event's with the fragment
  number appended, which this source refuses to resume from (code 260). A ``$project`` that
  excludes top-level fields (``key_only_pipeline``) is the only other stage it accepts. Like
  ``DocumentDBChangeSource`` on a server that supports it, the source adds the split stage to
  every stream itself while ``split_large_events`` is true (the default; false plays an older
  server, where such an event fails the read).
- Cluster times are ``Timestamp(unix seconds, counter)``, strictly increasing across the file; the
  events of one ``transaction()`` share a cluster time, as in a multi-document transaction.

Every write is one SQLite transaction (documents and events together), so a reader never sees a
document change without its event. Several processes may open the same file (one per collection,
as parallel captures and workloads do): the file is in WAL mode, so reads never wait, and a write
waits up to ``LOCK_TIMEOUT_S`` for another process's write to commit.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId, Timestamp, json_util
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, WriteError

from lambda_functions.cdc_capture.positions import from_millis, millis
from lambda_functions.errors import TerminalError
from lambda_functions.lake.extended_json import (
    decode_document,
    encode_document,
    invalid_utf8_path,
    raw_bson_document,
)
from lambda_functions.lake.record_key import record_key

DEFAULT_RETENTION_SECONDS = 3 * 3600  # DocumentDB's default change_stream_log_retention_duration
DEFAULT_MAX_EVENTS = 1_000_000
MAX_EVENT_BYTES = 16 * 1024 * 1024  # the BSON document limit a change event must fit
SPLIT_STAGE = "$changeStreamSplitLargeEvent"
LOCK_TIMEOUT_S = 30.0  # how long a write waits for another process's write to commit
UPDATE_OPERATORS = ("$set", "$unset", "$inc", "$push")

# Resume tokens follow MongoDB's KeyString layout closely enough to be read the same way: "82",
# then the cluster time (seconds, increment) as 16 hex digits; here followed by the log sequence.
_TOKEN_PREFIX = "82"
_TOKEN_LENGTH = 2 + 16 + 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS change_streams (
    db TEXT NOT NULL, coll TEXT NOT NULL, enabled INTEGER NOT NULL, PRIMARY KEY (db, coll)
);
CREATE TABLE IF NOT EXISTS documents (
    db TEXT NOT NULL, coll TEXT NOT NULL, sort_key BLOB NOT NULL, id_json TEXT NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (db, coll, sort_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, db TEXT NOT NULL, coll TEXT NOT NULL,
    op TEXT NOT NULL, t INTEGER NOT NULL, i INTEGER NOT NULL, wall_ms INTEGER NOT NULL,
    id_json TEXT, sort_key BLOB, doc TEXT, update_description TEXT, txn TEXT
);
CREATE INDEX IF NOT EXISTS events_by_ns ON events (db, coll, seq);
CREATE INDEX IF NOT EXISTS events_by_wall_time ON events (wall_ms);
"""


class EmbeddedSourceLimitError(TerminalError, ValueError):
    """A call the embedded stand-in does not support (an update operator, a filter or a
    ``full_document`` mode beyond what capture and the demo workload use); the message lists what
    it does support."""


def id_sort_key(value: Any) -> bytes:
    """Bytes that sort like BSON's comparison order for ``_id`` values.

    Exact for ObjectId (its 12 bytes), strings, booleans and dates. Numbers sort by their
    value as a double, then by their exact value's record key, so two numbers are the same key
    exactly when MongoDB's unique ``_id`` index says so (1 = NumberLong(1) = 1.0, but
    NumberLong(2**53 + 1) is not 2.0**53 and NumberDecimal("0.1") is not the double 0.1).
    Embedded documents are the same key when their record keys are (field order kept, values
    compared as above).
    """
    if isinstance(value, ObjectId):
        return b"\x07" + value.binary
    if isinstance(value, str):  # BSON compares the bytes (surrogate escapes: the original ones)
        return b"\x03" + value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):
        return b"\x08" + bytes([value])
    if isinstance(value, int | float | Decimal128):
        number = float(value.to_decimal() if isinstance(value, Decimal128) else value)
        (bits,) = struct.unpack(">Q", struct.pack(">d", number))
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
        return b"\x02" + struct.pack(">Q", bits) + record_key(value).encode()
    if value is None:
        return b"\x01"
    if isinstance(value, datetime | DatetimeMS):
        return b"\x09" + struct.pack(">Q", millis(value) + (1 << 63))
    if isinstance(value, bytes):  # Binary too: BSON orders by length, then subtype, then bytes
        subtype = value.subtype if isinstance(value, Binary) else 0
        return b"\x06" + struct.pack(">IB", len(value), subtype) + bytes(value)
    if isinstance(value, Mapping):
        return b"\x04" + record_key(value).encode()
    raise InvalidDocument(f"_id of type {type(value).__name__} is not supported: {value!r}")


def stored_json(document: Mapping[str, Any]) -> str:
    """How the store writes a document: canonical extended JSON (``encode_document``); a
    document with strings that are not valid UTF-8 (surrogate escapes) as ``json_util``'s
    canonical JSON with ``\\udcXX`` escapes, once ``raw_bson_document`` has checked that BSON
    holds everything else in it."""
    try:
        return encode_document(document)
    except InvalidDocument:
        if invalid_utf8_path(document) is None:
            raise
    raw_bson_document(document)
    return json_util.dumps(document, json_options=json_util.CANONICAL_JSON_OPTIONS)


def resume_token(t: int, i: int, seq: int) -> dict[str, str]:
    return {"_data": f"{_TOKEN_PREFIX}{t:08X}{i:08X}{seq:016X}"}


def parse_resume_token(token: Mapping[str, Any]) -> tuple[int, int, int]:
    """(cluster seconds, increment, log sequence) of a token made by this source."""
    data = token.get("_data") if isinstance(token, Mapping) else None
    if (
        not isinstance(data, str)
        or len(data) != _TOKEN_LENGTH
        or not data.startswith(_TOKEN_PREFIX)
    ):
        raise _failure(
            f"KeyString format error: not a resume token of this source: {token!r}",
            code=260,
            code_name="InvalidResumeToken",
        )
    return int(data[2:10], 16), int(data[10:18], 16), int(data[18:], 16)


def _failure(message: str, code: int | None, code_name: str | None) -> OperationFailure:
    details: dict[str, Any] = {"ok": 0.0, "errmsg": message}
    if code is not None:
        details |= {"code": code, "codeName": code_name}
    return OperationFailure(message, code=code, details=details)


@dataclass
class _Transaction:
    t: int
    i: int
    txn_json: str | None  # lsid + txnNumber of a multi-document transaction, None for drop


class EmbeddedChangeStreamSource:
    """Documents and a change-event log in one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        max_events: int = DEFAULT_MAX_EVENTS,
        clock: Callable[[], float] = time.time,
        max_event_bytes: int = MAX_EVENT_BYTES,
        split_large_events: bool = True,
    ):
        self.path = Path(path)
        self.max_event_bytes = max_event_bytes
        self.split_large_events = split_large_events
        self.retention_seconds = retention_seconds
        self.max_events = max_events
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Writers wait up to LOCK_TIMEOUT_S for each other (the busy timeout), readers never wait:
        # every write is BEGIN IMMEDIATE, so a transaction never has to upgrade a read lock.
        self._db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        self._use_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._txn: _Transaction | None = None
        self._depth = 0
        self._txn_counter = 0

    def _use_wal(self) -> None:
        """Switch the file to WAL, waiting for other processes doing the same to a new file.

        Changing the journal mode takes an exclusive lock and SQLite does not call the busy
        handler for it, so processes opening a new file at once get "database is locked" here
        instead of waiting; retry until the busy timeout. A file already in WAL needs no lock.
        """
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        pause = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 0.1)

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddedChangeStreamSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- change-stream administration --------------------------------------------------------------
    def enable_change_streams(self, database: str, collection: str, enable: bool = True) -> None:
        """``modifyChangeStreams``: ``collection=""`` covers every collection of the database."""
        with self._writing():
            self._db.execute(
                "INSERT INTO change_streams VALUES (?, ?, ?) "
                "ON CONFLICT (db, coll) DO UPDATE SET enabled = excluded.enabled",
                (database, collection, int(enable)),
            )

    def change_streams_enabled(self, database: str, collection: str) -> bool:
        row = self._db.execute(
            "SELECT MAX(enabled) FROM change_streams WHERE db = ? AND coll IN (?, '')",
            (database, collection),
        ).fetchone()
        return bool(row and row[0])

    def _require_change_streams(self, database: str, collection: str) -> None:
        if not self.change_streams_enabled(database, collection):
            raise _failure(
                f"Cannot watch {database}.{collection}: change streams are not enabled for this "
                "collection. Enable them with db.adminCommand({modifyChangeStreams: 1, database: "
                f"'{database}', collection: '{collection}', enable: true}})",
                code=None,
                code_name=None,
            )

    # -- reads -----------------------------------------------------------------------------------
    def list_collection_names(self, database: str) -> list[str]:
        """The collections that exist in ``database``, sorted: pymongo's
        ``db.list_collection_names()`` as far as this file can tell.

        A collection exists once written to (it has documents, or its newest retained event is
        not a ``drop``), or once change streams are enabled for it by name, and stops existing
        when dropped (its newest event is the ``drop``/``invalidate`` pair and no document was
        written since). Unlike the server, a collection emptied by deletes while change streams
        were off, or whose events have all been purged from the log, is no longer listed once
        empty; a database-wide ``enable_change_streams(database, "")`` lists nothing by itself.
        """
        dropped = ("drop", "invalidate")
        with self._reading():
            with_documents = {
                coll
                for (coll,) in self._db.execute(
                    "SELECT DISTINCT coll FROM documents WHERE db = ?", (database,)
                )
            }
            newest_op = dict(
                self._db.execute(
                    "SELECT coll, op FROM events WHERE seq IN "
                    "(SELECT MAX(seq) FROM events WHERE db = ? GROUP BY coll)",
                    (database,),
                ).fetchall()
            )
            enabled = {
                coll
                for (coll,) in self._db.execute(
                    "SELECT coll FROM change_streams WHERE db = ? AND coll != '' AND enabled",
                    (database,),
                )
            }
        written = {coll for coll, op in newest_op.items() if op not in dropped}
        enabled_not_dropped = {coll for coll in enabled if newest_op.get(coll) not in dropped}
        return sorted(with_documents | written | enabled_not_dropped)

    def documents(
        self,
        database: str,
        collection: str,
        after_id: Any = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Current documents in ``_id`` order, strictly after ``after_id`` when given."""
        after = id_sort_key(after_id) if after_id is not None else b""
        rows = self._db.execute(
            "SELECT doc FROM documents WHERE db = ? AND coll = ? AND sort_key > ? "
            "ORDER BY sort_key LIMIT ?",
            (database, collection, after, -1 if limit is None else limit),
        ).fetchall()
        return [decode_document(doc) for (doc,) in rows]

    def document_ids(self, database: str, collection: str) -> list[Any]:
        rows = self._db.execute(
            "SELECT id_json FROM documents WHERE db = ? AND coll = ? ORDER BY sort_key",
            (database, collection),
        ).fetchall()
        return [decode_document(id_json)["_id"] for (id_json,) in rows]

    def documents_by_id(
        self, database: str, collection: str, ids: Sequence[Any]
    ) -> list[dict[str, Any]]:
        """The documents whose ``_id`` is one of ``ids``, in ``_id`` order (absent ones left out)."""
        found = [self.find_one(database, collection, _id) for _id in ids]
        docs = {id_sort_key(doc["_id"]): doc for doc in found if doc is not None}
        return [docs[key] for key in sorted(docs)]

    def find_one(self, database: str, collection: str, _id: Any) -> dict[str, Any] | None:
        doc_json = self._document_json(database, collection, _id)
        return decode_document(doc_json) if doc_json is not None else None

    def _document_json(self, database: str, collection: str, _id: Any) -> str | None:
        row = self._db.execute(
            "SELECT doc FROM documents WHERE db = ? AND coll = ? AND sort_key = ?",
            (database, collection, id_sort_key(_id)),
        ).fetchone()
        return row[0] if row else None

    def split_keys(self, database: str, collection: str, count: int) -> tuple[list[Any], int]:
        """What ``splitVector`` answers, exactly: the ``_id``s that split the collection's ``_id``
        index into ``count`` ranges of equal document count (at most ``count - 1``, ascending),
        and the document count. Reads only the index (one ``OFFSET`` step per boundary)."""
        with self._reading():
            total = self.count_documents(database, collection)
            keys = []
            for i in range(1, count):
                row = self._db.execute(
                    "SELECT id_json FROM documents WHERE db = ? AND coll = ? "
                    "ORDER BY sort_key LIMIT 1 OFFSET ?",
                    (database, collection, total * i // count),
                ).fetchone()
                if row is not None:
                    keys.append(decode_document(row[0])["_id"])
        return keys, total

    def count_documents(self, database: str, collection: str) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM documents WHERE db = ? AND coll = ?", (database, collection)
        ).fetchone()[0]

    def current_position(self, database: str, collection: str) -> dict[str, str]:
        """A resume token at the head of the log: watching from it yields only later changes.

        Like MongoDB's post-batch resume token it is cluster-wide (the newest event of any
        collection); before any event it is a start token at the current time.
        """
        self._require_change_streams(database, collection)
        t, i, seq = self._head()
        return resume_token(t, i, seq) if seq else resume_token(int(self.clock()), 0, 0)

    def watch(
        self,
        database: str,
        collection: str,
        *,
        resume_after: Mapping[str, Any] | None = None,
        full_document: str | None = None,
        batch_size: int | None = None,
        pipeline: Sequence[Mapping[str, Any]] | None = None,
    ) -> EmbeddedChangeStream:
        """Open a change stream on one collection, after ``resume_after`` or at the head.

        ``pipeline`` (the stages after ``$changeStream``) may hold a ``$project`` excluding
        top-level fields and, last, ``$changeStreamSplitLargeEvent`` (see the module docstring).

        Raises ``OperationFailure`` code 136 (``CappedPositionLost``) if events after the token
        were purged from the log, as DocumentDB does; the error comes from ``watch`` itself, as
        pymongo's does (the aggregate runs immediately). ``EmbeddedSourceLimitError`` for any
        other stage.
        """
        excluded, split = _stream_stages(pipeline or [])
        split = split or self.split_large_events
        if full_document not in (None, "default", "updateLookup"):
            raise EmbeddedSourceLimitError(
                f"full_document={full_document!r} is not supported: DocumentDB offers 'default' "
                "and 'updateLookup'"
            )
        self._require_change_streams(database, collection)
        if resume_after is None:
            after_seq = self._head()[2]
        else:
            t, _i, after_seq = parse_resume_token(resume_after)
            self._check_resumable(after_seq, t)
        return EmbeddedChangeStream(
            self,
            database,
            collection,
            after_seq=after_seq,
            lookup=full_document == "updateLookup",
            batch_size=batch_size or 100,
            excluded=excluded,
            split=split,
        )

    def _head(self) -> tuple[int, int, int]:
        meta = self._meta("last_t", "last_i", "last_seq")
        return int(meta["last_t"] or 0), int(meta["last_i"] or 0), int(meta["last_seq"] or 0)

    def _check_resumable(self, after_seq: int, token_seconds: int | None) -> None:
        meta = self._meta("purged_through", "last_seq")
        purged_through = int(meta["purged_through"] or 0)
        if after_seq < purged_through:
            age = (
                "" if token_seconds is None else f"token age {self.clock() - token_seconds:.0f} s, "
            )
            raise _failure(
                "CappedPositionLost: the change stream cannot resume from this token, events "
                f"after it were removed from the change stream log ({age}log retention "
                f"{self.retention_seconds:.0f} s)",
                code=136,
                code_name="CappedPositionLost",
            )
        if after_seq > int(meta["last_seq"] or 0):
            raise _failure(
                "cannot resume stream; the resume token was not found",
                code=280,
                code_name="ChangeStreamFatalError",
            )

    def _fetch_events(
        self, database: str, collection: str, after_seq: int, limit: int
    ) -> tuple[list[tuple[Any, ...]], tuple[int, int, int]]:
        """The next events and the log head, read in one snapshot with the check that none before
        them was purged (so a concurrent purge can never open a silent gap). With no events, the
        head is where the stream may safely resume (MongoDB's post-batch resume token)."""
        with self._reading():
            self._check_resumable(after_seq, None)
            rows = self._db.execute(
                "SELECT seq, op, t, i, wall_ms, id_json, sort_key, doc, update_description, txn "
                "FROM events WHERE db = ? AND coll = ? AND seq > ? ORDER BY seq LIMIT ?",
                (database, collection, after_seq, limit),
            ).fetchall()
            return rows, self._head()

    def _lookup(self, database: str, collection: str, keys: Sequence[bytes]) -> dict[bytes, str]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT sort_key, doc FROM documents WHERE db = ? AND coll = ? AND sort_key IN ({marks})",
            (database, collection, *keys),
        ).fetchall()
        return dict(rows)

    # -- writes ----------------------------------------------------------------------------------
    def insert_one(self, database: str, collection: str, document: Mapping[str, Any]) -> Any:
        """Insert one document (``_id`` generated and moved first, as the server does)."""
        return self.insert_many(database, collection, [document])[0]

    def insert_many(
        self, database: str, collection: str, documents: Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        ids = []
        with self._writing():
            for document in documents:
                _id = document["_id"] if "_id" in document else ObjectId()
                stored = {"_id": _id, **{k: v for k, v in document.items() if k != "_id"}}
                doc_json, key = stored_json(stored), id_sort_key(_id)
                try:
                    self._db.execute(
                        "INSERT INTO documents VALUES (?, ?, ?, ?, ?)",
                        (database, collection, key, stored_json({"_id": _id}), doc_json),
                    )
                except sqlite3.IntegrityError:
                    raise DuplicateKeyError(
                        f"E11000 duplicate key error collection: {database}.{collection} "
                        f"index: _id_ dup key: {{ _id: {_id!r} }}",
                        code=11000,
                    ) from None
                self._log(database, collection, "insert", _id, doc=doc_json)
                ids.append(_id)
        return ids

    def update_one(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any],
        update: Mapping[str, Mapping[str, Any]],
    ) -> bool:
        """Apply ``$set``/``$unset``/``$inc``/``$push`` (dotted paths allowed) to one document.

        Returns whether the document changed; a no-op update writes no event, as on the server.
        """
        _id = _id_filter(filter)
        with self._writing():
            current_json = self._document_json(database, collection, _id)
            if current_json is None:
                return False
            changed, updated, removed = _apply_update(decode_document(current_json), update)
            doc_json = stored_json(changed)
            if doc_json == current_json:
                return False
            self._store(database, collection, _id, doc_json)
            description = {
                "updatedFields": updated,
                "removedFields": removed,
                "truncatedArrays": [],
            }
            self._log(
                database, collection, "update", _id, update_description=stored_json(description)
            )
        return True

    def replace_one(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any],
        replacement: Mapping[str, Any],
    ) -> bool:
        _id = _id_filter(filter)
        if any(k.startswith("$") for k in replacement):
            raise EmbeddedSourceLimitError("replacement document must not contain update operators")
        if "_id" in replacement and replacement["_id"] != _id:
            raise WriteError("the _id field cannot be changed by a replacement", code=66)
        stored = {"_id": _id, **{k: v for k, v in replacement.items() if k != "_id"}}
        with self._writing():
            if self._document_json(database, collection, _id) is None:
                return False
            doc_json = stored_json(stored)
            self._store(database, collection, _id, doc_json)
            self._log(database, collection, "replace", _id, doc=doc_json)
        return True

    def delete_one(self, database: str, collection: str, filter: Mapping[str, Any]) -> bool:
        _id = _id_filter(filter)
        with self._writing():
            deleted = self._db.execute(
                "DELETE FROM documents WHERE db = ? AND coll = ? AND sort_key = ?",
                (database, collection, id_sort_key(_id)),
            ).rowcount
            if deleted:
                self._log(database, collection, "delete", _id)
        return bool(deleted)

    def drop_collection(self, database: str, collection: str) -> None:
        """Remove every document; the stream gets a ``drop`` then an ``invalidate`` event."""
        with self._writing():
            self._db.execute(
                "DELETE FROM documents WHERE db = ? AND coll = ?", (database, collection)
            )
            with self._shared_cluster_time(session=False):
                self._log(database, collection, "drop", None)
                self._log(database, collection, "invalidate", None)

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Group writes into one commit (all or nothing); each change keeps its own cluster time."""
        with self._writing():
            yield

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes inside share one cluster time, ``lsid`` and ``txnNumber``, and commit together."""
        with self._shared_cluster_time(session=True):
            yield

    @contextmanager
    def _shared_cluster_time(self, *, session: bool) -> Iterator[None]:
        with self._writing():
            if self._txn is not None:
                yield
                return
            t, i = self._tick()
            txn_json = None
            if session:
                self._txn_counter += 1
                txn_json = encode_document(
                    {
                        "txnNumber": Int64(self._txn_counter),
                        "lsid": {
                            "id": Binary(uuid.uuid4().bytes, 4),
                            "uid": Binary(hashlib.sha256(b"embedded").digest(), 0),
                        },
                    }
                )
            self._txn = _Transaction(t, i, txn_json)
            try:
                yield
            finally:
                self._txn = None

    # -- read and write plumbing -----------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Several reads from one snapshot of the file (inside a write: that write's state)."""
        if self._depth:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One SQLite transaction per outermost write; retention is enforced at commit."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._purge()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
            self._txn = None

    def _store(self, database: str, collection: str, _id: Any, doc_json: str) -> None:
        self._db.execute(
            "UPDATE documents SET doc = ? WHERE db = ? AND coll = ? AND sort_key = ?",
            (doc_json, database, collection, id_sort_key(_id)),
        )

    def _tick(self) -> tuple[int, int]:
        last_t, last_i, _ = self._head()
        now = int(self.clock())
        t, i = (now, 1) if now > last_t else (last_t, last_i + 1)
        self._set_meta(last_t=t, last_i=i)
        return t, i

    def _log(
        self,
        database: str,
        collection: str,
        op: str,
        _id: Any,
        *,
        doc: str | None = None,
        update_description: str | None = None,
    ) -> None:
        if not self.change_streams_enabled(database, collection):
            return  # DocumentDB records nothing for a collection without change streams
        if self._txn is not None:
            t, i, txn = self._txn.t, self._txn.i, self._txn.txn_json
        else:
            (t, i), txn = self._tick(), None
        has_id = op not in ("drop", "invalidate")
        cursor = self._db.execute(
            "INSERT INTO events (db, coll, op, t, i, wall_ms, id_json, sort_key, doc, "
            "update_description, txn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                database,
                collection,
                op,
                t,
                i,
                int(self.clock() * 1000),
                stored_json({"_id": _id}) if has_id else None,
                id_sort_key(_id) if has_id else None,
                doc,
                update_description,
                txn,
            ),
        )
        self._set_meta(last_seq=cursor.lastrowid)

    def _purge(self) -> None:
        """Drop events past the retention time or the size cap, oldest first (a capped log)."""
        meta = self._meta("purged_through", "last_seq")
        purged, last = int(meta["purged_through"] or 0), int(meta["last_seq"] or 0)
        cutoff_ms = int((self.clock() - self.retention_seconds) * 1000)
        (by_age,) = self._db.execute(
            "SELECT MAX(seq) FROM events WHERE wall_ms < ?", (cutoff_ms,)
        ).fetchone()
        through = max(purged, last - self.max_events, by_age or 0)
        if through > purged:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (through,))
            self._set_meta(purged_through=through)

    def _meta(self, *keys: str) -> dict[str, str | None]:
        marks = ",".join("?" * len(keys))
        rows = dict(self._db.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys))
        return {k: rows.get(k) for k in keys}

    def _set_meta(self, **values: Any) -> None:
        self._db.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()],
        )

    def read_counter(self, name: str) -> int:
        """A named counter kept in the file (the demo workload's run number)."""
        return int(self._meta(f"counter:{name}")[f"counter:{name}"] or 0)

    def write_counter(self, name: str, value: int) -> None:
        with self._writing():
            self._set_meta(**{f"counter:{name}": value})


class EmbeddedChangeStream:
    """A change-stream cursor over one collection, with pymongo's ``ChangeStream`` reading API.

    Unlike pymongo's, iterating ends when the log has no further events instead of waiting; use
    ``try_next()`` (``None`` when nothing is pending) to read the same way from both.
    """

    def __init__(
        self,
        source: EmbeddedChangeStreamSource,
        database: str,
        collection: str,
        *,
        after_seq: int,
        lookup: bool,
        batch_size: int,
        excluded: frozenset[str] = frozenset(),
        split: bool = False,
    ):
        self._source = source
        self._excluded = excluded
        self._split = split
        self._ns = (database, collection)
        self._after_seq = after_seq
        self._lookup = lookup
        self._batch_size = batch_size
        self._buffer: deque[dict[str, Any]] = deque()
        self._resume_token: dict[str, str] | None = None
        self.alive = True

    @property
    def resume_token(self) -> dict[str, str] | None:
        """Where this stream would resume: the ``_id`` of the last event returned or, after a
        read that found nothing new for this collection, the log head (like MongoDB's
        post-batch resume token); ``None`` before either."""
        return self._resume_token

    def try_next(self) -> dict[str, Any] | None:
        if not self._buffer and self.alive:
            self._buffer.extend(self._fetch())
        if not self._buffer:
            return None
        event = self._buffer.popleft()
        self._resume_token = event["_id"]
        if event.get("operationType") == "invalidate":
            self.alive = False
            self._buffer.clear()
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (event := self.try_next()) is not None:
            yield event

    def close(self) -> None:
        self.alive = False
        self._buffer.clear()

    def __enter__(self) -> EmbeddedChangeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self) -> list[dict[str, Any]]:
        database, collection = self._ns
        rows, (head_t, head_i, head_seq) = self._source._fetch_events(
            database, collection, self._after_seq, self._batch_size
        )
        if not rows:
            if head_seq > self._after_seq:  # other collections moved on: a post-batch token
                self._after_seq = head_seq
                self._resume_token = resume_token(head_t, head_i, head_seq)
            return []
        looked_up = (
            self._source._lookup(database, collection, [r[6] for r in rows if r[1] == "update"])
            if self._lookup
            else {}
        )
        events = []
        for row in rows:
            event = self._event(row, looked_up)
            for name in self._excluded:
                event.pop(name, None)
            events += _fit(event, self._source.max_event_bytes, split=self._split)
        self._after_seq = rows[-1][0]  # after the batch is built: a failed read leaves it unread
        return events

    def _event(self, row: tuple[Any, ...], looked_up: Mapping[bytes, str]) -> dict[str, Any]:
        seq, op, t, i, wall_ms, id_json, sort_key, doc, update_description, txn = row
        event: dict[str, Any] = {
            "_id": resume_token(t, i, seq),
            "operationType": op,
            "clusterTime": Timestamp(t, i),
            "wallTime": from_millis(wall_ms),
        }
        if txn is not None:
            event |= decode_document(txn)
        if op == "invalidate":
            return event
        if op in ("insert", "replace"):
            event["fullDocument"] = decode_document(doc)
        elif op == "update" and self._lookup:
            current = looked_up.get(sort_key)
            event["fullDocument"] = decode_document(current) if current is not None else None
        event["ns"] = {"db": self._ns[0], "coll": self._ns[1]}
        if op == "drop":
            return event
        event["documentKey"] = decode_document(id_json)
        if op == "update":
            event["updateDescription"] = decode_document(update_description)
        return event


def _stream_stages(pipeline: Sequence[Mapping[str, Any]]) -> tuple[frozenset[str], bool]:
    """(top-level fields a ``$project`` excludes, whether the split stage is last)."""
    excluded: set[str] = set()
    split = False
    for position, stage in enumerate(pipeline):
        (name, spec), *more = stage.items()
        if name == SPLIT_STAGE and not more and position == len(pipeline) - 1:
            split = True
        elif name == "$project" and not more and all(v in (0, False) for v in spec.values()):
            excluded |= {field for field in spec if field != "_id"}
        else:
            raise EmbeddedSourceLimitError(
                f"change-stream stage {stage!r} is not supported: the embedded source accepts a "
                f"$project excluding top-level fields and, last, {{{SPLIT_STAGE}: {{}}}}"
            )
    return frozenset(excluded), split


def _fit(event: dict[str, Any], limit: int, *, split: bool) -> list[dict[str, Any]]:
    """``[event]`` if its BSON fits ``limit``; else its fragments when ``split`` (MongoDB
    Manual, "$changeStreamSplitLargeEvent"); else MongoDB's error 10334."""
    size = _bson_size(event)
    if size <= limit:
        return [event]
    token = event["_id"]
    too_large = _failure(
        f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
        f"{limit}(16MB) First element: _id: {token!r}",
        code=10334,
        code_name="BSONObjectTooLarge",
    )
    if not split:
        raise too_large
    header = {"_id": {"_data": token["_data"] + "FFFF"}, "splitEvent": {"fragment": 1, "of": 1}}
    parts: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for name, value in event.items():
        if name == "_id":
            continue
        if _bson_size(header | current | {name: value}) > limit:
            if not current or _bson_size(header | {name: value}) > limit:
                raise too_large  # one top-level field alone is over the limit: not split
            parts.append(current)
            current = {}
        current[name] = value
    parts.append(current)
    of = len(parts)
    return [
        {
            "_id": token if k == of else {"_data": f"{token['_data']}{k:04X}"},
            "splitEvent": {"fragment": k, "of": of},
        }
        | part
        for k, part in enumerate(parts, 1)
    ]


def _bson_size(document: Mapping[str, Any]) -> int:
    return len(raw_bson_document(document).raw)


# -- update operators -------------------------------------------------------------------------------
def _id_filter(filter: Mapping[str, Any]) -> Any:
    if set(filter) != {"_id"} or isinstance(filter["_id"], Mapping):
        raise EmbeddedSourceLimitError(
            f"the embedded source matches documents by _id equality only, got filter {filter!r}"
        )
    return filter["_id"]


def _apply_update(
    document: dict[str, Any], update: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The updated document (``document`` is a private copy), updatedFields, removedFields."""
    updated: dict[str, Any] = {}
    removed: list[str] = []
    for operator, fields in update.items():
        if operator not in UPDATE_OPERATORS:
            raise EmbeddedSourceLimitError(
                f"update operator {operator!r} is not supported by the embedded source: use "
                + ", ".join(UPDATE_OPERATORS)
            )
        for path, value in fields.items():
            if path == "_id" or path.startswith("_id."):
                raise WriteError(
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                    code=66,
                )
            parent, leaf = _walk(document, path, create=operator != "$unset")
            if operator == "$set":
                _assign(parent, leaf, value)
                updated[path] = value
            elif operator == "$unset":
                if isinstance(parent, dict) and leaf in parent:
                    del parent[leaf]
                    removed.append(path)
            elif operator == "$inc":
                new = _add(_read(parent, leaf), value, path)
                _assign(parent, leaf, new)
                updated[path] = new
            else:  # $push
                values = (
                    value["$each"] if isinstance(value, Mapping) and "$each" in value else [value]
                )
                array = _read(parent, leaf)
                if array is None:
                    array = []
                    _assign(parent, leaf, array)
                if not isinstance(array, list):
                    raise WriteError(f"The field '{path}' must be an array", code=2)
                for item in values:
                    array.append(item)
                    updated[f"{path}.{len(array) - 1}"] = item
    return document, updated, removed


def _walk(document: dict[str, Any], path: str, *, create: bool) -> tuple[Any, str]:
    parts = path.split(".")
    node: Any = document
    for part in parts[:-1]:
        child = _read(node, part)
        if child is None:
            if not create:
                return None, parts[-1]
            child = {}
            _assign(node, part, child)
        if not isinstance(child, dict | list):
            raise WriteError(f"Cannot create field '{parts[-1]}' in element {{{part}: {child!r}}}")
        node = child
    return node, parts[-1]


def _read(node: Any, key: str) -> Any:
    if isinstance(node, list):
        return node[int(key)] if key.isdigit() and int(key) < len(node) else None
    return node.get(key) if isinstance(node, dict) else None


def _assign(node: Any, key: str, value: Any) -> None:
    if isinstance(node, list):
        index = int(key)
        node.extend([None] * (index + 1 - len(node)))
        node[index] = value
    else:
        node[key] = value


def _add(current: Any, increment: Any, path: str) -> Any:
    if current is None:
        return increment
    if isinstance(current, Decimal128) or isinstance(increment, Decimal128):
        total = _as_decimal(current) + _as_decimal(increment)
        return Decimal128(total)
    if isinstance(current, int | float) and isinstance(increment, int | float):
        total = current + increment
        if isinstance(total, int) and (isinstance(current, Int64) or isinstance(increment, Int64)):
            return Int64(total)
        return total
    raise WriteError(f"Cannot apply $inc to a value of non-numeric type at '{path}'", code=14)


def _as_decimal(value: Any) -> Decimal:
    return value.to_decimal() if isinstance(value, Decimal128) else Decimal(str(value))
