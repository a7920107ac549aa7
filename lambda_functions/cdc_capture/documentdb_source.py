"""Amazon DocumentDB (or MongoDB) through pymongo: the change source capture uses in AWS.

Implements ``ChangeSource`` with the server doing the work:

- ``current_position``: opens a change stream (``$changeStream`` aggregate) *before* the snapshot
  and keeps what the server says about "now": the ``postBatchResumeToken`` of the empty first
  batch, or, when the server sends none, the aggregate's ``operationTime`` (returned as a
  ``{"startAtOperationTime": {"t", "i"}}`` position). Watching from it yields every later change.
- ``documents``: ``find`` sorted by ``_id`` after the last ``_id`` (an ``_id`` index range scan,
  so each chunk of a snapshot costs the same however far in it is), returned as
  ``RawBSONDocument`` so capture turns them into canonical JSON without decoding them in Python.
  ``$gt`` compares within one BSON type only, so when a type's documents run out the next page
  continues with the ``_id`` types that sort after it (MongoDB's cross-type order). The filter is
  sent as raw BSON (``raw_bson_document``), so an ``_id`` string that is not valid UTF-8 (read
  with surrogate escapes, ``extended_json.RAW_DOCUMENT_OPTIONS``) goes back to the server as the
  very bytes it stored, and the snapshot pages past that document like any other; dates outside
  Python's years 1-9999 come back as ``DatetimeMS`` and page the same way.
- ``watch``: ``resumeAfter`` the saved token with ``fullDocument: "updateLookup"``; a
  ``startAtOperationTime`` position resumes with that option; a token the server rejects as
  invalid (codes 260/280, not the expired 136/286) falls back to ``startAtOperationTime`` at the
  token's cluster time when it can be read (replaying that instant again is harmless: full
  documents are idempotent). ``OperationFailure`` goes up for capture to explain.
  Events over 16 MiB: the stream asks for ``$changeStreamSplitLargeEvent`` (last stage) when
  the server's ``buildInfo`` version says it may know it (``split_stage_supported``: MongoDB
  6.0.9+/7.0+; DocumentDB 8.0 reports 8.0.0 and supports it from engine 8.0.2 on instance-based
  clusters), or when ``buildInfo`` cannot be read; a server that answers error 40324
  ("Unrecognized pipeline stage name") is asked again without it, and the source remembers
  (``split_large_events``). Capture reassembles the fragments (``large_events``).

Connection: TLS is on unless the request turns it off, with the CA bundle at ``tls_ca_file``
(DocumentDB's certificates chain to the Amazon RDS CAs, not to the system store). Credentials come
from AWS Secrets Manager (``secret_arn``: DocumentDB's secret JSON ``{username, password, host,
port, ...}``) or from a URI in the environment variable whose *name* is ``source_location``. They
never travel in the event and never reach a log or an error: messages pass through
``mask_credentials``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bson import (
    Binary,
    Code,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from lambda_functions.cdc_capture.errors import (
    SourceConfigurationError,
    SourceUnreachableError,
    UnsupportedSourceError,
)
from lambda_functions.cdc_capture.large_events import (
    pipeline_with_split_stage,
    split_stage_supported,
)
from lambda_functions.cdc_capture.positions import (
    OPERATION_TIME_KEY,
    operation_time_position,
    token_position,
)
from lambda_functions.contracts import SourceRequest
from lambda_functions.lake.extended_json import RAW_DOCUMENT_OPTIONS, raw_bson_document

DEFAULT_MAX_AWAIT_MS = 500  # how long a getMore waits for new events before answering empty
INVALID_TOKEN_CODES = frozenset({260, 280})  # InvalidResumeToken, ChangeStreamFatalError
UNRECOGNIZED_STAGE_CODE = 40324  # "Unrecognized pipeline stage name" (older servers, split stage)
AUTH_FAILED_CODES = frozenset({18})
# Documents and change events stay raw BSON; what is read from them never raises for legal BSON
# (dates outside years 1-9999, strings that are not valid UTF-8: see extended_json).
RAW = RAW_DOCUMENT_OPTIONS
# MongoDB's order of BSON types (for _id): $type aliases of each bracket, lowest first.
TYPE_BRACKETS: tuple[tuple[str, ...], ...] = (
    ("minKey",),
    ("null",),
    ("int", "long", "double", "decimal"),
    ("string", "symbol"),
    ("object",),
    ("array",),
    ("binData",),
    ("objectId",),
    ("bool",),
    ("date",),
    ("timestamp",),
    ("regex",),
    ("dbPointer",),
    ("javascript",),
    ("javascriptWithScope",),
    ("maxKey",),
)
# BSON types MongoDB still orders but deprecates; DocumentDB does not list them among its
# supported types, so a server may refuse their ``$type`` aliases.
DEPRECATED_TYPE_ALIASES = frozenset({"symbol", "dbPointer", "javascriptWithScope"})
_URI_CREDENTIALS = re.compile(r"(mongodb(?:\+srv)?://)[^@/\s]+@")


def mask_credentials(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with URI credentials (``user:password@``) and every known secret replaced."""
    masked = _URI_CREDENTIALS.sub(r"\1***@", text)
    for secret in secrets:
        if secret:
            masked = masked.replace(secret, "***")
    return masked


