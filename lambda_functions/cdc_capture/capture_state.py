"""Capture state: where change-stream capture of one collection resumes, stored in each batch's
manifest (and cached in ``_checkpoint.json``) as a small JSON object.

Two phases: ``SnapshotState`` while the initial load pages through the collection, and
``StreamState`` once it reads the change stream after a saved resume token. ``from_json`` reads
every state capture ever wrote (older ones lack ``start_time``/``token_time``); ``to_json`` writes
the same keys back, so a state read and written again is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lambda_functions.cdc_capture.errors import CaptureStateError
from lambda_functions.lake.extended_json import decode_document, encode_value

__all__ = [
    "CaptureState",
    "SnapshotState",
    "StreamState",
    "capture_state_from_json",
    "loaded_token",
    "storable_token",
]


def storable_token(token: Mapping[str, Any]) -> dict[str, Any]:
    """A resume token as JSON the manifest can hold: as is when it is plain JSON (MongoDB's
    ``{"_data": hex}``), else wrapped as canonical extended JSON (``{"$ejson": ...}``)."""
    plain = dict(token)
    if all(isinstance(v, str | int | float | bool) or v is None for v in plain.values()):
        return plain
    return {"$ejson": encode_value(plain)}


def loaded_token(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The token ``storable_token`` stored, with its BSON types back."""
    if set(stored) == {"$ejson"}:
        return dict(decode_document(stored["$ejson"]))
    return dict(stored)


@dataclass(frozen=True)
class SnapshotState:
    """The initial load is under way: documents are read in ``_id`` order after ``last_id``.

    Attributes:
        start_token: the stream position recorded *before* the first document was read
            (``storable_token`` form); the stream phase resumes after it, so nothing between the
            snapshot's start and its end can be missed.
        start_pos: that position as a ``pos`` (cluster time ``t << 32 | i``; 0 when unknown).
        start_time: epoch seconds when the position was taken; ``None`` in states written before
            the field existed.
        last_id: canonical extended JSON of the last snapshotted ``_id``; ``None`` before the
            first chunk.
        rows: documents published by all chunks of this snapshot so far.
    """

    start_token: dict[str, Any]
    start_pos: int
    start_time: float | None
    last_id: str | None
    rows: int
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    phase = "snapshot"

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON object (the keys capture always wrote)."""
        out: dict[str, Any] = {
            "phase": self.phase,
            "start_token": self.start_token,
            "start_pos": self.start_pos,
        }
        if self.start_time is not None:
            out["start_time"] = self.start_time
        return out | {"last_id": self.last_id, "rows": self.rows} | self.extra


@dataclass(frozen=True)
class StreamState:
    """The snapshot is complete: capture reads the change stream after ``resume_token``.

    Attributes:
        resume_token: the ``_id`` of the last event published (or a post-batch resume token),
            in ``storable_token`` form; ``resumeAfter`` takes it back (``loaded_token``).
        token_time: epoch seconds at which the token was current (the last event's time); used
            to re-save a quiet collection's token before the change-stream retention expires it.
            ``None`` in states written before the field existed.
    """

    resume_token: dict[str, Any]
    token_time: float | None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    phase = "stream"

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON object (the keys capture always wrote)."""
        out: dict[str, Any] = {"phase": self.phase, "resume_token": self.resume_token}
        if self.token_time is not None:
            out["token_time"] = self.token_time
        return out | self.extra


CaptureState = SnapshotState | StreamState

_SNAPSHOT_KEYS = frozenset({"phase", "start_token", "start_pos", "start_time", "last_id", "rows"})
_STREAM_KEYS = frozenset({"phase", "resume_token", "token_time"})


def capture_state_from_json(raw: Mapping[str, Any], namespace: str = "") -> CaptureState | None:
    """The typed state of a manifest's or checkpoint's ``state`` object.

    Args:
        raw: the JSON object capture stored (``Checkpoint.state``); ``{}`` before any batch.
        namespace: ``"database.collection"``, quoted in errors.

    Returns:
        ``None`` for an empty object (nothing captured yet), else the phase's state. Keys this
        version does not know are kept in ``extra`` and written back by ``to_json``.

    Raises:
        CaptureStateError: the state is another input's (``phase`` "dms" or "mq": the collection
            is fed by DMS files or MQ messages) or lacks a field its phase needs.
    """
    if not raw:
        return None
    phase = raw.get("phase")
    try:
        if phase == "snapshot":
            return SnapshotState(
                start_token=raw["start_token"],
                start_pos=raw["start_pos"],
                start_time=raw.get("start_time"),
                last_id=raw["last_id"],
                rows=raw["rows"],
                extra={k: v for k, v in raw.items() if k not in _SNAPSHOT_KEYS},
            )
        if phase == "stream":
            return StreamState(
                resume_token=raw["resume_token"],
                token_time=raw.get("token_time"),
                extra={k: v for k, v in raw.items() if k not in _STREAM_KEYS},
            )
    except KeyError as missing:
        raise CaptureStateError(
            f"{namespace}: the newest batch's capture state (phase {phase!r}) lacks {missing}; "
            "re-snapshot the collection (capture_changes(..., reset=True))"
        ) from None
    raise CaptureStateError(
        f"{namespace}: the newest batch was published by the {phase!r} input, not by change-stream "
        "capture, so there is no resume token to continue from. Feed each collection from one "
        "input, or re-snapshot it from the change stream (capture_changes(..., reset=True))"
    )
