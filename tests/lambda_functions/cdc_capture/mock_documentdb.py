"""A DocumentDB stand-in at the wire level: ``mockupdb`` answering pymongo from an embedded store.

``EmbeddedBackedServer`` serves the commands the pymongo change source sends, with the data and
the change-event log of an ``EmbeddedChangeStreamSource`` file:

- ``find`` with ``{"_id": {"$gt": x}}``, ``{"_id": {"$in": [...]}}`` or ``{"_id": {"$type": [...]}}``, ``sort: {_id: 1}``,
  ``limit``: documents from the store in ``_id`` order (one batch, cursor id 0);
- ``aggregate`` with a ``$changeStream`` stage (``resumeAfter`` or none, ``fullDocument``): opens
  a stream on the store, answers the first batch and a ``postBatchResumeToken``; the store's
  ``OperationFailure`` (136 for a purged token, "not enabled") becomes a command error with the
  same code and message, as the server sends it;
  The stages after ``$changeStream`` go to the store's ``watch(pipeline=...)``; with
  ``split_stage=False`` a ``$changeStreamSplitLargeEvent`` stage is refused with error 40324, as
  a server before MongoDB 6.0.9 / DocumentDB 8.0.2 answers;
- ``getMore`` on such a cursor: the next batch and the post-batch token; ``killCursors``;
- ``buildInfo``: ``{"version": version}`` (``"5.0.0"`` by default: DocumentDB 5.0's answer);
- ``listCollections``: the store's collections of the database, plus ``extra_collections``
  (e.g. ``system.views``, which DocumentDB lists too).

Every command it saw is kept in ``commands`` so tests can assert what went over the wire.

mockupdb 1.8.1 (2021) works with pymongo 4.20 through OP_MSG as is; two things need care, and are
handled here: pymongo's handshake must see ``maxWireVersion`` >= 8 (``auto_ismaster`` below), and
no ``logicalSessionTimeoutMinutes`` is advertised, so pymongo sends no ``lsid``/sessions (the mock
has none). Each mockupdb connection thread opens its own SQLite connection to the store.

Like a real server, it holds and returns what Python's defaults refuse: documents, events and
filters are read with surrogate escapes and ``DatetimeMS`` (``RAW_DOCUMENT_OPTIONS``'s choices)
and sent as raw BSON (``raw_bson_document``), so a string that is not valid UTF-8 crosses the
wire as the very bytes stored.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mockupdb
from bson import Int64
from bson.codec_options import CodecOptions, DatetimeConversion
from mockupdb import Matcher, MockupDB
from pymongo.errors import OperationFailure

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture.documentdb_source import TYPE_BRACKETS, _type_bracket
from lambda_functions.lake.extended_json import raw_bson_document

# mockupdb decodes commands with this module constant: read them as a server would (any bytes).
mockupdb.CODEC_OPTIONS = CodecOptions(
    document_class=dict,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="surrogateescape",
)

HELLO = {"ismaster": True, "minWireVersion": 0, "maxWireVersion": 13, "msg": None}


class EmbeddedBackedServer:
    """See the module docstring; ``uri`` is what a pymongo client connects to."""

    def __init__(
        self,
        store_path: Path,
        *,
        events_per_batch: int | None = None,
        replica_set: str | None = None,
        version: str = "5.0.0",
        split_stage: bool = True,
        max_event_bytes: int | None = None,
    ):
        self.store_path = store_path
        self.version = version
        self.split_stage = split_stage
        self.max_event_bytes = max_event_bytes  # the store's event size limit, when not 16 MiB
        self.extra_collections: list[str] = []
        self.events_per_batch = events_per_batch  # cap on a batch, to force several getMores
        # A replica set's primary rather than a standalone: pymongo sends no read preference to
        # a standalone and always primaryPreferred on a direct connection, so a test of the read
        # preference connects to it as a replica set (``uri``).
        self.replica_set = replica_set
        hello, port = HELLO, 0
        if replica_set:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            member = f"localhost:{port}"
            hello = HELLO | {"setName": replica_set, "hosts": [member], "me": member}
        self.server = MockupDB(
            port=port or None, auto_ismaster=hello, verbose=False, request_timeout=30
        )
        self.commands: list[dict[str, Any]] = []
        self._local = threading.local()
        self._cursors: dict[int, Any] = {}
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self.handlers = {
            "find": self._find,
            "aggregate": self._aggregate,
            "getMore": self._get_more,
            "killCursors": self._kill_cursors,
            "listCollections": self._list_collections,
            "endSessions": lambda request: request.ok(),
            "buildInfo": self._build_info,
        }
        # mockupdb's string matchers compare the command's value too ({"find": 1}); one
        # catch-all dispatches by name and leaves the handshake to auto_ismaster.
        self.server.autoresponds(Matcher(), self._dispatch)

    @property
    def uri(self) -> str:
        if self.replica_set:
            return f"{self.server.uri}/?replicaSet={self.replica_set}"
        return f"{self.server.uri}/?directConnection=true"

    def start(self) -> EmbeddedBackedServer:
        self.server.run()
        return self

    def stop(self) -> None:
        self.server.stop()

    def names(self) -> list[str]:
        """Names of the commands received, in order."""
        return [next(iter(command)) for command in self.commands]

    # -- the store, one connection per server thread ---------------------------------------------
    @property
    def store(self) -> EmbeddedChangeStreamSource:
        if not hasattr(self._local, "store"):
            options = {"max_event_bytes": self.max_event_bytes} if self.max_event_bytes else {}
            # Only the wire's pipeline asks for fragments, as on a server.
            self._local.store = EmbeddedChangeStreamSource(
                self.store_path, split_large_events=False, **options
            )
        return self._local.store

    def _record(self, request: Any) -> dict[str, Any]:
        command = dict(request.doc)
        with self._lock:
            self.commands.append(command)
        return command

    # -- commands --------------------------------------------------------------------------------
    def _dispatch(self, request: Any) -> bool:
        if not request.docs:
            return False
        handler = self.handlers.get(next(iter(request.doc)))
        return handler(request) if handler else False

    def _find(self, request: Any) -> bool:
        command = self._record(request)
        database, collection = command["$db"], command["find"]
        condition = command.get("filter", {}).get("_id", {})
        limit = command.get("limit") or None
        if "$gt" in condition:
            docs = self.store.documents(database, collection, after_id=condition["$gt"])
            bracket = _type_bracket(condition["$gt"])
            docs = [d for d in docs if _type_bracket(d["_id"]) == bracket]
        elif "$in" in condition:
            docs = self.store.documents_by_id(database, collection, condition["$in"])
        elif "$type" in condition:
            wanted = set(condition["$type"])
            docs = [
                d
                for d in self.store.documents(database, collection)
                if set(TYPE_BRACKETS[_type_bracket(d["_id"])]) & wanted
            ]
        else:
            docs = self.store.documents(database, collection)
        docs = [raw_bson_document(d) for d in (docs[:limit] if limit else docs)]
        return request.ok(
            cursor={"id": Int64(0), "ns": f"{database}.{collection}", "firstBatch": docs}
        )

    def _list_collections(self, request: Any) -> bool:
        command = self._record(request)
        database = command["$db"]
        names = [*self.store.list_collection_names(database), *self.extra_collections]
        batch = [{"name": name, "type": "collection"} for name in names]
        return request.ok(
            cursor={"id": Int64(0), "ns": f"{database}.$cmd.listCollections", "firstBatch": batch}
        )

    def _aggregate(self, request: Any) -> bool:
        command = self._record(request)
        database, collection = command["$db"], command["aggregate"]
        stage = command["pipeline"][0]["$changeStream"]
        stages = command["pipeline"][1:]
        batch_size = command.get("cursor", {}).get("batchSize")
        if not self.split_stage and any("$changeStreamSplitLargeEvent" in s for s in stages):
            return request.command_err(
                code=40324,
                errmsg="Unrecognized pipeline stage name: '$changeStreamSplitLargeEvent'",
                codeName="Location40324",
            )
        try:
            stream = self.store.watch(
                database,
                collection,
                resume_after=stage.get("resumeAfter"),
                full_document=stage.get("fullDocument"),
                batch_size=self.events_per_batch or batch_size or 100,
                pipeline=stages,
            )
        except OperationFailure as error:
            return request.command_err(
                code=error.code or 1,
                errmsg=error.details.get("errmsg", str(error)),
                codeName=error.details.get("codeName"),
            )
        cursor_id = next(self._ids)
        self._cursors[cursor_id] = (stream, batch_size)
        try:
            batch, token = self._batch(stream, batch_size)
        except OperationFailure as error:
            return request.command_err(
                code=error.code or 1,
                errmsg=error.details.get("errmsg", str(error)),
                codeName=error.details.get("codeName"),
            )
        return request.ok(
            cursor={
                "id": Int64(cursor_id),
                "ns": f"{database}.{collection}",
                "firstBatch": batch,
                "postBatchResumeToken": token,
            }
        )

    def _get_more(self, request: Any) -> bool:
        command = self._record(request)
        cursor_id = int(command["getMore"])
        stream, batch_size = self._cursors[cursor_id]
        try:
            batch, token = self._batch(stream, command.get("batchSize") or batch_size)
        except OperationFailure as error:
            return request.command_err(
                code=error.code or 1,
                errmsg=error.details.get("errmsg", str(error)),
                codeName=error.details.get("codeName"),
            )
        return request.ok(
            cursor={
                "id": Int64(cursor_id),
                "ns": f"{command['$db']}.{command['collection']}",
                "nextBatch": batch,
                "postBatchResumeToken": token,
            }
        )

    def _build_info(self, request: Any) -> bool:
        self._record(request)
        return request.ok(version=self.version)

    def _kill_cursors(self, request: Any) -> bool:
        command = self._record(request)
        killed = [c for c in command["cursors"] if self._cursors.pop(int(c), None)]
        return request.ok(cursorsKilled=killed, cursorsNotFound=[], cursorsAlive=[])

    def _batch(self, stream: Any, batch_size: int | None) -> tuple[list[dict[str, Any]], Any]:
        limit = min(x for x in (batch_size, self.events_per_batch, 100) if x)
        batch = []
        while len(batch) < limit and (event := stream.try_next()) is not None:
            batch.append(raw_bson_document(event))
        return batch, stream.resume_token or self.store.current_position(*stream._ns)


@contextmanager
def embedded_backed_server(
    store_path: Path,
    *,
    events_per_batch: int | None = None,
    replica_set: str | None = None,
    **options: Any,
) -> Iterator[EmbeddedBackedServer]:
    server = EmbeddedBackedServer(
        store_path, events_per_batch=events_per_batch, replica_set=replica_set, **options
    ).start()
    try:
        yield server
    finally:
        server.stop()
