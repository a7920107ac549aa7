from pathlib import Path

import duckdb
import pytest

from lambda_functions.contracts import LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.merge import merge_batches
from lambda_functions.warehouse_load import load_changes
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish


@pytest.fixture
def stages(tmp_path: Path):
    lake = str(tmp_path / "lake")
    zone = RawZone(open_store(lake), "shop", "orders")
    merge = MergeRequest(lake_uri=lake, database="shop", collection="orders")
    load = LoadRequest(
        lake_uri=lake,
        database="shop",
        collection="orders",
        warehouse_location=str(tmp_path / "wh.duckdb"),
    )
    return zone, merge, load


def warehouse_rows(load: LoadRequest) -> dict[str, str]:
    with duckdb.connect(load.warehouse_location, read_only=True) as db:
        return dict(db.execute('SELECT _id, doc::VARCHAR FROM "analytics"."orders"').fetchall())


def test_first_load_is_full_then_incremental_then_nothing(stages):
    zone, merge, load = stages
    a, b, c = key(JAN, 1), key(JAN, 2), key(JUN, 3)
    publish(zone, [(a, "snapshot", 1, '{"v":0}'), (b, "snapshot", 1, '{"v":0}')])
    merge_batches(merge)
    first = load_changes(load)
    assert first.full_reload and first.rows_inserted == 2
    publish(
        zone, [(a, "update", 2, '{"v":1}'), (b, "delete", 2, None), (c, "insert", 2, '{"v":3}')]
    )
    merge_batches(merge)
    second = load_changes(load)
    assert not second.full_reload
    assert (second.rows_staged, second.rows_deleted, second.rows_inserted) == (3, 2, 2)
    assert warehouse_rows(load) == {a: '{"v":1}', c: '{"v":3}'}
    third = load_changes(load)
    assert third.rows_staged == 0 and third.reason == "up to date"
    assert third.reconciliation.matches


def test_failed_load_commits_nothing_and_the_rerun_loads_once(stages, monkeypatch):
    zone, merge, load = stages
    a, b = key(JAN, 1), key(JAN, 2)
    publish(zone, [(a, "insert", 1, '{"v":0}')])
    merge_batches(merge)
    load_changes(load)
    publish(zone, [(a, "update", 2, '{"v":1}'), (b, "insert", 2, '{"v":2}')])
    merge_batches(merge)

    from lambda_functions.warehouse_load import duckdb_warehouse

    real_run = duckdb_warehouse.run

    def fail_on_control_update(db, sql, params=None):
        if sql.startswith("INSERT INTO") and "_lakehouse_loads" in sql:
            raise RuntimeError("connection lost before COMMIT")
        return real_run(db, sql, params)

    monkeypatch.setattr(duckdb_warehouse, "run", fail_on_control_update)
    with pytest.raises(RuntimeError, match="before COMMIT"):
        load_changes(load)
    monkeypatch.undo()
    assert warehouse_rows(load) == {a: '{"v":0}'}  # rolled back: data and control row alike
    rerun = load_changes(load)
    assert rerun.previous_version == 0 and not rerun.full_reload
    assert warehouse_rows(load) == {a: '{"v":1}', b: '{"v":2}'}
    assert rerun.reconciliation.matches


def test_recreated_lake_table_triggers_a_full_reload(stages, tmp_path):
    zone, merge, load = stages
    publish(zone, [(key(JAN, 1), "insert", 1, '{"v":0}')])
    merge_batches(merge)
    load_changes(load)
    import shutil

    shutil.rmtree(tmp_path / "lake" / "tables")  # e.g. a re-snapshot into a new table
    publish(zone, [(key(JUN, 5), "insert", 2, '{"v":5}')])
    # A new table has no applied batches: it is rebuilt from every batch in the raw zone.
    assert merge_batches(merge).batches_applied == [1, 2]
    result = load_changes(load)
    assert result.full_reload and "re-created" in result.reason
    assert set(warehouse_rows(load)) == {key(JAN, 1), key(JUN, 5)}
    assert result.reconciliation.matches


def test_missing_lake_table_says_to_merge_first(stages):
    _, _, load = stages
    from lambda_functions.warehouse_load.load import LakeTableMissingError

    with pytest.raises(LakeTableMissingError, match="merge stage first"):
        load_changes(load)
