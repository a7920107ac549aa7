"""History tables (SCD type 2) as SQL: the contract's checks, the plan on both dialects (sqlglot),
and an incremental history load on Redshift through the Data API (botocore's Stubber)."""

from __future__ import annotations

import dataclasses
import io

import pyarrow.parquet as pq
import pytest
import sqlglot
from deltalake import DeltaTable
from sqlglot import exp

from lambda_functions.contracts import InvalidRequestError, LoadRequest
from lambda_functions.lake import open_store
from lambda_functions.merge import lake_table_location
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_load.redshift import RedshiftWarehouse
from lambda_functions.warehouse_sql import (
    DUCKDB,
    HISTORY_STAGE_COLUMNS,
    HISTORY_STATEMENTS,
    LOAD_STATEMENTS,
    REDSHIFT,
    LoadedState,
    PlanError,
    PurgeBelow,
    StageSource,
    TargetTable,
    check_projection_limits,
    columns_fit_in_load,
    columns_query,
    ensure_tables,
    history_table_name,
    history_target,
    history_value_columns,
    load_transaction,
    parse_projection,
)
from tests.lambda_functions.warehouse_load.test_history_table import A, B, Pipeline, doc
from tests.lambda_functions.warehouse_load.test_redshift_load import (  # noqa: F401 (fixtures)
    FakeClock,
    api_client,
    data_api,
    expect_query,
    expect_reconciliation,
    finished,
    long,
    staging,
    text,
)

TABLE_ID = "0b5e7a9c-1111-2222-3333-444455556666"
ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"


# --- the contract and the plan -----------------------------------------------------------------


def test_the_history_table_name_is_folded_and_held_to_the_identifier_limit():
    assert history_table_name("Orders") == "orders_history"
    assert history_table_name("t" * 119) == "t" * 119 + "_history"
    with pytest.raises(PlanError, match="at most 119 bytes in LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES"):
        history_table_name("t" * 120)
    request = LoadRequest(
        lake_uri="/l", database="shop", collection="orders", target_table="t" * 120, history=True
    )
    with pytest.raises(InvalidRequestError, match="identifier limit"):
        request.validate()
    LoadRequest(lake_uri="/l", database="shop", collection="orders", target_table="t" * 120)


def test_projected_columns_may_not_take_the_history_columns_names_when_history_is_kept():
    fields = {"lake_uri": "/l", "database": "shop", "collection": "orders"}
    LoadRequest(**fields, projection={"is_current": "BOOLEAN"}).validate()
    request = LoadRequest(**fields, projection={"is_current": "BOOLEAN"}, history=True)
    with pytest.raises(InvalidRequestError, match="is_current collide"):
        request.validate()


def history_plan(dialect, *, full: bool, projection=(), add=(), purge=None):
    target = TargetTable.named(dialect, "analytics", "orders")
    return load_transaction(
        dialect,
        target,
        source=StageSource(
            relation="_lakehouse_stage_rows",
            s3_uri="s3://lake-bucket/prod/_staging/a/o/5/part.parquet",
            iam_role=ROLE,
        ),
        full=full,
        expected=None if full else LoadedState(TABLE_ID, 4),
        table_id=TABLE_ID,
        version=5,
        projection=projection,
        add_columns=add,
        history=history_target(dialect, target),
        add_history_columns=add,
        purge_history_below=purge,
        history_values=history_value_columns(["doc"], projection),
    )


@pytest.mark.parametrize("dialect", [REDSHIFT, DUCKDB], ids=lambda d: d.name)
def test_every_history_statement_parses_as_one_statement_in_its_dialect(dialect):
    projection = parse_projection({"status": "VARCHAR(32)", "at": "TIMESTAMPTZ", "n": "INTEGER"})
    target = TargetTable.named(dialect, "analytics", "orders")
    statements = ensure_tables(dialect, target, history=history_target(dialect, target))
    for full in (True, False):
        statements += history_plan(dialect, full=full, projection=projection, add=projection)
        statements += history_plan(
            dialect, full=full, projection=projection, purge=PurgeBelow(5 << 32, 4)
        )
    labels = [s.label for s in statements]
    for label in (
        "create_history",
        "close_history",
        "close_history_absent",
        "insert_history",
        "purge_history",
    ):
        assert label in labels
    for statement in statements:
        parsed = sqlglot.parse(statement.sql, read=dialect.name)
        assert len(parsed) == 1, statement.sql
        assert not isinstance(parsed[0], exp.Command), statement.sql


def test_the_history_statements_sit_between_the_load_and_the_control_row():
    labels = [s.label for s in history_plan(REDSHIFT, full=False)]
    assert labels == [
        "guard",
        "create_stage",
        "load_stage",
        "delete_changed",
        "delete_set_aside",
        "insert_upserts",
        "insert_set_aside",
        "close_history",
        "insert_history",
        "delete_control",
        "insert_control",
        "drop_stage",
    ]
    full = [s.label for s in history_plan(REDSHIFT, full=True)]
    assert len(full) == LOAD_STATEMENTS + HISTORY_STATEMENTS
    assert full.index("close_history_absent") == full.index("close_history") + 1


