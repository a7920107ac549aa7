"""``LocalLambdaRuntime``: runs the registry's Lambda functions on this machine behind the
``invoke`` API of ``boto3.client("lambda")``, so code written against one runs against the other.

Each function gets warm execution environments: worker processes (``worker.py``) that import the
handler once and serve invocations one at a time, with Lambda's timeout, memory limit, log format,
error payloads and response shape. See ``LocalLambdaRuntime`` for what is and is not emulated.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import fcntl
import functools
import io
import json
import logging
import math
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import botocore.session
import psutil
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.validate import validate_parameters

import lambda_functions
from lambda_functions.registry import FUNCTIONS, FunctionSpec, function_environment

logger = logging.getLogger(__name__)

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # bytes, RequestResponse request
EVENT_PAYLOAD_LIMIT = 1024 * 1024  # bytes, Event request (256 KB until October 2025)
RESPONSE_PAYLOAD_LIMIT = 6_291_556  # bytes, what Lambda lets a function return
LOG_TAIL_BYTES = 4096  # LogResult size
MEMORY_POLL_S = 0.025
WORKER_SCRIPT = str(Path(__file__).with_name("worker.py"))
# Lambda's "defined runtime environment variables". The reserved ones cannot be configured on a
# function; the runtime sets them for each function, as Lambda does (_X_AMZN_TRACE_ID per
# invocation, in the worker). The credentials are reserved too, but ``environment`` may set
# them: they stand in for the execution role's.
_RESERVED_ENV = {
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
_FUNCTION_NAME = re.compile(
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


@dataclass(frozen=True)
class InvocationRecord:
    """The figures of one finished invocation, as in its REPORT log line (for cost metrics).

    ``billed_duration_ms`` includes the init duration on a cold start, as Lambda bills since
    August 2025. ``error_type`` is the payload's ``errorType`` when the invocation failed.
    """

    request_id: str
    function_name: str
    duration_ms: float
    billed_duration_ms: int
    max_memory_used_mb: int
    memory_size_mb: int
    init_duration_ms: float | None
    error_type: str | None
    cold_start: bool


@dataclass(frozen=True)
class _Request:
    spec: FunctionSpec
    request_id: str
    invoked_function_arn: str
    payload: str
    client_context: dict[str, Any] | None
    tenant_id: str | None
    tail: bool


@dataclass(frozen=True)
class _Reply:
    kind: Literal["message", "timeout", "oom", "exit"]
    message: dict[str, Any] | None = None
    exit_detail: str = ""


class _Worker:
    """One execution environment: a worker process, its control channel and its log file.

    Used by one invocation at a time. The process leads its own process group, so killing the
    group also ends whatever the handler started, as when Lambda discards an environment.
    """

    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        self.name = spec.name
        # The log: an unlinked temporary file (nothing to clean up), the worker's fd 1 and 2,
        # O_APPEND so its child processes append too; read here with pread at our own offset.
        self._log_fd, path = tempfile.mkstemp(prefix=f"local-lambda-{spec.name}-", suffix=".log")
        os.unlink(path)
        fcntl.fcntl(
            self._log_fd, fcntl.F_SETFL, fcntl.fcntl(self._log_fd, fcntl.F_GETFL) | os.O_APPEND
        )
        self._log_offset = 0
        cmd_read, self._cmd_write = os.pipe()
        self._result_read, result_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-P", WORKER_SCRIPT, str(cmd_read), str(result_write)],
                stdin=subprocess.DEVNULL,
                stdout=self._log_fd,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(cmd_read, result_write),
                start_new_session=True,  # its own process group: see signal_group()
            )
        except BaseException:
            for fd in (self._cmd_write, self._result_read, self._log_fd):
                os.close(fd)
            raise
        finally:
            os.close(cmd_read)
            os.close(result_write)
        self._buffer = bytearray()
        self._ps = psutil.Process(self.process.pid)
        self.peak_kb = 0

    def send(self, message: dict[str, Any]) -> bool:
        """Write one command; False if the worker is gone."""
        data = json.dumps(message).encode() + b"\n"
        try:
            while data:
                data = data[os.write(self._cmd_write, data) :]
        except (BrokenPipeError, OSError):
            return False
        return True

    def wait(self, deadline: float, memory_limit_kb: int) -> _Reply:
        """The worker's next message, or the reason there is none: the deadline (monotonic) passed,
        the memory limit was exceeded (both kill the worker) or the worker exited."""
        next_poll = 0.0
        while True:
            now = time.monotonic()
            if now >= next_poll:
                self.peak_kb = max(self.peak_kb, rss := self._rss_kb())
                if rss > memory_limit_kb:
                    self.kill()
                    return _Reply("oom")
                next_poll = now + MEMORY_POLL_S
            if now >= deadline:
                self.kill()
                return _Reply("timeout")
            try:
                message = self._receive(min(next_poll, deadline) - now)
            except EOFError:
                return _Reply("exit", exit_detail=self.reap())
            if message is not None:
                self.peak_kb = max(self.peak_kb, message.get("max_rss_kb", 0))
                return _Reply("message", message)

    def read_log(self) -> bytes:
        """What the worker wrote to its log since the last call."""
        chunks = []
        while chunk := os.pread(self._log_fd, 1 << 20, self._log_offset):
            chunks.append(chunk)
            self._log_offset += len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        """End the worker and its process group now."""
        self.signal_group()
        self.process.wait()
        self._release_fds()

    def stop(self) -> None:
        """Discard the worker: an idle one exits on EOF of its command pipe (else it is killed)."""
        if self.process.returncode is None and self._cmd_write >= 0:
            os.close(self._cmd_write)
            self._cmd_write = -1
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)
        self.kill()
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            if not select.select([self._result_read], [], [], max(timeout, 0))[0]:
                return None
            chunk = os.read(self._result_read, 1 << 20)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    def _rss_kb(self) -> int:
        total = 0
        try:
            processes = [self._ps, *self._ps.children(recursive=True)]
        except psutil.Error:
            return 0
        for process in processes:
            with contextlib.suppress(psutil.Error):  # a child may exit meanwhile
                total += process.memory_info().rss
        return total // 1024

    def reap(self) -> str:
        """Collect a worker that closed its channel; describe how it exited, as Lambda does."""
        give_up = time.monotonic() + 2
        while time.monotonic() < give_up and not self._exited():
            time.sleep(0.005)
        self.kill()
        code = self.process.returncode
        if code >= 0:
            return f"exit status {code}"
        return f"signal: {(signal.strsignal(-code) or str(-code)).lower()}"

    def alive(self) -> bool:
        """The process is still running (checked without reaping it)."""
        if self.process.returncode is not None or self._exited():
            return False
        try:  # the kernel's view too: a process killed a moment ago may not be waitable yet
            return self._ps.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        except psutil.Error:
            return False

    def _exited(self) -> bool:
        try:  # WNOWAIT: leave the zombie, so its process group id cannot be reused before killpg
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, self.process.pid, flags) is not None
        except ChildProcessError:
            return True

    def signal_group(self) -> None:
        """SIGKILL the worker's process group (its handler's processes too), without reaping."""
        if self.process.returncode is None:  # not reaped yet: the group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def _release_fds(self) -> None:
        for fd in (self._cmd_write, self._result_read):
            if fd >= 0:
                os.close(fd)
        self._cmd_write = self._result_read = -1


class _FunctionPool:
    """The execution environments of one function: idle (warm) workers and an in-flight count."""

    def __init__(self, max_concurrency: int | None) -> None:
        self._max_concurrency = max_concurrency
        self._changed = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._in_flight = 0
        self._closed = False

    def acquire(self, wait_for_capacity: bool) -> _Worker | None:
        """Reserve one concurrency slot; return the most recently used idle worker that is still
        alive, if any (idle workers found dead are discarded, so the caller starts a cold one).

        At the concurrency limit, raise ``TooManyRequestsException`` (or wait, for Event)."""
        with self._changed:
            while self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
                if not wait_for_capacity or self._max_concurrency == 0:  # 0: never runs
                    reason = "ReservedFunctionConcurrentInvocationLimitExceeded"
                    raise TooManyRequestsException.create("Rate Exceeded.", Reason=reason)
                self._changed.wait()
            if self._closed:
                raise RuntimeError("LocalLambdaRuntime is closed; create a new one to invoke")
            self._in_flight += 1
            worker, dead = None, []
            while self._idle and worker is None:
                worker = self._idle.pop()
                if not worker.alive():  # died while idle: Lambda would start a new environment
                    dead.append(worker)
                    worker = None
            if worker is not None:
                self._busy.add(worker)
        for corpse in dead:
            logger.info("an idle %s worker had exited (%s): cold start", corpse.name, corpse.reap())
            corpse.stop()
        return worker

    def track(self, worker: _Worker) -> None:
        with self._changed:
            self._busy.add(worker)

    def discard(self, worker: _Worker) -> None:
        """Stop a busy worker that was lost, keeping its invocation's slot."""
        with self._changed:
            self._busy.discard(worker)
        worker.stop()

    def release(self, worker: _Worker | None, reusable: bool) -> None:
        """Give back the slot; keep the worker warm if it is ``reusable``, else stop it."""
        with self._changed:
            self._in_flight -= 1
            keep = worker is not None and reusable and not self._closed
            if worker is not None:
                self._busy.discard(worker)
                if keep:
                    self._idle.append(worker)
            self._changed.notify()
        if worker is not None and not keep:
            worker.stop()

    def close(self) -> None:
        """Stop idle workers; kill busy ones (their invocations fail with Runtime.ExitError)."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            self._changed.notify_all()
        for worker in idle:
            worker.stop()
        for worker in busy:
            worker.signal_group()


class _Sandboxes:
    """This process's workers, per function; ended at exit if the runtime was not closed."""

    def __init__(self, functions: Mapping[str, FunctionSpec], max_concurrency: int | None) -> None:
        self.owner_pid = os.getpid()
        self.pools = {name: _FunctionPool(max_concurrency) for name in functions}
        self.close = weakref.finalize(self, _close_pools, self.pools, self.owner_pid)