def connection_target(
    request: SourceRequest,
    *,
    environ: Mapping[str, str] | None = None,
    secrets_client: Any = None,
) -> tuple[str | dict[str, Any], tuple[str, ...]]:
    """Where to connect: a URI (from the environment) or client keyword arguments (from the
    secret), and the strings to mask in anything shown to people."""
    if request.secret_arn:
        secret = _read_secret(request.secret_arn, secrets_client)
        missing = [k for k in ("username", "password", "host") if not secret.get(k)]
        if missing:
            raise SourceConfigurationError(
                f"the secret {request.secret_arn} lacks {missing}: a DocumentDB secret holds "
                "JSON with username, password, host and port (the shape Secrets Manager's "
                "DocumentDB rotation uses)"
            )
        target: dict[str, Any] = {
            "host": secret["host"],
            "port": int(secret.get("port") or 27017),
            "username": secret["username"],
            "password": secret["password"],
            "replicaSet": secret.get("replicaSet", "rs0"),
        }
        return target, (secret["password"], secret["username"])
    environ = os.environ if environ is None else environ
    name = request.source_location
    uri = environ.get(name, "")
    if not uri:
        raise SourceConfigurationError(
            f"the environment variable {name} (named by source_location) is not set: set it to "
            "the DocumentDB connection URI, e.g. mongodb://<user>:<password>@<cluster endpoint>"
            ":27017/?replicaSet=rs0&retryWrites=false, or use secret_arn (Secrets Manager)"
        )
    return uri, (uri,)


def client_options(request: SourceRequest) -> dict[str, Any]:
    """Keyword arguments for ``MongoClient``: TLS on by default, DocumentDB-friendly settings."""
    options: dict[str, Any] = {
        "tls": request.tls,
        "retryWrites": False,  # DocumentDB does not support retryable writes
        "serverSelectionTimeoutMS": 10_000,
        "connectTimeoutMS": 10_000,
        "appname": "lakehouse-cdc-capture",
        "tz_aware": True,
    }
    if request.tls and request.tls_ca_file:
        options["tlsCAFile"] = request.tls_ca_file
    return options