def test_redshift_history_statements_close_with_update_from_and_stay_under_the_limits():
    projection = parse_projection({f"f{n}": "VARCHAR(64)" for n in range(400)})
    check_projection_limits(REDSHIFT, projection, history=True)  # worst-case names, history on
    by_label = {s.label: s.sql for s in history_plan(REDSHIFT, full=True)}
    close = sqlglot.parse_one(by_label["close_history"], read="redshift")
    assert isinstance(close, exp.Update) and close.find(exp.From)
    assert isinstance(sqlglot.parse_one(by_label["insert_history"], read="redshift"), exp.Insert)
    assert 'JSON_PARSE(v."doc")' in by_label["insert_history"]
    assert '"_commit_version" BIGINT' in by_label["create_stage"]
    # Column additions for both tables count against the Data API's 40 statements.
    assert columns_fit_in_load(REDSHIFT, 40 - LOAD_STATEMENTS - HISTORY_STATEMENTS, history=True)
    assert not columns_fit_in_load(REDSHIFT, 28, history=True)
    assert columns_fit_in_load(REDSHIFT, 28)


# --- Redshift through the Data API (botocore's Stubber, as test_redshift_load) -------------------


def test_redshift_incremental_history_load_is_one_batch_with_the_history_statements(
    tmp_path,
    staging,  # noqa: F811 (the fixture, imported above)
    data_api,  # noqa: F811
):
    pipeline = Pipeline(tmp_path)
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (B, "insert", 1, doc(v=10)))
    pipeline.change(5, (A, "update", 2, doc(v=2)))
    pipeline.change(7, (A, "update", 3, doc(v=3)), (B, "delete", 3, None))
    uri, options = lake_table_location(open_store(pipeline.lake), "shop", "orders")
    table = DeltaTable(uri, storage_options=options)
    table_id = table.metadata().id
    client, stubber = data_api
    staged_at_copy: list[list[dict]] = []
    batches: list[list[str]] = []

    def capture(params, **kwargs):
        batches.append(params["Sqls"])
        if params["Sqls"][0].startswith("SELECT CAST"):  # the load transaction
            data = staging.get("_staging/analytics/orders/2/part.parquet")
            staged_at_copy.append(pq.read_table(io.BytesIO(data)).to_pylist())

    client.meta.events.register(
        "provide-client-params.redshift-data.BatchExecuteStatement", capture
    )
    target = TargetTable.named(REDSHIFT, "analytics", "orders")
    history = history_target(REDSHIFT, target)
    stubber.add_response("batch_execute_statement", {"Id": "ensure-1"})
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
    for n, (where, columns) in enumerate(
        [
            (target, ["_id", "doc", "_op", "_pos", "_event_time", "_lake_version", "_loaded_at"]),
            (
                history,
                [
                    "_id",
                    "doc",
                    "_op",
                    "_pos",
                    "valid_from",
                    "valid_to",
                    "is_current",
                    "_lake_version",
                    "_loaded_at",
                ],
            ),
        ],
        start=3,
    ):
        query = columns_query(REDSHIFT, where)
        expect_query(
            stubber,
            f"columns-{n}",
            query.sql,
            "target_columns",
            f"token-{n}",
            [[text(c), text("integer" if c == "v" else "character varying")] for c in columns]
            + [[text("v"), text("integer")]],
            parameters=dict(query.parameters),
        )
    expect_query(
        stubber,
        "seeded-1",
        'SELECT "_id" FROM "analytics"."orders_history" LIMIT 1',
        "history_rows",
        "token-5",
        [[text(A)]],
    )
    stubber.add_response("batch_execute_statement", {"Id": "load-1", "Status": "SUBMITTED"})
    rows_affected = [1, 0, 4, 2, 0, 1, 0, 2, 3, 1, 1, 0]  # close_history 2, insert_history 3
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
    expect_reconciliation(stubber, table, target, ("token-7", "token-8"))
    request = LoadRequest(
        lake_uri="s3://lake-bucket/prod",
        database="shop",
        collection="orders",
        warehouse_kind="redshift",
        projection={"v": "INTEGER"},
        history=True,
    )
    warehouse = RedshiftWarehouse(api_client(client, FakeClock()), staging, ROLE)
    result = load_changes(dataclasses.replace(request, lake_uri=pipeline.lake), warehouse=warehouse)

    assert (result.history_rows_inserted, result.history_rows_closed) == (3, 2)
    ensure, load = batches
    assert ensure[-1].startswith('CREATE TABLE IF NOT EXISTS "analytics"."orders_history" (')
    assert len(load) == LOAD_STATEMENTS + 2
    for sql in load:
        (parsed,) = sqlglot.parse(sql, read="redshift")
        assert not isinstance(parsed, exp.Command), sql
    assert load[7].startswith(
        'UPDATE "analytics"."orders_history" SET "valid_to" = v."_event_time"'
    )
    assert load[8].startswith('INSERT INTO "analytics"."orders_history" ("_id", "doc", "_op"')
    (staged,) = staged_at_copy  # every version of the window, in the stage's column order
    assert [(r["_id"], r["_op"], r["_pos"], r["_commit_version"]) for r in staged] == [
        (A, "update", 2, 1),
        (A, "update", 3, 2),
        (B, "delete", 3, 2),
    ]
    assert list(staged[0]) == [*HISTORY_STAGE_COLUMNS, "v"]
