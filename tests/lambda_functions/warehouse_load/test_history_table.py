"""History tables (SCD type 2): every lake commit's version of each document, loaded in the same
transaction as the current-state table, idempotent: DuckDB end to end through the lake
(``test_history_plan`` has the SQL on both dialects and Redshift through the Data API)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from dagster_pipes import encode_param

from lambda_functions.contracts import LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.merge import merge_batches
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_load.handler import handler
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish
from tests.lambda_functions.warehouse_load.test_duckdb_load import fail_statement

A, B, C = key(JAN, 1), key(JAN, 2), key(JUN, 3)
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


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

    fail_statement(monkeypatch, failing_step)
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


def pipes_event(request: LoadRequest, messages: Path) -> dict:
    """The request plus the two Pipes bootstrap keys PipesLambdaClient adds."""
    asset = "warehouse_table"
    context = {
        "asset_keys": [asset],
        "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None},
        "partition_key": "shop.orders",
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "run-1",
        "job_name": "warehouse_load_job",
        "retry_number": 0,
        "extras": {},
    }
    return {
        **request.to_event(),
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": context}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)}),
    }


def test_the_handler_reports_history_figures_only_for_collections_that_keep_history(
    pipeline, tmp_path
):
    pipeline.change(0, (A, "insert", 1, doc(v=1)), (B, "insert", 1, doc(v=10)))
    handler(pipes_event(pipeline.request(history=False), tmp_path / "off.jsonl"), None)
    pipeline.change(5, (A, "update", 2, doc(v=2)))
    handler(pipes_event(pipeline.request(), tmp_path / "on.jsonl"), None)

    def metadata(path: Path) -> dict:
        for line in path.read_text().splitlines():
            message = json.loads(line)
            if message["method"] == "report_asset_materialization":
                return message["params"]["metadata"]
        raise AssertionError("no materialization reported")

    assert not any(name.startswith("history") for name in metadata(tmp_path / "off.jsonl"))
    on = metadata(tmp_path / "on.jsonl")  # turned on: seeded by a full reload (2 keys)
    assert on["history_table"] == {"raw_value": "analytics.orders_history", "type": "text"}
    assert on["history_rows_inserted"] == {"raw_value": 2, "type": "int"}
    assert on["history_rows_closed"] == {"raw_value": 0, "type": "int"}
