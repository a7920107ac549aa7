"""Where changes come from: the small interface capture reads through, and how to open one.

``ChangeSource`` is the part of a pymongo ``Collection`` that capture uses, keyed by database and
collection: the current stream position, the documents in ``_id`` order, and a change stream
resumed after a token. The embedded source (``lakehouse_local.embedded_source``, a local stand-in
that is not in the Lambda image) implements it locally; a pymongo-backed source for DocumentDB
implements the same three calls (and raises pymongo's ``OperationFailure``, which capture translates
into errors that say what to do): ``DocumentDBChangeSource``. This module is the one place in
``lambda_functions`` that imports ``lakehouse_local``: lazily, for ``source_kind`` embedded only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from lambda_functions.cdc_capture.documentdb_source import DocumentDBChangeSource
from lambda_functions.contracts import CaptureRequest, InvalidRequestError, SourceRequest
from lambda_functions.errors import TerminalError


class EmbeddedSourceUnavailableError(TerminalError, ImportError):
    """A request names ``source_kind`` ``"embedded"`` where the local stand-ins are not installed
    (the Lambda image ships ``lambda_functions`` only); the message names the fix."""


class ChangeStreamCursor(Protocol):
    """A change stream being read. Cursors may also offer ``resume_token`` (where the stream
    would resume, possibly a post-batch token newer than the last event): capture uses it to
    keep a quiet collection's position fresh."""

    def try_next(self) -> Mapping[str, Any] | None:
        """The next change event, or ``None`` when none is pending right now."""

    def close(self) -> None: ...


class ChangeSource(Protocol):
    def current_position(self, database: str, collection: str) -> Mapping[str, Any]:
        """A resume token such that watching from it yields every change made after this call."""

    def documents(
        self,
        database: str,
        collection: str,
        after_id: Any = None,
        limit: int | None = None,
    ) -> Sequence[Mapping[str, Any]]:
        """Current documents in ``_id`` order, strictly after ``after_id`` when given."""

    def documents_by_id(
        self, database: str, collection: str, ids: Sequence[Any]
    ) -> Sequence[Mapping[str, Any]]:
        """The current documents whose ``_id`` is one of ``ids`` (absent ones are left out)."""

    def watch(
        self,
        database: str,
        collection: str,
        *,
        resume_after: Mapping[str, Any] | None = None,
        full_document: str | None = None,
        batch_size: int | None = None,
        pipeline: Sequence[Mapping[str, Any]] | None = None,
    ) -> ChangeStreamCursor:
        """Change events strictly after ``resume_after``, in stream order.

        ``pipeline`` holds the stages after ``$changeStream`` (e.g. ``key_only_pipeline``'s
        ``$project``). A source that can split events over 16 MiB adds
        ``$changeStreamSplitLargeEvent`` itself, so the cursor may return fragments
        (``splitEvent``) that the reader reassembles (``large_events.SplitEventReassembler``).
        """

    def close(self) -> None: ...


def open_source(request: SourceRequest, *, read_preference: str | None = None) -> ChangeSource:
    """The change source a request names; the caller closes it.

    For ``embedded``, ``source_location`` is the store file and, for a capture request,
    ``demo_changes > 0`` first lets the demo workload (the "application") make that many changes,
    so each capture has something new; only for the demo collections (``DEMO_COLLECTIONS``), so
    any other name must exist in the store. For ``documentdb``, a pymongo client
    (``DocumentDBChangeSource``): TLS on by default, credentials from Secrets Manager
    (``secret_arn``) or the environment variable named by ``source_location``.

    The embedded source and the demo workload live in ``lakehouse_local`` (local stand-ins, never
    shipped to AWS) and are imported here, on first use of ``source_kind == "embedded"`` only.

    Args:
        request: the capture or audit request naming the source.
        read_preference: documentdb only: a MongoDB read preference mode for every read of this
            client (the audit passes ``"secondaryPreferred"`` so it does not load the primary);
            ``None`` keeps the driver's default (primary), which is what capture uses.

    Returns:
        An open ``ChangeSource``; the caller closes it (it is also a context manager).

    Raises:
        InvalidRequestError: ``embedded`` without a ``source_location`` (terminal).
        EmbeddedSourceUnavailableError: ``embedded`` where ``lakehouse_local`` cannot be imported,
            e.g. in the Lambda image (terminal: use ``source_kind`` ``"documentdb"`` on AWS).
    """
    if request.source_kind == "embedded":
        if not request.source_location:
            raise InvalidRequestError(
                "source_location must be the path of the embedded store file for "
                "source_kind 'embedded'"
            )
        demo_collections, demo_workload, embedded_source = _local_stand_ins()
        source = embedded_source(request.source_location)
        try:
            if (
                isinstance(request, CaptureRequest)
                and request.demo_changes > 0
                and request.namespace in demo_collections
            ):
                workload = demo_workload(source, request.database, request.collection)
                workload.run(request.demo_changes)
        except BaseException:
            source.close()
            raise
        return source
    if read_preference is None:
        return DocumentDBChangeSource.open(request)
    return DocumentDBChangeSource.open(request, readPreference=read_preference)


def demo_collection_names(database: str) -> list[str]:
    """The demo collections of ``database`` (sorted, without the database): the embedded source
    lists them before their first capture, since the demo workload creates them then."""
    demo_collections = _local_stand_ins()[0]
    return sorted(ns.split(".", 1)[1] for ns in demo_collections if ns.startswith(f"{database}."))


def _local_stand_ins() -> tuple[Any, Any, Any]:
    """``(DEMO_COLLECTIONS, DemoWorkload, EmbeddedChangeStreamSource)``, imported lazily: the
    Lambda image leaves the local stand-ins (``lakehouse_local``) out.

    Raises:
        EmbeddedSourceUnavailableError: ``lakehouse_local`` cannot be imported (e.g. on AWS).
    """
    try:
        from lakehouse_local.demo_workload import DEMO_COLLECTIONS, DemoWorkload
        from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
    except ImportError as e:
        raise EmbeddedSourceUnavailableError(
            "source_kind 'embedded' needs the local stand-ins (lakehouse_local), which are not "
            f"installed here ({e}); the embedded source is for local runs and tests only: on "
            "AWS set source_kind 'documentdb' (LAKEHOUSE_SOURCE=documentdb) with "
            "source_location / secret_arn naming the cluster's credentials"
        ) from e
    return DEMO_COLLECTIONS, DemoWorkload, EmbeddedChangeStreamSource
