"""History tables (SCD type 2): every lake commit's version of each document, loaded in the same
transaction as the current-state table, idempotent, on DuckDB end to end and as Redshift SQL."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import sqlglot
from deltalake import DeltaTable
from sqlglot import exp

from lambda_functions.contracts import InvalidRequestError, LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.lake.table_layout import live_rows
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_load.duckdb_warehouse import DuckDBWarehouse
from lambda_functions.warehouse_load.reconcile import lake_buckets
from lambda_functions.warehouse_load.redshift import RedshiftWarehouse
from lambda_functions.warehouse_sql import (
    DUCKDB,
    HISTORY_STAGE_COLUMNS,
    HISTORY_STATEMENTS,
    LOAD_STATEMENTS,
    REDSHIFT,
    LoadedState,
    PlanError,
    StageSource,
    TargetTable,
    check_projection_limits,
    columns_fit_in_load,
    columns_query,
    ensure_tables,
    history_table_name,
    history_target,
    load_transaction,
    parse_projection,
    reconciliation_query,
)
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish
from tests.lambda_functions.warehouse_load.test_redshift_load import (  # noqa: F401 (fixtures)
    FakeClock,
    api_client,
    data_api,
    expect_query,
    finished,
    long,
    staging,
    text,
)

A, B, C = key(JAN, 1), key(JAN, 2), key(JUN, 3)
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
TABLE_ID = "0b5e7a9c-1111-2222-3333-444455556666"
ROLE = "arn:aws:iam::123456789012:role/lakehouse-copy"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def doc(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"))


class Pipeline:
    """A lake (raw zone + merge) and a DuckDB warehouse; changes carry chosen event times."""

    def __init__(self, root: Path):
        self.lake = str(root / "lake")
        self.zone = RawZone(open_store(self.lake), "shop", "orders")
        self.merge = MergeRequest(lake_uri=self.lake, database="shop", collection="orders")
        self.warehouse = str(root / "wh.duckdb")

    def request(self, **changes) -> LoadRequest:
        fields = {"history": True, "projection": {"v": "INTEGER"}, **changes}
        return LoadRequest(
            lake_uri=self.lake,
            database="shop",
            collection="orders",
            warehouse_location=self.warehouse,
            **fields,
        )

    def change(self, minutes: int, *changes: tuple[str, str, int, str | None]) -> int:
        """One merge commit of ``changes`` (key, op, pos, doc), all at ``at(minutes)``."""
        publish(self.zone, list(changes), event_time=at(minutes))
        return merge_batches(self.merge).version

    def sql(self, query: str) -> list[tuple]:
        with duckdb.connect(self.warehouse, read_only=True) as db:
            return db.execute(query).fetchall()

    def history(self) -> dict[str, list[tuple]]:
        """Per key: (_op, _pos, valid_from, valid_to, is_current, v, doc) in version order."""
        rows = self.sql(
            'SELECT "_id", "_op", "_pos", "valid_from", "valid_to", "is_current", "v", '
            '"doc"::VARCHAR FROM "analytics"."orders_history" '
            'ORDER BY "_id", "_lake_version", "_pos"'
        )
        chains: dict[str, list[tuple]] = {}
        for key_, *rest in rows:
            chains.setdefault(key_, []).append(tuple(rest))
        return chains

    def current(self) -> dict[str, str]:
        rows = self.sql('SELECT "_id", "doc"::VARCHAR FROM "analytics"."orders"')
        return dict(rows)

    def tables(self) -> set[str]:
        return {name for (name,) in self.sql("SELECT table_name FROM information_schema.tables")}


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


def assert_chains_are_scd2(chains: dict[str, list[tuple]], live: set[str]) -> None:
    """No gaps or overlaps; one open row per key; exactly one current row per live key, the
    open one; none for deleted keys (their open row is the delete)."""
    for key_, chain in chains.items():
        for earlier, later in itertools.pairwise(chain):
            assert earlier[3] == later[2], (key_, chain)  # valid_to = next valid_from
            assert earlier[2] <= earlier[3]
        assert [row[3] is None for row in chain] == [False] * (len(chain) - 1) + [True]
        current = [row for row in chain if row[4]]
        if key_ in live:
            assert current == [chain[-1]] and chain[-1][0] != "delete", (key_, chain)
        else:
            assert current == [] and chain[-1][0] == "delete", (key_, chain)


def test_insert_update_update_delete_across_loads_gives_one_row_per_version(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (B, "insert", 1, doc(v=10)))
    first = load_changes(pipeline.request())
    assert first.full_reload and first.history_table == "analytics.orders_history"
    assert (first.history_rows_inserted, first.history_rows_closed) == (2, 0)

    pipeline.change(5, (A, "update", 2, doc(v=2)))
    pipeline.change(7, (A, "update", 3, doc(v=3)))  # two merge commits between two loads
    second = load_changes(pipeline.request())
    assert not second.full_reload
    assert (second.history_rows_inserted, second.history_rows_closed) == (2, 1)

    pipeline.change(9, (A, "delete", 4, None), (C, "insert", 4, doc(v=30)))
    third = load_changes(pipeline.request())
    assert (third.history_rows_inserted, third.history_rows_closed) == (2, 1)
    assert third.reconciliation.matches

    chains = pipeline.history()
    assert chains[A] == [
        ("insert", 1, at(0), at(5), False, 1, doc(v=1)),
        ("update", 2, at(5), at(7), False, 2, doc(v=2)),
        ("update", 3, at(7), at(9), False, 3, doc(v=3)),
        ("delete", 4, at(9), None, False, None, None),
    ]
    assert chains[B] == [("insert", 1, at(0), None, True, 10, doc(v=10))]
    assert chains[C] == [("insert", 4, at(9), None, True, 30, doc(v=30))]
    assert_chains_are_scd2(chains, live={B, C})
    assert pipeline.current() == {B: doc(v=10), C: doc(v=30)}


def test_a_document_inserted_again_after_its_delete_closes_the_delete_row(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1)))
    load_changes(pipeline.request())
    pipeline.change(3, (A, "delete", 2, None))
    load_changes(pipeline.request())
    pipeline.change(6, (A, "insert", 3, doc(v=2)))
    load_changes(pipeline.request())
    chains = pipeline.history()
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in chains[A]] == [
        ("insert", 1, at(0), at(3), False),
        ("delete", 2, at(3), at(6), False),
        ("insert", 3, at(6), None, True),
    ]
    assert_chains_are_scd2(chains, live={A})


def test_a_delete_followed_by_an_insert_in_one_window_keeps_the_chain_ordered(pipeline):
    """The merge's feed shows a delete as the deleted row; its own time is read from the
    tombstone, which the re-insert replaced: the delete row is then held at the next version's
    time (zero length), never out of order."""
    pipeline.change(0, (A, "insert", 1, doc(v=1)))
    load_changes(pipeline.request())
    pipeline.change(3, (A, "delete", 2, None))
    pipeline.change(6, (A, "insert", 3, doc(v=2)))
    load_changes(pipeline.request())
    chains = pipeline.history()
    assert [(r[0], r[2], r[3], r[4]) for r in chains[A]] == [
        ("insert", at(0), at(6), False),
        ("delete", at(6), at(6), False),
        ("insert", at(6), None, True),
    ]
    assert_chains_are_scd2(chains, live={A})


def test_changes_inside_one_merge_batch_give_one_version_per_commit(pipeline):
    """The merge precombines a batch to the latest change per key: history sees commits."""
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (A, "update", 2, doc(v=2)))
    load_changes(pipeline.request())
    assert [(r[0], r[1]) for r in pipeline.history()[A]] == [("update", 2)]


def test_rerunning_a_loaded_window_or_reloading_in_full_adds_nothing(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (B, "insert", 1, doc(v=10)))
    load_changes(pipeline.request())
    pipeline.change(5, (A, "update", 2, doc(v=2)))
    load_changes(pipeline.request())
    before = pipeline.history()

    again = load_changes(pipeline.request())
    assert (again.reason, again.statements, again.history_rows_inserted) == ("up to date", [], 0)
    full = load_changes(pipeline.request(force_full_reload=True))
    assert full.full_reload and (full.history_rows_inserted, full.history_rows_closed) == (0, 0)
    assert pipeline.history() == before


def test_a_full_reload_closes_the_open_rows_of_keys_the_lake_no_longer_holds(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (B, "insert", 1, doc(v=10)))
    load_changes(pipeline.request())
    pipeline.change(5, (B, "delete", 2, None), (A, "update", 2, doc(v=2)))
    reload = load_changes(pipeline.request(force_full_reload=True))
    # A: closed by its new version; B: closed as gone (its delete's time is not in a full read).
    assert (reload.history_rows_inserted, reload.history_rows_closed) == (1, 2)
    chains = pipeline.history()
    assert [(r[0], r[3] is None, r[4]) for r in chains[A]] == [
        ("insert", False, False),
        ("update", True, True),
    ]
    ((op, _pos, _from, valid_to, is_current, *_),) = chains[B]
    assert (op, valid_to is not None, is_current) == ("insert", True, False)


HISTORY_STEPS = ["load_stage", "insert_upserts", "close_history", "insert_history", "drop_stage"]


@pytest.mark.parametrize("failing_step", HISTORY_STEPS)
def test_a_load_failing_mid_transaction_leaves_both_tables_unchanged(
    pipeline, monkeypatch, failing_step
):
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (B, "insert", 1, doc(v=10)))
    load_changes(pipeline.request())
    history, current = pipeline.history(), pipeline.current()
    pipeline.change(5, (A, "update", 2, doc(v=2)), (B, "delete", 2, None))

    real_execute = DuckDBWarehouse._execute

    def failing(self, statement):
        if statement.label == failing_step:
            raise ConnectionError(f"connection lost at {failing_step}")
        return real_execute(self, statement)

    monkeypatch.setattr(DuckDBWarehouse, "_execute", failing)
    with pytest.raises(ConnectionError, match=failing_step):
        load_changes(pipeline.request())
    monkeypatch.undo()
    assert (pipeline.history(), pipeline.current()) == (history, current)

    rerun = load_changes(pipeline.request())
    assert (rerun.history_rows_inserted, rerun.history_rows_closed) == (2, 2)
    assert_chains_are_scd2(pipeline.history(), live={A})


def test_without_the_option_no_history_table_is_made(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1)))
    result = load_changes(pipeline.request(history=False))
    assert result.history_table is None and "close_history" not in result.statements
    assert "orders_history" not in pipeline.tables() and "orders" in pipeline.tables()


def test_turning_history_on_for_a_loaded_collection_seeds_it_with_a_full_reload(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (B, "insert", 1, doc(v=10)))
    load_changes(pipeline.request(history=False))
    seeded = load_changes(pipeline.request())
    assert seeded.full_reload and "empty" in seeded.reason
    assert seeded.history_rows_inserted == 2
    assert_chains_are_scd2(pipeline.history(), live={A, B})
    assert not load_changes(pipeline.request()).full_reload


def test_a_projected_column_added_later_is_added_to_the_history_table_too(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1, w=5)))
    load_changes(pipeline.request())
    pipeline.change(5, (A, "update", 2, doc(v=2, w=6)))
    result = load_changes(pipeline.request(projection={"v": "INTEGER", "w": "INTEGER"}))
    assert "add_history_column:w" in result.statements
    rows = pipeline.sql('SELECT "_pos", "w" FROM "analytics"."orders_history" ORDER BY "_pos"')
    assert rows == [(1, None), (2, 6)]  # versions loaded before the column keep NULL


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


def history_plan(dialect, *, full: bool, projection=(), add=()):
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
    )


@pytest.mark.parametrize("dialect", [REDSHIFT, DUCKDB], ids=lambda d: d.name)
def test_every_history_statement_parses_as_one_statement_in_its_dialect(dialect):
    projection = parse_projection({"status": "VARCHAR(32)", "at": "TIMESTAMPTZ", "n": "INTEGER"})
    target = TargetTable.named(dialect, "analytics", "orders")
    statements = ensure_tables(dialect, target, history=history_target(dialect, target))
    for full in (True, False):
        statements += history_plan(dialect, full=full, projection=projection, add=projection)
    labels = [s.label for s in statements]
    for label in ("create_history", "close_history", "close_history_absent", "insert_history"):
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
    lake_rows = live_rows(table.to_pyarrow_table(columns=["_id", "_pos", "_op"]))
    buckets = [
        [long(b), long(rows), long(rows), text(str(hashes))]
        for b, (rows, hashes) in sorted(lake_buckets(lake_rows).items())
    ]
    expect_query(
        stubber,
        "aside-1",
        'SELECT "_id", "_pos", "reason" FROM "analytics"."_lakehouse_set_aside" '
        'WHERE "table_name" = :table_name',
        "set_aside_keys",
        "token-7",
        [],
        parameters={"table_name": "orders"},
    )
    expect_query(
        stubber,
        "reconcile-1",
        reconciliation_query(REDSHIFT, target).sql,
        "reconcile_buckets",
        "token-8",
        buckets,
    )
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