class DocumentDBChangeSource:
    """A ``ChangeSource`` over a pymongo client; see the module docstring."""

    def __init__(
        self,
        client: MongoClient,
        *,
        max_await_time_ms: int = DEFAULT_MAX_AWAIT_MS,
        secrets: tuple[str, ...] = (),
        split_large_events: bool | None = None,
    ):
        """Args:
        client: the pymongo client (closed by ``close``).
        max_await_time_ms: how long a ``getMore`` waits for new events (milliseconds).
        secrets: strings masked out of every error message.
        split_large_events: whether streams ask for ``$changeStreamSplitLargeEvent``; ``None``
            (default) decides from ``buildInfo`` on the first ``watch`` and falls back on 40324.
        """
        self.client = client
        self.split_large_events = split_large_events
        self.max_await_time_ms = max_await_time_ms
        self._secrets = secrets

    @classmethod
    def open(
        cls,
        request: SourceRequest,
        *,
        environ: Mapping[str, str] | None = None,
        secrets_client: Any = None,
        **extra_client_options: Any,
    ) -> DocumentDBChangeSource:
        """Connect as the request says (nothing is sent until the first operation)."""
        target, secrets = connection_target(request, environ=environ, secrets_client=secrets_client)
        options = client_options(request) | extra_client_options
        try:
            if isinstance(target, str):
                client: MongoClient = MongoClient(target, **options)
            else:
                client = MongoClient(**target, **options)
        except PyMongoError as error:
            raise SourceConfigurationError(
                "cannot configure the DocumentDB client: "
                f"{mask_credentials(str(error), secrets)}; check the connection URI or secret"
            ) from None
        return cls(client, secrets=secrets)

    # -- ChangeSource ----------------------------------------------------------------------------
    def list_collection_names(self, database: str) -> list[str]:
        """The database's collections (``listCollections``), system collections left out."""
        with self._errors():
            names = self.client[database].list_collection_names()
        return sorted(name for name in names if not name.startswith("system."))

    def current_position(self, database: str, collection: str) -> dict[str, Any]:
        """A stream position taken now: a resume token, or the cluster time as
        ``{"startAtOperationTime": {"t", "i"}}`` when the server gives no token."""
        with self._errors():
            stream = self.client[database][collection].watch(
                full_document="updateLookup", max_await_time_ms=1
            )
            try:
                token = stream.resume_token
                # Without a postBatchResumeToken pymongo keeps the aggregate's operationTime.
                at = getattr(stream, "_start_at_operation_time", None)
            finally:
                stream.close()
        if token is not None:
            return dict(token)
        if isinstance(at, Timestamp):
            return operation_time_position(at.time, at.inc)
        raise UnsupportedSourceError(
            f"{database}.{collection}: the server returned neither a postBatchResumeToken nor "
            "an operationTime when a change stream was opened, so no position can be recorded "
            "before the snapshot; DocumentDB 4.0 or newer (or MongoDB 4.0+) is required"
        )

    def documents(
        self,
        database: str,
        collection: str,
        after_id: Any = None,
        limit: int | None = None,
    ) -> list[RawBSONDocument]:
        """Documents in ``_id`` order strictly after ``after_id`` (raw BSON, not decoded)."""
        coll = self.client[database].get_collection(collection, codec_options=RAW)

        def find(query: Mapping[str, Any], limit: int) -> list[RawBSONDocument]:  # 0: no limit
            return list(coll.find(query, sort=[("_id", 1)], limit=limit, batch_size=limit))

        wanted = limit or 0
        with self._errors():
            if after_id is None:
                return find({}, wanted)
            page = find(raw_bson_document({"_id": {"$gt": after_id}}), wanted)
            later = _later_types(after_id)
            if later and (not wanted or len(page) < wanted):
                rest = wanted - len(page) if wanted else 0
                try:
                    page += find({"_id": {"$type": list(later)}}, rest)
                except OperationFailure:
                    # A server that does not know the deprecated types' aliases cannot hold
                    # such values either: ask again without them (same order, one query).
                    known = [alias for alias in later if alias not in DEPRECATED_TYPE_ALIASES]
                    if len(known) == len(later) or not known:
                        raise
                    page += find({"_id": {"$type": known}}, rest)
            return page

    def documents_by_id(
        self, database: str, collection: str, ids: Sequence[Any]
    ) -> list[RawBSONDocument]:
        """The documents whose ``_id`` is in ``ids`` (one ``find`` with ``$in``, raw BSON)."""
        if not ids:
            return []
        coll = self.client[database].get_collection(collection, codec_options=RAW)
        with self._errors():
            return list(coll.find({"_id": {"$in": list(ids)}}, sort=[("_id", 1)]))

    def watch(
        self,
        database: str,
        collection: str,
        *,
        resume_after: Mapping[str, Any] | None = None,
        full_document: str | None = None,
        batch_size: int | None = None,
        pipeline: Sequence[Mapping[str, Any]] | None = None,
    ) -> Any:
        """A pymongo ``ChangeStream`` (``try_next``, ``resume_token``, ``close``) after the
        position; see the module docstring for the ``startAtOperationTime`` fallback and the
        split stage.

        Args:
            database, collection: the namespace watched.
            resume_after: a resume token, or a ``{"startAtOperationTime": {"t", "i"}}``
                position (``current_position``); ``None``: from now.
            full_document: ``"updateLookup"``, ``"default"`` or ``None``.
            batch_size: events per batch.
            pipeline: stages after ``$changeStream``; the split stage is appended when the
                server supports it.

        Returns:
            The stream; its events may be ``splitEvent`` fragments when the stage was added.

        Raises:
            OperationFailure: the server refused the stream (masked of credentials).
        """
        stages = list(pipeline or [])
        if self._split_stage_wanted():
            try:
                return self._watch(
                    database,
                    collection,
                    resume_after,
                    full_document,
                    batch_size,
                    pipeline_with_split_stage(stages, True),
                )
            except OperationFailure as error:
                if error.code != UNRECOGNIZED_STAGE_CODE:
                    raise
                self.split_large_events = False  # an older engine: never ask again
        return self._watch(database, collection, resume_after, full_document, batch_size, stages)

    def _split_stage_wanted(self) -> bool:
        """Whether to ask for the split stage: decided once, from ``buildInfo``'s version."""
        if self.split_large_events is None:
            try:
                version = self.client.admin.command("buildInfo").get("version")
            except PyMongoError:
                version = None  # unknown: ask, a refusal (40324) costs one aggregate
            self.split_large_events = not isinstance(version, str) or split_stage_supported(
                "mongodb", version
            )
        return self.split_large_events

    def _watch(
        self,
        database: str,
        collection: str,
        resume_after: Mapping[str, Any] | None,
        full_document: str | None,
        batch_size: int | None,
        pipeline: list[Mapping[str, Any]],
    ) -> Any:
        coll = self.client[database].get_collection(collection, codec_options=RAW)
        options: dict[str, Any] = {
            "pipeline": pipeline or None,
            "full_document": full_document,
            "batch_size": batch_size,
            "max_await_time_ms": self.max_await_time_ms,
        }
        at = resume_after.get(OPERATION_TIME_KEY) if resume_after else None
        with self._errors():
            if isinstance(at, Mapping):
                stream = coll.watch(start_at_operation_time=Timestamp(at["t"], at["i"]), **options)
                return _MaskedStream(stream, self._secrets)
            try:
                stream = coll.watch(resume_after=resume_after, **options)
            except OperationFailure as error:
                pos = token_position(resume_after)
                if error.code not in INVALID_TOKEN_CODES or pos is None:
                    raise
                stream = coll.watch(
                    start_at_operation_time=Timestamp(pos >> 32, pos & 0xFFFFFFFF), **options
                )
            return _MaskedStream(stream, self._secrets)

    def close(self) -> None:
        self.client.close()

    # -- errors ----------------------------------------------------------------------------------
    def _errors(self) -> _MaskedErrors:
        return _MaskedErrors(self._secrets)


