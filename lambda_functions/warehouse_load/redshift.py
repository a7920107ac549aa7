"""Redshift through the Data API (``redshift-data``): submit, poll, read; and S3 staging for COPY.

``RedshiftDataApiClient`` is the executor: a whole load transaction goes in ONE
``batch_execute_statement`` (the Data API runs a batch as one transaction in one session, which
is also why the temporary staging table lives only inside it), reads go through
``execute_statement`` with named parameters, and ``describe_statement`` is polled with
exponential backoff until FINISHED, FAILED or ABORTED, or until a deadline, when the statement is
cancelled (a cancelled batch rolls back). A failure names the failing sub-statement, its SQL (with
the IAM role shown as ``***``) and Redshift's error.

``RedshiftWarehouse`` adds what COPY needs: the staged rows written as Parquet under the lake,
``<lake>/_staging/<schema>/<table>/<lake version>/part.parquet``. Re-running the same load
overwrites the same object, so a retry never COPYs rows of an earlier attempt.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_functions.contracts import InvalidRequestError, check_redshift_connection
from lambda_functions.errors import TerminalError, TransientError
from lambda_functions.lake import ObjectStore, S3ObjectStore
from lambda_functions.waits import REPORT_EVERY_S, WaitReport
from lambda_functions.warehouse_sql import (
    REDSHIFT,
    Dialect,
    PlanError,
    ProjectedColumn,
    StageSource,
    Statement,
    check_statement_sizes,
    checked_iam_role,
    redact,
    stage_query,
)

RUNNING = ("SUBMITTED", "PICKED", "STARTED")


class RedshiftStatementFailure(RuntimeError):
    """Redshift failed or aborted a statement; nothing of its transaction was committed.

    The base of the two kinds ``_failure`` tells apart by Redshift's error: a known transient
    code (serialization conflict, 1023) is a ``RedshiftSerializationError``, anything else a
    ``RedshiftStatementError``. ``transient`` says which, for callers holding the base."""

    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        statement_id: str,
        status: str,
        index: int | None = None,
        label: str | None = None,
        sql: str | None = None,
        error: str = "",
    ):
        super().__init__(message)
        self.statement_id = statement_id
        self.status = status
        self.index = index  # 1-based position in the batch
        self.label = label
        self.sql = sql  # redacted
        self.error = error


class RedshiftStatementError(RedshiftStatementFailure, TerminalError):
    """Redshift failed or aborted a statement for a reason other than a known transient code:
    re-running the same statements would fail the same way; the message names the statement,
    its SQL (the IAM role shown as ``***``) and Redshift's error."""


class RedshiftSerializationError(RedshiftStatementFailure, TransientError):
    """Serializable isolation violation (Redshift error 1023): a concurrent transaction wrote the
    same table (e.g. two loads updating the shared control table) and Redshift aborted this one
    at a statement or at COMMIT. Nothing was committed; running the batch again is the fix."""

    transient = True


def is_serialization_error(error: str) -> bool:
    """Redshift reports 1023 as "ERROR: 1023 DETAIL: Serializable isolation violation on table
    ..." ("Fixing serializable isolation errors", Redshift Database Developer Guide). Only that
    code counts: a 1023 elsewhere in an error (a query id, a pid, a position in Redshift's
    "query: / process:" detail lines) belongs to a terminal failure, which is not retried."""
    text = error.lower()
    return "serializable isolation violation" in text or bool(re.search(r"\berror:\s*1023\b", text))


class RedshiftTimeoutError(TransientError, TimeoutError):
    """The statement did not finish before the deadline and was cancelled (a cancelled batch
    commits nothing). Transient: a lock or a busy workgroup may clear; re-run the load."""


