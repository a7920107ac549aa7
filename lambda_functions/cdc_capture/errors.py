"""Errors of the capture stage; each message says what happened and what to do about it."""

from __future__ import annotations


class CaptureError(RuntimeError):
    """Capture cannot go on; the message says why and what to do."""


class ResumeTokenExpiredError(CaptureError):
    """The change stream no longer holds the saved position: changes may have been missed."""


class ChangeStreamsDisabledError(CaptureError):
    """The collection has no change stream to read (DocumentDB enables them per collection)."""


class ConcurrentCaptureError(CaptureError):
    """Another capture published the batch number this run was about to publish."""


class SourceConnectionError(CaptureError):
    """The source database cannot be reached or authenticated against (credentials masked)."""


class CollectionNotFoundError(CaptureError):
    """The source has no such collection (often a typo in LAKEHOUSE_COLLECTIONS); the message
    lists the closest existing names."""