class _MaskedStream:
    """A pymongo ``ChangeStream`` whose errors pass through ``_MaskedErrors``."""

    def __init__(self, stream: Any, secrets: tuple[str, ...]):
        self._stream = stream
        self._secrets = secrets

    def try_next(self) -> Any:
        with _MaskedErrors(self._secrets):
            return self._stream.try_next()

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        """The server's resume point: the last event's token or a post-batch resume token."""
        return self._stream.resume_token

    def close(self) -> None:
        with _MaskedErrors(self._secrets):
            self._stream.close()


class _MaskedErrors:
    """Let ``OperationFailure`` through for capture to explain (masked if it quotes a secret);
    turn connection, TLS and authentication failures into ``SourceConfigurationError`` (terminal)
    or ``SourceUnreachableError`` (transient) with the fix."""

    def __init__(self, secrets: tuple[str, ...]):
        self.secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, _tb: Any) -> bool:
        if error is None or not isinstance(error, PyMongoError):
            return False
        message = mask_credentials(str(error), self.secrets)
        if isinstance(error, OperationFailure):
            if error.code in AUTH_FAILED_CODES:
                raise SourceConfigurationError(
                    f"DocumentDB refused the credentials: {message}; check the username and "
                    "password in the secret (or URI) and that the user exists on the cluster"
                ) from None
            if message != str(error):
                raise OperationFailure(message, error.code, error.details) from None
            return False
        raise SourceUnreachableError(
            f"cannot reach DocumentDB: {message}. Check that the function runs in the cluster's "
            "VPC with a security group allowing port 27017, that TLS is on with the Amazon RDS "
            "CA bundle (tls_ca_file, e.g. global-bundle.pem), and the host name in the URI/secret"
        ) from None


