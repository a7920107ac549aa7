"""Invoke the data-plane Lambda functions through dagster-aws's ``PipesLambdaClient``.

What this adds to a bare ``PipesLambdaClient`` (see DESIGN.md, "The Lambda contract"):
- a message reader that does not depend on the 4 KB log tail: S3 in AWS, a file locally, so every
  message arrives, and arrives while the function runs;
- in AWS, a boto3 Lambda client whose read timeout exceeds the longest function timeout and which
  never retries (a retried synchronous invoke would run the function again);
- one ``PipesLambdaClient`` per invocation (the client keeps per-session state: not thread-safe);
- an invoke the Lambda service refuses (no such function, access denied, throttled) ends the step
  at once with the fix: the function never ran, so the reader does not wait for messages and
  Pipes' "did not receive any messages" warning, which would point at the handler, is dropped;
- missing region or credentials reported naming the setting to change;
- the function's log tail forwarded to the step's output, and a function error or timeout raised
  as a ``dagster.Failure`` that carries the Lambda error type, message, stack trace and log tail.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError
from dagster import (
    Failure,
    MaterializeResult,
    MetadataValue,
    PipesMessageReader,
    PipesTempFileMessageReader,
)
from dagster_aws.pipes import PipesLambdaClient

from lakehouse_pipelines.resources.lambda_failures import (
    NO_CREDENTIALS_HINT,
    NO_REGION_HINT,
    REFUSED_INVOKE_HINTS,
    FunctionCallError,
    MissingAwsSettingError,
    failure_kind,
    function_failure,
    kind_failure,
    refused_failure,
    unbuilt_kind,
)
from lakehouse_pipelines.resources.partition_checks import combine_checks, with_collection_figures
from lakehouse_pipelines.resources.pipes_messages import S3PipesMessageReader
from lambda_functions.contracts import CollectionRequest
from lambda_functions.errors import (
    TerminalError,
)
from lambda_functions.registry import FUNCTIONS, FunctionSpec

# Seconds the orchestrator waits beyond the function timeout before giving up on the HTTP call.
READ_TIMEOUT_MARGIN_S = 60
# Lambda's request charge, USD per invocation (the GB-second price is a setting).
PRICE_PER_REQUEST = 0.0000002
_REPORT = re.compile(
    r"REPORT RequestId: \S+\s+Duration: (?P<duration>[\d.]+) ms\s+Billed Duration: (?P<billed>\d+) ms"
    r"\s+Memory Size: (?P<memory>\d+) MB\s+Max Memory Used: (?P<max_memory>\d+) MB"
    r"(?:\s+Init Duration: (?P<init>[\d.]+) ms)?"
)


def lambda_report_metadata(log_tail: str, price_per_gb_second: float) -> dict[str, Any]:
    """Figures from the invocation's REPORT line (present in real and local Lambda log tails)."""
    matches = list(_REPORT.finditer(log_tail))
    if not matches:
        return {}
    report = matches[-1]
    billed_ms = int(report["billed"])
    memory_mb = int(report["memory"])
    gb_seconds = billed_ms / 1000 * memory_mb / 1024
    return {
        "lambda/duration_ms": MetadataValue.float(float(report["duration"])),
        "lambda/billed_duration_ms": MetadataValue.int(billed_ms),
        "lambda/memory_size_mb": MetadataValue.int(memory_mb),
        "lambda/max_memory_used_mb": MetadataValue.int(int(report["max_memory"])),
        "lambda/init_duration_ms": MetadataValue.float(float(report["init"] or 0.0)),
        "lambda/estimated_cost_usd": MetadataValue.float(
            round(gb_seconds * price_per_gb_second + PRICE_PER_REQUEST, 10)
        ),
    }


class _SingleWriterTempFileReader(PipesTempFileMessageReader):
    """dagster's temp-file reader, saying it has one writer (the function) without going through
    the base class's ``@preview`` property: dagster reads ``expected_writer_count`` on every
    session, and the inherited one emits a PreviewWarning per invocation."""

    @property
    def expected_writer_count(self) -> int:
        return 1


# Dagster's warning when a session saw no message; after a refused invoke it is expected, and it
# would wrongly point at the handler.
_NO_MESSAGES_WARNING = "[pipes] did not receive any messages"


class _TailingLambdaClient:
    """Wraps a Lambda client: asks for the log tail and keeps the last response, its request id
    and decoded log tail for diagnostics. When the service refuses the invoke it records the
    error and tells the message reader there is nothing to read."""

    def __init__(self, client: Any, message_reader: Any = None):
        self._client = client
        self._message_reader = message_reader
        self.response: dict[str, Any] | None = None
        self.refusal: ClientError | None = None
        self.request_id = ""
        self.log_tail = ""

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("LogType", "Tail")
        try:
            self.response = response = self._client.invoke(**kwargs)
        except ClientError as error:
            self.refusal = error
            if hasattr(self._message_reader, "invocation_refused"):
                self._message_reader.invocation_refused()
            raise
        self.request_id = response.get("ResponseMetadata", {}).get("RequestId", "")
        if "LogResult" in response:
            self.log_tail = base64.b64decode(response["LogResult"]).decode("utf-8", "replace")
        return response


