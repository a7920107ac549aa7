"""Errors of the capture stage; each message says what happened and what to do about it.

Each concrete error has a kind (``lambda_functions.errors``): terminal when the same capture would
fail the same way again (an expired resume token, change streams off, a misspelt collection, bad
credentials or TLS settings), transient when a retry may succeed (a concurrent capture won the
race for the batch number, the cluster could not be reached in time). All keep ``RuntimeError``
as their builtin base through ``CaptureError``.
"""

from __future__ import annotations

from lambda_functions.errors import TerminalError, TransientError


class CaptureError(RuntimeError):
    """Capture cannot go on; the message says why and what to do. The family's base: raise one
    of its subclasses, which carry the kind."""


class ResumeTokenExpiredError(CaptureError, TerminalError):
    """The change stream no longer holds the saved position: changes may have been missed.
    Terminal: only a re-snapshot (``reset``/``auto_resnapshot``) recovers."""


class ChangeStreamsDisabledError(CaptureError, TerminalError):
    """The collection has no change stream to read (DocumentDB enables them per collection)."""


class ConcurrentCaptureError(CaptureError, TransientError):
    """Another capture published the batch number this run was about to publish. Transient: a
    retry re-reads the checkpoint and captures after the winner's batch."""


class SourceConnectionError(CaptureError):
    """The source database cannot be reached or authenticated against (credentials masked).

    The family's base, without a kind: ``SourceConfigurationError`` (terminal) or
    ``SourceUnreachableError`` (transient) is raised."""


class SourceConfigurationError(SourceConnectionError, TerminalError):
    """The connection is configured wrongly: credentials refused, a secret missing, unreadable or
    of the wrong shape, the URI variable unset, client options the driver refuses. Retrying the
    same configuration cannot help; the message names the setting to fix."""


class SourceUnreachableError(SourceConnectionError, TransientError):
    """No server answered in time (server selection or connect timeout, network error): the
    cluster may be restarting or failing over, so a retry may succeed. When it persists the cause
    is the network path or TLS setup the message lists (VPC, security group, CA bundle)."""


class CollectionNotFoundError(CaptureError, TerminalError):
    """The source has no such collection (often a typo in LAKEHOUSE_COLLECTIONS); the message
    lists the closest existing names."""


class SnapshotStalledError(CaptureError, TerminalError):
    """The snapshot cannot page past documents that have no ``_id``; the source documents must be
    fixed (they are in the batch's dead letters)."""


class UnsupportedSourceError(CaptureError, TerminalError):
    """The source cannot record a stream position (neither a postBatchResumeToken nor an
    operationTime): DocumentDB/MongoDB 4.0 or newer is required."""


class CaptureStateError(CaptureError, TerminalError):
    """The newest batch's capture state is not a change-stream capture's (e.g. the collection is
    fed by DMS files or MQ messages), so change-stream capture cannot resume from it."""
