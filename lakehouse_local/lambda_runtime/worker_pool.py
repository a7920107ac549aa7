"""The execution environments of the local runtime: one worker process per environment
(``Worker``), each function's warm idle workers and concurrency slots (``FunctionPool``), and this
process's pools (``Sandboxes``), ended at exit. Lambda's rules kept here: an environment serves one
invocation at a time, is reused warm, and is discarded after a timeout, an out-of-memory kill or a
crash, with every process its handler started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping

import psutil

from lakehouse_local.lambda_runtime.invoke_api import (
    LocalRuntimeClosedError,
    TooManyRequestsException,
)
from lakehouse_local.lambda_runtime.logs import WorkerLog
from lakehouse_local.lambda_runtime.worker_protocol import WORKER_SCRIPT, Channel, WorkerReply
from lambda_functions.registry import FunctionSpec

logger = logging.getLogger(__name__)

MEMORY_POLL_S = 0.025


class Worker:
    """One execution environment: a worker process, its control channel and its log file.

    Used by one invocation at a time. The process leads its own process group, so killing the
    group also ends whatever the handler started, as when Lambda discards an environment.
    """

    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        self.name = spec.name
        self.log = WorkerLog(spec.name)
        cmd_read, cmd_write = os.pipe()
        result_read, result_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-P", WORKER_SCRIPT, str(cmd_read), str(result_write)],
                stdin=subprocess.DEVNULL,
                stdout=self.log.fd,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(cmd_read, result_write),
                start_new_session=True,  # its own process group: see signal_group()
            )
        except BaseException:
            for fd in (cmd_write, result_read):
                os.close(fd)
            self.log.close()
            raise
        finally:
            os.close(cmd_read)
            os.close(result_write)
        self.channel = Channel(cmd_write, result_read)
        self._ps = psutil.Process(self.process.pid)
        self.peak_kb = 0

    def wait(self, deadline: float, memory_limit_kb: int) -> WorkerReply:
        """The worker's next message, or the reason there is none: the deadline (monotonic) passed,
        the memory limit was exceeded (both kill the worker) or the worker exited."""
        next_poll = 0.0
        while True:
            now = time.monotonic()
            if now >= next_poll:
                self.peak_kb = max(self.peak_kb, rss := self._rss_kb())
                if rss > memory_limit_kb:
                    self.kill()
                    return WorkerReply("oom")
                next_poll = now + MEMORY_POLL_S
            if now >= deadline:
                self.kill()
                return WorkerReply("timeout")
            try:
                message = self.channel.receive(min(next_poll, deadline) - now)
            except EOFError:
                return WorkerReply("exit", exit_detail=self.reap())
            if message is not None:
                self.peak_kb = max(self.peak_kb, message.get("max_rss_kb", 0))
                return WorkerReply("message", message)

    def kill(self) -> None:
        """End the worker and its process group now."""
        self.signal_group()
        self.process.wait()
        self.channel.close()

    def stop(self) -> None:
        """Discard the worker: an idle one exits on EOF of its command pipe (else it is killed)."""
        if self.process.returncode is None and self.channel.close_commands():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)
        self.kill()
        self.log.close()

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


class FunctionPool:
    """The execution environments of one function: idle (warm) workers and an in-flight count."""

    def __init__(self, max_concurrency: int | None) -> None:
        self._max_concurrency = max_concurrency
        self._changed = threading.Condition()
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._in_flight = 0
        self._closed = False

    def acquire(self, wait_for_capacity: bool) -> Worker | None:
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
                raise LocalRuntimeClosedError(
                    "LocalLambdaRuntime is closed; create a new one to invoke"
                )
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

    def track(self, worker: Worker) -> None:
        with self._changed:
            self._busy.add(worker)

    def discard(self, worker: Worker) -> None:
        """Stop a busy worker that was lost, keeping its invocation's slot."""
        with self._changed:
            self._busy.discard(worker)
        worker.stop()

    def release(self, worker: Worker | None, reusable: bool) -> None:
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


class Sandboxes:
    """This process's workers, per function; ended at exit if the runtime was not closed."""

    def __init__(self, functions: Mapping[str, FunctionSpec], max_concurrency: int | None) -> None:
        self.owner_pid = os.getpid()
        self.pools = {name: FunctionPool(max_concurrency) for name in functions}
        self.close = weakref.finalize(self, close_pools, self.pools, self.owner_pid)


def close_pools(pools: dict[str, FunctionPool], owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child must not end its parent's workers
        for pool in pools.values():
            pool.close()
