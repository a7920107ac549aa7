"""One warm Lambda execution environment: imports a handler once, then serves invocations.

Started as ``python -u -P worker.py CMD_FD RESULT_FD`` with ``_HANDLER`` and Lambda's variables set
and fd 1 and 2 on the environment's log file; messages as ``worker_protocol`` describes. Standard
library only, like the AWS Python runtime (awslambdaric), with its error and log formats. Exits when
the command pipe closes or the runtime goes away, taking the handler's child processes with it.
"""

from __future__ import annotations

import base64
import contextlib
import decimal
import importlib
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

_LOG_INDENT = "\u00a0"  # the runtime indents stack-trace lines in the log with NO-BREAK SPACE
_current_request_id = ""


class _Fault(Exception):
    """A runtime-level failure with a Lambda error type (``Runtime.*``) instead of a Python one."""

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type, self.message, self.trace = error_type, message, trace


class _Obj:
    """Attribute bag for ``context.identity`` / ``context.client_context`` (fields as in AWS)."""

    def __init__(self, fields: tuple[str, ...], values: dict[str, Any]) -> None:
        for name in fields:
            setattr(self, name, values.get(name))


class LambdaContext:
    """The ``context`` argument, with the attributes and methods of the AWS Python runtime's.

    As in AWS, ``memory_limit_in_mb`` is a string (it comes from the environment).
    """

    def __init__(self, request: dict[str, Any]) -> None:
        self.aws_request_id: str = request["request_id"]
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.invoked_function_arn: str = request["invoked_function_arn"]
        self.tenant_id: str | None = request.get("tenant_id")
        self.identity = _Obj(("cognito_identity_id", "cognito_identity_pool_id"), {})
        client_context = request.get("client_context")
        self.client_context = None
        if client_context is not None:
            self.client_context = _Obj(("custom", "env", "client"), client_context)
            if client_context.get("client") is not None:
                fields = ("installation_id", "app_title", "app_version_name")
                fields += ("app_version_code", "app_package_name")
                self.client_context.client = _Obj(fields, client_context["client"])
        self._deadline_ms: int = request["deadline_ms"]

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the runtime kills this invocation (never negative)."""
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, msg: object) -> None:
        sys.stdout.write(str(msg))


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = _current_request_id
        return True


class _StdoutHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(self.format(record))


def _setup_logging() -> None:
    """Install the root handler the Lambda Python runtime installs (text format, UTC times)."""
    logging.Formatter.converter = time.gmtime
    handler = _StdoutHandler()
    handler.setFormatter(
        logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
            "%Y-%m-%dT%H:%M:%S",
        )
    )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level in logging.getLevelNamesMapping():
        root.setLevel(level)
    root.addHandler(handler)


def _load_handler(handler: str) -> Callable[[Any, LambdaContext], Any]:
    """Import ``module.attribute`` with the AWS runtime's error types and messages."""
    module_name, dot, attribute = handler.rpartition(".")
    if not dot or not module_name:
        raise _Fault(
            "Runtime.MalformedHandlerName",
            f"Bad handler '{handler}': not enough values to unpack (expected 2, got 1)",
        )
    if module_name.split(".")[0] in sys.builtin_module_names:
        raise _Fault(
            "Runtime.BuiltInModuleConflict",
            f"Cannot use built-in module {module_name} as a handler module",
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as e:
        raise _Fault(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {e}"
        ) from e
    except SyntaxError as e:
        trace = [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']
        raise _Fault(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {e}", trace
        ) from e
    if not hasattr(module, attribute):
        raise _Fault(
            "Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'"
        )
    return getattr(module, attribute)


def _error(
    message: str, error_type: str, trace: list[str] | None, request_id: str
) -> dict[str, Any]:
    return {
        "errorMessage": message,
        "errorType": error_type,
        "requestId": request_id,
        "stackTrace": trace or [],
    }


def _error_from(exc: BaseException, request_id: str) -> dict[str, Any]:
    if isinstance(exc, _Fault):
        return _error(exc.message, exc.error_type, exc.trace, request_id)
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and frames[0].filename == __file__:  # hide the runtime's own frames, as AWS does
        frames = frames[1:]
    return _error(str(exc), type(exc).__name__, traceback.format_list(frames), request_id)


def _log_error(error: dict[str, Any]) -> None:
    """Write ``[ERROR] Type: message`` and the stack trace to the log, as the AWS runtime does."""
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error["stackTrace"]:
        lines.append("Traceback (most recent call last):")
        for element in error["stackTrace"]:
            for line in element.splitlines():
                stripped = line.lstrip(" ")
                lines.append(_LOG_INDENT * (len(line) - len(stripped)) + stripped)
    sys.stdout.write("\n".join(lines) + "\n")


class _Encoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, decimal.Decimal):
            return float(o)
        return super().default(o)


def _marshal(response: Any) -> bytes:
    if isinstance(response, bytes):
        return response  # the AWS runtime passes bytes through unchanged
    try:
        return _Encoder().encode(response).encode("utf-8")
    except Exception as e:
        raise _Fault("Runtime.MarshalError", f"Unable to marshal response: {e}") from e


def _max_rss_kb() -> int:
    """Peak resident memory (KB) of this process, or of the largest child it waited for.

    On Linux ``ru_maxrss`` survives ``exec``, so it would report the runtime's own size at the
    fork; ``VmHWM`` belongs to this program only.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        with open("/proc/self/status") as status:
            own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there
            own, usage = own // 1024, usage // 1024
    return max(own, usage)


def _invoke(
    handler: Callable[[Any, LambdaContext], Any], request: dict[str, Any]
) -> dict[str, Any]:
    global _current_request_id
    request_id = _current_request_id = request["request_id"]
    os.environ["_X_AMZN_TRACE_ID"] = request["trace_id"]
    try:
        event = json.loads(request["payload"])
        payload, ok = _marshal(handler(event, LambdaContext(request))), True
    except Exception as e:
        error = _error_from(e, request_id)
        _log_error(error)
        payload, ok = json.dumps(error).encode("utf-8"), False
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the handler may have closed or replaced it
            stream.flush()
    payload_b64 = base64.b64encode(payload).decode("ascii")
    return {"type": "result", "ok": ok, "payload_b64": payload_b64, "max_rss_kb": _max_rss_kb()}


def _send(channel: BinaryIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message).encode("utf-8") + b"\n")
    channel.flush()


def _end_sandbox() -> None:
    """Kill this process and every process the handler started (they share our process group)."""
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(0)


def _exit_when_orphaned(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        _end_sandbox()

    threading.Thread(target=watch, name="local-lambda-parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    commands = os.fdopen(int(argv[1]), "rb")
    results = os.fdopen(int(argv[2]), "wb")
    for channel in (commands, results):  # child processes must not hold the channel open
        os.set_inheritable(channel.fileno(), False)
    _exit_when_orphaned(int(os.environ.pop("_LOCAL_LAMBDA_PARENT_PID", os.getppid())))
    _setup_logging()
    try:
        handler = _load_handler(os.environ["_HANDLER"])
    except Exception as e:
        error = _error_from(e, "")
        _log_error(error)
        _send(results, {"type": "init_error", "error": error, "max_rss_kb": _max_rss_kb()})
        return 1
    _send(results, {"type": "ready"})
    for line in commands:
        _send(results, _invoke(handler, json.loads(line)))
    _end_sandbox()  # EOF: the runtime closed us
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
