"""Change events over 16 MB: split fragments put back together, and a report where none can come.

What the sources do (research for issue 15, item 4):

- **The limit.** A change event is a BSON document and must fit the 16 MiB (16,777,216 bytes)
  BSON document limit (MongoDB Manual, "MongoDB Limits and Thresholds", BSON Document Size;
  "Change Streams Production Recommendations": "Change stream response documents must adhere to
  the 16MB BSON document limit ... notifications may fail if the resulting notification document
  exceeds the 16MB limit", e.g. updates opened with ``fullDocument: "updateLookup"`` or
  inserts/replaces of a document at or just below the limit). An update can carry the changed
  field twice (``updateDescription.updatedFields`` and the looked-up ``fullDocument``), so a
  document of only ~8 MB can already produce an oversized event (SERVER-55062; SERVER-30236).
- **Without a split stage** the server fails the ``aggregate``/``getMore`` with error code
  ``10334``, ``codeName: "BSONObjectTooLarge"``, message ``"BSONObj size: <n> (0x..) is invalid.
  Size must be between 0 and 16793600(16MB) First element: _id: {_data: ...}"`` (MongoDB server
  ``src/mongo/base/error_codes.yml``; the message as reported in meteor/meteor#14763 and
  mongodb/mongo-kafka#79). Resuming from the last saved token hits the same event again: the
  error repeats until the event is skipped or made smaller (meteor/meteor#14763, KAFKA-247).
- **``$changeStreamSplitLargeEvent``** (MongoDB Manual, "$changeStreamSplitLargeEvent
  (aggregation)", new in 7.0 and 6.0.9): ``{ $changeStreamSplitLargeEvent: {} }``, at most once,
  and it must be the LAST stage of a ``$changeStream`` pipeline. An event over 16 MB is returned
  as fragments, sequentially on the same cursor; only top-level fields are distributed (a single
  top-level field over 16 MB is not split and still fails); the first fragment gets as many
  fields as fit, so it carries the event's context (``operationType``, ``documentKey``, ``ns``,
  ``clusterTime``...). Every fragment carries ``splitEvent: {fragment: <1-based index>, of:
  <count>}`` and its own resume token in ``_id``. The manual's example (an update with pre- and
  post-images of a ~16 MB document) gives three fragments: keys ``_id, splitEvent, wallTime,
  clusterTime, operationType, documentKey, ns, fullDocument``; then ``_id, splitEvent,
  fullDocumentBeforeChange``; then ``_id, splitEvent, updateDescription``.
- **Resuming**: "A stream that is resumed using a fragment's token will either begin a new stream
  from the subsequent fragment [or] start at the next event if resuming from the final fragment"
  (same page). So the LAST fragment's token is the whole event's position (resuming after it
  skips the whole event, never half of it), and a checkpoint must never hold a middle
  fragment's token: a stream resumed there begins with fragment k > 1 and the event's first
  fields (its key among them) are gone. Fragment tokens are the event's token suffixed with a
  fragment number (SERVER-107526), so they sort together; this module relies only on the
  documented order (fragments 1..of, one after the other) and refuses anything else.
- **Amazon DocumentDB**: maximum document size 16 MB (Amazon DocumentDB Developer Guide, "Amazon
  DocumentDB Quotas and Limits"). ``$changeStreamSplitLargeEvent`` is supported "starting with
  Amazon DocumentDB engine version 8.0.2" and "not supported by Elastic clusters" (Developer
  Guide, "$changeStreamSplitLargeEvent"; its example output has the MongoDB shape: fragment 1
  ``_id, splitEvent: {fragment: 1, of: 2}, ns, clusterTime, documentKey, fullDocument,
  operationType``, fragment 2 ``_id, splitEvent, updateDescription``). Engines before 8.0 (3.6,
  4.0, 5.0) do not list the stage among the change-stream stages they support (``$match``,
  ``$project``, ``$redact``, ``$addFields``, ``$replaceRoot``: Developer Guide, "Using change
  streams with Amazon DocumentDB", Supported operations), and the guide does not document what
  their change stream returns for an event over 16 MB; we treat it as MongoDB does (the cursor
  fails, code 10334 if the engine reports MongoDB's code) and never assume a split.
- **Making an event smaller** (the manual's advice before splitting): do not request pre-images
  and ``$project`` only the fields needed. Capture looks up ``fullDocument``, so it does not need
  ``updateDescription``; projecting that out removes the doubled field of an update. A document
  at the limit still cannot travel inside an event: a stream opened with ``key_only_pipeline``
  returns its ``documentKey`` and token, and the document is then read by key from the collection
  (a document alone always fits a reply).

What this module gives capture (the stream read, ``stream.py``, and ``DocumentDBChangeSource``):
``reassemble_split_events``/``SplitEventReassembler`` (whole events in stream order),
``pipeline_with_split_stage``/``split_stage_supported`` (when to ask for fragments),
``key_only_pipeline`` and ``oversized_event_report`` (what to say, and do, when the server
cannot deliver the event).

Decision on incomplete fragments: a partial event is never applied and never guessed at. A
sequence that is out of order, misses a fragment, or starts mid-event raises
``SplitEventError`` (terminal) naming the document key when fragment 1 was seen and the last
whole event's token, from which a resumed stream delivers the event again whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NoReturn

from lambda_functions.errors import TerminalError

# BSON document size limit (MongoDB Manual, "MongoDB Limits and Thresholds").
MAX_BSON_DOCUMENT_BYTES = 16 * 1024 * 1024
# MongoDB server error code and name for a document over the limit (error_codes.yml).
BSON_OBJECT_TOO_LARGE_CODE = 10334
BSON_OBJECT_TOO_LARGE_NAME = "BSONObjectTooLarge"
SPLIT_STAGE_NAME = "$changeStreamSplitLargeEvent"
# Fields that make an event big; none of them is needed to locate the event or its document.
LARGE_EVENT_FIELDS = ("fullDocument", "fullDocumentBeforeChange", "updateDescription")

_BSON_SIZE_IN_MESSAGE = re.compile(r"BSONObj size: (\d+)")


class SplitEventError(TerminalError, ValueError):
    """The fragments of a split change event do not form the whole event (out of order, one
    missing, or a stream that starts mid-event); the message says where to resume.

    Attributes:
        document_key: the event's ``documentKey`` if its first fragment was seen, else ``None``.
        resume_token: the ``_id`` of the last whole event before the broken one (``None`` if
            none was seen in this read): resuming after it delivers the broken event again.
    """

    def __init__(
        self,
        message: str,
        *,
        document_key: Mapping[str, Any] | None = None,
        resume_token: Any = None,
    ) -> None:
        super().__init__(message)
        self.document_key = document_key
        self.resume_token = resume_token


class OversizedChangeEventError(TerminalError, RuntimeError):
    """The source cannot deliver a change event because it exceeds the 16 MiB BSON limit; the
    message (from ``oversized_event_report``) names the key when known and the fix."""


def split_stage_supported(
    server: Literal["mongodb", "documentdb"],
    version: str | Sequence[int],
    *,
    elastic_cluster: bool = False,
) -> bool:
    """Whether a server accepts ``$changeStreamSplitLargeEvent``.

    Args:
        server: ``"mongodb"`` or ``"documentdb"`` (Amazon DocumentDB).
        version: the server version, ``"7.0.12"`` or ``(7, 0, 12)``: MongoDB's ``buildInfo``
            version; for DocumentDB the engine version the DocumentDB guide names (``"8.0.2"``).
            Parts that are not digits end the comparison (``"7.0.0-rc1"`` reads as 7.0.0).
        elastic_cluster: DocumentDB only: the cluster is an Elastic cluster.

    Returns:
        ``True`` for MongoDB 6.0.9+ within 6.0 and 7.0 or newer (MongoDB Manual,
        "$changeStreamSplitLargeEvent": "New in MongoDB 7.0 (and 6.0.9)"; the 6.1-6.3 rapid
        releases are not listed and count as unsupported), and for instance-based DocumentDB
        8.0.2 or newer (Developer Guide, "$changeStreamSplitLargeEvent"); ``False`` otherwise,
        including any DocumentDB Elastic cluster. A wrong ``True`` costs one failed
        ``aggregate`` (MongoDB answers an unknown stage with error 40324 "Unrecognized pipeline
        stage name"), so callers may also probe and fall back.

    Raises:
        ValueError: ``server`` is neither name.
    """
    parts = _version_tuple(version)
    if server == "mongodb":
        return parts >= (7, 0, 0) or (parts[:2] == (6, 0) and parts >= (6, 0, 9))
    if server == "documentdb":
        return not elastic_cluster and parts >= (8, 0, 2)
    raise ValueError(f"server must be 'mongodb' or 'documentdb', not {server!r}")


def pipeline_with_split_stage(
    pipeline: Sequence[Mapping[str, Any]], server_supports: bool
) -> list[Mapping[str, Any]]:
    """The change-stream pipeline with ``{"$changeStreamSplitLargeEvent": {}}`` as its last stage
    when the server supports it.

    Args:
        pipeline: the stages after ``$changeStream`` (``$match``, ``$project``...), in order;
            not modified.
        server_supports: what ``split_stage_supported`` says of the server.

    Returns:
        A new list: the stages unchanged, plus the split stage last if ``server_supports`` and
        it is not there yet (the stage may appear only once, and only last: MongoDB Manual,
        "$changeStreamSplitLargeEvent"). Idempotent: applying it twice adds one stage.

    Raises:
        ValueError: ``pipeline`` already holds the split stage somewhere other than last (the
            server would refuse the pipeline).
    """
    stages = list(pipeline)
    positions = [i for i, stage in enumerate(stages) if SPLIT_STAGE_NAME in stage]
    if positions and positions != [len(stages) - 1]:
        raise ValueError(
            f"{SPLIT_STAGE_NAME} must be the only one and the last stage of a change-stream "
            f"pipeline; found at position(s) {positions} of {len(stages)}: remove it there"
        )
    if server_supports and not positions:
        stages.append({SPLIT_STAGE_NAME: {}})
    return stages


def key_only_pipeline(pipeline: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pipeline with a last ``$project`` that drops the fields that make events large.

    A stream opened with it from the token that failed with BSONObjectTooLarge returns the
    oversized event small: ``_id`` (its resume token), ``operationType``, ``documentKey``,
    ``ns``, ``clusterTime``, without ``fullDocument``, ``fullDocumentBeforeChange`` and
    ``updateDescription``. The document itself is then read by key (a document alone fits
    16 MiB). Excluding fields with ``$project`` is allowed in change streams as long as ``_id``
    is kept (MongoDB Manual, "Modify Change Stream Output"; DocumentDB supports ``$project`` in
    change streams: Developer Guide, "Using change streams with Amazon DocumentDB").

    Args:
        pipeline: the stages after ``$changeStream``, in order; not modified. A split stage in
            it stays last.

    Returns:
        A new list of stages ending with the projection (before the split stage if any).
    """
    stages = [stage for stage in pipeline if SPLIT_STAGE_NAME not in stage]
    had_split_stage = len(stages) < len(pipeline)
    stages.append({"$project": {field: 0 for field in LARGE_EVENT_FIELDS}})
    if had_split_stage:
        stages.append({SPLIT_STAGE_NAME: {}})
    return stages


def oversized_event_report(
    error: BaseException,
    *,
    document_key: Mapping[str, Any] | None = None,
    resume_token: Any = None,
    split_supported: bool | None = None,
    split_in_use: bool = False,
) -> str | None:
    """What to tell the operator when the source cannot deliver a change event over 16 MiB.

    Args:
        error: what the change-stream read raised: pymongo's ``OperationFailure`` (``code``,
            ``details``) or any error whose code, ``codeName`` or message says
            BSONObjectTooLarge.
        document_key: the event's ``documentKey`` if known (e.g. from a ``key_only_pipeline``
            read, or fragment 1 of a split event); the server's error does not carry it.
        resume_token: the checkpointed token the failing stream was resumed after, if known.
        split_supported: whether the server accepts ``$changeStreamSplitLargeEvent``
            (``split_stage_supported``); ``None`` if not known.
        split_in_use: the failing stream already had the split stage, so one top-level field
            of the event is over 16 MiB alone (the stage splits only between top-level fields):
            the report says so instead of proposing the stage.

    Returns:
        ``None`` if ``error`` is not an oversized-event error (the caller re-raises it as it
        is); otherwise one message, ready for ``OversizedChangeEventError``, that names the
        event's size (when the server said it), the document key (when known), the token, and
        the fixes in the order to try them: split stage (if supported), drop
        ``updateDescription``/pre-images, then read the key alone with ``key_only_pipeline``,
        re-read the document by key and resume after that event's token (``resumeAfter``, or
        ``startAfter``).
    """
    if not _is_bson_object_too_large(error):
        return None
    text = str(error)
    size = _BSON_SIZE_IN_MESSAGE.search(text)
    what = "a change event"
    if size:
        what += f" of {int(size.group(1)):,} bytes"
    where = (
        f"the document with key {_brief(document_key)}"
        if document_key is not None
        else "a document whose key the server did not report"
    )
    after = f" after resume token {_brief(resume_token)}" if resume_token is not None else ""
    fixes = []
    if split_in_use:
        what += " (already split into fragments: one top-level field is over 16 MiB alone)"
    elif split_supported is not False:
        fixes.append(
            f"add {{{SPLIT_STAGE_NAME}: {{}}}} as the last stage of the change stream "
            "(MongoDB 6.0.9+/7.0+, DocumentDB 8.0.2+ instance-based clusters) so the event "
            "arrives in fragments that capture reassembles"
            + (" (check the server version first)" if split_supported is None else "")
        )
    fixes.append(
        "stop requesting updateDescription and pre-images (a $project excluding "
        "updateDescription and fullDocumentBeforeChange): capture reads fullDocument, and an "
        "update otherwise carries the changed field twice"
    )
    fixes.append(
        "if the document alone is near 16 MiB, open the stream from the same token with "
        "key_only_pipeline() to get the event's documentKey and resume token, re-read that "
        "document by key (or re-snapshot the collection), then resume after that event's token "
        "(resumeAfter, or startAfter); or make the document smaller at the source"
    )
    steps = "; ".join(f"({i}) {fix}" for i, fix in enumerate(fixes, 1))
    return (
        f"{what} for {where}{after} exceeds the 16 MiB BSON limit "
        f"({BSON_OBJECT_TOO_LARGE_NAME}, code {BSON_OBJECT_TOO_LARGE_CODE}), so the source "
        f"cannot return it and resuming from the saved token fails the same way. Fix: {steps}."
    )


class SplitEventReassembler:
    """Turns change events in stream order into whole events, merging split fragments.

    Feed every event the cursor returns to ``push``, in order. Keep ``in_progress`` in mind:
    while it is true the cursor sits inside an event, so its position (``resume_token``,
    ``postBatchResumeToken``) must not be checkpointed and a read should not stop there.
    """

    def __init__(self) -> None:
        self._fragments: list[Mapping[str, Any]] = []
        self._of = 0
        self.last_whole_token: Any = None

    @property
    def in_progress(self) -> bool:
        """Whether fragments of an event have been seen but not its last one."""
        return bool(self._fragments)

    def push(self, event: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Take the next event of the stream.

        Args:
            event: a change event as the cursor returns it (dict or ``RawBSONDocument``).

        Returns:
            A whole event, or ``None`` while fragments are being collected. An event without
            ``splitEvent`` is returned as it is (same object). For the last fragment of a split
            event: a new dict with the fields of fragments 1..of in fragment order, ``_id``
            first and equal to the LAST fragment's resume token, no ``splitEvent``.

        Raises:
            SplitEventError: the fragment is not the one expected (first fragment missing, as
                when a stream resumed from a middle fragment's token; a fragment missing or out
                of order; an unsplit event inside a split one; a field in two fragments;
                ``splitEvent`` not ``{fragment: 1..of, of: >= 1}``).
        """
        split = event.get("splitEvent")
        if split is None:
            if self._fragments:
                self._fail(
                    f"an unsplit event (token {_brief(event.get('_id'))}) arrived after "
                    f"fragment {len(self._fragments)} of {self._of}: fragments are missing"
                )
            self.last_whole_token = event.get("_id")
            return event
        position = _split_position(split)
        if position is None:
            self._fail(
                f"event with token {_brief(event.get('_id'))} has splitEvent {split!r}, not "
                "{fragment: <1..of>, of: <count>} as MongoDB sends it (check any $project or "
                "$addFields stage that touches splitEvent)"
            )
        fragment, of = position
        expected = len(self._fragments) + 1
        if fragment != expected or (self._fragments and of != self._of):
            if not self._fragments:
                self._fail(
                    f"fragment {fragment} of {of} (token {_brief(event.get('_id'))}) arrived "
                    "without fragment 1: the stream started inside a split event (resumed from "
                    "a middle fragment's token, which must never be checkpointed)"
                )
            self._fail(
                f"fragment {fragment} of {of} (token {_brief(event.get('_id'))}) arrived where "
                f"fragment {expected} of {self._of} was due: a fragment is missing or out of "
                "order"
            )
        self._of = of
        self._fragments.append(event)
        if fragment < of:
            return None
        whole = self._merge()
        self._fragments, self._of = [], 0
        self.last_whole_token = whole["_id"]
        return whole

    def finish(self) -> None:
        """Say the read is over; a split event left incomplete is an error.

        Raises:
            SplitEventError: the read ended after fragment k < of of an event.
        """
        if self._fragments:
            self._fail(
                f"the read ended after fragment {len(self._fragments)} of {self._of}: keep "
                "reading until the last fragment before stopping or checkpointing"
            )

    def _merge(self) -> dict[str, Any]:
        whole: dict[str, Any] = {"_id": self._fragments[-1]["_id"]}
        for part in self._fragments:
            for name in part:
                if name in ("_id", "splitEvent"):
                    continue
                if name in whole:
                    self._fail(f"field {name!r} appears in more than one fragment")
                whole[name] = part[name]
        return whole

    def _fail(self, problem: str) -> NoReturn:
        key = self._fragments[0].get("documentKey") if self._fragments else None
        self._fragments, self._of = [], 0
        restart = (
            f"resume after the last whole event's token {_brief(self.last_whole_token)}"
            if self.last_whole_token is not None
            else "resume after the last checkpointed whole event's token"
        )
        about = f" (document key {_brief(key)})" if key is not None else ""
        raise SplitEventError(
            f"split change event{about} cannot be reassembled: {problem}. Fix: {restart}, "
            "so the server sends the event again from its first fragment; if it keeps "
            "failing, re-read the document by key or re-snapshot the collection",
            document_key=key,
            resume_token=self.last_whole_token,
        )


def reassemble_split_events(events: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Whole change events from a stream that may hold ``$changeStreamSplitLargeEvent``
    fragments.

    Args:
        events: change events in stream order (one collection's, database's or cluster's
            stream, as one cursor returns them).

    Returns:
        An iterator of whole events in stream order: unsplit events as they came, split ones
        merged (see ``SplitEventReassembler.push``). Lazy: reads ``events`` as it is consumed.

    Raises:
        SplitEventError: a fragment out of order, missing or first seen mid-event, or
            ``events`` ending inside a split event.
    """
    reassembler = SplitEventReassembler()
    for event in events:
        whole = reassembler.push(event)
        if whole is not None:
            yield whole
    reassembler.finish()


def _split_position(split: Any) -> tuple[int, int] | None:
    if not isinstance(split, Mapping):
        return None
    fragment, of = split.get("fragment"), split.get("of")
    for number in (fragment, of):
        if not isinstance(number, int) or isinstance(number, bool):
            return None
    if not 1 <= fragment <= of:
        return None
    return fragment, of


def _is_bson_object_too_large(error: BaseException) -> bool:
    if getattr(error, "code", None) == BSON_OBJECT_TOO_LARGE_CODE:
        return True
    details = getattr(error, "details", None)
    if isinstance(details, Mapping) and (
        details.get("code") == BSON_OBJECT_TOO_LARGE_CODE
        or details.get("codeName") == BSON_OBJECT_TOO_LARGE_NAME
    ):
        return True
    text = str(error)
    return BSON_OBJECT_TOO_LARGE_NAME in text or bool(_BSON_SIZE_IN_MESSAGE.search(text))


def _version_tuple(version: str | Sequence[int]) -> tuple[int, int, int]:
    raw = version.split(".") if isinstance(version, str) else [str(p) for p in version]
    parts: list[int] = []
    for piece in raw[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    padded = [*parts, 0, 0, 0]
    return padded[0], padded[1], padded[2]


def _brief(value: Any, limit: int = 120) -> str:
    text = repr(dict(value)) if isinstance(value, Mapping) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
