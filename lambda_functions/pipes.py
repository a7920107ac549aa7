"""Open Dagster Pipes inside a Lambda handler, correctly for warm containers.

``open_dagster_pipes`` keeps a process-wide singleton that it does not clear on close, so in a warm
Lambda container the second invocation would get the first one's closed context and fail with
"Cannot send message after pipes context is closed". ``open_pipes`` clears the singleton before and
after each invocation and picks the message writer that matches the params the orchestrator
injected: S3 (``bucket`` key) in AWS, the default writer (file path or stdio) otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster_pipes import (
    PipesContext,
    PipesDefaultMessageWriter,
    PipesMappingParamsLoader,
    PipesMessageWriter,
    PipesS3MessageWriter,
    open_dagster_pipes,
)

# How often the S3 writer uploads a chunk of messages while the function runs.
S3_MESSAGE_INTERVAL_S = 2.0


def message_writer_for(params: PipesMappingParamsLoader) -> PipesMessageWriter:
    messages_params = params.load_messages_params() if params.is_dagster_pipes_process() else {}
    if "bucket" in messages_params:
        import boto3

        return PipesS3MessageWriter(client=boto3.client("s3"), interval=S3_MESSAGE_INTERVAL_S)
    return PipesDefaultMessageWriter()


@contextmanager
def open_pipes(event: Mapping[str, Any]) -> Iterator[PipesContext]:
    """Yield a fresh Pipes context for this invocation and close it when the handler is done.

    An exception raised inside the block is reported to Dagster as the step's failure cause and
    then re-raised, so Lambda also records the invocation as failed.
    """
    PipesContext._instance = None  # a warm container may hold the previous invocation's context
    loader = PipesMappingParamsLoader(event)
    try:
        with open_dagster_pipes(
            params_loader=loader,
            context_loader=None,
            message_writer=message_writer_for(loader),
        ) as pipes:
            yield pipes
    finally:
        PipesContext._instance = None


def without_pipes_keys(event: Mapping[str, Any]) -> dict[str, Any]:
    """The request part of an event: what is left once the Pipes bootstrap keys are removed."""
    return {k: v for k, v in event.items() if not k.startswith("DAGSTER_PIPES_")}


def typed(value: Any, kind: str) -> dict[str, Any]:
    """A metadata value in the typed form ``dagster_pipes`` reports: ``kind`` is "int",
    "float", "bool", "text", "json", ..."""
    return {"raw_value": value, "type": kind}
