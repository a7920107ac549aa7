"""The S3 Pipes message reader: no polling floor, nothing left behind.

dagster-aws's ``PipesS3MessageReader`` inherits ``PipesThreadedMessageReader``'s loop, which sleeps
a fixed second per pass (``dagster._core.pipes.utils.DEFAULT_SLEEP_INTERVAL``), downloads one
chunk per pass, and, when nothing was readable, waits ``WAIT_FOR_LOGS_AFTER_EXECUTION_INTERVAL``
(10 s) after the session closes before warning. None of this is exposed as a setting (its
``interval`` only spaces the downloads further apart). With the writer's own fixed sleeps (see
``lambda_functions/pipes.py``) that made every invocation take at least ~2 s.

``S3PipesMessageReader`` keeps dagster-aws's params, chunk names and download, and replaces the
loop: it polls every ``interval`` seconds while the function runs, reads every chunk present on
each pass, and drains the rest the moment the synchronous invoke has returned (the writer uploads
its last chunk before the handler returns, and S3 reads after writes are strongly consistent, so
nothing is missed and nothing is waited for). Messages live under ``PIPES_MESSAGE_PREFIX``; the
chunks read are deleted right after the session closes, in a background thread so that the step
does not wait for it, and the deployment template's lifecycle rule expires anything a crash
leaves there.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import ClientError
from dagster import PipesMessageHandler
from dagster_aws.pipes import PipesS3MessageReader
from dagster_pipes import PIPES_PROTOCOL_VERSION_FIELD, PipesBlobStoreMessageWriter, PipesParams

from lambda_functions.errors import TerminalError

# Key prefix of Pipes message objects in the bucket (the template's lifecycle rule expires it).
PIPES_MESSAGE_PREFIX = "_dagster_pipes"
# Seconds between reads while a function runs (messages then show up in the UI as they come).
POLL_INTERVAL_S = 0.5
_MISSING_KEY_CODES = {"NoSuchKey", "404"}
# Deletes run here, off the step's path. Its threads are not daemons: the interpreter finishes the
# pending deletes before the process exits (a killed process leaves them to the lifecycle rule).
_CLEANUP = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pipes-message-cleanup")
logger = logging.getLogger(__name__)


class PipesMessagesUnreadableError(TerminalError, RuntimeError):
    """The message bucket cannot be read: messages would be lost, so the step fails."""


class S3PipesMessageReader(PipesS3MessageReader):
    """Reads the messages a Lambda function writes to S3, then deletes them.

    Guarantees: every chunk written before the invoke returned is read (chunks are numbered from
    1 without gaps; reading stops at the first missing one only after the invoke returned); the
    chunks read are deleted when the session closes; an unreadable bucket (missing, access
    denied) fails the step with the fix instead of reading as "no messages".

    Args:
        bucket: the bucket the functions write messages to (``LAKEHOUSE_PIPES_BUCKET``).
        client: a boto3 S3 client.
        interval: seconds between reads while the function runs.
        prefix: key prefix under which each invocation gets its own folder.
    """

    def __init__(
        self,
        *,
        bucket: str,
        client: Any,
        interval: float = POLL_INTERVAL_S,
        prefix: str = PIPES_MESSAGE_PREFIX,
    ):
        super().__init__(interval=interval, bucket=bucket, client=client)
        self.prefix = prefix.strip("/")
        self.chunks_read = 0
        self.chunks_deleted = 0
        self.cleanup_error = ""  # why read chunks could not be deleted (the lifecycle rule will)
        self.cleanup: Future[None] | None = None  # the deletion of the chunks read, once started
        self._refused = threading.Event()
        self._error: BaseException | None = None

    @property
    def expected_writer_count(self) -> int:
        """One writer, the function. Defined here because dagster reads this on every session
        and the inherited property is ``@preview``: it would warn once per invocation."""
        return 1

    def invocation_refused(self) -> None:
        """The Lambda service refused the invoke (no such function, access denied, throttled):
        the function never ran, so there is nothing to wait for or read."""
        self._refused.set()

    @contextmanager
    def get_params(self) -> Iterator[PipesParams]:
        yield {
            "bucket": self.bucket,
            "key_prefix": f"{self.prefix}/{uuid.uuid4().hex}",
            PipesBlobStoreMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False,
        }

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        with self.get_params() as params:
            invoked = threading.Event()
            thread = threading.Thread(
                target=self._read_until, args=(handler, params, invoked), daemon=True
            )
            thread.start()
            try:
                yield params
            finally:
                invoked.set()
                thread.join()
                if self.chunks_read:
                    self.cleanup = _CLEANUP.submit(self._delete_chunks, params)
            if self._error is not None:
                raise self._error

    def download_messages_chunk(self, index: int, params: PipesParams) -> str | None:
        key = f"{params['key_prefix']}/{index}.json"
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _MISSING_KEY_CODES:
                return None  # not written (yet)
            raise PipesMessagesUnreadableError(_unreadable_hint(self.bucket, error)) from error
        return response["Body"].read().decode("utf-8")

    def _read_until(
        self, handler: PipesMessageHandler, params: PipesParams, invoked: threading.Event
    ) -> None:
        index = 1
        try:
            while True:
                returned = invoked.wait(self.interval)
                if returned and self._refused.is_set():
                    return
                # Read every chunk present; stop at the first missing one, or right after the
                # chunk holding the "closed" message (the writer's last: no request for the next).
                while not handler.received_closed_message:
                    chunk = self.download_messages_chunk(index, params)
                    if chunk is None:
                        break
                    index += 1
                    for line in chunk.split("\n"):
                        _handle_line(handler, line)
                if returned:
                    return
        except BaseException as error:
            self._error = error
            handler.report_pipes_framework_exception(
                f"{type(self).__name__} messages thread", sys.exc_info()
            )
        finally:
            self.chunks_read = index - 1

    def _delete_chunks(self, params: PipesParams) -> None:
        if not self.chunks_read:
            return
        keys = [{"Key": f"{params['key_prefix']}/{i}.json"} for i in range(1, self.chunks_read + 1)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = keys[start : start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except ClientError as error:
                self.cleanup_error = str(error)
            else:
                failed = response.get("Errors", [])
                if failed:
                    self.cleanup_error = f"{failed[0].get('Code')}: {failed[0].get('Message')}"
                self.chunks_deleted += len(batch) - len(failed)
            if self.cleanup_error:
                logger.warning(
                    "Pipes messages under s3://%s/%s/ were read but not deleted (%s); grant "
                    "s3:DeleteObject on the %s/ prefix (the bucket's lifecycle rule expires them "
                    "meanwhile).",
                    self.bucket,
                    params["key_prefix"],
                    self.cleanup_error,
                    self.prefix,
                )
                return

    def no_messages_debug_text(self) -> str:
        return (
            f"Read messages from s3://{self.bucket}/{self.prefix}/; the handler must open Pipes "
            "with lambda_functions.pipes.open_pipes (it writes them there)."
        )


def _handle_line(handler: PipesMessageHandler, line: str) -> None:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return
    if isinstance(message, dict) and PIPES_PROTOCOL_VERSION_FIELD in message:
        handler.handle_message(message)


def _unreadable_hint(bucket: str, error: ClientError) -> str:
    code = error.response.get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return (
            f"the Pipes message bucket {bucket!r} does not exist: create it (aws s3 mb "
            f"s3://{bucket}) or point LAKEHOUSE_PIPES_BUCKET (default: the bucket of "
            "LAKEHOUSE_LAKE_URI) at an existing bucket in AWS_REGION"
        )
    if code in ("AccessDenied", "403"):
        return (
            f"reading Pipes messages from s3://{bucket}/{PIPES_MESSAGE_PREFIX}/ was denied: grant "
            "the orchestrator s3:GetObject and s3:DeleteObject on that prefix and s3:ListBucket "
            "on the bucket (without ListBucket, S3 answers 403 instead of 404 for a message not "
            "written yet)"
        )
    return f"reading Pipes messages from s3://{bucket} failed: {error}"
