"""Open Dagster Pipes inside a Lambda handler, correctly for warm containers.

``open_dagster_pipes`` keeps a process-wide singleton that it does not clear on close, so in a warm
Lambda container the second invocation would get the first one's closed context and fail with
"Cannot send message after pipes context is closed". ``open_pipes`` clears the singleton before and
after each invocation and picks the message writer that matches the params the orchestrator
injected: S3 (``bucket`` key) in AWS, the default writer (file path or stdio) otherwise.

The S3 writer is dagster-pipes' ``PipesS3MessageWriter`` with one change, to its upload loop:
dagster-pipes' loop (``PipesBlobStoreMessageWriterChannel._upload_loop``) sleeps a fixed second
between passes and once more after the final upload, so closing the block costs 1-2 s inside the
function -- billed on every invocation -- whatever ``interval`` says. ``PromptS3MessageWriter``
waits on an event instead: it uploads every ``interval`` seconds while the handler runs and
uploads what is left the moment the block closes, then returns. Chunks keep dagster-pipes' names
(``<key_prefix>/<n>.json``, n from 1), so dagster-aws's S3 reader reads them unchanged, and the
final upload completes before the handler returns: every message is in S3 when ``Invoke`` answers.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from io import StringIO
from typing import Any

from dagster_pipes import (
    PipesContext,
    PipesDefaultMessageWriter,
    PipesMappingParamsLoader,
    PipesMessageWriter,
    PipesParams,
    PipesS3MessageWriter,
    PipesS3MessageWriterChannel,
    open_dagster_pipes,
)

# How often the S3 writer uploads a chunk of messages while the function runs (seconds). The
# last chunk is uploaded when the Pipes block closes, without waiting for this.
S3_MESSAGE_INTERVAL_S = 1.0


class PromptS3MessageWriterChannel(PipesS3MessageWriterChannel):
    """``PipesS3MessageWriterChannel`` whose upload loop waits on an event, not a fixed sleep."""

    @contextmanager
    def buffered_upload_loop(self) -> Iterator[None]:
        closed = threading.Event()
        failures: list[Exception] = []
        thread = threading.Thread(target=self._upload_until, args=(closed, failures), daemon=True)
        thread.start()
        try:
            yield
        finally:
            closed.set()
            thread.join(timeout=60)
        if failures:  # a message that could not be uploaded is lost: fail the invocation loudly
            raise PipesMessageUploadError(_upload_hint(self._bucket, self._key_prefix, failures[0]))

    def _upload_until(self, closed: threading.Event, failures: list[Exception]) -> None:
        index = 1
        while True:
            done = closed.wait(self._interval)
            payload = "\n".join(json.dumps(message) for message in self.flush_messages())
            if payload:
                try:
                    self.upload_messages_chunk(StringIO(payload), index)
                except Exception as error:
                    failures.append(error)
                    return
                index += 1
            if done:
                return


class PipesMessageUploadError(RuntimeError):
    """Pipes messages could not be uploaded: the orchestrator would not see them."""


def _upload_hint(bucket: str, key_prefix: str | None, error: Exception) -> str:
    where = f"s3://{bucket}/{key_prefix or ''}"
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        fix = (
            f"the bucket does not exist: create it (aws s3 mb s3://{bucket} --region "
            f"{os.environ.get('AWS_REGION', '<region>')}) or set LAKEHOUSE_PIPES_BUCKET (default: "
            "the bucket of LAKEHOUSE_LAKE_URI) to an existing bucket in the functions' region"
        )
    else:
        fix = (
            "check LAKEHOUSE_PIPES_BUCKET and that the function's role may s3:PutObject under "
            "its _dagster_pipes/ prefix"
        )
    return f"Pipes messages could not be written to {where}: {error}. Fix: {fix}."


class PromptS3MessageWriter(PipesS3MessageWriter):
    """``PipesS3MessageWriter`` with ``PromptS3MessageWriterChannel``: no sleep on close."""

    def make_channel(self, params: PipesParams) -> PromptS3MessageWriterChannel:
        return PromptS3MessageWriterChannel(
            client=self._client,
            bucket=params["bucket"],
            key_prefix=params.get("key_prefix"),
            interval=self.interval,
        )


@functools.cache
def _s3_client() -> Any:
    """One S3 client per execution environment: creating one costs ~100 ms, paid once per cold
    start instead of on every invocation."""
    import boto3

    return boto3.client("s3")


def message_writer_for(params: PipesMappingParamsLoader) -> PipesMessageWriter:
    messages_params = params.load_messages_params() if params.is_dagster_pipes_process() else {}
    if "bucket" in messages_params:
        return PromptS3MessageWriter(client=_s3_client(), interval=S3_MESSAGE_INTERVAL_S)
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


def typed_metadata(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Metadata in the typed form ``dagster_pipes`` reports, each kind taken from the value.

    Args:
        values: metadata name -> plain value. ``bool`` -> "bool", ``int`` -> "int", ``float``
            -> "float", ``str`` -> "text", ``None`` -> "null", a mapping or a list/tuple ->
            "json"; a value already in typed form (``typed(...)``, e.g. a "url" or "md") is kept.

    Returns:
        name -> ``{"raw_value": value, "type": kind}`` (``dagster_pipes.PipesMetadataValue``).

    Raises:
        TypeError: a value of any other type (convert it first: metadata crosses a JSON channel).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if isinstance(value, Mapping) and set(value) == {"raw_value", "type"}:
            out[name] = dict(value)
        elif isinstance(value, bool):
            out[name] = typed(value, "bool")
        elif isinstance(value, int):
            out[name] = typed(value, "int")
        elif isinstance(value, float):
            out[name] = typed(value, "float")
        elif isinstance(value, str):
            out[name] = typed(value, "text")
        elif value is None:
            out[name] = typed(None, "null")
        elif isinstance(value, Mapping | list | tuple):
            out[name] = typed(value if not isinstance(value, tuple) else list(value), "json")
        else:
            raise TypeError(
                f"metadata {name!r}: {type(value).__name__} has no Pipes metadata type; "
                "convert it to int, float, bool, str, a list or a mapping"
            )
    return out