def _close_pools(pools: dict[str, _FunctionPool], owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child must not end its parent's workers
        for pool in pools.values():
            pool.close()


@functools.cache
def _invoke_input_shape() -> Any:
    """botocore's model of the Invoke request (loaded on first use, not at import)."""
    model = botocore.session.get_session().get_service_model("lambda")
    return model.operation_model("Invoke").input_shape


def _enum(value: str, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValidationException.create(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy "
            f"constraint: Member must satisfy enum value set: [{', '.join(allowed)}]"
        )
    return value


def _payload_text(payload: Any, limit: int) -> str:
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


def _client_context(encoded: str | None) -> dict[str, Any] | None:
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


def _response(status: int, request_id: str, payload: bytes = b"", **fields: Any) -> dict[str, Any]:
    headers = {
        "date": email.utils.formatdate(usegmt=True),
        "content-type": "application/json",
        "content-length": str(len(payload)),
        "connection": "keep-alive",
        "x-amzn-requestid": request_id,
        "x-amzn-remapped-content-length": "0",
        "x-amzn-trace-id": f"root={_trace_root()};sampled=0",
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


def _trace_root() -> str:
    return f"1-{int(time.time()):08x}-{secrets.token_hex(12)}"


def configured_region(environ: Mapping[str, str] | None = None) -> str:
    """The region this process is configured for (``AWS_REGION``, then ``AWS_DEFAULT_REGION``,
    as botocore reads them), else ``us-east-1``: what workers get as their ``AWS_REGION``."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class LocalLambdaRuntime:
    """A stand-in for ``boto3.client("lambda")`` that runs ``functions`` in local processes.

    Guarantees, per invocation, what AWS Lambda does: the response shape of boto3's ``invoke``;
    a fresh ``START``/``END``/``REPORT`` log with everything the handler wrote to fd 1 and 2
    (also from C code and child processes); Lambda's error payloads for handler exceptions,
    timeouts (``Sandbox.Timedout``), memory over ``memory_mb`` (``Runtime.OutOfMemory``) and
    crashes (``Runtime.ExitError``). Environments are reused warm between invocations (module
    state persists) and discarded after a timeout, an out-of-memory kill or a crash. Each
    finished invocation is appended to ``invocations`` and its log to ``log_dir/<name>.log``
    (``last_log(name)`` returns it); ``LogResult`` is the last 4 KB of its START..REPORT part.

    ``invoke`` is thread-safe; concurrent invocations of a function run in separate workers,
    up to ``max_concurrency`` per function (then ``TooManyRequestsException``; Event invocations
    wait for capacity instead, as Lambda's async queue does). ``close()`` (or leaving the ``with``
    block) waits for Event invocations and ends all workers; workers also exit when this process
    goes away. An idle worker that died is noticed before it is handed out and replaced by a
    cold start, as Lambda replaces a lost execution environment.

    The handler's environment is built as Lambda builds it, never from this process's:

    - the function's configured variables: the ones its ``FunctionSpec.environment`` lists, with
      their values from ``variables`` (``function_environment``, which also renders the deploy
      template), plus ``environment``, variables this local deployment sets on every function
      (e.g. ``AWS_ENDPOINT_URL`` of a test's moto server);
    - the variables Lambda defines: ``_HANDLER``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
      ``AWS_EXECUTION_ENV``, ``AWS_LAMBDA_FUNCTION_NAME``/``_MEMORY_SIZE``/``_VERSION``,
      ``AWS_LAMBDA_INITIALIZATION_TYPE``, ``AWS_LAMBDA_LOG_GROUP_NAME`` (``/aws/lambda/<name>``)
      and ``_LOG_STREAM_NAME``, ``AWS_LAMBDA_RUNTIME_API``, ``TZ=:UTC``, ``_X_AMZN_TRACE_ID``
      (per invocation), and the overridable ``LANG``, ``PATH``, ``LD_LIBRARY_PATH``. Paths are
      local stand-ins: ``LAMBDA_TASK_ROOT`` (``/var/task``) is the project directory,
      ``LAMBDA_RUNTIME_DIR`` (``/var/runtime``) this package, ``PATH`` starts with this
      Python's directory (``/var/lang/bin``), and ``PYTHONPATH`` is this process's ``sys.path``
      so the worker imports the same code;
    - credentials: Lambda injects the execution role's ``AWS_ACCESS_KEY_ID``,
      ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``. Locally they come from
      ``environment`` if it sets any of them, else from this process's environment, each only
      when set (there is no role to assume; this keeps moto-backed and real-AWS runs working).
      Nothing else of this process's environment reaches the handler: a handler that reads a
      variable its function is not configured with fails here as it fails in AWS.

    Workers' ``AWS_REGION`` is ``region`` (default: this process's ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``, else ``us-east-1``), as functions deployed in that region see it.
    Not emulated: versions and aliases (only ``$LATEST``), async retries and destinations,
    CPU scaling with memory, /tmp size, ``context.identity`` contents, the working directory
    (this process's, not ``LAMBDA_TASK_ROOT``) and X-Ray (no ``AWS_XRAY_*`` variables).
    """

    exceptions = LocalLambdaExceptions

    def __init__(
        self,
        functions: Mapping[str, FunctionSpec] = FUNCTIONS,
        *,
        environment: Mapping[str, str] | None = None,
        variables: Mapping[str, str] | None = None,
        region: str | None = None,
        account_id: str = "000000000000",
        log_dir: str | Path | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        environment = dict(environment or {})
        region = region or configured_region()
        same_region = {
            k for k in ("AWS_REGION", "AWS_DEFAULT_REGION") if environment.get(k) == region
        }
        reserved = sorted(_RESERVED_ENV.intersection(environment) - same_region)
        if reserved:
            raise ValueError(
                f"environment sets {reserved}, which Lambda reserves and this runtime sets for each "
                "function; remove them from environment (pass region= to choose AWS_REGION)"
            )
        variables = dict(variables or {})
        # each function's configured environment, as its deployment gives it (ValueError if a
        # variable its spec lists has no value here)
        try:
            self._configured = {
                name: {**function_environment(spec, variables), **environment}
                for name, spec in functions.items()
            }
        except ValueError as e:
            raise ValueError(
                f"{e}; pass their values as variables= (for the registry's functions: "
                "lakehouse_pipelines.resources.local_function_values(settings))"
            ) from None
        for name, configured in self._configured.items():
            reserved = sorted(_RESERVED_ENV.intersection(configured) - set(environment))
            if reserved:
                raise ValueError(
                    f"function {name} is configured with reserved variables {reserved}"
                )
        if max_concurrency is not None and max_concurrency < 0:
            raise ValueError(f"max_concurrency must be None or >= 0, got {max_concurrency}")
        self._functions = dict(functions)
        self.region, self.account_id = region, account_id
        self._log_dir = Path(log_dir) if log_dir is not None else None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
        self._max_concurrency = max_concurrency
        self._lock = threading.Lock()
        self._sandboxes = _Sandboxes(self._functions, max_concurrency)
        self._background: set[threading.Thread] = set()
        self._last_logs: dict[str, str] = {}
        self._closed = False
        self.invocations: list[InvocationRecord] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        """``Lambda.Client.invoke``: same parameters, response and service errors as boto3's."""
        if self._closed:
            raise RuntimeError("LocalLambdaRuntime is closed; create a new one to invoke")
        # reject what boto3 would reject client-side, with botocore's own ParamValidationError
        validate_parameters(kwargs, _invoke_input_shape())
        if "DurableExecutionName" in kwargs:
            raise InvalidParameterValueException.create("Local functions are not durable functions")
        spec, arn = self._resolve(kwargs["FunctionName"], kwargs.get("Qualifier"))
        kinds = ("Event", "RequestResponse", "DryRun")
        invocation_type = _enum(
            kwargs.get("InvocationType", "RequestResponse"), "invocationType", kinds
        )
        log_type = _enum(kwargs.get("LogType", "None"), "logType", ("Tail", "None"))
        limit = EVENT_PAYLOAD_LIMIT if invocation_type == "Event" else SYNC_PAYLOAD_LIMIT
        request = _Request(
            spec=spec,
            request_id=str(uuid.uuid4()),
            invoked_function_arn=arn,
            payload=_payload_text(kwargs.get("Payload", b""), limit),
            client_context=_client_context(kwargs.get("ClientContext")),
            tenant_id=kwargs.get("TenantId"),
            tail=log_type == "Tail" and invocation_type == "RequestResponse",
        )
        if invocation_type == "DryRun":
            return _response(204, request.request_id)
        if invocation_type == "Event":
            self._start_background(request)
            return _response(202, request.request_id)
        return self._invoke_sync(request, wait_for_capacity=False)

    def last_log(self, function_name: str) -> str:
        """The log of the function's latest finished invocation, as its log group shows it
        (output written before ``START``, e.g. during init, included). Empty if none."""
        with self._lock:
            return self._last_logs.get(function_name, "")

    def wait_for_background(self, timeout: float | None = None) -> bool:
        """Wait for Event invocations to finish; True if none is left running."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._background)
            if not threads:
                return True
            for thread in threads:
                left = None if give_up is None else max(give_up - time.monotonic(), 0)
                thread.join(left)
                if thread.is_alive():
                    return False

    def close(self) -> None:
        """Refuse new invocations, wait for Event invocations, then end every worker."""
        self._closed = True
        self.wait_for_background()
        self._sandboxes.close()

    # --- internals ---

    def _resolve(self, function_name: str, qualifier: str | None) -> tuple[FunctionSpec, str]:
        match = _FUNCTION_NAME.fullmatch(function_name)
        if match is None:
            raise ValidationException.create(
                f"1 validation error detected: Value '{function_name}' at 'functionName' failed "
                f"to satisfy constraint: Member must satisfy regular expression pattern: "
                f"{_FUNCTION_NAME.pattern}"
            )
        if match["qualifier"] and qualifier and match["qualifier"] != qualifier:
            raise InvalidParameterValueException.create(
                "The derived qualifier from the function name does not match the specified qualifier."
            )
        qualifier = qualifier or match["qualifier"]
        region, account = match["region"] or self.region, match["account"] or self.account_id
        arn = f"arn:aws:lambda:{region}:{account}:function:{match['name']}"
        arn += f":{qualifier}" if qualifier else ""
        spec = self._functions.get(match["name"])
        if spec is None or (region, account) != (self.region, self.account_id):
            raise ResourceNotFoundException.create(f"Function not found: {arn}")
        if qualifier not in (None, "$LATEST"):
            raise ResourceNotFoundException.create(
                f"Function not found: {arn} (the local runtime has only $LATEST)"
            )
        return spec, arn

    def _pool(self, name: str) -> _FunctionPool:
        if self._sandboxes.owner_pid != os.getpid():  # forked: the parent's workers are not ours
            self._sandboxes = _Sandboxes(self._functions, self._max_concurrency)
        return self._sandboxes.pools[name]

    def _start_background(self, request: _Request) -> None:
        def run() -> None:
            try:
                self._invoke_sync(request, wait_for_capacity=True)
            except Exception:
                logger.exception(
                    "Event invocation %s of %s failed", request.request_id, request.spec.name
                )
            finally:
                with self._lock:
                    self._background.discard(thread)

        thread = threading.Thread(
            target=run, name=f"local-lambda-event-{request.request_id}", daemon=True
        )
        with self._lock:
            self._background.add(thread)
        thread.start()

    def _invoke_sync(self, request: _Request, *, wait_for_capacity: bool) -> dict[str, Any]:
        pool = self._pool(request.spec.name)
        worker = pool.acquire(wait_for_capacity)
        cold, reusable = worker is None, False
        try:
            if worker is None:
                worker = self._start_worker(request.spec)
                pool.track(worker)
            outcome = _Invocation(request, worker, cold=cold)
            if outcome.lost_before_start:  # Lambda runs it in a new environment instead
                pool.discard(worker)  # the slot stays this invocation's
                worker, cold = self._start_worker(request.spec), True
                pool.track(worker)
                outcome = _Invocation(request, worker, cold=True)
            reusable = outcome.worker_reusable
        finally:
            pool.release(worker, reusable)
        return self._finish(request, outcome)

    def _start_worker(self, spec: FunctionSpec) -> _Worker:
        now = datetime.now(UTC)
        stream = f"{now:%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        paths = dict.fromkeys(p or os.getcwd() for p in sys.path)  # the same code as this process
        configured = self._configured[spec.name]
        # the execution role's credentials: configured ones, else the caller's (only those set)
        source = configured if any(k in configured for k in CREDENTIAL_ENV) else os.environ
        credentials = {k: source[k] for k in CREDENTIAL_ENV if source.get(k)}
        env = {
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
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "TZ": ":UTC",
            "AWS_LAMBDA_RUNTIME_API": RUNTIME_API,
            "LAMBDA_TASK_ROOT": TASK_ROOT,
            "LAMBDA_RUNTIME_DIR": RUNTIME_DIR,
            "_HANDLER": spec.handler,
            "_LOCAL_LAMBDA_PARENT_PID": str(os.getpid()),
            "PYTHONPATH": os.pathsep.join(paths),
        }
        return _Worker(spec, env)

    def _finish(self, request: _Request, outcome: _Invocation) -> dict[str, Any]:
        spec, request_id = request.spec, request.request_id
        log = outcome.log_text()
        record = InvocationRecord(
            request_id=request_id,
            function_name=spec.name,
            duration_ms=round(outcome.duration_ms, 2),
            billed_duration_ms=outcome.billed_ms,
            max_memory_used_mb=outcome.max_memory_used_mb,
            memory_size_mb=spec.memory_mb,
            init_duration_ms=None if outcome.init_ms is None else round(outcome.init_ms, 2),
            error_type=outcome.error_type,
            cold_start=outcome.cold,
        )
        full_log = (outcome.preamble + log).decode("utf-8", "replace")
        with self._lock:
            self.invocations.append(record)
            self._last_logs[spec.name] = full_log
            if self._log_dir is not None:
                with open(self._log_dir / f"{spec.name}.log", "a", encoding="utf-8") as group:
                    group.write(full_log)
        fields: dict[str, Any] = {}
        if outcome.error_type is not None:
            fields["FunctionError"] = "Unhandled"
        if request.tail:
            fields["LogResult"] = base64.b64encode(log[-LOG_TAIL_BYTES:]).decode("ascii")
        fields["ExecutedVersion"] = "$LATEST"
        return _response(200, request_id, outcome.payload, **fields)


class _Invocation:
    """Runs one request on a worker (initialising it first on a cold start) and keeps the result:
    payload, error type, timings, memory and log pieces. ``worker_reusable`` says whether the
    worker survived and may serve the next invocation."""

    def __init__(self, request: _Request, worker: _Worker, *, cold: bool) -> None:
        self.request, self.worker, self.cold = request, worker, cold
        spec = request.spec
        self.timeout_s = float(spec.timeout_s)
        self.memory_limit_kb = spec.memory_mb * 1024
        self.init_ms: float | None = None
        self.duration_ms = 0.0
        self.error_type: str | None = None
        self.status = ""  # REPORT suffix for platform errors
        self.extra_log = b""  # the runtime's own log line (timeouts)
        self.preamble = b""  # output written before START: init, or between invocations
        self.body = b""
        self.payload = b""
        self.worker_reusable = False
        self.lost_before_start = False  # a warm worker found dead when handed the request
        try:
            self._run()
        except BaseException:
            worker.kill()
            raise

    def _run(self) -> None:
        worker, request = self.worker, self.request
        if self.cold:
            started = time.monotonic()
            reply = worker.wait(started + self.timeout_s, self.memory_limit_kb)
            self.init_ms = (time.monotonic() - started) * 1000
            self.preamble = worker.read_log()
            if reply.kind == "message" and reply.message and reply.message["type"] == "init_error":
                worker.kill()  # Lambda retries init in a new environment next time
                error = reply.message["error"]
                self._fail(error, f"\tStatus: error\tError Type: {error['errorType']}")
                return
            if reply.kind != "message":
                self._platform_failure(reply)
                return
        else:
            self.preamble = worker.read_log()  # written between invocations
        started = time.monotonic()
        sent = worker.send(
            {
                "type": "invoke",
                "request_id": request.request_id,
                "payload": request.payload,
                "deadline_ms": int((time.time() + self.timeout_s) * 1000),
                "invoked_function_arn": request.invoked_function_arn,
                "client_context": request.client_context,
                "tenant_id": request.tenant_id,
                "trace_id": f"Root={_trace_root()};Sampled=0",
            }
        )
        if sent:
            reply = worker.wait(started + self.timeout_s, self.memory_limit_kb)
        elif not self.cold:  # it died idle after the liveness check: the caller starts a cold one
            logger.info("a warm %s worker had exited (%s): cold start", worker.name, worker.reap())
            self.lost_before_start = True
            return
        else:
            reply = _Reply("exit", exit_detail=worker.reap())
        self.duration_ms = (time.monotonic() - started) * 1000
        self.body = worker.read_log()
        if reply.kind != "message" or reply.message is None:
            self._platform_failure(reply)
        elif worker.peak_kb > self.memory_limit_kb:  # a spike between two polls: Lambda kills it
            worker.kill()
            self._platform_failure(_Reply("oom"))
        else:
            self.payload = base64.b64decode(reply.message["payload_b64"])
            self.worker_reusable = True
            if not reply.message["ok"]:
                self.error_type = json.loads(self.payload).get("errorType", "Unknown")
            elif len(self.payload) > RESPONSE_PAYLOAD_LIMIT:
                self._fail(
                    {
                        "errorMessage": f"Response payload size ({len(self.payload)} bytes) exceeded "
                        f"maximum allowed payload size ({RESPONSE_PAYLOAD_LIMIT} bytes).",
                        "errorType": "Function.ResponseSizeTooLarge",
                    }
                )

    def _fail(self, error: dict[str, Any], status: str = "") -> None:
        self.payload = json.dumps(error).encode()
        self.error_type = error["errorType"]
        self.status = status

    def _platform_failure(self, reply: _Reply) -> None:
        """The environment was lost: timeout, out of memory or exit. Lambda reports it in the
        payload and the REPORT line and starts a new environment for the next invocation."""
        request_id = self.request.request_id
        if reply.kind == "timeout":
            message = f"Task timed out after {self.timeout_s:.2f} seconds"
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self.extra_log = f"{stamp} {request_id} {message}\n".encode()
            error = {
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"RequestId: {request_id} Error: {message}",
            }
            self._fail(error, "\tStatus: timeout")
            return
        if reply.kind == "oom":
            error_type, detail = "Runtime.OutOfMemory", "signal: killed"
        else:
            error_type, detail = "Runtime.ExitError", reply.exit_detail
        message = f"RequestId: {request_id} Error: Runtime exited with error: {detail}"
        status = f"\tStatus: error\tError Type: {error_type}"
        self._fail({"errorType": error_type, "errorMessage": message}, status)

    @property
    def billed_ms(self) -> int:
        return math.ceil(round(self.duration_ms, 2) + round(self.init_ms or 0.0, 2))

    @property
    def max_memory_used_mb(self) -> int:
        if self.error_type == "Runtime.OutOfMemory":
            return self.request.spec.memory_mb
        return min(math.ceil(self.worker.peak_kb / 1024), self.request.spec.memory_mb)

    def log_text(self) -> bytes:
        """START ... END and REPORT, as Lambda writes them around the invocation's output."""
        rid, spec = self.request.request_id, self.request.spec
        body = self.body if not self.body or self.body.endswith(b"\n") else self.body + b"\n"
        report = (
            f"REPORT RequestId: {rid}\tDuration: {self.duration_ms:.2f} ms\tBilled Duration: "
            f"{self.billed_ms} ms\tMemory Size: {spec.memory_mb} MB\tMax Memory Used: "
            f"{self.max_memory_used_mb} MB"
        )
        if self.init_ms is not None:
            report += f"\tInit Duration: {self.init_ms:.2f} ms"
        start = f"START RequestId: {rid} Version: $LATEST\n".encode()
        end = f"END RequestId: {rid}\n{report}{self.status}\n".encode()
        return start + body + self.extra_log + end