@dataclass(frozen=True)
class RedshiftConnection:
    """Where and as whom statements run: a Serverless workgroup, or a provisioned cluster with a
    database user (temporary credentials) or a Secrets Manager secret."""

    database: str
    workgroup: str = ""
    cluster: str = ""
    db_user: str = ""
    secret_arn: str = ""

    def __post_init__(self) -> None:
        check_redshift_connection(
            database=self.database,
            workgroup=self.workgroup,
            cluster=self.cluster,
            db_user=self.db_user,
            secret_arn=self.secret_arn,
        )

    def api_arguments(self) -> dict[str, str]:
        arguments = {"Database": self.database}
        if self.workgroup:
            arguments["WorkgroupName"] = self.workgroup
        else:
            arguments["ClusterIdentifier"] = self.cluster
        if self.secret_arn:
            arguments["SecretArn"] = self.secret_arn
        elif self.db_user:
            arguments["DbUser"] = self.db_user
        return arguments


class RedshiftDataApiClient:
    """Runs statements on Redshift through the Data API and waits for them.

    ``ClientToken``: every submission carries a fresh token, so if the SDK retries a submission
    whose response was lost, Redshift runs it once. A re-run of a whole load makes a new token;
    what keeps *that* harmless is the plan's guard on the control row, checked inside the
    transaction.
    """

    def __init__(
        self,
        connection: RedshiftConnection,
        *,
        client: Any = None,
        timeout_s: float = 600.0,
        first_poll_s: float = 0.25,
        max_poll_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        new_token: Callable[[], str] = lambda: uuid.uuid4().hex,
        secrets: Sequence[str] = (),
        max_attempts: int = 4,
        first_retry_s: float = 2.0,
        on_progress: Callable[[str], None] | None = None,
        report_every_s: float = REPORT_EVERY_S,
    ):
        if client is None:
            import boto3

            client = boto3.client("redshift-data")
        self.client = client
        self.connection = connection
        self.timeout_s = timeout_s
        self.first_poll_s = first_poll_s
        self.max_poll_s = max_poll_s
        self.sleep = sleep
        self.clock = clock
        self.new_token = new_token
        self.secrets = tuple(secrets)
        self.max_attempts = max_attempts
        self.first_retry_s = first_retry_s
        self.on_progress = on_progress  # where a long poll is reported, every report_every_s
        self.report_every_s = report_every_s

    def run_batch(self, statements: Sequence[Statement], *, name: str) -> dict[str, int]:
        """Run ``statements`` as one transaction; return rows affected by label (``ResultRows``).

        A serialization conflict (``RedshiftSerializationError``: nothing committed) is retried
        up to ``max_attempts`` times in all, waiting ``first_retry_s`` and doubling; any other
        failure is raised at once. Each attempt is a new submission with a new ClientToken.

        Raises:
            PlanError: the batch breaks a Data API request limit (checked before sending).
            RedshiftStatementError: Redshift failed or aborted the batch (``transient`` says
                whether a retry could succeed).
            RedshiftTimeoutError: the batch ran past ``timeout_s`` and was cancelled.
        """
        limit = REDSHIFT.max_batch_statements
        if not 1 <= len(statements) <= limit:
            raise PlanError(
                f"batch_execute_statement takes 1 to {limit} statements, got {len(statements)}"
            )
        if any(s.parameters for s in statements):
            raise PlanError(
                "statements of a batch carry no parameters (see lambda_functions.warehouse_sql): render checked literals"
            )
        check_statement_sizes(REDSHIFT, statements)
        delay = self.first_retry_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._run_batch_once(statements, name=name)
            except RedshiftStatementFailure as error:
                if not error.transient or attempt == self.max_attempts:
                    if error.transient:
                        error.args = (
                            f"{error.args[0]}\nGave up after {attempt} attempts: concurrent "
                            "loads keep conflicting; run fewer loads at once on this warehouse.",
                        )
                    raise
            self.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _run_batch_once(self, statements: Sequence[Statement], *, name: str) -> dict[str, int]:
        response = self.client.batch_execute_statement(
            Sqls=[s.sql for s in statements],
            StatementName=name,
            ClientToken=self.new_token(),
            **self.connection.api_arguments(),
        )
        described = self.wait(response["Id"], statements, name=name)
        affected: dict[str, int] = {}
        for statement, sub in zip(statements, described.get("SubStatements", []), strict=False):
            if statement.sql.startswith(("INSERT", "DELETE", "UPDATE")):
                affected[statement.label] = int(sub.get("ResultRows", -1))
        return affected

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        """Run one read with named parameters; return every row (``get_statement_result`` paged)."""
        arguments: dict[str, Any] = {
            "Sql": statement.sql,
            "StatementName": statement.label,
            "ClientToken": self.new_token(),
            **self.connection.api_arguments(),
        }
        if statement.parameters:
            arguments["Parameters"] = [
                {"name": key, "value": str(value)} for key, value in statement.parameters.items()
            ]
        check_statement_sizes(REDSHIFT, [statement])
        response = self.client.execute_statement(**arguments)
        described = self.wait(response["Id"], [statement], name=statement.label)
        if not described.get("HasResultSet", False):
            return []
        return list(self._records(response["Id"]))

    def _records(self, statement_id: str) -> Iterator[tuple[Any, ...]]:
        token: str | None = None
        while True:
            page = self.client.get_statement_result(
                Id=statement_id, **({"NextToken": token} if token else {})
            )
            for record in page.get("Records", []):
                yield tuple(_field_value(value) for value in record)
            token = page.get("NextToken")
            if not token:
                return

    def wait(self, statement_id: str, statements: Sequence[Statement], *, name: str) -> dict:
        """Poll until the statement ends; raise with the failing sub-statement if it did not finish."""
        deadline = self.clock() + self.timeout_s
        delay = self.first_poll_s
        report = WaitReport(
            f"Redshift statement {statement_id} ({name})",
            self.on_progress,
            every_s=self.report_every_s,
            clock=self.clock,
        )
        while True:
            described = self.client.describe_statement(Id=statement_id)
            status = described["Status"]
            if status == "FINISHED":
                report.done("FINISHED")
                return described
            if status in RUNNING:
                report.still(
                    f"status {status}, timeout {self.timeout_s:.0f} s; if it waits on a lock, "
                    "STV_LOCKS shows the holder"
                )
            if status in ("FAILED", "ABORTED"):
                raise self._failure(described, statements, name)
            if status not in RUNNING:
                raise RedshiftStatementError(
                    f"Redshift statement {statement_id} ({name}) has unknown status {status!r}",
                    statement_id=statement_id,
                    status=status,
                )
            remaining = deadline - self.clock()
            if remaining <= 0:
                self.client.cancel_statement(Id=statement_id)
                raise RedshiftTimeoutError(
                    f"Redshift statement {statement_id} ({name}) was still {status} after "
                    f"{self.timeout_s:.0f} s and was cancelled (a cancelled batch commits "
                    "nothing). Check the workgroup's capacity or locks on the table "
                    "(SYS_QUERY_HISTORY, STV_LOCKS), raise the timeout if the load is just big, "
                    "then re-run the load."
                )
            self.sleep(min(delay, remaining))
            delay = min(delay * 2, self.max_poll_s)

    def _failure(
        self, described: dict, statements: Sequence[Statement], name: str
    ) -> RedshiftStatementFailure:
        statement_id, status = described["Id"], described["Status"]
        subs = described.get("SubStatements") or []
        secrets = (*self.secrets, *(s for st in statements for s in st.secrets))
        at_commit = bool(subs) and all(sub.get("Status") == "FINISHED" for sub in subs)
        if at_commit:
            # Every statement ran; the transaction failed when it committed (a serialization
            # conflict is detected there). Blaming the last statement would send people to
            # debug SQL that worked.
            position, index = None, None
            error = described.get("Error", "")
        elif subs:
            failed = [i for i, s in enumerate(subs) if s.get("Status") == "FAILED"]
            unfinished = [i for i, s in enumerate(subs) if s.get("Status") != "FINISHED"]
            position = (failed or unfinished)[0]
            index = position + 1
            error = subs[position].get("Error") or described.get("Error", "")
        else:
            position = 0
            index = 1 if len(statements) == 1 else None
            error = described.get("Error", "")
        statement = (
            statements[position]
            if index is not None and position is not None and position < len(statements)
            else None
        )
        error = redact(error, secrets)
        if statement is not None:
            sql = statement.display()
            where = f"statement {index} of {len(statements)} ({statement.label})"
        elif at_commit:
            sql = None
            where = f"the batch's COMMIT (all {len(subs)} statements had finished)"
        else:
            sql = None
            where = "the batch"
        serialization = is_serialization_error(error)
        verdict = "was aborted" if status == "ABORTED" else "failed"
        if serialization:
            advice = (
                "\nA concurrent transaction wrote the same table (serializable isolation, "
                "error 1023); nothing was committed and the batch is retried."
            )
        else:
            advice = (
                "\nNothing was committed (a batch is one transaction). Fix the cause and re-run "
                "the load."
            )
        message = (
            f"Redshift {where} {verdict} in {name!r} (statement id {statement_id}): "
            f"{error or 'no error text'}" + (f"\n  SQL: {sql}" if sql else "") + advice
        )
        if statement is not None and statement.label == "load_stage":
            message += (
                " COPY errors: check that the IAM role can read the staging object and that the "
                "bucket is in the cluster's region; row-level detail is in SYS_LOAD_ERROR_DETAIL."
            )
        kind = RedshiftSerializationError if serialization else RedshiftStatementError
        return kind(
            message,
            statement_id=statement_id,
            status=status,
            index=index,
            label=statement.label if statement else ("commit" if at_commit else None),
            sql=sql,
            error=error,
        )


