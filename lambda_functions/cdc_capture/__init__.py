"""Change capture: DocumentDB change streams, AWS DMS output files and MQ/SQS messages into
raw-zone batches of one format. The embedded stand-in for DocumentDB and the demo workload live in
``lakehouse_local`` (not shipped to AWS); ``open_source`` imports them for ``source_kind`` embedded."""

from lambda_functions.cdc_capture.capture import CaptureResult, capture_changes
from lambda_functions.cdc_capture.change_source import (
    ChangeSource,
    ChangeStreamCursor,
    EmbeddedSourceUnavailableError,
    open_source,
)
from lambda_functions.cdc_capture.documentdb_source import DocumentDBChangeSource
from lambda_functions.cdc_capture.errors import (
    CaptureError,
    ChangeStreamsDisabledError,
    ConcurrentCaptureError,
    ResumeTokenExpiredError,
    SourceConnectionError,
)
from lambda_functions.cdc_capture.positions import token_position
from lambda_functions.cdc_capture.snapshot import SnapshotProgress
from lambda_functions.cdc_capture.verify import BatchVerification, verify_batches

__all__ = [
    "BatchVerification",
    "CaptureError",
    "CaptureResult",
    "ChangeSource",
    "ChangeStreamCursor",
    "ChangeStreamsDisabledError",
    "ConcurrentCaptureError",
    "DocumentDBChangeSource",
    "EmbeddedSourceUnavailableError",
    "ResumeTokenExpiredError",
    "SnapshotProgress",
    "SourceConnectionError",
    "capture_changes",
    "open_source",
    "token_position",
    "verify_batches",
]
