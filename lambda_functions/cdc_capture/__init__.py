"""Change capture: DocumentDB (or the embedded stand-in) change streams into raw-zone batches."""

from lambda_functions.cdc_capture.capture import (
    BatchVerification,
    CaptureError,
    CaptureResult,
    ChangeStreamsDisabledError,
    ConcurrentCaptureError,
    ResumeTokenExpiredError,
    SnapshotProgress,
    capture_changes,
    token_position,
    verify_batches,
)
from lambda_functions.cdc_capture.change_source import (
    ChangeSource,
    ChangeStreamCursor,
    open_source,
)
from lambda_functions.cdc_capture.demo_workload import DemoWorkload, WorkloadRun
from lambda_functions.cdc_capture.embedded_source import (
    EmbeddedChangeStream,
    EmbeddedChangeStreamSource,
)

__all__ = [
    "BatchVerification",
    "CaptureError",
    "CaptureResult",
    "ChangeSource",
    "ChangeStreamCursor",
    "ChangeStreamsDisabledError",
    "ConcurrentCaptureError",
    "DemoWorkload",
    "EmbeddedChangeStream",
    "EmbeddedChangeStreamSource",
    "ResumeTokenExpiredError",
    "SnapshotProgress",
    "WorkloadRun",
    "capture_changes",
    "open_source",
    "token_position",
    "verify_batches",
]
