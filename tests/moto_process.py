"""moto's server in a child process, for tests that touch Delta tables on S3.

delta-rs plans some reads (the change data feed) while holding the GIL, so a moto server running
as a thread of the test process cannot answer them and the read stalls until object_store's retry
timeout (3 minutes). A server in its own process has its own interpreter. ``pid`` lets a test
freeze it (SIGSTOP) to play a network stall.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()  # serve until the parent closes our stdin (or exits)
server.stop()
"""


@dataclass(frozen=True)
class MotoProcess:
    endpoint: str
    pid: int

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stops answering (its process is stopped), as in a network stall."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)


@contextmanager
def moto_server_process() -> Iterator[MotoProcess]:
    """Start moto's server in a child process; yield its endpoint; stop it on exit."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        endpoint = child.stdout.readline().strip()
        if not endpoint.startswith("http://"):
            raise RuntimeError("moto server process did not start")
        yield MotoProcess(endpoint, child.pid)
    finally:
        os.kill(child.pid, signal.SIGCONT)
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
