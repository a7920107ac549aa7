"""Shared fixtures: a moto server on loopback for S3/CloudWatch (in this process, or in its own for
Delta tables on S3), and clean AWS credentials."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.moto_process import MotoProcess, moto_server_process

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1 (S3 enforces conditional writes; nothing leaves the machine)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def moto_process() -> Iterator[MotoProcess]:
    """A moto server in its own process: for Delta tables on S3 (see ``tests/moto_process.py``)."""
    with moto_server_process() as server:
        yield server


@pytest.fixture
def aws_process_env(moto_process: MotoProcess, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment under which boto3 and delta-rs talk to the moto server process."""
    env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_process.endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment under which boto3 (here and in Lambda workers) talks to the moto server."""
    env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
