"""The SQL plan: what it generates, that Redshift's grammar accepts it, and what it refuses."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp

from lambda_functions.contracts import InvalidRequestError, LoadRequest
from lambda_functions.warehouse_sql import (
    DUCKDB,
    REDSHIFT,
    Dialect,
    LoadedState,
    PlanError,
    StageSource,
    TargetTable,
    UnsafeSqlValueError,
    bucket_rows_query,
    columns_query,
    ensure_tables,
    history_target,
    load_transaction,
    loaded_state_query,
    parse_projection,
    quote_identifier,
    reconciliation_query,
    sql_string,
)

TABLE_ID = "0b5e7a9c-1111-2222-3333-444455556666"
ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"
EVERY_TYPE = {
    "status": "VARCHAR(32)",
    "customer.address.city": "varchar(64)",
    "qty": "SMALLINT",
    "n": "INTEGER",
    "loyalty_points": "BIGINT",
    "total": "DECIMAL(18,2)",
    "ratio": "REAL",
    "score": "DOUBLE PRECISION",
    "paid": "BOOLEAN",
    "day": "DATE",
    "created_at": "TIMESTAMP",
    "updated_at": "TIMESTAMPTZ",
}
SOURCES = {
    "redshift": StageSource(
        s3_uri="s3://lake-bucket/prod/_staging/a/o/5/part.parquet", iam_role=ROLE
    ),
    "duckdb": StageSource(relation="_lakehouse_stage_rows"),
}


def plan(dialect: Dialect, **changes) -> list:
    """A load transaction for ``analytics.orders`` with these arguments changed."""
    arguments = {
        "source": SOURCES[dialect.name],
        "full": True,
        "expected": None,
        "table_id": TABLE_ID,
        "version": 1,
        "projection": (),
        **changes,
    }
    return load_transaction(dialect, TargetTable.named(dialect, "analytics", "orders"), **arguments)


def every_statement(dialect: Dialect) -> list:
    target = TargetTable.named(dialect, "analytics", "orders")
    projection = parse_projection(EVERY_TYPE)
    statements = [
        *ensure_tables(dialect, target),
        loaded_state_query(dialect, target),
        columns_query(dialect, target),
        reconciliation_query(dialect, target),
        bucket_rows_query(dialect, target, [3, 200]),
    ]
    history = history_target(dialect, target)
    statements += ensure_tables(dialect, target, history=history)[-1:]
    for full, expected in ((True, None), (False, LoadedState(TABLE_ID, 4))):
        for kept in (None, history):  # without and with a history table
            statements += plan(
                dialect,
                full=full,
                expected=expected,
                version=5,
                projection=projection,
                add_columns=projection[:3],
                history=kept,
                add_history_columns=projection[:3] if kept else (),
            )
    return statements


@pytest.mark.parametrize("dialect", [REDSHIFT, DUCKDB], ids=lambda d: d.name)
def test_every_generated_statement_parses_as_one_statement_in_its_dialect(dialect):
    for statement in every_statement(dialect):
        parsed = sqlglot.parse(statement.sql, read=dialect.name)
        assert len(parsed) == 1, statement.sql
        # sqlglot falls back to an opaque Command for text it does not understand.
        assert not isinstance(parsed[0], exp.Command), statement.sql


def test_redshift_load_stage_is_a_parquet_copy_with_the_role_redacted_for_display():
    (copy,) = [s for s in plan(REDSHIFT, full=False, version=5) if s.label == "load_stage"]
    parsed = sqlglot.parse_one(copy.sql, read="redshift")
    assert isinstance(parsed, exp.Copy)
    assert copy.sql == (
        'COPY "_lakehouse_stage" FROM '
        "'s3://lake-bucket/prod/_staging/a/o/5/part.parquet' "
        f"IAM_ROLE '{ROLE}' FORMAT AS PARQUET"
    )
    assert ROLE not in copy.display() and "IAM_ROLE '***'" in copy.display()


def test_both_warehouses_use_the_folded_name():
    """Redshift folds ASCII letters to lower case, quoted or not ("Names and identifiers");
    DuckDB keeps case but resolves names without it: "Orders" and "orders" are one table in
    both, so the plan names (and the control row keys) it once, in lower case."""
    for dialect in (REDSHIFT, DUCKDB):
        target = TargetTable.named(dialect, "Analytics", "Orders")
        assert target.qualified == '"analytics"."orders"'


def test_reads_use_named_parameters_in_each_dialects_syntax():
    for dialect, marker in ((REDSHIFT, ":table_name"), (DUCKDB, "$table_name")):
        query = loaded_state_query(dialect, TargetTable.named(dialect, "analytics", "orders"))
        assert marker in query.sql and query.parameters == {"table_name": "orders"}
        assert "'orders'" not in query.sql


@pytest.mark.parametrize(
    "name",
    [
        'orders"; DROP TABLE analytics.orders; --',
        "orders; DROP TABLE x",
        "ord ers",
        "orders'",
        "",
        "1orders",
        "o" * 128,  # Redshift: at most 127 bytes
        "orders\x00",
        "ørders",
    ],
)
def test_identifier_validation_rejects_injection_attempts(name):
    with pytest.raises(UnsafeSqlValueError):
        quote_identifier(name)
    event = LoadRequest(lake_uri="/l", database="shop", collection="orders", target_table=name)
    with pytest.raises(InvalidRequestError):
        LoadRequest.from_event({**event.to_event(), "target_table": name or "x y"})


def test_sql_string_doubles_quotes_and_refuses_what_dialects_read_differently():
    assert sql_string("it's") == "'it''s'"
    for bad in ("a\\'; DROP TABLE t; --", "line\nbreak", "nul\x00", "tab\t"):
        with pytest.raises(UnsafeSqlValueError):
            sql_string(bad)
    # The doubled quote stays one literal in Redshift's grammar.
    literal = sql_string("x'; DROP TABLE t; --")
    parsed = sqlglot.parse_one(f"SELECT {literal}", read="redshift")
    assert isinstance(parsed, exp.Select) and parsed.expressions[0].this == "x'; DROP TABLE t; --"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (StageSource(s3_uri="s3://b/k.parquet' IAM_ROLE 'x", iam_role=ROLE), "staging URI"),
        (StageSource(s3_uri="s3://bucket/k", iam_role=ROLE + "' FORMAT AS CSV --"), "IAM role"),
        (StageSource(s3_uri="s3://bucket/k", iam_role="not-an-arn"), "IAM role"),
    ],
)
def test_copy_source_values_are_checked_before_rendering(source, message):
    with pytest.raises(UnsafeSqlValueError, match=message):
        plan(REDSHIFT, source=source)


def test_lake_table_id_must_be_a_uuid_to_be_rendered():
    with pytest.raises(UnsafeSqlValueError, match="not a UUID"):
        plan(DUCKDB, table_id="x' OR '1'='1")


@pytest.mark.parametrize(
    ("projection", "message"),
    [
        ({"status'); DROP TABLE t; --": "VARCHAR"}, "dotted path"),
        ({"a.b.c.d": "VARCHAR"}, "at most 3"),
        ({"status": "VARCHAR(10)); DROP TABLE t; --"}, "not supported"),
        ({"status": "MONEY"}, "not supported"),
        ({"_id": "VARCHAR"}, "reserved"),
        ({"Status": "VARCHAR", "status": "INTEGER"}, "both become column"),
        ({"total": "DECIMAL(40,2)"}, "1<=p<=38"),
        ({"note": "VARCHAR(70000)"}, "1..65535"),
    ],
)
def test_bad_projections_are_refused_with_the_fix(projection, message):
    with pytest.raises(PlanError, match=message):
        parse_projection(projection)
    request = LoadRequest(
        lake_uri="/l", database="shop", collection="orders", projection=projection
    )
    with pytest.raises(InvalidRequestError, match=message):
        LoadRequest.from_event(request.to_event())


def test_projection_types_are_normalized_and_paths_become_lower_case_columns():
    columns = {c.column: c.sql_type for c in parse_projection(EVERY_TYPE)}
    assert columns["customer_address_city"] == "VARCHAR(64)"
    assert columns["score"] == "DOUBLE PRECISION"
    assert columns["updated_at"] == "TIMESTAMPTZ"
    assert [c.column for c in parse_projection({"customerId": "varchar"})] == ["customerid"]
    assert parse_projection({"x": "varchar"})[0].sql_type == "VARCHAR(256)"


def test_a_redshift_transaction_over_forty_statements_is_refused_with_the_fix():
    projection = parse_projection({f"f{i}": "INTEGER" for i in range(33)})
    with pytest.raises(PlanError, match="at most 30 at once"):
        plan(REDSHIFT, projection=projection, add_columns=projection)


def test_redshift_requests_need_a_complete_connection_and_an_s3_lake():
    base = {"lake_uri": "s3://lake/prod", "database": "shop", "collection": "orders"}
    ok = {
        **base,
        "warehouse_kind": "redshift",
        "redshift_database": "dev",
        "redshift_workgroup": "analytics",
        "redshift_iam_role": ROLE,
    }
    LoadRequest.from_event(LoadRequest(**ok).to_event())
    cases = [
        ({"lake_uri": "/tmp/lake"}, "LAKEHOUSE_LAKE_URI"),
        ({"redshift_database": ""}, "LAKEHOUSE_REDSHIFT_DATABASE"),
        ({"redshift_cluster": "prod"}, "exactly one"),
        ({"redshift_workgroup": "", "redshift_cluster": "prod"}, "LAKEHOUSE_REDSHIFT_DB_USER"),
        ({"redshift_iam_role": "admin"}, "LAKEHOUSE_REDSHIFT_IAM_ROLE"),
    ]
    for change, message in cases:
        with pytest.raises(InvalidRequestError, match=message):
            LoadRequest.from_event(LoadRequest(**{**ok, **change}).to_event())
