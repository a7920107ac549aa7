"""The environment variables a local worker gets, built as Lambda builds a function's: the
function's configured variables, the ones Lambda defines (reserved), and credentials standing in for
the execution role's; nothing else of the caller's environment (AWS Lambda Developer Guide,
"Defined runtime environment variables").
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import lambda_functions
from lakehouse_local.lambda_runtime.invoke_api import LocalRuntimeConfigurationError
from lambda_functions.registry import FunctionSpec, function_environment

# Lambda's "defined runtime environment variables". The reserved ones cannot be configured on a
# function; the runtime sets them for each function, as Lambda does (_X_AMZN_TRACE_ID per
# invocation, in the worker). The credentials are reserved too, but ``environment`` may set
# them: they stand in for the execution role's.
RESERVED_ENV = {
    *("_HANDLER", "_X_AMZN_TRACE_ID", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV"),
    *("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION"),
    *("AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME"),
    *("AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "TZ"),
}
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
TASK_ROOT = str(Path(lambda_functions.__file__).resolve().parent.parent)  # /var/task in AWS
RUNTIME_DIR = str(Path(__file__).resolve().parent)  # /var/runtime in AWS: worker.py's home
RUNTIME_API = "127.0.0.1:9001"  # as in AWS; nothing listens there locally (pipes, not HTTP)
_LAMBDA_PATH = "/usr/local/bin:/usr/bin/:/bin:/opt/bin"  # PATH in AWS (after /var/lang/bin)
_LD_LIBRARY_PATH = os.pathsep.join(  # AWS's, with this Python's lib for /var/lang/lib
    (
        *(f"{sys.base_prefix}/lib", "/lib64", "/usr/lib64", RUNTIME_DIR, f"{RUNTIME_DIR}/lib"),
        *(TASK_ROOT, f"{TASK_ROOT}/lib", "/opt/lib"),
    )
)


def configured_region(environ: Mapping[str, str] | None = None) -> str:
    """The region this process is configured for (``AWS_REGION``, then ``AWS_DEFAULT_REGION``,
    as botocore reads them), else ``us-east-1``: what workers get as their ``AWS_REGION``."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def configured_environments(
    functions: Mapping[str, FunctionSpec],
    environment: Mapping[str, str],
    variables: Mapping[str, str],
    region: str,
) -> dict[str, dict[str, str]]:
    """Each function's configured variables, as its deployment gives them.

    Args:
        functions: the functions by name.
        environment: variables this local deployment sets on every function.
        variables: values of the variables the functions' specs list (``function_environment``).
        region: the runtime's region; ``environment`` may repeat it as ``AWS_REGION`` /
            ``AWS_DEFAULT_REGION``, nothing else reserved.

    Returns:
        ``{function name: {variable: value}}``.

    Raises:
        LocalRuntimeConfigurationError: ``environment`` or a function sets a reserved variable,
            or a variable a spec lists has no value in ``variables`` (a ``ValueError``).
    """
    same_region = {k for k in ("AWS_REGION", "AWS_DEFAULT_REGION") if environment.get(k) == region}
    reserved = sorted(RESERVED_ENV.intersection(environment) - same_region)
    if reserved:
        raise LocalRuntimeConfigurationError(
            f"environment sets {reserved}, which Lambda reserves and this runtime sets for each "
            "function; remove them from environment (pass region= to choose AWS_REGION)"
        )
    try:
        configured = {
            name: {**function_environment(spec, variables), **environment}
            for name, spec in functions.items()
        }
    except ValueError as e:
        raise LocalRuntimeConfigurationError(
            f"{e}; pass their values as variables= (for the registry's functions: "
            "lakehouse_pipelines.resources.local_function_values(settings))"
        ) from None
    for name, values in configured.items():
        reserved = sorted(RESERVED_ENV.intersection(values) - set(environment))
        if reserved:
            raise LocalRuntimeConfigurationError(
                f"function {name} is configured with reserved variables {reserved}"
            )
    return configured


def worker_environment(spec: FunctionSpec, configured: Mapping[str, str], region: str) -> dict:
    """The complete environment of a new worker of ``spec``: its ``configured`` variables, the
    execution role's credentials (``configured`` ones, else this process's, only those set), the
    variables Lambda defines for the function, and ``PYTHONPATH`` = this process's ``sys.path``
    so the worker imports the same code."""
    now = datetime.now(UTC)
    stream = f"{now:%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = dict.fromkeys(p or os.getcwd() for p in sys.path)  # the same code as this process
    source = configured if any(k in configured for k in CREDENTIAL_ENV) else os.environ
    credentials = {k: source[k] for k in CREDENTIAL_ENV if source.get(k)}
    return {
        # unreserved variables Lambda sets, which the function's configuration may override
        "LANG": "en_US.UTF-8",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{_LAMBDA_PATH}",
        "LD_LIBRARY_PATH": _LD_LIBRARY_PATH,
        **{k: v for k, v in configured.items() if k not in CREDENTIAL_ENV},
        **credentials,
        # reserved: set by Lambda for each function
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": stream,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{python}",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "TZ": ":UTC",
        "AWS_LAMBDA_RUNTIME_API": RUNTIME_API,
        "LAMBDA_TASK_ROOT": TASK_ROOT,
        "LAMBDA_RUNTIME_DIR": RUNTIME_DIR,
        "_HANDLER": spec.handler,
        "_LOCAL_LAMBDA_PARENT_PID": str(os.getpid()),
        "PYTHONPATH": os.pathsep.join(paths),
    }