def project_rows(rows: pa.Table, projection: Sequence[ProjectedColumn]) -> pa.Table:
    """``rows`` with the projected columns appended, computed by DuckDB (UTC session), exactly
    as the DuckDB warehouse computes them inside its transaction. Rows that carry
    ``_commit_version`` (a collection keeping history) keep it, before the projected columns."""
    import duckdb

    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        db.register("staged_rows", rows)
        history = "_commit_version" in rows.column_names
        query = stage_query(projection, "staged_rows", history=history)
        return db.sql(query).to_arrow_table()


def _field_value(value: dict[str, Any]) -> Any:
    if value.get("isNull"):
        return None
    for key in ("longValue", "stringValue", "doubleValue", "booleanValue", "blobValue"):
        if key in value:
            return value[key]
    return None


class RedshiftWarehouse:
    """Redshift as the warehouse: the Data API for SQL, the lake's S3 bucket for COPY's input."""

    dialect: Dialect = REDSHIFT

    def __init__(self, client: RedshiftDataApiClient, store: ObjectStore, iam_role: str):
        if not isinstance(store, S3ObjectStore):
            raise InvalidRequestError(
                f"Redshift COPY reads from S3, but the lake is {store.uri}: set "
                "LAKEHOUSE_LAKE_URI to s3://bucket/prefix (in the cluster's region)"
            )
        self.client = client
        self.store = store
        self.iam_role = checked_iam_role(iam_role)

    @contextmanager
    def session(self) -> Iterator[None]:
        yield  # every Data API call is its own session; the batch is the transaction

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        return self.client.query(statement)

    def run_transaction(self, statements: Sequence[Statement], *, name: str) -> dict[str, int]:
        return self.client.run_batch(statements, name=name)

    def stage(
        self, rows: pa.Table, *, key: str, projection: Sequence[ProjectedColumn] = ()
    ) -> StageSource:
        """Write the staged rows with the projected columns already computed (``stage_query``,
        by DuckDB in process), the document as binary (COPY loads it into the stage's VARBYTE)."""
        staged = project_rows(rows, projection)
        doc = staged.schema.get_field_index("doc")
        staged = staged.set_column(doc, "doc", staged.column(doc).cast(pa.binary()))
        sink = io.BytesIO()
        pq.write_table(staged, sink, compression="snappy")
        self.store.put(key, sink.getvalue())
        return StageSource(s3_uri=f"{self.store.uri}/{key}", iam_role=self.iam_role)

    def unstage(self, *, key: str, succeeded: bool) -> None:
        # Kept after a failure for diagnosis; the retry overwrites it.
        if succeeded:
            self.store.delete(key)
