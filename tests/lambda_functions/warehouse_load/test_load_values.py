"""Values that used to break the load: timestamps with offsets, large documents, wide projections,
and commit-time failures of a Data API batch.

Expected values come from the engines' documented behaviour, not from the code:
- an ISO-8601 offset fixes the instant (12:00:00+02:00 is 10:00:00Z); DuckDB's cast to TIMESTAMP
  WITH TIME ZONE applies it and reads text without one in the session time zone (set to UTC);
  Redshift stores TIMESTAMP as UTC and ignores offsets in text ("Datetime types"), so the instant
  is fixed before it reaches Redshift;
- a Redshift SUPER value holds up to 16 MB; VARCHAR (the old staging type) stops at 65,535 bytes;
- the Redshift Data API refuses a query string over 100 KB and a batch over 40 statements;
- Redshift error 1023 (serializable isolation violation) aborts a transaction, possibly at COMMIT.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from botocore.stub import Stubber
from sqlglot import exp

from lambda_functions.contracts import LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, S3ObjectStore, open_store
from lambda_functions.merge import merge_batches
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_load.lake_changes import STAGE_SCHEMA
from lambda_functions.warehouse_load.redshift import (
    RedshiftConnection,
    RedshiftDataApiClient,
    RedshiftSerializationError,
    RedshiftStatementError,
    RedshiftWarehouse,
    project_rows,
)
from lambda_functions.warehouse_load.set_aside import mark_set_aside
from lambda_functions.warehouse_sql import (
    DUCKDB,
    REDSHIFT,
    DuckDBDialect,
    StageSource,
    Statement,
    TargetTable,
    load_transaction,
    parse_projection,
    projected_value,
)
from tests.lambda_functions.raw_batches import JAN, key, publish

ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"
TABLE_ID = "0b5e7a9c-1111-2222-3333-444455556666"
A, B, C = key(JAN, 1), key(JAN, 2), key(JAN, 3)

# (value in the document, the instant it denotes, in UTC)
INSTANTS = {
    "Z": ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, 0, tzinfo=UTC)),
    "+02:00": ("2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10, 0, tzinfo=UTC)),
    "-05:00": ("2024-03-01T21:30:00-05:00", datetime(2024, 3, 2, 2, 30, tzinfo=UTC)),
    "no offset": ("2024-03-01T12:00:00", datetime(2024, 3, 1, 12, 0, tzinfo=UTC)),
    "fraction": (
        "2024-03-01T12:00:00.123456+02:00",
        datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
    ),
    "$date canonical": (
        {"$date": {"$numberLong": "1709287200123"}},  # 2024-03-01T10:00:00.123Z
        datetime(2024, 3, 1, 10, 0, 0, 123000, tzinfo=UTC),
    ),
    "$date relaxed": (
        {"$date": "2024-03-01T12:00:00.5+02:00"},
        datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC),
    ),
}


class Lake:
    def __init__(self, root: Path):
        self.path = str(root / "lake")
        self.zone = RawZone(open_store(self.path), "shop", "orders")
        self.merge = MergeRequest(lake_uri=self.path, database="shop", collection="orders")
        self.warehouse = str(root / "wh.duckdb")

    def change(self, *changes) -> None:
        publish(self.zone, list(changes))
        merge_batches(self.merge)

    def request(self, **changes) -> LoadRequest:
        return LoadRequest(
            lake_uri=self.path,
            database="shop",
            collection="orders",
            warehouse_location=self.warehouse,
            **changes,
        )

    def sql(self, query: str) -> list[tuple]:
        import duckdb

        with duckdb.connect(self.warehouse) as db:
            db.execute("SET TimeZone = 'UTC'")
            return db.execute(query).fetchall()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path)


# -- 7. timestamps keep their instant -------------------------------------------------------------


def test_timestamps_keep_their_instant_on_duckdb_for_timestamptz_timestamp_and_date(lake):
    names = list(INSTANTS)
    lake.change(
        *(
            (key(JAN, n + 1), "insert", 1, json.dumps({"at": INSTANTS[name][0]}))
            for n, name in enumerate(names)
        )
    )
    load_changes(lake.request(projection={"at": "TIMESTAMPTZ"}))
    load_changes(lake.request(projection={"at": "TIMESTAMPTZ", "at2": "TIMESTAMP"}))
    projection = {"at": "TIMESTAMPTZ", "day": "DATE", "local": "TIMESTAMP"}
    docs = {
        key(JAN, n + 1): {"at": INSTANTS[name][0], "day": INSTANTS[name][0]}
        | {"local": INSTANTS[name][0]}
        for n, name in enumerate(names)
    }
    lake.change(*((k, "update", 2, json.dumps(d)) for k, d in docs.items()))
    load_changes(lake.request(projection=projection))
    rows = dict(
        (r[0], r[1:])
        for r in lake.sql(
            'SELECT _id, epoch_us("at"), "local", "day" FROM "analytics"."orders" ORDER BY 1'
        )
    )
    for n, name in enumerate(names):
        instant = INSTANTS[name][1]
        at_us, local, day = rows[key(JAN, n + 1)]
        assert at_us == int(instant.timestamp()) * 1_000_000 + instant.microsecond, name
        assert local == instant.replace(tzinfo=None), name  # UTC wall-clock time
        assert day == instant.date(), name  # the UTC calendar date of the instant


@pytest.mark.parametrize("name", list(INSTANTS))
def test_redshift_receives_the_instant_as_epoch_microseconds_and_converts_it_in_sql(name):
    value, instant = INSTANTS[name]
    projection = parse_projection({"at": "TIMESTAMPTZ", "local": "TIMESTAMP", "day": "DATE"})
    rows = mark_set_aside(
        pa.table(
            {
                "_id": [A],
                "doc": [json.dumps({"at": value, "local": value, "day": value})],
                "_op": ["insert"],
                "_pos": [1],
                "_event_time": pa.array([None], pa.timestamp("us", tz="UTC")),
                "_deleted": [False],
            },
            schema=STAGE_SCHEMA,
        ),
        REDSHIFT,
    )
    staged = project_rows(rows, projection).to_pylist()[0]
    micros = int(instant.timestamp()) * 1_000_000 + instant.microsecond
    assert (staged["at"], staged["local"], staged["day"]) == (micros, micros, micros)
    # The SQL Redshift runs on it: epoch + microseconds is a TIMESTAMP holding UTC wall-clock
    # time; AT TIME ZONE 'UTC' makes it the TIMESTAMPTZ of that instant; DATE takes its day.
    rendered = {c.column: projected_value(REDSHIFT, c, f's."{c.column}"') for c in projection}
    assert rendered == {
        "at": """(TIMESTAMP 'epoch' + s."at" * INTERVAL '0.000001 second') AT TIME ZONE 'UTC'""",
        "local": """TIMESTAMP 'epoch' + s."local" * INTERVAL '0.000001 second'""",
        "day": """CAST(TIMESTAMP 'epoch' + s."day" * INTERVAL '0.000001 second' AS DATE)""",
    }
    for expression in rendered.values():
        assert sqlglot.parse_one(f"SELECT {expression}", read="redshift")


# -- 5. documents up to the warehouse's limit; larger ones set aside --------------------------------


def test_documents_past_varchar_load_and_only_those_over_the_limits_are_set_aside():
    big = json.dumps({"note": "x" * 60_000, "more": "y" * 60_000})  # 120 KB, strings < 64 KB
    long_string = json.dumps({"note": "z" * 70_000})  # one string over 65,535 bytes
    huge = json.dumps({"parts": ["w" * 60_000] * 270})  # 16.2 MB > 16,000,000 bytes
    rows = pa.table(
        {
            "_id": [A, B, C, "x" * 70_000],
            "doc": [big, long_string, huge, "{}"],
            "_op": ["insert"] * 4,
            "_pos": [1, 1, 1, 1],
            "_event_time": pa.array([None] * 4, pa.timestamp("us", tz="UTC")),
            "_deleted": [False] * 4,
        },
        schema=STAGE_SCHEMA,
    )
    marked = mark_set_aside(rows, REDSHIFT).to_pylist()
    assert marked[0]["_set_aside"] is None and marked[0]["doc"] == big  # was a COPY failure
    assert "string value of 70000 bytes over 65535" in marked[1]["_set_aside"]
    assert "over 16000000 bytes" in marked[2]["_set_aside"] and marked[2]["doc"] is None
    assert "record key over 65535 bytes" in marked[3]["_set_aside"]
    assert [r["_doc_bytes"] for r in marked] == [len(big), len(long_string), len(huge), 2]
    assert all(r["_set_aside"] is None for r in mark_set_aside(rows, DUCKDB).to_pylist())


def test_the_redshift_stage_carries_the_document_as_varbyte_input_to_json_parse(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lake-bucket")
    store = S3ObjectStore("lake-bucket", "prod", client=s3)
    big = json.dumps({"note": "x" * 60_000, "more": "y" * 60_000})
    rows = mark_set_aside(
        pa.table(
            {
                "_id": [A],
                "doc": [big],
                "_op": ["insert"],
                "_pos": [1],
                "_event_time": pa.array([None], pa.timestamp("us", tz="UTC")),
                "_deleted": [False],
            },
            schema=STAGE_SCHEMA,
        ),
        REDSHIFT,
    )
    RedshiftWarehouse(object(), store, ROLE).stage(rows, key="_staging/a/o/1/part.parquet")  # type: ignore[arg-type]
    written = pq.read_table(io.BytesIO(store.get("_staging/a/o/1/part.parquet")))
    assert written.schema.field("doc").type == pa.binary()
    assert written.column("doc")[0].as_py() == big.encode()
    (create,) = [s for s in _plan(REDSHIFT, ()) if s.label == "create_stage"]
    assert '"doc" VARBYTE(16777216)' in create.sql  # VARCHAR(65535) before


def test_a_document_over_the_limit_is_set_aside_counted_and_loads_once_it_fits(lake, monkeypatch):
    monkeypatch.setattr(DuckDBDialect, "max_document_bytes", 200)  # a small engine, same plan
    monkeypatch.setattr(DuckDBDialect, "max_string_bytes", 200)
    lake.change(
        (A, "insert", 1, json.dumps({"status": "ok"})),
        (B, "insert", 1, json.dumps({"status": "big", "note": "x" * 300})),
        (C, "insert", 1, json.dumps({"status": "ok"})),
    )
    first = load_changes(lake.request(projection={"status": "VARCHAR(8)"}))
    assert first.documents_set_aside == 1 and first.rows_inserted == 2
    check = first.reconciliation
    assert check.matches and not check.complete  # accounted for, but not in the table
    assert check.documents_set_aside == 1 and check.set_aside_keys == [B]
    assert "over 200 bytes" in check.set_aside_reasons[0]
    assert lake.sql('SELECT _id FROM "analytics"."orders" ORDER BY 1') == [(A,), (C,)]

    lake.change((A, "update", 2, json.dumps({"status": "ok2"})))
    again = load_changes(lake.request(projection={"status": "VARCHAR(8)"}))
    assert again.reconciliation.documents_set_aside == 1  # still reported on later loads

    lake.change((B, "update", 3, json.dumps({"status": "small"})))
    fixed = load_changes(lake.request(projection={"status": "VARCHAR(8)"}))
    assert fixed.reconciliation.complete
    assert lake.sql('SELECT status FROM "analytics"."orders" WHERE _id = ' + f"'{B}'") == [
        ("small",)
    ]
    assert lake.sql('SELECT COUNT(*) FROM "analytics"."_lakehouse_set_aside"') == [(0,)]


# -- 6. Data API request limits --------------------------------------------------------------------


def _plan(dialect, projection, add_columns=(), full=False):
    source = (
        StageSource(s3_uri="s3://lake-bucket/prod/_staging/a/o/5/part.parquet", iam_role=ROLE)
        if dialect is REDSHIFT
        else StageSource(relation="_lakehouse_stage_rows")
    )
    return load_transaction(
        dialect,
        TargetTable.named(dialect, "analytics", "orders"),
        source=source,
        full=full,
        expected=None,
        table_id=TABLE_ID,
        version=5,
        projection=projection,
        add_columns=add_columns,
    )


def wide_projection(count: int) -> dict[str, str]:
    """``count`` columns with long names and the widest types (nested paths, 63-char columns)."""
    types = ["DECIMAL(38,10)", "TIMESTAMPTZ", "VARCHAR(65535)", "DOUBLE PRECISION", "DATE"]
    return {
        f"customer_{i:04d}.address_{'a' * 20}.field_{'f' * 14}"[:62]: types[i % len(types)]
        for i in range(count)
    }


def test_a_280_column_projection_sends_every_statement_under_the_data_api_limits(aws_env):
    projection = parse_projection(wide_projection(280))
    plan = _plan(REDSHIFT, projection)
    client = boto3.client("redshift-data", region_name="us-east-1")
    sent: list[list[str]] = []
    client.meta.events.register(
        "provide-client-params.redshift-data.BatchExecuteStatement",
        lambda params, **kwargs: sent.append(params["Sqls"]),
    )
    with Stubber(client) as stubber:
        stubber.add_response("batch_execute_statement", {"Id": "wide"})
        stubber.add_response("describe_statement", {"Id": "wide", "Status": "FINISHED"})
        _client(client).run_batch(plan, name="lakehouse-load analytics.orders@5")
    (sqls,) = sent
    assert 1 <= len(sqls) <= 40
    sizes = [len(sql.encode()) for sql in sqls]
    assert max(sizes) <= 100_000, sizes  # the insert was 112 KB with JSON paths in SQL
    for sql in sqls:
        assert not isinstance(sqlglot.parse_one(sql, read="redshift"), exp.Command)


def test_a_statement_over_the_data_api_size_limit_is_refused_before_sending(aws_env):
    from lambda_functions.warehouse_sql import PlanError

    with pytest.raises(PlanError, match=r"insert_upserts of this load is \d+ bytes .* 100000"):
        _plan(REDSHIFT, parse_projection(wide_projection(1200)))
    client = boto3.client("redshift-data", region_name="us-east-1")
    # No response queued: anything sent would fail the test.
    with Stubber(client), pytest.raises(ValueError, match="accepts at most 100000"):
        _client(client).run_batch([Statement("big", "SELECT " + "1," * 60_000 + "1")], name="x")


# -- 8. commit-time failures named right, serialization conflicts retried ---------------------------

SERIALIZATION = (
    "ERROR: 1023 DETAIL: Serializable isolation violation on table - 123456, transactions "
    "forming the cycle are: 1001, 1002 (pid:4242)"
)


def _client(client, sleeps: list[float] | None = None) -> RedshiftDataApiClient:
    tokens = (f"token-{n}" for n in range(1, 100))
    return RedshiftDataApiClient(
        RedshiftConnection(database="dev", workgroup="analytics"),
        client=client,
        sleep=(sleeps.append if sleeps is not None else lambda _s: None),
        clock=lambda: 0.0,
        new_token=lambda: next(tokens),
        timeout_s=60,
    )


def _failed_at_commit(statement_id: str, error: str, count: int) -> dict:
    return {
        "Id": statement_id,
        "Status": "FAILED",
        "Error": error,
        "SubStatements": [
            {"Id": f"{statement_id}:{n}", "Status": "FINISHED"} for n in range(1, count + 1)
        ],
    }


PLAN = _plan(REDSHIFT, ())


def test_a_serialization_conflict_at_commit_is_retried_with_backoff_then_commits(aws_env):
    client = boto3.client("redshift-data", region_name="us-east-1")
    sleeps: list[float] = []
    with Stubber(client) as stubber:
        for attempt, token in ((1, "token-1"), (2, "token-2")):
            stubber.add_response(
                "batch_execute_statement",
                {"Id": f"b-{attempt}"},
                {
                    "Sqls": [s.sql for s in PLAN],
                    "StatementName": "load",
                    "ClientToken": token,
                    "Database": "dev",
                    "WorkgroupName": "analytics",
                },
            )
            stubber.add_response(
                "describe_statement", _failed_at_commit(f"b-{attempt}", SERIALIZATION, len(PLAN))
            )
        stubber.add_response("batch_execute_statement", {"Id": "b-3"})
        stubber.add_response(
            "describe_statement",
            {
                "Id": "b-3",
                "Status": "FINISHED",
                "SubStatements": [{"Id": f"b-3:{n}", "Status": "FINISHED"} for n in range(10)],
            },
        )
        _client(client, sleeps).run_batch(PLAN, name="load")
        stubber.assert_no_pending_responses()
    assert sleeps == [2.0, 4.0]  # backoff between the three submissions, none after success


def test_a_commit_failure_does_not_blame_a_statement_that_finished(aws_env):
    client = boto3.client("redshift-data", region_name="us-east-1")
    with Stubber(client) as stubber:
        for n in range(1, 5):
            stubber.add_response("batch_execute_statement", {"Id": f"c-{n}"})
            stubber.add_response(
                "describe_statement", _failed_at_commit(f"c-{n}", SERIALIZATION, len(PLAN))
            )
        with pytest.raises(RedshiftSerializationError) as raised:
            _client(client).run_batch(PLAN, name="load")
    failure = raised.value
    assert failure.transient and failure.label == "commit" and failure.index is None
    message = str(failure)
    assert "COMMIT (all 10 statements had finished)" in message
    assert "drop_stage" not in message and "SQL:" not in message
    assert "Gave up after 4 attempts" in message


def test_a_terminal_failure_at_commit_is_not_retried(aws_env):
    client = boto3.client("redshift-data", region_name="us-east-1")
    with Stubber(client) as stubber:
        stubber.add_response("batch_execute_statement", {"Id": "d-1"})
        stubber.add_response(
            "describe_statement",
            _failed_at_commit("d-1", "ERROR: disk full (DiskFullError)", len(PLAN)),
        )
        with pytest.raises(RedshiftStatementError) as raised:
            _client(client).run_batch(PLAN, name="load")
        stubber.assert_no_pending_responses()  # one submission only
    assert not raised.value.transient and raised.value.label == "commit"
    assert "Fix the cause and re-run" in str(raised.value)


def test_a_serialization_conflict_on_a_statement_is_transient_too(aws_env):
    client = boto3.client("redshift-data", region_name="us-east-1")
    with Stubber(client) as stubber:
        stubber.add_response("batch_execute_statement", {"Id": "e-1"})
        stubber.add_response(
            "describe_statement",
            {
                "Id": "e-1",
                "Status": "FAILED",
                "Error": SERIALIZATION,
                "SubStatements": [
                    *({"Id": f"e-1:{n}", "Status": "FINISHED"} for n in range(1, 8)),
                    {"Id": "e-1:8", "Status": "FAILED", "Error": SERIALIZATION},
                    {"Id": "e-1:9", "Status": "ABORTED"},
                    {"Id": "e-1:10", "Status": "ABORTED"},
                ],
            },
        )
        stubber.add_response("batch_execute_statement", {"Id": "e-2"})
        stubber.add_response("describe_statement", {"Id": "e-2", "Status": "FINISHED"})
        _client(client).run_batch(PLAN, name="load")
        stubber.assert_no_pending_responses()


def test_dates_are_utc_days(lake):
    """A DATE projection is the UTC calendar date of the instant (as a ``$date`` must be)."""
    lake.change((A, "insert", 1, json.dumps({"d": "2024-03-01T21:30:00-05:00"})))
    load_changes(lake.request(projection={"d": "DATE"}))
    assert lake.sql('SELECT "d" FROM "analytics"."orders"') == [(date(2024, 3, 2),)]
