"""A local AWS Lambda runtime: ``LocalLambdaRuntime`` stands in for ``boto3.client("lambda")``.

Modules by job: ``runtime`` (the client), ``invoke_api`` (request checks, response, service
errors), ``worker_pool`` and ``worker_protocol`` (execution environments and what they exchange
with ``worker.py``), ``environment`` (the variables a worker gets) and ``logs``.
"""

from lakehouse_local.lambda_runtime.invoke_api import (
    LocalRuntimeClosedError,
    LocalRuntimeConfigurationError,
    RequestEntityTooLargeException,
    ResourceNotFoundException,
    TooManyRequestsException,
)
from lakehouse_local.lambda_runtime.logs import InvocationRecord
from lakehouse_local.lambda_runtime.runtime import LocalLambdaRuntime

__all__ = [
    "InvocationRecord",
    "LocalLambdaRuntime",
    "LocalRuntimeClosedError",
    "LocalRuntimeConfigurationError",
    "RequestEntityTooLargeException",
    "ResourceNotFoundException",
    "TooManyRequestsException",
]
