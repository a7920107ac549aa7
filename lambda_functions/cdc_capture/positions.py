"""Ordering positions (``pos``) shared by every input, reading them from stream positions, and the
epoch-millisecond conversions of event times.

One int64 for all inputs, so batches from different inputs of one collection order correctly in
the merge (latest ``pos`` wins; ties go to the later resume-token order, see below, then the later
batch, then the later ``seq``):

- **change stream** (and MQ messages carrying change events): the event's ``clusterTime`` as
  ``(seconds << 32) | increment``; a snapshot's rows carry the position recorded before it began.
- **commit timestamps** (DMS ``TimestampColumnName``, an event without ``clusterTime``):
  ``(seconds << 32) | (microseconds << 12)``. The high 32 bits are the same Unix seconds as a
  cluster time, so the inputs agree to the second; within one second the low bits of the two
  kinds are not comparable (no input reports both), and rows with the same commit timestamp keep
  their file order through ``(batch, seq)``.

**Ties: events of one transaction.** Every change of one MongoDB transaction carries the
transaction's ``clusterTime`` (MongoDB Manual, "Change Events" > ``clusterTime``), so their
``pos`` is equal. Their order is in the resume token instead: MongoDB documents that resume tokens
(``_id._data``, a hex string) compare in the order of the stream's events (MongoDB Manual,
"Change Streams" > "Resume Tokens from Change Events": "resume tokens ... can be compared and
sorted"; DOCS-11616); the server's ``ResumeTokenData`` encodes, after ``clusterTime``, the token
``version``, ``tokenType``, ``txnOpIndex`` (the event's place in the transaction),
``fromInvalidate``, the collection ``uuid`` and the document key. A queue relay (SQS standard
queues do not keep order) may deliver those events in any order and in different deliveries, so
the delivery order ``seq`` cannot break the tie. ``token_order`` turns the token into a ``seq``
that orders like the token and is comparable between batches (``TOKEN_ORDER_BASE`` and up); the
merge compares such ``seq`` values before the batch (``lake.table_layout.stream_order``). Inputs
without a MongoDB token (DMS files, snapshots, DocumentDB's tokens, whose layout is not
documented) keep their delivery ``seq``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bson.datetime_ms import DatetimeMS

from lambda_functions.errors import TerminalError
from lambda_functions.lake.raw_manifest import TOKEN_ORDER_BASE


class CommitPositionRangeError(TerminalError, ValueError):
    """A commit time outside 1970-2038 cannot be a stream position (``pos`` is a non-negative
    int64 of seconds << 32); the input carrying it is a dead letter."""


# A source that can only tell a cluster time (no resume token) returns this position shape:
# ``{"startAtOperationTime": {"t": seconds, "i": increment}}``.
OPERATION_TIME_KEY = "startAtOperationTime"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cluster_position(seconds: int, increment: int) -> int:
    """``pos`` of a cluster time (a BSON ``Timestamp``)."""
    return (seconds << 32) | increment


def event_position(event: Mapping[str, Any]) -> int | None:
    """``pos`` of a change event's ``clusterTime`` (a BSON ``Timestamp``), None without one.
    Drop markers carry it as ``drop_pos``, so the merge applies a drop by position."""
    cluster_time = event.get("clusterTime")
    if hasattr(cluster_time, "time") and hasattr(cluster_time, "inc"):
        return cluster_position(cluster_time.time, cluster_time.inc)
    return None


def commit_position(moment: datetime | DatetimeMS) -> int:
    """``pos`` of a commit timestamp with microseconds (see the module docstring).

    Raises:
        ValueError: the moment is before 1970 or from 2038 on (a position's seconds are 31 bits).
    """
    if isinstance(moment, DatetimeMS):
        seconds, milli = divmod(int(moment), 1000)
        micro = milli * 1000
    else:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds, micro = divmod((moment - _EPOCH) // timedelta(microseconds=1), 1_000_000)
    if not 0 <= seconds < 2**31:  # the pos must stay a non-negative int64
        raise CommitPositionRangeError(
            f"{moment!r} is outside the range of commit positions (1970-2038)"
        )
    return (seconds << 32) | (micro << 12)


def millis(value: datetime | DatetimeMS) -> int:
    """Exact epoch milliseconds of a datetime, naive meaning UTC as in BSON (``event_time``;
    float seconds * 1000 can land one millisecond short); a ``DatetimeMS`` (a BSON date outside
    Python's years 1-9999) is its milliseconds."""
    if isinstance(value, DatetimeMS):
        return int(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(milliseconds=1)


def from_millis(value: int) -> datetime:
    """The UTC datetime of epoch milliseconds (a BSON datetime)."""
    return _EPOCH + timedelta(milliseconds=value)


def operation_time_position(seconds: int, increment: int) -> dict[str, dict[str, int]]:
    """The position of a source that knows only the cluster time."""
    return {OPERATION_TIME_KEY: {"t": seconds, "i": increment}}


def token_position(token: Mapping[str, Any] | None) -> int | None:
    """The cluster time in a stream position as a ``pos`` (``t << 32 | i``), if it can be read.

    MongoDB's resume tokens (and the embedded source's) are KeyString hex starting with ``82``
    followed by the 8-byte cluster time; a ``{"startAtOperationTime": {"t", "i"}}`` position
    reads directly. DocumentDB's tokens have another layout and give ``None``: positions then
    come from the events' ``clusterTime``.
    """
    if not isinstance(token, Mapping):
        return None
    at = token.get(OPERATION_TIME_KEY)
    if isinstance(at, Mapping) and isinstance(at.get("t"), int) and isinstance(at.get("i"), int):
        return cluster_position(at["t"], at["i"])
    data = token.get("_data")
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return int(data[2:18], 16)
    except ValueError:
        return None


# The KeyString fields that open every event token of one token version: ``version`` 1 or 2
# (``2B02``/``2B04``: a one-byte integer, shifted left by one) and ``tokenType`` 128, an event
# token (``2C0100``). Skipped so the 62 bits kept start at ``txnOpIndex``.
_EVENT_TOKEN_HEADERS = ("2B022C0100", "2B042C0100")
_HEX_DIGITS = frozenset("0123456789ABCDEF")


def token_order(token: Mapping[str, Any] | None, pos: int) -> int | None:
    """The ``seq`` of a change event that orders it among the events of its ``clusterTime`` as
    its resume token does, comparable between batches; ``None`` when the token cannot order it.

    Resume tokens compare (as ``_data`` hex strings) in the stream's order (see the module
    docstring). Events with the same ``pos`` share the token's first 18 hex digits (``82`` and
    the cluster time); the value is ``TOKEN_ORDER_BASE`` plus the next 62 bits (after the event
    token's version and tokenType, which every such event shares), so ``a <= b`` whenever token
    ``a`` sorts before ``b``. Two tokens that differ only after those bits (never for events of
    one transaction, whose ``txnOpIndex`` comes first) get the same value: the merge then falls
    back to delivery order, as before.

    Args:
        token: the event's ``_id`` (``{"_data": hex}``).
        pos: the event's ``pos`` (from its ``clusterTime``).

    Returns:
        An int in ``[TOKEN_ORDER_BASE, 2**63)``, or ``None``: no ``_data``, not MongoDB's
        KeyString layout (DocumentDB's tokens, a relay's own ids), or a token whose cluster time
        is not the event's (it cannot be this event's token).
    """
    if not isinstance(token, Mapping) or token_position(token) != pos:
        return None
    data = token.get("_data")
    if not isinstance(data, str):
        return None
    rest = data[18:].upper()
    if not _HEX_DIGITS.issuperset(rest):
        return None
    for header in _EVENT_TOKEN_HEADERS:
        if rest.startswith(header):
            rest = rest[len(header) :]
            break
    return TOKEN_ORDER_BASE + (int(rest[:16].ljust(16, "0"), 16) >> 2)
