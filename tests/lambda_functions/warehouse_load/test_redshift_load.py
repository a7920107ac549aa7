"""The Redshift path: Data API calls checked with botocore's Stubber on a real ``redshift-data``
client (moto's never finishes a statement), staging into S3 on moto."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from botocore.stub import Stubber
from deltalake import DeltaTable

from lambda_functions.contracts import LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, S3ObjectStore, open_store
from lambda_functions.lake.table_layout import live_rows
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_load.reconcile import lake_buckets
from lambda_functions.warehouse_load.redshift import (
    RedshiftConnection,
    RedshiftDataApiClient,
    RedshiftStatementError,
    RedshiftTimeoutError,
    RedshiftWarehouse,
)
from lambda_functions.warehouse_sql import (
    REDSHIFT,
    StageSource,
    Statement,
    TargetTable,
    ensure_tables,
    load_transaction,
    parse_projection,
    reconciliation_query,
)
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish

ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"
SERVERLESS = {"Database": "dev", "WorkgroupName": "analytics"}
A, B, C = key(JAN, 1), key(JAN, 2), key(JUN, 3)
PROJECTION = {"status": "VARCHAR(32)", "total": "DECIMAL(18,2)"}
BASE_COLUMNS = ["_id", "doc", "_op", "_pos", "_event_time", "_lake_version", "_loaded_at"]


class FakeClock:
    """Time that moves only when the client sleeps: backoff without waiting, no timed asserts."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def data_api():
    client = boto3.client("redshift-data", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def api_client(client, clock: FakeClock, **connection) -> RedshiftDataApiClient:
    tokens = (f"token-{n}" for n in range(1, 100))
    return RedshiftDataApiClient(
        RedshiftConnection(**(connection or {"database": "dev", "workgroup": "analytics"})),
        client=client,
        sleep=clock.sleep,
        clock=clock,
        new_token=lambda: next(tokens),
        timeout_s=60,
    )


def finished(statement_id: str, **extra) -> dict:
    return {"Id": statement_id, "Status": "FINISHED", **extra}


def expect_query(stubber, statement_id, sql, name, token, records, parameters=None, pages=1):
    params = {"Sql": sql, "StatementName": name, "ClientToken": token, **SERVERLESS}
    if parameters:
        params["Parameters"] = [{"name": k, "value": v} for k, v in parameters.items()]
    stubber.add_response("execute_statement", {"Id": statement_id}, params)
    stubber.add_response(
        "describe_statement", finished(statement_id, HasResultSet=True), {"Id": statement_id}
    )
    size = max(1, -(-len(records) // pages))
    chunks = [records[i : i + size] for i in range(0, len(records), size)] or [[]]
    for n, chunk in enumerate(chunks):
        response = {"Records": chunk}
        request = {"Id": statement_id}
        if n + 1 < len(chunks):
            response["NextToken"] = f"page-{n + 2}"
        if n:
            request["NextToken"] = f"page-{n + 1}"
        stubber.add_response("get_statement_result", response, request)


def expect_reconciliation(stubber, table, target, tokens, pages=1) -> None:
    """The two reads the load's reconciliation makes after its transaction: the set-aside keys
    (none), then the warehouse's per-bucket counts and hashes, answered with the lake's own
    (``tokens``: the two statements' result tokens)."""
    lake_rows = live_rows(table.to_pyarrow_table(columns=["_id", "_pos", "_op"]))  # no tombstone
    buckets = [
        [long(b), long(rows), long(rows), text(str(hashes))]  # Redshift's SUM(BIGINT) is NUMERIC
        for b, (rows, hashes) in sorted(lake_buckets(lake_rows).items())
    ]
    expect_query(
        stubber,
        "aside-1",
        'SELECT "_id", "_pos", "reason" FROM "analytics"."_lakehouse_set_aside" '
        'WHERE "table_name" = :table_name',
        "set_aside_keys",
        tokens[0],
        [],
        parameters={"table_name": "orders"},
    )
    expect_query(
        stubber,
        "reconcile-1",
        reconciliation_query(REDSHIFT, target).sql,
        "reconcile_buckets",
        tokens[1],
        buckets,
        pages=pages,
    )


def text(value: str) -> dict:
    return {"stringValue": value}


def long(value: int) -> dict:
    return {"longValue": value}


@pytest.fixture
def lake(tmp_path: Path):
    """A lake table at version 1 (inserts at 0; an update, a delete and an insert at 1)."""
    path = str(tmp_path / "lake")
    zone = RawZone(open_store(path), "shop", "orders")
    merge = MergeRequest(lake_uri=path, database="shop", collection="orders")
    publish(
        zone,
        [
            (A, "insert", 1, json.dumps({"status": "new", "total": {"$numberDecimal": "1.50"}})),
            (B, "insert", 1, json.dumps({"status": "new"})),
        ],
    )
    merge_batches(merge)
    publish(
        zone,
        [
            (A, "update", 2, json.dumps({"status": "paid", "total": {"$numberDecimal": "1.50"}})),
            (B, "delete", 2, None),
            (C, "insert", 2, json.dumps({"status": "new", "total": {"$numberInt": "3"}})),
        ],
    )
    merge_batches(merge)
    uri, options = lake_table_location(open_store(path), "shop", "orders")
    return path, DeltaTable(uri, storage_options=options)


@pytest.fixture
def staging(aws_env) -> S3ObjectStore:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lake-bucket")
    return S3ObjectStore("lake-bucket", "prod", client=s3)


def test_incremental_load_is_one_batch_transaction_with_exactly_these_statements(
    lake, staging, data_api
):
    lake_path, table = lake
    table_id = table.metadata().id
    client, stubber = data_api
    clock = FakeClock()
    staged_at_copy: list[list[dict]] = []

    def capture_staged_rows(params, **kwargs):
        if params["Sqls"][0].startswith("SELECT CAST"):  # the load transaction
            data = staging.get("_staging/analytics/orders/1/part.parquet")
            staged_at_copy.append(pq.read_table(io.BytesIO(data)).to_pylist())

    client.meta.events.register(
        "provide-client-params.redshift-data.BatchExecuteStatement", capture_staged_rows
    )

    target = TargetTable.named(REDSHIFT, "analytics", "orders")
    ensure = [s.sql for s in ensure_tables(REDSHIFT, target)]
    stubber.add_response(
        "batch_execute_statement",
        {"Id": "ensure-1"},
        {
            "Sqls": ensure,
            "StatementName": "lakehouse-ensure analytics.orders",
            "ClientToken": "token-1",
            **SERVERLESS,
        },
    )
    stubber.add_response("describe_statement", finished("ensure-1"), {"Id": "ensure-1"})
    expect_query(
        stubber,
        "state-1",
        'SELECT "lake_table_id", "lake_version" FROM "analytics"."_lakehouse_loads" '
        'WHERE LOWER("table_name") = :table_name',
        "loaded_state",
        "token-2",
        [[text(table_id), long(0)]],
        parameters={"table_name": "orders"},
    )
    expect_query(
        stubber,
        "columns-1",
        "SELECT column_name, data_type, character_maximum_length, numeric_precision, "
        "numeric_scale FROM information_schema.columns "
        "WHERE LOWER(table_schema) = :schema_name AND LOWER(table_name) = :table_name",
        "target_columns",
        "token-3",
        [[text(c)] for c in [*BASE_COLUMNS, "status", "total"]],
        parameters={"schema_name": "analytics", "table_name": "orders"},
    )
    stage = '"_lakehouse_stage"'
    expected_transaction = [
        'SELECT CAST(CASE WHEN (SELECT COUNT(*) FROM "analytics"."_lakehouse_loads" '
        f"WHERE LOWER(\"table_name\") = 'orders' AND \"lake_table_id\" = '{table_id}' AND "
        "\"lake_version\" = 0) = 1 THEN '0' ELSE 'lakehouse load of analytics.orders stopped: "
        "the control row changed since this load was planned (another load committed first); "
        "nothing was applied, re-run the load' END AS INTEGER)",
        f'CREATE TEMP TABLE {stage} ("_id" VARCHAR(65535) NOT NULL, "doc" VARBYTE(16777216), '
        '"_op" VARCHAR(16), "_pos" BIGINT, "_event_time" TIMESTAMPTZ, '
        '"_deleted" BOOLEAN NOT NULL, "_set_aside" VARCHAR(256), "_doc_bytes" BIGINT, '
        '"status" VARCHAR(32), "total" DECIMAL(18,2)) DISTKEY("_id")',
        f"COPY {stage} FROM 's3://lake-bucket/prod/_staging/analytics/orders/1/part.parquet' "
        f"IAM_ROLE '{ROLE}' FORMAT AS PARQUET",
        f'DELETE FROM "analytics"."orders" USING {stage} '
        f'WHERE "analytics"."orders"."_id" = {stage}."_id"',
        f'DELETE FROM "analytics"."_lakehouse_set_aside" USING {stage} '
        'WHERE "analytics"."_lakehouse_set_aside"."table_name" = \'orders\' '
        f'AND "analytics"."_lakehouse_set_aside"."_id" = {stage}."_id"',
        'INSERT INTO "analytics"."orders" ("_id", "doc", "_op", "_pos", "_event_time", '
        '"_lake_version", "_loaded_at", "status", "total") '
        'SELECT s."_id", JSON_PARSE(s."doc"), s."_op", s."_pos", s."_event_time", 1, GETDATE(), '
        's."status", s."total" '
        'FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY "_id" ORDER BY "_pos" DESC) AS "_rank" '
        f'FROM {stage}) AS s WHERE s."_rank" = 1 AND NOT s."_deleted" AND s."_set_aside" IS NULL',
        'INSERT INTO "analytics"."_lakehouse_set_aside" ("table_name", "_id", "_pos", '
        '"doc_bytes", "reason", "lake_version") SELECT \'orders\', s."_id", s."_pos", '
        's."_doc_bytes", s."_set_aside", 1 '
        'FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY "_id" ORDER BY "_pos" DESC) AS "_rank" '
        f'FROM {stage}) AS s WHERE s."_rank" = 1 AND NOT s."_deleted" '
        'AND s."_set_aside" IS NOT NULL',
        'DELETE FROM "analytics"."_lakehouse_loads" WHERE LOWER("table_name") = \'orders\'',
        'INSERT INTO "analytics"."_lakehouse_loads" ("table_name", "lake_table_id", '
        f"\"lake_version\", \"loaded_at\") VALUES ('orders', '{table_id}', 1, GETDATE())",
        f"DROP TABLE {stage}",
    ]
    stubber.add_response(
        "batch_execute_statement",
        {"Id": "load-1", "Status": "SUBMITTED"},
        {
            "Sqls": expected_transaction,
            "StatementName": "lakehouse-load analytics.orders@1",
            "ClientToken": "token-4",
            **SERVERLESS,
        },
    )
    for status in ("SUBMITTED", "PICKED", "STARTED"):
        stubber.add_response(
            "describe_statement", {"Id": "load-1", "Status": status}, {"Id": "load-1"}
        )
    rows_affected = [1, 0, 3, 3, 0, 2, 0, 1, 1, 0]
    stubber.add_response(
        "describe_statement",
        finished(
            "load-1",
            SubStatements=[
                {"Id": f"load-1:{n}", "Status": "FINISHED", "ResultRows": rows}
                for n, rows in enumerate(rows_affected, start=1)
            ],
        ),
        {"Id": "load-1"},
    )
    expect_reconciliation(stubber, table, target, ("token-5", "token-6"), pages=2)

    request = LoadRequest(
        lake_uri=lake_path,
        database="shop",
        collection="orders",
        warehouse_kind="redshift",
        projection=PROJECTION,
    )
    warehouse = RedshiftWarehouse(api_client(client, clock), staging, ROLE)
    messages: list[str] = []
    result = load_changes(request, warehouse=warehouse, on_progress=messages.append)

    assert (result.full_reload, result.reason) == (False, "incremental")
    assert (result.rows_staged, result.rows_deleted, result.rows_inserted) == (3, 3, 2)
    assert result.reconciliation.matches and result.reconciliation.lake_rows == 2
    assert clock.sleeps == [0.25, 0.5, 1.0]  # SUBMITTED, PICKED, STARTED, then FINISHED
    (staged,) = staged_at_copy  # written before the batch was submitted...
    assert {row["_id"]: row["_deleted"] for row in staged} == {A: False, B: True, C: False}
    assert not staging.exists("_staging/analytics/orders/1/part.parquet")  # ...removed after
    assert not any(ROLE in message for message in messages)


def test_first_load_creates_the_projected_columns_inside_the_transaction():
    target = TargetTable.named(REDSHIFT, "analytics", "orders")
    projection = parse_projection(PROJECTION)
    labels = [
        s.label
        for s in load_transaction(
            REDSHIFT,
            target,
            source=StageSource(s3_uri="s3://lake-bucket/p/x.parquet", iam_role=ROLE),
            full=True,
            expected=None,
            table_id="0b5e7a9c-1111-2222-3333-444455556666",
            version=0,
            projection=projection,
            add_columns=projection,
        )
    ]
    assert labels == [
        "guard",
        "create_stage",
        "load_stage",
        "add_column:status",
        "add_column:total",
        "delete_changed",
        "delete_set_aside",
        "insert_upserts",
        "insert_set_aside",
        "delete_control",
        "insert_control",
        "drop_stage",
    ]


PLAN = load_transaction(
    REDSHIFT,
    TargetTable.named(REDSHIFT, "analytics", "orders"),
    source=StageSource(s3_uri="s3://lake-bucket/prod/_staging/x/part.parquet", iam_role=ROLE),
    full=False,
    expected=None,
    table_id="0b5e7a9c-1111-2222-3333-444455556666",
    version=3,
    projection=(),
)


def test_a_failed_sub_statement_surfaces_its_position_sql_and_redshift_error(data_api):
    client, stubber = data_api
    stubber.add_response("batch_execute_statement", {"Id": "b-9"})
    error = (
        "ERROR: Load into table '_lakehouse_stage' failed. Not authorized to get credentials "
        f"of role {ROLE}"
    )
    stubber.add_response(
        "describe_statement",
        {
            "Id": "b-9",
            "Status": "FAILED",
            "Error": error,
            "SubStatements": [
                {"Id": "b-9:1", "Status": "FINISHED"},
                {"Id": "b-9:2", "Status": "FINISHED"},
                {"Id": "b-9:3", "Status": "FAILED", "Error": error},
                *({"Id": f"b-9:{n}", "Status": "ABORTED"} for n in range(4, 11)),
            ],
        },
    )
    with pytest.raises(RedshiftStatementError) as raised:
        api_client(client, FakeClock()).run_batch(PLAN, name="lakehouse-load analytics.orders@3")
    failure = raised.value
    assert (failure.index, failure.label, failure.status) == (3, "load_stage", "FAILED")
    message = str(failure)
    assert "statement 3 of 10 (load_stage) failed" in message
    assert (
        "SQL: COPY \"_lakehouse_stage\" FROM 's3://lake-bucket/prod/_staging/x/part.parquet'"
        in (message)
    )
    assert "Not authorized to get credentials of role ***" in message
    assert "Nothing was committed" in message and "SYS_LOAD_ERROR_DETAIL" in message
    assert ROLE not in message and ROLE not in failure.sql and ROLE not in failure.error


def test_an_aborted_batch_names_the_first_statement_that_did_not_finish(data_api):
    client, stubber = data_api
    stubber.add_response("batch_execute_statement", {"Id": "b-7"})
    stubber.add_response(
        "describe_statement",
        {
            "Id": "b-7",
            "Status": "ABORTED",
            "SubStatements": [
                {"Id": "b-7:1", "Status": "FINISHED"},
                *({"Id": f"b-7:{n}", "Status": "SUBMITTED"} for n in range(2, 11)),
            ],
        },
    )
    with pytest.raises(RedshiftStatementError, match=r"statement 2 of 10 \(create_stage\) was"):
        api_client(client, FakeClock()).run_batch(PLAN, name="load")


def test_a_statement_past_its_deadline_is_cancelled_with_advice(data_api):
    client, stubber = data_api
    clock = FakeClock()
    stubber.add_response("batch_execute_statement", {"Id": "slow"})
    # Sleeps 0.25, 0.5, 1, 2, 4, then 5 s (the cap) until the 60 s deadline: 17 polls in all.
    for _ in range(17):
        stubber.add_response("describe_statement", {"Id": "slow", "Status": "STARTED"})
    stubber.add_response("cancel_statement", {"Status": True}, {"Id": "slow"})
    with pytest.raises(RedshiftTimeoutError, match=r"cancelled .*re-run the load"):
        api_client(client, clock).run_batch(PLAN, name="load")
    assert clock.sleeps[:6] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
    assert max(clock.sleeps) == 5.0 and sum(clock.sleeps) == 60.0  # polled up to the deadline


@pytest.mark.parametrize(
    ("connection", "arguments"),
    [
        ({"database": "dev", "workgroup": "analytics"}, SERVERLESS),
        (
            {"database": "dev", "cluster": "prod-cluster", "db_user": "loader"},
            {"Database": "dev", "ClusterIdentifier": "prod-cluster", "DbUser": "loader"},
        ),
        (
            {"database": "dev", "cluster": "prod-cluster", "secret_arn": "arn:secret"},
            {"Database": "dev", "ClusterIdentifier": "prod-cluster", "SecretArn": "arn:secret"},
        ),
    ],
    ids=["serverless", "cluster-db-user", "cluster-secret"],
)
def test_serverless_and_provisioned_connections_send_their_own_arguments(
    data_api, connection, arguments
):
    client, stubber = data_api
    statement = Statement("probe", "SELECT 1")
    stubber.add_response(
        "execute_statement",
        {"Id": "q"},
        {"Sql": "SELECT 1", "StatementName": "probe", "ClientToken": "token-1", **arguments},
    )
    stubber.add_response("describe_statement", finished("q", HasResultSet=True), {"Id": "q"})
    stubber.add_response("get_statement_result", {"Records": [[long(1)]]}, {"Id": "q"})
    assert api_client(client, FakeClock(), **connection).query(statement) == [(1,)]


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        ({"database": ""}, "LAKEHOUSE_REDSHIFT_DATABASE"),
        ({"database": "dev"}, "exactly one"),
        ({"database": "dev", "workgroup": "w", "cluster": "c"}, "exactly one"),
        ({"database": "dev", "cluster": "c"}, "LAKEHOUSE_REDSHIFT_DB_USER"),
    ],
)
def test_an_incomplete_connection_names_the_setting_to_fix(connection, message):
    with pytest.raises(ValueError, match=message):
        RedshiftConnection(**connection)


def test_redshift_needs_the_lake_on_s3_for_copy(tmp_path):
    with pytest.raises(ValueError, match="LAKEHOUSE_LAKE_URI to s3://"):
        RedshiftWarehouse(object(), open_store(str(tmp_path)), ROLE)  # type: ignore[arg-type]


def test_statements_with_parameters_are_never_sent_in_a_batch(data_api):
    client, _ = data_api
    with pytest.raises(ValueError, match="no parameters"):
        api_client(client, FakeClock()).run_batch([Statement("x", "SELECT :a", {"a": 1})], name="x")


def test_staged_parquet_keeps_the_stage_columns_in_copy_order(staging):
    from lambda_functions.warehouse_load.lake_changes import STAGE_SCHEMA
    from lambda_functions.warehouse_load.set_aside import mark_set_aside
    from lambda_functions.warehouse_sql import STAGE_COLUMNS

    warehouse = RedshiftWarehouse(object(), staging, ROLE)  # type: ignore[arg-type]
    rows = mark_set_aside(STAGE_SCHEMA.empty_table(), REDSHIFT)
    source = warehouse.stage(rows, key="_staging/a/b/7/part.parquet")
    assert source.s3_uri == "s3://lake-bucket/prod/_staging/a/b/7/part.parquet"
    written = pq.read_table(io.BytesIO(staging.get("_staging/a/b/7/part.parquet")))
    # COPY ... FORMAT AS PARQUET matches columns by position: the staging table's order.
    assert written.schema.names == [*STAGE_COLUMNS]


def test_a_long_poll_reports_what_it_waits_for_at_a_steady_interval(data_api):
    """Issue 12: long waits had no log line. A 60 s poll says every 10 s what it waits for (the
    statement, its status) and how long so far, then how it ended."""
    client, stubber = data_api
    clock, lines = FakeClock(), []
    stubber.add_response("batch_execute_statement", {"Id": "slow"})
    for _ in range(16):  # 0.25 + 0.5 + 1 + 2 + 4 + 11 x 5 = 62.75 s of polling
        stubber.add_response("describe_statement", {"Id": "slow", "Status": "STARTED"})
    stubber.add_response("describe_statement", finished("slow"))
    api = api_client(client, clock)
    api.timeout_s, api.on_progress = 600, lines.append
    api.run_batch(PLAN, name="load")
    waiting = [line for line in lines if line.startswith("waiting for")]
    assert len(waiting) == 5  # at 12.75, 22.75, ... 52.75 s: every 10 s while STARTED
    assert waiting[0].startswith("waiting for Redshift statement slow (load): 13 s so far")
    assert "status STARTED" in waiting[0] and "STV_LOCKS" in waiting[0]
    seconds = [int(line.split(": ")[1].split(" s so far")[0]) for line in waiting]
    assert seconds == [13, 23, 33, 43, 53]
    assert lines[-1] == "Redshift statement slow (load): FINISHED after 62.8 s"


def test_a_quick_statement_logs_no_wait(data_api):
    client, stubber = data_api
    lines: list[str] = []
    stubber.add_response("batch_execute_statement", {"Id": "quick"})
    stubber.add_response("describe_statement", {"Id": "quick", "Status": "STARTED"})
    stubber.add_response("describe_statement", finished("quick"))
    api = api_client(client, FakeClock())
    api.on_progress = lines.append
    api.run_batch(PLAN, name="load")
    assert lines == []