class LambdaPipes:
    """Runs a data-plane function for an asset and returns what it reported through Pipes.

    The ``lambda_pipes`` resource: the same class in both environments, built by
    ``LambdaPipes.local`` (the local Lambda runtime, messages in a temporary file) or
    ``LambdaPipes.aws`` (boto3, messages in S3). Invocations are synchronous (``RequestResponse``,
    AWS Lambda API Reference, "Invoke") and never retried here: a failed step is retried by its
    ``RetryPolicy`` when every failure may clear by itself, never when one is terminal
    (``lambda_functions.errors.error_kind``).

    Args:
        lambda_client: an object with boto3's Lambda ``invoke`` (``boto3.client("lambda")`` or
            ``LocalLambdaRuntime``).
        message_reader_factory: builds one Pipes message reader per invocation.
        function_prefix: prepended to the registry names (deployed names, e.g. ``"prod-"``).
        price_per_gb_second: Lambda's compute price in USD per GB-second, for the
            ``lambda/estimated_cost_usd`` metadata.
    """

    def __init__(
        self,
        *,
        lambda_client: Any,
        message_reader_factory: Callable[[], PipesMessageReader],
        function_prefix: str = "",
        price_per_gb_second: float = 0.0000166667,
    ):
        self.lambda_client = lambda_client
        self.price_per_gb_second = price_per_gb_second
        self._message_reader_factory = message_reader_factory
        self.function_prefix = function_prefix

    @classmethod
    def local(cls, runtime: Any, **options: Any) -> LambdaPipes:
        """Use the local Lambda runtime; messages travel through a temporary file.

        Args:
            runtime: a ``LocalLambdaRuntime`` (or any object with boto3's Lambda ``invoke``).
            **options: ``function_prefix``, ``price_per_gb_second`` (see the class).

        Returns:
            A ``LambdaPipes`` invoking through ``runtime``; ``close()`` closes the runtime.
        """
        return cls(
            lambda_client=runtime,
            message_reader_factory=_SingleWriterTempFileReader,
            **options,
        )

    @classmethod
    def aws(
        cls,
        *,
        pipes_bucket: str,
        region: str | None = None,
        lambda_client: Any = None,
        s3_client: Any = None,
        **options: Any,
    ) -> LambdaPipes:
        """Use AWS Lambda; messages travel through ``pipes_bucket`` in S3.

        Args:
            pipes_bucket: the S3 bucket the functions write Pipes messages to (under
                ``PIPES_MESSAGE_PREFIX``; the deploy template's ``PipesMessagesBucket``).
            region: the AWS region; ``None`` uses the profile's or ``AWS_REGION``.
            lambda_client: a Lambda client to use instead of boto3's (tests); the default has a
                read timeout above the longest function timeout and no botocore retries.
            s3_client: an S3 client to use instead of boto3's (tests).
            **options: ``function_prefix``, ``price_per_gb_second`` (see the class).

        Returns:
            A ``LambdaPipes`` invoking AWS Lambda. No AWS call is made here.

        Raises:
            MissingAwsSettingError: no region is configured (the message names the setting).
        """
        import boto3

        try:
            lambda_client = lambda_client or boto3.client(
                "lambda", region_name=region or None, config=lambda_client_config()
            )
            s3_client = s3_client or boto3.client("s3", region_name=region or None)
        except NoRegionError:
            raise MissingAwsSettingError(NO_REGION_HINT) from None
        return cls(
            lambda_client=lambda_client,
            message_reader_factory=lambda: S3PipesMessageReader(
                bucket=pipes_bucket, client=s3_client
            ),
            **options,
        )

    def function_name(self, spec: FunctionSpec) -> str:
        """The deployed name of ``spec``: ``function_prefix`` + the registry name."""
        return f"{self.function_prefix}{spec.name}"

    def call(self, spec: FunctionSpec, event: Mapping[str, Any]) -> Any:
        """Invoke ``spec`` synchronously without Pipes and return what the function returned.

        For functions that answer a question instead of materializing an asset (collection
        discovery, invoked from a sensor): one ``RequestResponse`` invoke (Lambda API Reference,
        "Invoke"), never retried here.

        Args:
            spec: the function to invoke (its deployed name gets ``function_prefix``).
            event: the JSON-serializable event, e.g. a contract request's ``to_event()``.

        Returns:
            The function's JSON-decoded return value (``None`` for an empty payload).

        Raises:
            FunctionCallError: Lambda refused the invoke (``error_type`` is the API error code,
                e.g. ``ResourceNotFoundException``) or the function raised (``error_type`` is the
                payload's ``errorType``); the message names the function, cause and fix.
            MissingAwsSettingError: no AWS credentials were found.
        """
        name = self.function_name(spec)
        try:
            response = self.lambda_client.invoke(
                FunctionName=name,
                InvocationType="RequestResponse",
                Payload=json.dumps(dict(event)).encode(),
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "ClientError")
            message = error.response.get("Error", {}).get("Message", str(error))
            hint = REFUSED_INVOKE_HINTS.get(code, "The function did not run; fix the cause.")
            raise FunctionCallError(name, code, f"{message}. {hint}") from None
        except NoCredentialsError:
            raise MissingAwsSettingError(NO_CREDENTIALS_HINT) from None
        body = response["Payload"].read()
        payload = json.loads(body) if body else None
        if "FunctionError" in response:
            details = payload if isinstance(payload, dict) else {}
            raise FunctionCallError(
                name,
                str(details.get("errorType", response["FunctionError"])),
                str(details.get("errorMessage", body[:1000])),
            )
        return payload

    def close(self) -> None:
        """Release the Lambda client (ends the local runtime's workers); idempotent."""
        close = getattr(self.lambda_client, "close", None)
        if callable(close):
            close()

    def run(
        self, context: Any, spec: FunctionSpec, request: CollectionRequest
    ) -> MaterializeResult:
        """Invoke ``spec`` synchronously with ``request`` and return what it reported.

        Args:
            context: the asset's execution context (Pipes reports into it; logs go to it).
            spec: the function to invoke (deployed as ``function_prefix + spec.name``).
            request: the contract request; sent as ``request.to_event()`` plus the Pipes
                bootstrap fields.

        Returns:
            The materialization the function reported, with its asset check results, plus the
            invocation's figures (``lambda/request_id``, ``lambda/duration_ms``,
            ``lambda/billed_duration_ms``, ``lambda/max_memory_used_mb``,
            ``lambda/estimated_cost_usd``...). The function's log tail goes to the step's stdout.

        Raises:
            dagster.Failure: the function failed (its ``errorType``, message, stack trace and log
                tail in the metadata), timed out, or Lambda refused the invoke (the fix named).
                ``allow_retries`` is False when the failure is terminal (``error_kind``), so the
                step's ``RetryPolicy`` retries only transient and unknown failures; the metadata
                ``error_kind`` says which.
        """
        reader = self._message_reader_factory()
        client = _TailingLambdaClient(self.lambda_client, reader)
        pipes = PipesLambdaClient(client=client, message_reader=reader)
        name = self.function_name(spec)
        context.log.info(f"Invoking Lambda function {name} for {request.namespace}")
        quiet = _DropNoMessagesWarningAfterRefusal(client)
        context.log.addFilter(quiet)
        try:
            invocation = pipes.run(function_name=name, event=request.to_event(), context=context)
        except Exception as error:
            if client.response and "FunctionError" in client.response:
                raise function_failure(name, client.request_id, client.log_tail, error) from None
            if client.refusal is not None:
                raise refused_failure(name, client.refusal) from None
            if isinstance(error, NoCredentialsError):
                raise kind_failure(NO_CREDENTIALS_HINT, "terminal") from None
            if isinstance(error, TerminalError):  # e.g. the message bucket cannot be read
                raise kind_failure(f"{type(error).__name__}: {error}", "terminal") from error
            raise
        finally:
            context.log.removeFilter(quiet)
            if client.log_tail:
                print(client.log_tail, flush=True)  # lands in the step's captured stdout
        reported = invocation.get_materialize_result()
        return MaterializeResult(
            asset_key=reported.asset_key,
            metadata={
                **(reported.metadata or {}),
                "lambda/request_id": MetadataValue.text(client.request_id),
                **lambda_report_metadata(client.log_tail, self.price_per_gb_second),
            },
            check_results=reported.check_results,
            data_version=reported.data_version,
            tags=reported.tags,
        )

    def run_partitions(
        self,
        context: Any,
        spec: FunctionSpec,
        requests: Mapping[str, CollectionRequest],
        *,
        max_concurrency: int,
        unbuilt: Mapping[str, BaseException] | None = None,
        run: Callable[[Any, FunctionSpec, CollectionRequest], MaterializeResult] | None = None,
    ) -> MaterializeResult:
        """Hopper fan-out: one invocation per partition, at most ``max_concurrency`` at once.

        Every invocation gets its own ``PipesLambdaClient`` (the client is not thread-safe). Each
        partition's reported metadata is attached to that partition, so a single-run backfill still
        records one materialization per partition with its own figures; check results are combined
        (a check passes only if it passed for every partition, and names the ones that failed).
        If any invocation fails, the others still finish (their work is committed and idempotent)
        and the step then fails naming every failed partition. A run for a single partition
        invokes once and records the function's materialization and checks as reported.

        ``unbuilt`` maps the partitions whose request could not be built to the error: they are
        failed partitions like those whose invocation failed, and the others are still invoked.

        Args:
            context: the asset's execution context; ``context.partition_keys`` are the
                partitions the step covers.
            spec: the function to invoke per partition.
            requests: partition key -> the contract request for it.
            max_concurrency: most invocations in flight at once (at least 1).
            unbuilt: partition key -> the error that kept its request from being built.
            run: runs one partition's request, with ``run``'s signature and contract (default
                ``self.run``; ``resources.routes.RoutedRunner`` picks Lambda or ECS per request):
                the bound, the per-partition metadata and the failure kinds stay the same.

        Returns:
            For one partition, ``run``'s materialization (checks with per-collection figures);
            for several, a ``MaterializeResult`` with the combined check results (each
            partition's metadata is attached to it with ``add_asset_metadata``).

        Raises:
            ValueError: ``max_concurrency`` is below 1.
            dagster.Failure: any partition failed, naming every failed partition and why
                (metadata ``failed_partitions``, ``error_kinds``). Not retried
                (``allow_retries=False``) when any failure is terminal (an unbuilt request is
                terminal unless its error is a ``TransientError``); else left to the step's
                ``RetryPolicy``, which re-runs every partition (committed ones are idempotent).
        """
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        unbuilt = dict(unbuilt or {})
        run = run or self.run
        if len(requests) + len(unbuilt) == 1 and context.has_partition_key:
            if unbuilt:
                ((key, error),) = unbuilt.items()
                raise kind_failure(
                    f"partition {key}: not invoked, its request failed: {error}",
                    unbuilt_kind(error),
                ) from error
            ((key, request),) = requests.items()
            result = run(context, spec, request)
            return result._replace(
                check_results=[
                    with_collection_figures(check, {key: check})
                    for check in result.check_results or []
                ]
            )
        results: dict[str, MaterializeResult] = {}
        failures: dict[str, BaseException] = {}
        for key, error in sorted(unbuilt.items()):
            failures[key] = error
            context.log.error(f"partition {key}: not invoked, its request failed: {error}")
        with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="lambda") as pool:
            futures = {
                pool.submit(run, context, spec, request): key for key, request in requests.items()
            }
            for future in as_completed(futures):
                key = futures[future]
                try:
                    results[key] = future.result()
                except Exception as error:
                    failures[key] = error
                    context.log.error(f"partition {key}: {error}")
        for key, result in sorted(results.items()):
            context.add_asset_metadata(dict(result.metadata or {}), partition_key=key)
        if failures:
            kinds = {
                key: unbuilt_kind(error) if key in unbuilt else failure_kind(error)
                for key, error in failures.items()
            }
            retry = "terminal" not in kinds.values()
            raise Failure(
                description=(
                    f"{len(failures)} of {len(requests) + len(unbuilt)} partitions failed: "
                    + "; ".join(
                        f"{k}: {(str(e).splitlines() or [type(e).__name__])[0]}"
                        for k, e in sorted(failures.items())
                    )
                    + ". Partitions that succeeded are committed; "
                    + (
                        "every failure may clear by itself, so the step is retried (its retry "
                        "policy) before it fails."
                        if retry
                        else "a failure that retrying cannot fix (terminal) is among them: fix "
                        "it, then re-run the failed ones."
                    )
                ),
                metadata={
                    "failed_partitions": MetadataValue.json(sorted(failures)),
                    "error_kinds": MetadataValue.json(dict(sorted(kinds.items()))),
                },
                allow_retries=retry,
            )
        return MaterializeResult(check_results=combine_checks(results))


class _DropNoMessagesWarningAfterRefusal(logging.Filter):
    """Drops Dagster's "no messages" warning for this invocation (this thread) once the service
    refused the invoke: nothing ran, so the warning is expected and points at the wrong cause."""

    def __init__(self, client: _TailingLambdaClient):
        super().__init__()
        self._client = client
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            self._client.refusal is not None
            and threading.get_ident() == self._thread
            and _NO_MESSAGES_WARNING in str(record.msg)
        )


def lambda_client_config() -> Any:
    """botocore config for synchronous invokes: read timeout above every function's timeout, and
    no retries (botocore's default 60 s timeout + retries would run a long function three times)."""
    from botocore.config import Config

    longest = max(spec.timeout_s for spec in FUNCTIONS.values())
    return Config(
        read_timeout=longest + READ_TIMEOUT_MARGIN_S,
        connect_timeout=10,
        retries={"total_max_attempts": 1, "mode": "standard"},
        tcp_keepalive=True,
    )
