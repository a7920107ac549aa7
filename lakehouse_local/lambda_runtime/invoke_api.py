"""The boto3-Lambda-client-shaped surface of the local runtime: the service errors ``invoke`` raises
(``runtime.exceptions``), the checks Lambda makes before running a function (parameter model, name,
invocation type, payload size and JSON, client context), the response dict with its streaming
``Payload``, and the runtime's own configuration and closed errors. Source of truth: AWS Lambda API
Reference, "Invoke" (request parameters, response elements, errors); botocore's ``lambda`` model.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import io
import json
import re
import secrets
import time
import uuid
from typing import Any, ClassVar, Self

import botocore.session
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from lambda_functions.errors import TerminalError

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # bytes, RequestResponse request
EVENT_PAYLOAD_LIMIT = 1024 * 1024  # bytes, Event request (256 KB until October 2025)
INVOCATION_TYPES = ("Event", "RequestResponse", "DryRun")
LOG_TYPES = ("Tail", "None")
FUNCTION_NAME = re.compile(
    r"(arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):)?"
    r"((?P<account>\d{12}):function:)?(?P<name>[a-zA-Z0-9\-_.]+)(:(?P<qualifier>\$LATEST|[a-zA-Z0-9\-_]+))?"
)


class LambdaServiceError(ClientError):
    """An error the Lambda service returns: a ``ClientError`` with Lambda's code and HTTP status.

    Constructed like botocore's modeled exceptions (``error_response, operation_name``); use
    ``create(message)`` to build one.
    """

    code: ClassVar[str] = "ServiceException"
    http_status: ClassVar[int] = 500

    @classmethod
    def create(cls, message: str, **fields: str) -> Self:
        """An ``Invoke`` error with this class's code and status, as boto3 raises it.

        Args:
            message: the service's message (``Error.Message``).
            **fields: extra top-level fields of the error response (e.g. ``Reason``).

        Returns:
            The exception, whose ``response`` has the shape of botocore's error responses.
        """
        response = {
            "Error": {"Code": cls.code, "Message": message},
            "ResponseMetadata": {
                "RequestId": str(uuid.uuid4()),
                "HTTPStatusCode": cls.http_status,
                "HTTPHeaders": {},
                "RetryAttempts": 0,
            },
            "Type": "User",
            "Message": message,
            **fields,
        }
        return cls(response, "Invoke")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.response, self.operation_name)


class ResourceNotFoundException(LambdaServiceError):
    code, http_status = "ResourceNotFoundException", 404


class TooManyRequestsException(LambdaServiceError):
    code, http_status = "TooManyRequestsException", 429


class RequestEntityTooLargeException(LambdaServiceError):
    code, http_status = "RequestEntityTooLargeException", 413


class InvalidParameterValueException(LambdaServiceError):
    code, http_status = "InvalidParameterValueException", 400


class InvalidRequestContentException(LambdaServiceError):
    code, http_status = "InvalidRequestContentException", 400


class ValidationException(LambdaServiceError):
    code, http_status = "ValidationException", 400


class LocalLambdaExceptions:
    """``runtime.exceptions``: the same names as ``boto3.client("lambda").exceptions``."""

    ClientError = ClientError
    ResourceNotFoundException = ResourceNotFoundException
    TooManyRequestsException = TooManyRequestsException
    RequestEntityTooLargeException = RequestEntityTooLargeException
    InvalidParameterValueException = InvalidParameterValueException
    InvalidRequestContentException = InvalidRequestContentException
    ValidationException = ValidationException


@functools.cache
def invoke_input_shape() -> Any:
    """botocore's model of the Invoke request (loaded on first use, not at import)."""
    model = botocore.session.get_session().get_service_model("lambda")
    return model.operation_model("Invoke").input_shape


def enum_value(value: str, field: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else Lambda's ``ValidationException`` naming
    ``field``."""
    if value not in allowed:
        raise ValidationException.create(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy "
            f"constraint: Member must satisfy enum value set: [{', '.join(allowed)}]"
        )
    return value


def payload_text(payload: Any, limit: int) -> str:
    """The request ``Payload`` (bytes, str or a file-like object) as JSON text, ``"{}"`` when
    empty; ``RequestEntityTooLargeException`` over ``limit`` bytes,
    ``InvalidRequestContentException`` when it is not JSON."""
    data = payload.read() if hasattr(payload, "read") else payload
    data = data.encode() if isinstance(data, str) else bytes(data)
    if len(data) > limit:
        raise RequestEntityTooLargeException.create(
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
        )
    if not data:
        return "{}"  # Lambda hands the handler an empty object when there is no payload
    try:
        text = data.decode("utf-8")
        json.loads(text)
    except ValueError as e:
        raise InvalidRequestContentException.create(
            f"Could not parse request body into json: Could not parse payload into json: {e}"
        ) from None
    return text


def client_context(encoded: str | None) -> dict[str, Any] | None:
    """The decoded ``ClientContext`` (base64 of a JSON object), ``None`` when absent;
    ``InvalidRequestContentException`` when it is not one."""
    if encoded is None:
        return None
    try:
        value = json.loads(base64.b64decode(encoded, validate=True))
    except (ValueError, binascii.Error):
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestContentException.create(
            "Client context must be a valid Base64-encoded JSON object."
        )
    return value


_FIELD_HEADERS = {  # response fields that Lambda also sends as HTTP headers
    "ExecutedVersion": "x-amz-executed-version",
    "FunctionError": "x-amz-function-error",
    "LogResult": "x-amz-log-result",
}


def response(status: int, request_id: str, payload: bytes = b"", **fields: Any) -> dict[str, Any]:
    """The dict boto3's ``invoke`` returns: ``StatusCode``, ``fields`` (``FunctionError``,
    ``LogResult``, ``ExecutedVersion``, also sent as headers), ``ResponseMetadata`` and
    ``Payload`` as a botocore ``StreamingBody``."""
    headers = {
        "date": email.utils.formatdate(usegmt=True),
        "content-type": "application/json",
        "content-length": str(len(payload)),
        "connection": "keep-alive",
        "x-amzn-requestid": request_id,
        "x-amzn-remapped-content-length": "0",
        "x-amzn-trace-id": f"root={trace_root()};sampled=0",
    }
    headers.update({header: fields[f] for f, header in _FIELD_HEADERS.items() if f in fields})
    return {
        "ResponseMetadata": {
            "RequestId": request_id,
            "HTTPStatusCode": status,
            "HTTPHeaders": headers,
            "RetryAttempts": 0,
        },
        "StatusCode": status,
        **fields,
        "Payload": StreamingBody(io.BytesIO(payload), len(payload)),
    }


def trace_root() -> str:
    """A new X-Ray trace id root (``1-<epoch seconds hex>-<24 hex digits>``)."""
    return f"1-{int(time.time()):08x}-{secrets.token_hex(12)}"


class LocalRuntimeConfigurationError(TerminalError, ValueError):
    """The local runtime was built with settings Lambda would refuse (reserved variables, a
    function variable without a value, a negative concurrency); the message names the fix."""


class LocalRuntimeClosedError(TerminalError, RuntimeError):
    """``invoke`` on a ``LocalLambdaRuntime`` that was closed; create a new one."""
