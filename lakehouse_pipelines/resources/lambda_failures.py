"""How a failed Lambda invocation becomes a step failure: its kind, its message, its fix.

Every failure names the function, the cause and what to change. Its kind
(``lambda_functions.errors.error_kind`` of the ``errorType`` or the Lambda API error code) decides
the retry: ``Failure(allow_retries=False)`` for a terminal one, so the step's ``RetryPolicy``
(``lakehouse_pipelines.defs.policies.LAMBDA_RETRY_POLICY``) retries only failures that may clear
by themselves (AWS Lambda API Reference, "Invoke", Errors; Developer Guide, "AWS Lambda function
errors in Python").
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError
from dagster import Failure, MetadataValue

from lambda_functions.errors import (
    ErrorKind,
    LakehouseError,
    TerminalError,
    TransientError,
    error_kind,
)

# Invoke errors with which the Lambda service refuses to run the function at all
# (https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html#API_Invoke_Errors), and the fix.
REFUSED_INVOKE_HINTS = {
    "ResourceNotFoundException": "Deploy it (sam deploy -t deploy/template.yaml, see deploy/) "
    "or check LAKEHOUSE_FUNCTION_PREFIX and AWS_REGION.",
    "AccessDeniedException": "Grant the orchestrator's role lambda:InvokeFunction on the "
    "function (or check AWS_PROFILE / the credentials in use).",
    "TooManyRequestsException": "Lambda throttled the invoke: lower LAKEHOUSE_FANOUT_CONCURRENCY "
    "or the lakehouse_lambda pool's slots (deploy/dagster.yaml) below the function's reserved "
    "concurrency, or raise that (ReservedConcurrentExecutions in deploy/template.yaml); then "
    "re-run the step.",
}
# Refusals a retry cannot fix (the function is missing, the caller lacks permission, the request
# is malformed or too large); throttling and service faults are transient (errors.error_kind).
REFUSED_INVOKE_TERMINAL = frozenset(
    {
        "AccessDeniedException",
        "InvalidParameterValueException",
        "InvalidRequestContentException",
        "RequestTooLargeException",
        "ResourceNotFoundException",
    }
)


class MissingAwsSettingError(TerminalError, ValueError):
    """AWS cannot be reached as configured; the message names the setting to change."""


class FunctionCallError(LakehouseError, RuntimeError):
    """A plain invoke (``LambdaPipes.call``) failed: Lambda refused it or the function raised.

    ``error_type`` is the Lambda API error code or the function error's ``errorType``; ``kind``
    is its ``lambda_functions.errors.error_kind`` (transient, terminal or unknown)."""

    def __init__(self, function_name: str, error_type: str, message: str):
        super().__init__(f"Lambda function {function_name} failed with {error_type}: {message}")
        self.function_name = function_name
        self.error_type = error_type
        self.kind = error_kind(error_type)


NO_REGION_HINT = (
    "No AWS region is configured: set AWS_REGION to the region of the Lambda functions, the lake "
    "bucket and CloudWatch (e.g. AWS_REGION=eu-west-1), or set region in the AWS profile "
    "(aws configure set region eu-west-1)."
)
NO_CREDENTIALS_HINT = (
    "No AWS credentials were found: run `aws configure` (or `aws sso login --profile <name>` and "
    "set AWS_PROFILE), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; on AWS compute, attach "
    "a role to it."
)


def refused_failure(name: str, error: ClientError) -> Failure:
    """The step failure for an invoke the Lambda service refused (the function never ran)."""
    code = error.response.get("Error", {}).get("Code", "ClientError")
    message = error.response.get("Error", {}).get("Message", str(error))
    if code == "ResourceNotFoundException":
        lead = f"Lambda function {name!r} does not exist ({message})."
    else:
        lead = f"Lambda refused to invoke {name!r}: {code}: {message}."
    hint = REFUSED_INVOKE_HINTS.get(code, "The function did not run; fix the cause and re-run.")
    kind: ErrorKind = "terminal" if code in REFUSED_INVOKE_TERMINAL else error_kind(code)
    return kind_failure(
        f"{lead} {hint}",
        kind,
        {
            "function_name": MetadataValue.text(name),
            "error_code": MetadataValue.text(code),
            "error_message": MetadataValue.text(message),
        },
    )


def function_failure(name: str, request_id: str, log_tail: str, error: Exception) -> Failure:
    """The step failure for a function error: its type, message, stack trace and log tail."""
    payload: dict[str, Any] = {}
    text = str(error)
    start = text.find("{")
    if start >= 0:  # PipesLambdaClient puts the error payload in the message, as JSON
        with contextlib.suppress(json.JSONDecodeError):
            payload = json.loads(text[start:])
    error_type = payload.get("errorType", "Unknown")
    message = payload.get("errorMessage", text)
    hint = {
        "Sandbox.Timedout": "The function ran past its timeout: raise timeout_s in "
        "lambda_functions/registry.py (and the deployment), or lower the batch size.",
        "Runtime.OutOfMemory": "The function ran out of memory: raise memory_mb in "
        "lambda_functions/registry.py, or lower the batch size.",
    }.get(error_type, "Nothing was committed by the failed step; fix the cause and re-run.")
    stack = "".join(payload.get("stackTrace", []))
    return kind_failure(
        f"Lambda function {name} failed with {error_type}: {message}\n{hint}",
        error_kind(error_type),
        {
            "function_name": MetadataValue.text(name),
            "request_id": MetadataValue.text(request_id),
            "error_type": MetadataValue.text(error_type),
            "error_message": MetadataValue.text(message),
            "stack_trace": MetadataValue.text(stack or "(none)"),
            "log_tail": MetadataValue.md(f"```\n{log_tail[-3000:]}\n```"),
        },
    )


def kind_failure(
    description: str, kind: ErrorKind, metadata: Mapping[str, Any] | None = None
) -> Failure:
    """A step failure of ``kind``: never retried when terminal, else left to the retry policy."""
    return Failure(
        description=description,
        metadata={**(metadata or {}), "error_kind": MetadataValue.text(kind)},
        allow_retries=kind != "terminal",
    )


def failure_kind(error: BaseException) -> ErrorKind:
    """The kind of a failed invocation: the ``error_kind`` a ``Failure`` of this module carries,
    the kind of a ``LakehouseError``, else ``"unknown"``."""
    if isinstance(error, Failure):
        recorded = getattr((error.metadata or {}).get("error_kind"), "value", None)
        if recorded in ("terminal", "transient"):
            return recorded
        return "terminal" if not error.allow_retries else "unknown"
    if isinstance(error, TransientError):
        return "transient"
    if isinstance(error, TerminalError):
        return "terminal"
    return "unknown"


def unbuilt_kind(error: BaseException) -> ErrorKind:
    """A request that could not be built fails the same way on every retry (a bad partition
    key, a refused table name), unless its error says it is transient."""
    return "transient" if isinstance(error, TransientError) else "terminal"
