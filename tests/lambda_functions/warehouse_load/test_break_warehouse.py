"""Inputs of issue 11's kinds that still broke the load after it (adversarial review).

Expected values come from the engines' and formats' documentation, not from the code:
- RFC 3339 section 5.6: "the 'T' and 'Z' characters in this syntax may alternatively be lower
  case 't' or 'z'": ``2024-03-01t12:00:00z`` is the instant 2024-03-01T12:00:00Z.
- MongoDB compares numbers by value across types (5 = 5.0), and canonical extended JSON writes a
  double as ``{"$numberDouble": "5.0"}`` (what the mongo shell and Node drivers store for ``5``);
  SQL casts an integral 5.0 to INTEGER as 5 (Redshift and DuckDB alike).
- Redshift ``VARCHAR(n)``: n is a length in BYTES, and a longer value is an error ("Character
  types": "value too long for type character varying(n)"); DuckDB does not enforce n at all.
- Redshift Data API: a query string over 100 KB is refused; a batch holds 1 to 40 statements.
  Redshift: at most 1,600 columns per table ("Quotas and limits in Amazon Redshift").
  Issue 11: such limits are refused at configuration, not at every load.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from lambda_functions.contracts import InvalidRequestError, LoadRequest
from lambda_functions.warehouse_load.lake_changes import STAGE_SCHEMA
from lambda_functions.warehouse_load.redshift import project_rows
from lambda_functions.warehouse_load.set_aside import mark_set_aside
from lambda_functions.warehouse_sql import (
    DUCKDB,
    LOAD_STATEMENTS,
    REDSHIFT,
    TargetTable,
    column_additions,
    columns_fit_in_load,
    parse_projection,
)
from tests.lambda_functions.warehouse_load.test_load_values import _plan, wide_projection

ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"


def _stage(*docs: dict, projection: dict[str, str]) -> list[dict]:
    """The staged rows both warehouses load (``stage_query``, computed by DuckDB in UTC)."""
    rows = pa.table(
        {
            "_id": [f"k{n}" for n in range(len(docs))],
            "doc": [json.dumps(d) for d in docs],
            "_op": ["insert"] * len(docs),
            "_pos": [1] * len(docs),
            "_event_time": pa.array([None] * len(docs), pa.timestamp("us", tz="UTC")),
            "_deleted": [False] * len(docs),
        },
        schema=STAGE_SCHEMA,
    )
    return project_rows(mark_set_aside(rows, REDSHIFT), parse_projection(projection)).to_pylist()


def _micros(instant: datetime) -> int:
    return int(instant.timestamp()) * 1_000_000 + instant.microsecond


# -- timestamps: RFC 3339 lower-case 't' and 'z' -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2024-03-01T12:00:00z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01t12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01t12:00:00.25z", datetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2024-03-01t12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
    ],
)
def test_rfc3339_lower_case_t_and_z_keep_their_instant(text, instant):
    projection = {"at": "TIMESTAMPTZ", "local": "TIMESTAMP", "day": "DATE"}
    (row,) = _stage({"at": text, "local": text, "day": {"$date": text}}, projection=projection)
    assert (row["at"], row["local"], row["day"]) == (_micros(instant),) * 3


# -- numbers: a double holding an integer, into an integer column ---------------------------------


def test_an_integral_double_or_decimal_loads_into_integer_columns():
    docs = (
        {"qty": {"$numberDouble": "5.0"}, "big": {"$numberDouble": "5000000000.0"}},
        {"qty": {"$numberDecimal": "7"}, "big": {"$numberDecimal": "-3"}},
        {"qty": {"$numberInt": "2"}, "big": {"$numberLong": "9"}},
    )
    rows = _stage(*docs, projection={"qty": "INTEGER", "big": "BIGINT"})
    assert [(r["qty"], r["big"]) for r in rows] == [(5, 5_000_000_000), (7, -3), (2, 9)]


# -- VARCHAR(n) is n bytes on Redshift: a longer value fails on both warehouses alike -------------


def test_a_varchar_value_longer_than_n_bytes_fails_the_stage_naming_the_column():
    projection = {"name": "VARCHAR(8)"}
    (fits,) = _stage({"name": "éééé"}, projection=projection)  # 4 characters, 8 bytes
    assert fits["name"] == "éééé"
    for value in ("ééééé", "abcdefghi"):  # 10 and 9 bytes: Redshift's COPY would refuse them
        with pytest.raises(Exception, match=r"name.*VARCHAR\(8\)"):
            _stage({"name": value}, projection=projection)


# -- Data API and table limits, refused at configuration ------------------------------------------


def _redshift_request(projection: dict[str, str]) -> LoadRequest:
    return LoadRequest(
        lake_uri="s3://lake-bucket/prod",
        database="shop",
        collection="orders",
        warehouse_kind="redshift",
        redshift_database="dev",
        redshift_workgroup="analytics",
        redshift_iam_role=ROLE,
        projection=projection,
    )


def test_a_projection_whose_insert_is_over_100_kb_is_refused_when_the_request_is_validated():
    with pytest.raises(InvalidRequestError, match=r"100000"):
        _redshift_request(wide_projection(1200)).validate()
    _redshift_request(wide_projection(280)).validate()  # fits: still accepted


def test_a_projection_over_redshifts_1600_columns_is_refused_when_the_request_is_validated():
    projection = {f"c{i}": "INTEGER" for i in range(1600)}  # short names: the SQL fits 100 KB
    with pytest.raises(InvalidRequestError, match="1600"):
        _redshift_request(projection).validate()


def test_configuration_refuses_a_redshift_projection_that_can_never_load():
    from lakehouse_pipelines.settings import LakehouseSettings, SettingsError

    env = {
        "LAKEHOUSE_ENV": "aws",
        "LAKEHOUSE_LAKE_URI": "s3://analytics-lake/prod",
        "LAKEHOUSE_COLLECTIONS": "shop.orders",
        "LAKEHOUSE_WAREHOUSE_PROJECTION": json.dumps(wide_projection(1200)),
    }
    with pytest.raises(SettingsError, match="LAKEHOUSE_WAREHOUSE_PROJECTION"):
        LakehouseSettings.from_env(env)


def test_the_load_plan_has_load_statements_besides_its_columns():
    """``columns_fit_in_load`` counts on it."""
    for dialect in (REDSHIFT, DUCKDB):
        assert len(_plan(dialect, parse_projection({"a": "INTEGER"}))) == LOAD_STATEMENTS


def test_the_first_redshift_load_of_a_280_column_projection_fits_the_data_api():
    """Redshift adds one column per ALTER TABLE and a Data API batch holds 1 to 40 statements: the
    280 additions run ahead of the load in batches of at most 40, the first clearing the control
    row, and the load itself (a full reload) fits one batch."""
    projection = parse_projection(wide_projection(280))
    assert not columns_fit_in_load(REDSHIFT, len(projection))
    batches = column_additions(REDSHIFT, TargetTable.named(REDSHIFT, "analytics", "o"), projection)
    assert all(1 <= len(batch) <= 40 for batch in batches)
    assert batches[0][0].label == "delete_control"
    added = [s.label for batch in batches for s in batch if s.label.startswith("add_column:")]
    assert added == [f"add_column:{c.column}" for c in projection]
    assert 1 <= len(_plan(REDSHIFT, projection, full=True)) <= 40


def test_columns_beyond_one_transaction_are_added_ahead_and_every_row_is_filled(
    tmp_path, monkeypatch
):
    """The same rule on DuckDB with a 14-statement limit (4 columns fit in the load): 9 new
    columns are added ahead, and every row gets its values, also when the run stops between the
    column transactions and the load (the cleared control row makes the retry a full reload)."""
    from lambda_functions.warehouse_load import load_changes
    from lambda_functions.warehouse_load.duckdb_warehouse import DuckDBWarehouse
    from tests.lambda_functions.warehouse_load.test_duckdb_load import A, B, Pipeline, doc

    pipeline = Pipeline(tmp_path)
    pipeline.change(
        (A, "snapshot", 1, doc(**{f"f{n}": n for n in range(9)})), (B, "snapshot", 1, doc(f0=7))
    )
    load_changes(pipeline.request())  # loaded, no projection
    monkeypatch.setattr(type(DUCKDB), "max_batch_statements", LOAD_STATEMENTS + 4)
    projection = {f"f{n}": "INTEGER" for n in range(9)}

    class StopsBeforeTheLoad(DuckDBWarehouse):
        def run_transaction(self, statements, *, name):
            if name.startswith("lakehouse-load"):
                raise RuntimeError("the run stopped here")
            return super().run_transaction(statements, name=name)

    with pytest.raises(RuntimeError, match="stopped here"):
        load_changes(
            pipeline.request(projection=projection),
            warehouse=StopsBeforeTheLoad(pipeline.warehouse),
        )
    assert pipeline.control_row() is None  # cleared with the first column transaction

    result = load_changes(pipeline.request(projection=projection))

    assert result.full_reload and result.reconciliation.matches
    filled = pipeline.sql('SELECT "_id", "f0", "f8" FROM "analytics"."orders" ORDER BY "_id"')
    assert filled == sorted([(A, 0, 8), (B, 7, None)])


# -- commit-time failures: only Redshift's error 1023 is a serialization conflict ------------------

# A terminal failure in Redshift's internal-error layout ("error: / code: / context: / query: /
# location: / process:"), for a query and process whose ids happen to be 1023. Redshift reports
# a serialization conflict as "ERROR: 1023 DETAIL: Serializable isolation violation on table ..."
# ("Fixing serializable isolation errors"); a number 1023 elsewhere is not one.
NOT_SERIALIZATION = (
    "ERROR: JSON parsing error\n"
    "  DETAIL:\n"
    "  -----------------------------------------------\n"
    "  error:  JSON parsing error\n"
    "  code:      8001\n"
    "  context:   invalid json object\n"
    "  query:     1023\n"
    "  location:  funcs_json.hpp:210\n"
    "  process:   query1_117_1023 [pid=1023]\n"
    "  -----------------------------------------------"
)


def test_a_terminal_error_mentioning_query_1023_is_not_retried_as_a_conflict(aws_env):
    import boto3
    from botocore.stub import Stubber

    from lambda_functions.warehouse_load.redshift import (
        RedshiftSerializationError,
        RedshiftStatementError,
        is_serialization_error,
    )
    from tests.lambda_functions.warehouse_load.test_load_values import PLAN, _client

    assert not is_serialization_error(NOT_SERIALIZATION)
    client = boto3.client("redshift-data", region_name="us-east-1")
    failing = [s.label for s in PLAN].index("insert_upserts")
    sleeps: list[float] = []
    with Stubber(client) as stubber:  # one submission only: a retry would find no response
        stubber.add_response("batch_execute_statement", {"Id": "t-1"})
        stubber.add_response(
            "describe_statement",
            {
                "Id": "t-1",
                "Status": "FAILED",
                "Error": NOT_SERIALIZATION,
                "SubStatements": [
                    {
                        "Id": f"t-1:{n + 1}",
                        "Status": "FINISHED" if n < failing else "FAILED",
                        **({"Error": NOT_SERIALIZATION} if n == failing else {}),
                    }
                    for n in range(failing + 1)
                ],
            },
        )
        with pytest.raises(RedshiftStatementError) as raised:
            _client(client, sleeps).run_batch(PLAN, name="load")
    assert not isinstance(raised.value, RedshiftSerializationError)
    assert not raised.value.transient and raised.value.label == "insert_upserts"
    assert sleeps == [] and "concurrent" not in str(raised.value)


# -- Delta change data feed columns -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["_change_type", "_commit_version", "_commit_timestamp"])
def test_a_top_level_column_named_like_a_change_feed_column_keeps_loads_incremental(tmp_path, name):
    """A batch's typed top-level column named like a column the Delta change data feed adds to
    every change row (Delta protocol, "Change Data Files") is not made a lake column: otherwise
    every feed read (the incremental warehouse load) and the MERGE fail on a duplicate field."""
    from lambda_functions.contracts import MergeRequest
    from lambda_functions.lake import RawZone, open_store
    from lambda_functions.merge import merge_batches
    from lambda_functions.warehouse_load import load_changes
    from tests.lambda_functions.merge.test_schema_evolution import publish_typed
    from tests.lambda_functions.raw_batches import JAN, key

    lake = str(tmp_path / "lake")
    zone = RawZone(open_store(lake), "shop", "orders")
    merge = MergeRequest(lake_uri=lake, database="shop", collection="orders")
    load = LoadRequest(
        lake_uri=lake,
        database="shop",
        collection="orders",
        warehouse_location=str(tmp_path / "wh.duckdb"),
    )
    a, b = key(JAN, 1), key(JAN, 2)
    column = pa.schema([pa.field(name, pa.int64())])
    publish_typed(zone, [{"_id": a, "op": "insert", "pos": 1, "doc": "{}"}], pa.schema([]))
    merge_batches(merge)
    assert load_changes(load).reconciliation.matches
    publish_typed(
        zone,
        [
            {"_id": a, "op": "update", "pos": 2, "doc": '{"x": 1}', name: 7},
            {"_id": b, "op": "insert", "pos": 2, "doc": "{}", name: 8},
        ],
        column,
    )
    merged = merge_batches(merge)
    assert merged.batches_applied == [2]
    assert any(name in note and "ignored" in note for note in merged.schema_changes)
    second = load_changes(load)
    assert (second.reason, second.rows_staged) == ("incremental", 2)
    assert second.reconciliation.matches


# -- a projected column whose declared type changes ------------------------------------------------


def test_a_changed_projection_type_is_refused_with_the_fix_not_failed_at_every_load(tmp_path):
    """The load adds missing columns but never alters one: a declared type the existing column
    cannot hold used to fail every load with a cast error (here: 'paid' into INTEGER)."""
    from lambda_functions.warehouse_load import load_changes
    from lambda_functions.warehouse_sql import PlanError
    from tests.lambda_functions.raw_batches import JAN, key
    from tests.lambda_functions.warehouse_load.test_load_values import Lake

    lake = Lake(tmp_path)
    a, b = key(JAN, 1), key(JAN, 2)
    lake.change((a, "insert", 1, json.dumps({"status": 1})))
    load_changes(lake.request(projection={"status": "INTEGER"}))
    lake.change((b, "insert", 2, json.dumps({"status": "paid"})))
    with pytest.raises(
        PlanError, match=r"'status' of analytics.orders is INTEGER .* VARCHAR\(16\)"
    ):
        load_changes(lake.request(projection={"status": "VARCHAR(16)"}))
    lake.sql('ALTER TABLE "analytics"."orders" DROP COLUMN "status"')  # the fix it names
    fixed = load_changes(lake.request(projection={"status": "VARCHAR(16)"}))
    assert fixed.full_reload and fixed.reconciliation.matches
    assert lake.sql('SELECT "status" FROM "analytics"."orders" ORDER BY 1') == [("1",), ("paid",)]


def test_redshift_catalog_types_are_compared_with_the_declared_ones():
    from lambda_functions.warehouse_sql import PlanError, TargetTable, check_column_types

    target = TargetTable.named(REDSHIFT, "analytics", "orders")
    # information_schema.columns on Redshift (PostgreSQL names, lengths in their own columns)
    catalog = [
        ("status", "character varying", 8, None, None),
        ("total", "numeric", None, 18, 2),
        ("n", "integer", None, 32, 0),
        ("at", "timestamp with time zone", None, None, None),
    ]
    fits = {"status": "VARCHAR(8)", "total": "DECIMAL(12,2)", "n": "SMALLINT", "at": "TIMESTAMPTZ"}
    check_column_types(target, parse_projection(fits), catalog)
    with pytest.raises(PlanError, match=r'ALTER COLUMN "status" TYPE VARCHAR\(64\)'):
        check_column_types(target, parse_projection({"status": "VARCHAR(64)"}), catalog)
    for declared in ({"total": "DECIMAL(38,2)"}, {"n": "BIGINT"}, {"at": "TIMESTAMP"}):
        with pytest.raises(PlanError, match="never alters a column"):
            check_column_types(target, parse_projection(declared), catalog)


# -- a record key over the warehouse's key limit ----------------------------------------------------


def test_a_key_over_65535_bytes_is_set_aside_without_staging_it(aws_env):
    """Redshift's stage holds ``_id`` in VARCHAR(65535) (VARCHAR's maximum, in bytes); COPY fails
    the whole load on a longer value. Such a row was marked set aside but still staged its key."""
    import io

    import boto3
    import pyarrow.parquet as pq

    from lambda_functions.lake import S3ObjectStore
    from lambda_functions.warehouse_load.redshift import RedshiftWarehouse

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lake-bucket")
    store = S3ObjectStore("lake-bucket", "prod", client=s3)
    long_key = '"' + "é" * 40_000 + '"'  # a string _id's key text: 80,002 bytes
    rows = mark_set_aside(
        pa.table(
            {
                "_id": [long_key, "65a1b2c3d4e5f6a7b8c9d0e1"],
                "doc": ["{}", "{}"],
                "_op": ["insert"] * 2,
                "_pos": [1, 1],
                "_event_time": pa.array([None] * 2, pa.timestamp("us", tz="UTC")),
                "_deleted": [False] * 2,
            },
            schema=STAGE_SCHEMA,
        ),
        REDSHIFT,
    )
    RedshiftWarehouse(object(), store, ROLE).stage(rows, key="_staging/a/o/1/part.parquet")  # type: ignore[arg-type]
    written = pq.read_table(io.BytesIO(store.get("_staging/a/o/1/part.parquet"))).to_pylist()
    assert max(len(r["_id"].encode()) for r in written) <= 65_535
    assert "record key over 65535 bytes" in written[0]["_set_aside"]
    assert written[1] == {**written[1], "_id": "65a1b2c3d4e5f6a7b8c9d0e1", "_set_aside": None}


def test_a_key_over_the_limit_is_accounted_for_by_reconciliation_and_forgotten_on_delete(
    tmp_path, monkeypatch
):
    from lambda_functions.warehouse_load import load_changes
    from lambda_functions.warehouse_sql import DuckDBDialect
    from tests.lambda_functions.raw_batches import JAN, key
    from tests.lambda_functions.warehouse_load.test_load_values import Lake

    monkeypatch.setattr(DuckDBDialect, "max_key_bytes", 100)  # a small engine, same plan
    lake = Lake(tmp_path)
    long_key, short = key(JAN, 1) + "y" * 200, key(JAN, 2)
    lake.change((long_key, "insert", 1, "{}"), (short, "insert", 1, "{}"))
    first = load_changes(lake.request())
    assert first.documents_set_aside == 1 and first.rows_inserted == 1
    assert first.reconciliation.matches and first.reconciliation.documents_set_aside == 1
    assert lake.sql('SELECT max(length("_id")) FROM "analytics"."_lakehouse_set_aside"') == [(72,)]
    lake.change((long_key, "update", 2, '{"a": 1}'))
    assert load_changes(lake.request()).reconciliation.documents_set_aside == 1
    lake.change((long_key, "delete", 3, None))
    gone = load_changes(lake.request())
    assert gone.reconciliation.complete  # nothing set aside any more, every row loaded
    assert lake.sql('SELECT COUNT(*) FROM "analytics"."_lakehouse_set_aside"') == [(0,)]
