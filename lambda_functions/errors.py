"""The product's errors, split by what a retry can do about them.

Every error the data plane raises on purpose derives from ``LakehouseError`` and from exactly one
of two kinds:

- ``TerminalError``: bad input or configuration. The same request fails the same way however often
  it is retried; the message names the fix. Dagster fails the step without retrying.
- ``TransientError``: throttling, a serialization conflict, a lock or statement timeout, a lost
  commit race. The same request may succeed later; Dagster retries it with backoff, a bounded
  number of times (``lakehouse_pipelines.defs.policies``).

Errors cross the Lambda boundary by name only: Lambda reports a function error as
``{"errorType": <class name>, "errorMessage": ...}`` (AWS Lambda Developer Guide, "AWS Lambda
function errors in Python"). ``error_kind`` maps such a name back to its kind, so the Dagster side
can decide on a retry without importing any stage: the names are listed here, by kind, as part of
the contract. Class names are therefore unique across the product (a test checks both).

Concrete errors keep the builtin base they always had (``ValueError``, ``RuntimeError``,
``TimeoutError``...) beside their kind, so ``except ValueError`` callers keep working.
"""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal["terminal", "transient", "unknown"]


class LakehouseError(Exception):
    """Base of every error the product raises on purpose."""


class TerminalError(LakehouseError):
    """Bad input or configuration: retrying the same request cannot help; the message says
    what to change."""


class TransientError(LakehouseError):
    """A condition that may clear by itself (throttling, serialization conflict, lock timeout,
    a lost commit race): the same request may be retried with backoff."""


# The contract's list of error names by kind (a test checks that it matches the classes: every
# ``TransientError``/``TerminalError`` subclass of every stage is listed under its kind, and nothing
# else). Each stage adds its classes here when it defines them.
TRANSIENT_ERROR_TYPES: frozenset[str] = frozenset(
    {
        "ConcurrentCaptureError",
        "ConcurrentWriteError",
        "EcsTaskNotStartedError",
        "MaskingKeyUnavailableError",
        "RedshiftSerializationError",
        "RedshiftTimeoutError",
        "SourceUnreachableError",
        "VersionTakenError",
    }
)
TERMINAL_ERROR_TYPES: frozenset[str] = frozenset(
    {
        "CaptureStateError",
        "ChangeStreamsDisabledError",
        "CollectionNotFoundError",
        "CommitPositionRangeError",
        "CorruptBatchError",
        "CorruptManifestError",
        "DiscoveryError",
        "EcsSettingsError",
        "EcsTaskRequestError",
        "EmbeddedSourceLimitError",
        "EmbeddedSourceUnavailableError",
        "FunctionConfigurationError",
        "InvalidEmfDocumentError",
        "InvalidExtendedJSONError",
        "InvalidRecordKeyError",
        "InvalidRequestError",
        "LakeBucketMissingError",
        "LakeTableMissingError",
        "LakeURIError",
        "LocalRuntimeClosedError",
        "LocalRuntimeConfigurationError",
        "Malformed",
        "MaskingKeyError",
        "MaskingRulesError",
        "MissingAwsSettingError",
        "MqIngestConfigurationError",
        "OversizedChangeEventError",
        "PipesMessagesUnreadableError",
        "PlanError",
        "RedshiftStatementError",
        "ResumeTokenExpiredError",
        "RouteEstimateError",
        "SettingsError",
        "SnapshotRangeError",
        "SnapshotStalledError",
        "SourceConfigurationError",
        "SplitEventError",
        "UnappliableUpdateError",
        "UnsafeSqlValueError",
        "UnsupportedSourceError",
        "UnsupportedTableLocationError",
        "VersionNotAvailableError",
    }
)

# Throttling and service faults Lambda itself reports (Lambda API Reference, "Invoke", Errors):
# raised by boto3's Lambda client before the function runs, so a retry may go through.
LAMBDA_TRANSIENT_ERRORS = frozenset(
    {
        "TooManyRequestsException",
        "ServiceException",
        "EC2ThrottledException",
        "ENILimitReachedException",
        "ResourceNotReadyException",
        "SnapStartTimeoutException",
        "SnapStartNotReadyException",
    }
)


def error_kind(error_type: str) -> ErrorKind:
    """The kind of an error known only by its class name.

    Args:
        error_type: a class name, e.g. the ``errorType`` of a Lambda function error payload or
            the error code of a Lambda API ``ClientError``.

    Returns:
        ``"transient"`` for a name in ``TRANSIENT_ERROR_TYPES`` or ``LAMBDA_TRANSIENT_ERRORS``;
        ``"terminal"`` for a name in ``TERMINAL_ERROR_TYPES``; ``"unknown"`` otherwise (an
        unplanned failure: Python's own errors, an out-of-memory or a timeout of the function).
    """
    if error_type in TRANSIENT_ERROR_TYPES or error_type in LAMBDA_TRANSIENT_ERRORS:
        return "transient"
    if error_type in TERMINAL_ERROR_TYPES:
        return "terminal"
    return "unknown"


# How a process that is not a Lambda function (the ECS task, ``lambda_functions.ecs_task``) tells
# its kind of failure: by exit code, which ECS reports as ``containers[].exitCode``
# (DescribeTasks). The codes are sysexits.h's: EX_DATAERR (65) for bad input or configuration,
# EX_TEMPFAIL (75) for "try again later"; any other non-zero code is an unplanned failure.
EXIT_CODES: dict[ErrorKind, int] = {"terminal": 65, "transient": 75, "unknown": 1}


def exit_code(error: BaseException) -> int:
    """The exit code that tells ``error``'s kind (``EXIT_CODES``)."""
    if isinstance(error, TransientError):
        return EXIT_CODES["transient"]
    if isinstance(error, TerminalError):
        return EXIT_CODES["terminal"]
    return EXIT_CODES["unknown"]


def exit_code_kind(code: int | None) -> ErrorKind:
    """The kind of failure a non-zero exit code tells (``EXIT_CODES``); ``"unknown"`` for others."""
    for kind, value in EXIT_CODES.items():
        if code == value:
            return kind
    return "unknown"
