"""A local AWS Lambda runtime: ``LocalLambdaRuntime`` stands in for ``boto3.client("lambda")``."""

from lakehouse_local.lambda_runtime.runtime import (
    InvocationRecord,
    LocalLambdaRuntime,
    RequestEntityTooLargeException,
    ResourceNotFoundException,
    TooManyRequestsException,
)

__all__ = [
    "InvocationRecord",
    "LocalLambdaRuntime",
    "RequestEntityTooLargeException",
    "ResourceNotFoundException",
    "TooManyRequestsException",
]
