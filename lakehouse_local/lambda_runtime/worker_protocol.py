"""What the runtime and a worker (``worker.py``) exchange over two pipes, one JSON object a line:
the worker sends ``{"type": "ready"}`` or ``{"type": "init_error", "error"}`` once (then exits);
the runtime sends ``{"type": "invoke", "request_id", "payload", "deadline_ms", ...}``; the worker
answers ``{"type": "result", "ok", "payload_b64", "max_rss_kb"}``. ``Invocation`` runs one request
through it and turns a missing answer (timeout, out-of-memory kill, exit) into Lambda's error.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import select
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lakehouse_local.lambda_runtime.invoke_api import trace_root
from lakehouse_local.lambda_runtime.logs import invocation_log
from lambda_functions.registry import FunctionSpec

if TYPE_CHECKING:
    from lakehouse_local.lambda_runtime.worker_pool import Worker

logger = logging.getLogger(__name__)

WORKER_SCRIPT = str(Path(__file__).with_name("worker.py"))
RESPONSE_PAYLOAD_LIMIT = 6_291_556  # bytes, what Lambda lets a function return


@dataclass(frozen=True)
class InvokeRequest:
    """One accepted ``invoke`` call, ready to hand to a worker."""

    spec: FunctionSpec
    request_id: str
    invoked_function_arn: str
    payload: str
    client_context: dict[str, Any] | None
    tenant_id: str | None
    tail: bool

    def command(self, timeout_s: float) -> dict[str, Any]:
        """The ``invoke`` message for the worker; its deadline is ``timeout_s`` from now."""
        return {
            "type": "invoke",
            "request_id": self.request_id,
            "payload": self.payload,
            "deadline_ms": int((time.time() + timeout_s) * 1000),
            "invoked_function_arn": self.invoked_function_arn,
            "client_context": self.client_context,
            "tenant_id": self.tenant_id,
            "trace_id": f"Root={trace_root()};Sampled=0",
        }


@dataclass(frozen=True)
class WorkerReply:
    """The worker's next message, or why there is none (``timeout``, ``oom``, ``exit``)."""

    kind: Literal["message", "timeout", "oom", "exit"]
    message: dict[str, Any] | None = None
    exit_detail: str = ""


class Channel:
    """The runtime's ends of the two pipes: commands out, results in (JSON lines)."""

    def __init__(self, command_fd: int, result_fd: int) -> None:
        self._command_fd, self._result_fd = command_fd, result_fd
        self._buffer = bytearray()

    def send(self, message: dict[str, Any]) -> bool:
        """Write one command; False if the worker is gone."""
        data = json.dumps(message).encode() + b"\n"
        try:
            while data:
                data = data[os.write(self._command_fd, data) :]
        except (BrokenPipeError, OSError):
            return False
        return True

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or ``None`` if none came within ``timeout`` seconds; ``EOFError``
        when the worker closed its end."""
        while b"\n" not in self._buffer:
            if not select.select([self._result_fd], [], [], max(timeout, 0))[0]:
                return None
            chunk = os.read(self._result_fd, 1 << 20)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    def close_commands(self) -> bool:
        """Close the command pipe (an idle worker exits on its EOF); False if already closed."""
        if self._command_fd < 0:
            return False
        os.close(self._command_fd)
        self._command_fd = -1
        return True

    def close(self) -> None:
        self.close_commands()
        if self._result_fd >= 0:
            os.close(self._result_fd)
            self._result_fd = -1


class Invocation:
    """Runs one request on a worker (initialising it first on a cold start) and keeps the result:
    payload, error type, timings, memory and log pieces. ``worker_reusable`` says whether the
    worker survived and may serve the next invocation."""

    def __init__(self, request: InvokeRequest, worker: Worker, *, cold: bool) -> None:
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
            self.preamble = worker.log.read_new()
            if reply.kind == "message" and reply.message and reply.message["type"] == "init_error":
                worker.kill()  # Lambda retries init in a new environment next time
                error = reply.message["error"]
                self._fail(error, f"\tStatus: error\tError Type: {error['errorType']}")
                return
            if reply.kind != "message":
                self._platform_failure(reply)
                return
        else:
            self.preamble = worker.log.read_new()  # written between invocations
        started = time.monotonic()
        if worker.channel.send(request.command(self.timeout_s)):
            reply = worker.wait(started + self.timeout_s, self.memory_limit_kb)
        elif not self.cold:  # it died idle after the liveness check: the caller starts a cold one
            logger.info("a warm %s worker had exited (%s): cold start", worker.name, worker.reap())
            self.lost_before_start = True
            return
        else:
            reply = WorkerReply("exit", exit_detail=worker.reap())
        self.duration_ms = (time.monotonic() - started) * 1000
        self.body = worker.log.read_new()
        if reply.kind != "message" or reply.message is None:
            self._platform_failure(reply)
        elif worker.peak_kb > self.memory_limit_kb:  # a spike between two polls: Lambda kills it
            worker.kill()
            self._platform_failure(WorkerReply("oom"))
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

    def _platform_failure(self, reply: WorkerReply) -> None:
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
        return invocation_log(
            self.request.request_id,
            self.body,
            duration_ms=self.duration_ms,
            billed_ms=self.billed_ms,
            memory_size_mb=self.request.spec.memory_mb,
            max_memory_used_mb=self.max_memory_used_mb,
            init_ms=self.init_ms,
            extra_log=self.extra_log,
            status=self.status,
        )
