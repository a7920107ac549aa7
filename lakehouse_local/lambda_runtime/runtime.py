"""``LocalLambdaRuntime``: runs the registry's Lambda functions on this machine behind the
``invoke`` API of ``boto3.client("lambda")``, so code written against one runs against the other.

It accepts a request (``invoke_api``), hands it to a warm or new worker of the function
(``worker_pool``, ``worker_protocol``) with the environment Lambda would give it (``environment``)
and records the invocation's log and figures (``logs``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from botocore.validate import validate_parameters

from lakehouse_local.lambda_runtime.environment import (
    configured_environments,
    configured_region,
    worker_environment,
)
from lakehouse_local.lambda_runtime.invoke_api import (
    EVENT_PAYLOAD_LIMIT,
    FUNCTION_NAME,
    INVOCATION_TYPES,
    LOG_TYPES,
    SYNC_PAYLOAD_LIMIT,
    InvalidParameterValueException,
    LocalLambdaExceptions,
    LocalRuntimeClosedError,
    LocalRuntimeConfigurationError,
    ResourceNotFoundException,
    ValidationException,
    client_context,
    enum_value,
    invoke_input_shape,
    payload_text,
    response,
)
from lakehouse_local.lambda_runtime.logs import FunctionLogs, InvocationRecord, log_result
from lakehouse_local.lambda_runtime.worker_pool import FunctionPool, Sandboxes, Worker
from lakehouse_local.lambda_runtime.worker_protocol import Invocation, InvokeRequest
from lambda_functions.registry import FUNCTIONS, FunctionSpec

logger = logging.getLogger(__name__)


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
    Building a runtime writes nothing to disk: ``log_dir`` is created at the first log written.

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

    Args:
        functions: the functions to serve, by name (default: the registry's ``FUNCTIONS``).
        environment: variables set on every function (as a deployment would), credentials too.
        variables: values of the variables the functions' specs list.
        region: the region the functions are "deployed" in (see above).
        account_id: the 12-digit account of their ARNs.
        log_dir: directory of the per-function log files; ``None`` keeps logs in memory only.
        max_concurrency: reserved concurrency per function; ``None`` for no limit, 0 to throttle
            every invocation.

    Raises:
        LocalRuntimeConfigurationError: (a ``ValueError``) ``environment`` or a function sets a
            variable Lambda reserves, a listed variable has no value in ``variables``, or
            ``max_concurrency`` is negative. Nothing has been started then.
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
        region = region or configured_region()
        self._configured = configured_environments(
            functions, dict(environment or {}), dict(variables or {}), region
        )
        if max_concurrency is not None and max_concurrency < 0:
            raise LocalRuntimeConfigurationError(
                f"max_concurrency must be None or >= 0, got {max_concurrency}"
            )
        self._functions = dict(functions)
        self.region, self.account_id = region, account_id
        self._logs = FunctionLogs(log_dir)  # creates log_dir at its first write, not here
        self._max_concurrency = max_concurrency
        self._lock = threading.Lock()
        self._sandboxes = Sandboxes(self._functions, max_concurrency)
        self._background: set[threading.Thread] = set()
        self._closed = False
        self.invocations: list[InvocationRecord] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        """Invoke a function, as ``boto3.client("lambda").invoke`` does (AWS Lambda API
        Reference, "Invoke"): same parameters, response and service errors.

        Args:
            FunctionName: the name, partial ARN (``<account>:function:<name>``) or full ARN of a
                function of this runtime, optionally with ``:$LATEST``.
            InvocationType: ``"RequestResponse"`` (default: run it and wait for the result),
                ``"Event"`` (queue it: returns at once; it runs in the background, waiting for
                concurrency) or ``"DryRun"`` (only validate the request).
            Payload: the event, JSON as bytes, str or a file-like object; at most 6 MB
                (RequestResponse) or 1 MB (Event); empty means ``{}``.
            LogType: ``"Tail"`` to get ``LogResult`` (RequestResponse only), else ``"None"``.
            ClientContext: base64 of a JSON object, handed to the handler's ``context``.
            Qualifier: ``"$LATEST"`` only (no versions or aliases locally).
            TenantId: handed to the handler as ``context.tenant_id``.

        Returns:
            boto3's response dict: ``StatusCode`` 200 (RequestResponse), 202 (Event) or 204
            (DryRun); ``Payload``, a ``StreamingBody`` of the function's result or, when it
            failed, of Lambda's error object ``{"errorType", "errorMessage", ...}`` with
            ``FunctionError`` ``"Unhandled"`` (function errors are returned, never raised);
            ``LogResult``, base64 of the last 4 KB of the invocation's log, when ``LogType`` is
            ``"Tail"``; ``ExecutedVersion`` ``"$LATEST"``; ``ResponseMetadata``.

        Raises:
            botocore.exceptions.ParamValidationError: parameters boto3 rejects client-side.
            ResourceNotFoundException: no such function (or qualifier) here.
            TooManyRequestsException: ``max_concurrency`` invocations are running (not Event).
            RequestEntityTooLargeException: the payload is over its limit.
            InvalidRequestContentException: the payload is not JSON, or a bad ``ClientContext``.
            ValidationException, InvalidParameterValueException: a malformed name, invocation
                type, log type or conflicting qualifiers.
            LocalRuntimeClosedError: the runtime was closed (a ``RuntimeError``).
        """
        if self._closed:
            raise LocalRuntimeClosedError(
                "LocalLambdaRuntime is closed; create a new one to invoke"
            )
        # reject what boto3 would reject client-side, with botocore's own ParamValidationError
        validate_parameters(kwargs, invoke_input_shape())
        if "DurableExecutionName" in kwargs:
            raise InvalidParameterValueException.create("Local functions are not durable functions")
        spec, arn = self._resolve(kwargs["FunctionName"], kwargs.get("Qualifier"))
        invocation_type = enum_value(
            kwargs.get("InvocationType", "RequestResponse"), "invocationType", INVOCATION_TYPES
        )
        log_type = enum_value(kwargs.get("LogType", "None"), "logType", LOG_TYPES)
        limit = EVENT_PAYLOAD_LIMIT if invocation_type == "Event" else SYNC_PAYLOAD_LIMIT
        request = InvokeRequest(
            spec=spec,
            request_id=str(uuid.uuid4()),
            invoked_function_arn=arn,
            payload=payload_text(kwargs.get("Payload", b""), limit),
            client_context=client_context(kwargs.get("ClientContext")),
            tenant_id=kwargs.get("TenantId"),
            tail=log_type == "Tail" and invocation_type == "RequestResponse",
        )
        if invocation_type == "DryRun":
            return response(204, request.request_id)
        if invocation_type == "Event":
            self._start_background(request)
            return response(202, request.request_id)
        return self._invoke_sync(request, wait_for_capacity=False)

    def last_log(self, function_name: str) -> str:
        """The log of the function's latest finished invocation, as its log group shows it
        (output written before ``START``, e.g. during init, included). Empty if none."""
        return self._logs.last(function_name)

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
        match = FUNCTION_NAME.fullmatch(function_name)
        if match is None:
            raise ValidationException.create(
                f"1 validation error detected: Value '{function_name}' at 'functionName' failed "
                f"to satisfy constraint: Member must satisfy regular expression pattern: "
                f"{FUNCTION_NAME.pattern}"
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

    def _pool(self, name: str) -> FunctionPool:
        if self._sandboxes.owner_pid != os.getpid():  # forked: the parent's workers are not ours
            self._sandboxes = Sandboxes(self._functions, self._max_concurrency)
        return self._sandboxes.pools[name]

    def _start_background(self, request: InvokeRequest) -> None:
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

    def _invoke_sync(self, request: InvokeRequest, *, wait_for_capacity: bool) -> dict[str, Any]:
        pool = self._pool(request.spec.name)
        worker = pool.acquire(wait_for_capacity)
        cold, reusable = worker is None, False
        try:
            if worker is None:
                worker = self._start_worker(request.spec)
                pool.track(worker)
            outcome = Invocation(request, worker, cold=cold)
            if outcome.lost_before_start:  # Lambda runs it in a new environment instead
                pool.discard(worker)  # the slot stays this invocation's
                worker, cold = self._start_worker(request.spec), True
                pool.track(worker)
                outcome = Invocation(request, worker, cold=True)
            reusable = outcome.worker_reusable
        finally:
            pool.release(worker, reusable)
        return self._finish(request, outcome)

    def _start_worker(self, spec: FunctionSpec) -> Worker:
        return Worker(spec, worker_environment(spec, self._configured[spec.name], self.region))

    def _finish(self, request: InvokeRequest, outcome: Invocation) -> dict[str, Any]:
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
        with self._lock:
            self.invocations.append(record)
        self._logs.write(spec.name, (outcome.preamble + log).decode("utf-8", "replace"))
        fields: dict[str, Any] = {}
        if outcome.error_type is not None:
            fields["FunctionError"] = "Unhandled"
        if request.tail:
            fields["LogResult"] = log_result(log)
        fields["ExecutedVersion"] = "$LATEST"
        return response(200, request_id, outcome.payload, **fields)
