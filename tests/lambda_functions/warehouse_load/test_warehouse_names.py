"""Warehouse names as the engines read them: folded to lower case (Redshift: "Names and
identifiers"; DuckDB resolves identifiers without case, quoted or not), at most 127 bytes
(Redshift), and never one of Redshift's system column names."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from lambda_functions.contracts import InvalidRequestError, LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.merge import merge_batches
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_sql import (
    DUCKDB,
    REDSHIFT,
    LoadedState,
    PlanError,
    StageSource,
    TargetTable,
    columns_query,
    ensure_tables,
    load_transaction,
    loaded_state_query,
    parse_projection,
)
from tests.lambda_functions.raw_batches import JAN, key, publish

TABLE_ID = "0b5e7a9c-1111-2222-3333-444455556666"
ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"
LONGEST = "t" * 127  # Redshift: identifiers of 1 to 127 bytes


class Lake:
    def __init__(self, root: Path):
        self.lake = str(root / "lake")
        self.zone = RawZone(open_store(self.lake), "shop", "orders")
        self.warehouse = str(root / "wh.duckdb")

    def change(self, *changes) -> None:
        publish(self.zone, list(changes))
        merge_batches(MergeRequest(lake_uri=self.lake, database="shop", collection="orders"))

    def load(self, **fields):
        request = LoadRequest(
            lake_uri=self.lake,
            database="shop",
            collection="orders",
            warehouse_location=self.warehouse,
            **fields,
        )
        return load_changes(LoadRequest.from_event(request.to_event()))

    def sql(self, query: str) -> list[tuple]:
        with duckdb.connect(self.warehouse, read_only=True) as db:
            return db.execute(query).fetchall()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path)


def test_a_table_named_in_another_case_is_the_same_table_and_control_row(lake):
    """DuckDB resolves "Orders" and "orders" to one table, so they share one control row: the
    second load continues incrementally instead of reloading and leaving a second row."""
    lake.change((key(JAN, 1), "insert", 1, "{}"))
    assert lake.load(target_table="Orders").reason == "first load"
    lake.change((key(JAN, 2), "insert", 2, "{}"))
    second = lake.load(target_table="orders")
    assert (second.reason, second.rows_staged) == ("incremental", 1)
    assert lake.sql('SELECT table_name FROM analytics."_lakehouse_loads"') == [("orders",)]


def test_a_control_row_written_in_another_case_is_found_and_replaced(lake):
    """A row keyed 'Orders' (DuckDB kept the case before names were folded) is this table's."""
    lake.change((key(JAN, 1), "insert", 1, "{}"))
    lake.load()
    with duckdb.connect(lake.warehouse) as db:
        db.execute("""UPDATE analytics."_lakehouse_loads" SET table_name = 'Orders'""")
    lake.change((key(JAN, 2), "insert", 2, "{}"))
    assert lake.load().reason == "incremental"
    assert lake.sql('SELECT table_name FROM analytics."_lakehouse_loads"') == [("orders",)]


def test_the_column_lookup_finds_columns_whatever_case_the_schema_was_named_in(lake):
    lake.change((key(JAN, 1), "insert", 1, json.dumps({"status": "new", "total": 2})))
    lake.load(target_schema="analytics", projection={"status": "VARCHAR(8)"})
    result = lake.load(
        target_schema="Analytics", projection={"status": "VARCHAR(8)", "total": "INTEGER"}
    )
    assert result.columns_added == ["total"]
    assert lake.sql("SELECT status, total FROM analytics.orders") == [("new", 2)]


def test_names_up_to_redshifts_127_bytes_load_and_parse(lake):
    """A 127-byte table and column load into DuckDB, and every statement parses as Redshift."""
    column_path = "a" * 63 + "." + "b" * 63  # becomes a 127-character column
    lake.change((key(JAN, 1), "insert", 1, json.dumps({"a" * 63: {"b" * 63: 5}})))
    result = lake.load(target_table=LONGEST, projection={column_path: "INTEGER"})
    assert result.target == f"analytics.{LONGEST}" and result.reconciliation.matches
    (column,) = result.projected_columns
    assert len(column) == 127
    assert lake.sql(f'SELECT "{column}" FROM analytics."{LONGEST}"') == [(5,)]

    target = TargetTable.named(REDSHIFT, "analytics", LONGEST)
    projection = parse_projection({column_path: "INTEGER"})
    statements = [
        *ensure_tables(REDSHIFT, target),
        loaded_state_query(REDSHIFT, target),
        columns_query(REDSHIFT, target),
        *load_transaction(
            REDSHIFT,
            target,
            source=StageSource(s3_uri="s3://lake-bucket/k.parquet", iam_role=ROLE),
            full=False,
            expected=LoadedState(TABLE_ID, 3),
            table_id=TABLE_ID,
            version=4,
            projection=projection,
            add_columns=projection,
        ),
    ]
    for statement in statements:
        (parsed,) = sqlglot.parse(statement.sql, read="redshift")
        assert not isinstance(parsed, exp.Command), statement.sql


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("t" * 128, "128 bytes long; Redshift allows at most 127"),
        ("_lakehouse_loads", "control/staging table"),
        ("_LAKEHOUSE_LOADS", "control/staging table"),
    ],
)
def test_a_table_name_the_warehouse_cannot_have_is_refused_with_the_reason(table, message):
    request = LoadRequest(lake_uri="/l", database="shop", collection="orders", target_table=table)
    with pytest.raises(InvalidRequestError, match=message):
        LoadRequest.from_event(request.to_event())


def test_a_66_character_derived_table_name_is_a_valid_request():
    """The 63-character rule was the product's, not Redshift's (127 bytes) nor DuckDB's."""
    table = "shop_" + "o" * 61
    request = LoadRequest(lake_uri="/l", database="shop", collection="orders", target_table=table)
    assert LoadRequest.from_event(request.to_event()).table_name == table


@pytest.mark.parametrize("column", ["xmin", "ctid", "OID"])
def test_redshift_system_column_names_are_refused_as_projected_columns(column):
    with pytest.raises(PlanError, match=r"reserved.*LAKEHOUSE_WAREHOUSE_PROJECTION"):
        parse_projection({column: "BIGINT"})


def test_fields_differing_in_case_are_refused_naming_the_fix():
    with pytest.raises(PlanError, match=r"compared in lower case.*Project only one of them"):
        parse_projection({"total": "INTEGER", "Total": "INTEGER"})


def test_control_row_and_catalog_reads_compare_folded_names():
    for dialect in (REDSHIFT, DUCKDB):
        target = TargetTable.named(dialect, "Analytics", "Orders")
        assert loaded_state_query(dialect, target).parameters == {"table_name": "orders"}
        assert 'LOWER("table_name")' in loaded_state_query(dialect, target).sql
        assert columns_query(dialect, target).parameters == {
            "schema_name": "analytics",
            "table_name": "orders",
        }
