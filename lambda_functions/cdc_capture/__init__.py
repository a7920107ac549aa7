"""Change capture: DocumentDB (or the embedded stand-in) change streams, AWS DMS output files and
MQ/SQS messages into raw-zone batches of one format."""

from lambda_functions.cdc_capture.capture import CaptureResult, capture_changes
from lambda_functions.cdc_capture.change_source import (
    ChangeSource,
    ChangeStreamCursor,
    open_source,
)
from lambda_functions.cdc_capture.demo_workload import DemoWorkload, WorkloadRun
from lambda_functions.cdc_capture.documentdb_source import DocumentDBChangeSource
from lambda_functions.cdc_capture.embedded_source import (
    EmbeddedChangeStream,
    EmbeddedChangeStreamSource,
)
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
    "DemoWorkload",
    "DocumentDBChangeSource",
    "EmbeddedChangeStream",
    "EmbeddedChangeStreamSource",
    "ResumeTokenExpiredError",
    "SnapshotProgress",
    "SourceConnectionError",
    "WorkloadRun",
    "capture_changes",
    "open_source",
    "token_position",
    "verify_batches",
]
