"""The logs of the local runtime, as CloudWatch Logs shows a Lambda function's: each worker's own
output file, the ``START``/``END``/``REPORT`` lines Lambda writes around an invocation, the
``LogResult`` tail, the per-function log files (``<log_dir>/<function>.log``, the log group) and
``InvocationRecord``, the REPORT line's figures. Nothing is written to disk before the first log
(the log directory is created then, not when the runtime is built).
"""

from __future__ import annotations

import base64
import fcntl
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_BYTES = 4096  # LogResult size: the last 4 KB of the invocation's log


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


class WorkerLog:
    """One worker's output: an unlinked temporary file (nothing to clean up) that becomes the
    worker's fd 1 and 2, opened ``O_APPEND`` so its child processes append too; read back here
    with ``pread`` at our own offset."""

    def __init__(self, function_name: str) -> None:
        self.fd, path = tempfile.mkstemp(prefix=f"local-lambda-{function_name}-", suffix=".log")
        os.unlink(path)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_APPEND)
        self._offset = 0

    def read_new(self) -> bytes:
        """What the worker wrote since the last call."""
        chunks = []
        while chunk := os.pread(self.fd, 1 << 20, self._offset):
            chunks.append(chunk)
            self._offset += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def invocation_log(
    request_id: str,
    body: bytes,
    *,
    duration_ms: float,
    billed_ms: int,
    memory_size_mb: int,
    max_memory_used_mb: int,
    init_ms: float | None,
    extra_log: bytes = b"",
    status: str = "",
) -> bytes:
    """``START``, the invocation's output, ``END`` and ``REPORT``, as Lambda writes them.

    Args:
        request_id: the invocation's request id.
        body: what the handler wrote during the invocation (a final newline is added if missing).
        duration_ms, billed_ms, memory_size_mb, max_memory_used_mb: the REPORT figures.
        init_ms: the init duration of a cold start (``Init Duration``), ``None`` when warm.
        extra_log: the runtime's own line after the output (e.g. ``Task timed out``).
        status: the REPORT suffix of a platform error (``\\tStatus: timeout``...), or empty.

    Returns:
        The log text as bytes, ending with a newline.
    """
    body = body if not body or body.endswith(b"\n") else body + b"\n"
    report = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: "
        f"{billed_ms} ms\tMemory Size: {memory_size_mb} MB\tMax Memory Used: "
        f"{max_memory_used_mb} MB"
    )
    if init_ms is not None:
        report += f"\tInit Duration: {init_ms:.2f} ms"
    start = f"START RequestId: {request_id} Version: $LATEST\n".encode()
    end = f"END RequestId: {request_id}\n{report}{status}\n".encode()
    return start + body + extra_log + end


def log_result(log: bytes) -> str:
    """``LogResult``: base64 of the last 4 KB of an invocation's ``START``..``REPORT`` log."""
    return base64.b64encode(log[-LOG_TAIL_BYTES:]).decode("ascii")


class FunctionLogs:
    """Each function's latest invocation log (``last``) and, with a ``log_dir``, its log group as
    a file: ``<log_dir>/<function>.log``, appended to in invocation order (thread-safe). The
    directory is created at the first write, so building a runtime writes nothing."""

    def __init__(self, log_dir: str | Path | None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}

    def write(self, function_name: str, text: str) -> None:
        """Record ``text`` as the function's latest log and append it to its log file."""
        with self._lock:
            self._last[function_name] = text
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                with open(self.log_dir / f"{function_name}.log", "a", encoding="utf-8") as group:
                    group.write(text)

    def last(self, function_name: str) -> str:
        """The function's latest log, empty if it has none."""
        with self._lock:
            return self._last.get(function_name, "")