def _read_secret(arn: str, client: Any) -> dict[str, Any]:
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    try:
        value = client.get_secret_value(SecretId=arn)
    except Exception as error:  # botocore ClientError, no credentials, no network
        raise SourceConfigurationError(
            f"cannot read the secret {arn}: {type(error).__name__}: {error}; grant the function "
            "secretsmanager:GetSecretValue on it (and kms:Decrypt for a customer key)"
        ) from None
    try:
        secret = json.loads(value.get("SecretString") or "")
    except json.JSONDecodeError:
        secret = None
    if not isinstance(secret, dict):
        raise SourceConfigurationError(
            f"the secret {arn} is not a JSON object; store DocumentDB credentials as "
            '{"username": ..., "password": ..., "host": ..., "port": 27017}'
        )
    return secret


# The index in TYPE_BRACKETS of each Python type, checked in this order.
_BRACKET_OF_TYPE: tuple[tuple[type | tuple[type, ...], int], ...] = (
    (MinKey, 0),
    (type(None), 1),
    (bool, 8),  # before int: bool is an int in Python
    ((int, float, Int64, Decimal128), 2),
    (str, 3),
    ((Mapping, DBRef), 4),  # a DBRef _id is the document {$ref, $id}
    ((list, tuple), 5),
    ((bytes, Binary), 6),
    (ObjectId, 7),
    ((datetime, DatetimeMS), 9),
    (Timestamp, 10),
    ((Regex, re.Pattern), 11),
    (MaxKey, 15),
)


def _type_bracket(value: Any) -> int | None:
    """The index in ``TYPE_BRACKETS`` of a Python value's BSON type."""
    if isinstance(value, Code):  # before str: pymongo's Code is a str subclass
        return 13 if value.scope is None else 14
    for kind, bracket in _BRACKET_OF_TYPE:
        if isinstance(value, kind):
            return bracket
    return None


def _later_types(value: Any) -> tuple[str, ...]:
    """``$type`` aliases of every type that sorts after ``value``'s type."""
    bracket = _type_bracket(value)
    if bracket is None:
        return ()
    return tuple(alias for group in TYPE_BRACKETS[bracket + 1 :] for alias in group)
