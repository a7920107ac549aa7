"""The load on the embedded warehouse, end to end: lake table (merge) → DuckDB, incremental,
transactional, idempotent, with typed projected columns and reconciliation."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lambda_functions.contracts import LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.lake.table_layout import live_rows
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_load.duckdb_warehouse import DuckDBWarehouse
from lambda_functions.warehouse_load.reconcile import lake_buckets
from lambda_functions.warehouse_sql import (
    DUCKDB,
    TargetTable,
    bucket_rows_query,
    key_bucket,
    reconciliation_query,
    version_hash,
)
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish

REPO = Path(__file__).resolve().parents[3]
A, B, C, D = key(JAN, 1), key(JAN, 2), key(JUN, 3), key(JUN, 4)


class Pipeline:
    """A lake (raw zone + merge) and a DuckDB warehouse in a temporary directory."""

    def __init__(self, root: Path):
        self.lake = str(root / "lake")
        self.zone = RawZone(open_store(self.lake), "shop", "orders")
        self.merge = MergeRequest(lake_uri=self.lake, database="shop", collection="orders")
        self.warehouse = str(root / "wh.duckdb")

    def request(self, **changes) -> LoadRequest:
        return LoadRequest(
            lake_uri=self.lake,
            database="shop",
            collection="orders",
            warehouse_location=self.warehouse,
            **changes,
        )

    def change(self, *changes: tuple[str, str, int, str | None]) -> int:
        publish(self.zone, list(changes))
        return merge_batches(self.merge).version

    def lake_table_uri(self) -> str:
        return lake_table_location(open_store(self.lake), "shop", "orders")[0]

    def lake_rows(self, version: int | None = None) -> dict[str, tuple[str, int]]:
        uri, options = lake_table_location(open_store(self.lake), "shop", "orders")
        table = DeltaTable(uri, version=version, storage_options=options)
        rows = live_rows(table.to_pyarrow_table(columns=["_id", "doc", "_pos", "_op"])).to_pylist()
        return {r["_id"]: (r["doc"], r["_pos"]) for r in rows}

    def warehouse_rows(self) -> dict[str, tuple[str, int]]:
        with duckdb.connect(self.warehouse, read_only=True) as db:
            rows = db.execute('SELECT _id, doc::VARCHAR, _pos FROM "analytics"."orders"').fetchall()
        return {key: (doc, pos) for key, doc, pos in rows}

    def control_row(self) -> tuple[str, int] | None:
        with duckdb.connect(self.warehouse, read_only=True) as db:
            rows = db.execute(
                'SELECT lake_table_id, lake_version FROM "analytics"."_lakehouse_loads"'
            ).fetchall()
        assert len(rows) <= 1
        return rows[0] if rows else None

    def sql(self, query: str) -> list[tuple]:
        with duckdb.connect(self.warehouse) as db:
            return db.execute(query).fetchall()


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


def doc(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"))


def test_first_load_is_full_then_incremental_inserts_updates_deletes_then_nothing(pipeline):
    pipeline.change((A, "snapshot", 1, doc(v=0)), (B, "snapshot", 1, doc(v=0)))
    first = load_changes(pipeline.request())
    assert first.full_reload and first.reason == "first load"
    assert (first.rows_inserted, first.reconciliation.matches) == (2, True)

    version = pipeline.change(
        (A, "update", 2, doc(v=1)), (B, "delete", 2, None), (C, "insert", 2, doc(v=3))
    )
    second = load_changes(pipeline.request())
    assert not second.full_reload and second.reason == "incremental"
    assert (second.rows_staged, second.rows_deleted, second.rows_inserted) == (3, 2, 2)
    assert pipeline.warehouse_rows() == pipeline.lake_rows()
    assert pipeline.warehouse_rows()[A][0] == doc(v=1)
    assert pipeline.control_row()[1] == version

    third = load_changes(pipeline.request())
    assert (third.rows_staged, third.reason, third.statements) == (0, "up to date", [])
    assert third.reconciliation.matches


INCREMENTAL_STEPS = [
    "guard",
    "create_stage",
    "load_stage",
    "delete_changed",
    "insert_upserts",
    "delete_control",
    "insert_control",
    "drop_stage",
]


@pytest.mark.parametrize("failing_step", INCREMENTAL_STEPS)
def test_a_load_failing_at_any_step_commits_nothing_and_the_rerun_loads_once(
    pipeline, monkeypatch, failing_step
):
    pipeline.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    load_changes(pipeline.request())
    before, control = pipeline.warehouse_rows(), pipeline.control_row()
    pipeline.change((A, "update", 2, doc(v=1)), (B, "delete", 2, None), (C, "insert", 2, doc(v=2)))

    fail_statement(monkeypatch, failing_step)
    with pytest.raises(ConnectionError, match=failing_step):
        load_changes(pipeline.request())
    monkeypatch.undo()
    assert pipeline.warehouse_rows() == before  # data and control row rolled back together
    assert pipeline.control_row() == control

    rerun = load_changes(pipeline.request())
    assert rerun.previous_version == control[1] and not rerun.full_reload
    assert (rerun.rows_deleted, rerun.rows_inserted) == (2, 2)
    assert pipeline.warehouse_rows() == pipeline.lake_rows()
    assert rerun.reconciliation.matches


@pytest.mark.parametrize("killed_before", ["delete_changed", "drop_stage", "reconcile_buckets"])
def test_a_killed_load_process_followed_by_a_rerun_leaves_the_warehouse_equal_to_the_lake(
    pipeline, killed_before
):
    pipeline.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    load_changes(pipeline.request(projection={"v": "INTEGER"}))
    pipeline.change((A, "update", 2, doc(v=1)), (B, "delete", 2, None), (C, "insert", 2, doc(v=2)))

    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.lambda_functions.warehouse_load.killed_load",
            json.dumps(pipeline.request(projection={"v": "INTEGER"}).to_event()),
            killed_before,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 137, killed.stderr
    committed = killed_before == "reconcile_buckets"  # the kill came after COMMIT
    assert (pipeline.control_row()[1] == 1) is committed

    rerun = load_changes(pipeline.request(projection={"v": "INTEGER"}))
    assert rerun.reason == ("up to date" if committed else "incremental")
    assert pipeline.warehouse_rows() == pipeline.lake_rows()
    assert rerun.reconciliation.matches


def test_a_replayed_load_of_an_already_loaded_commit_is_refused_inside_the_transaction(
    pipeline, monkeypatch
):
    """A plan made from an old control row (a second runner, a retry of a lost response) must
    not commit over a newer load: the transaction's guard sees the control row moved."""
    pipeline.change((A, "insert", 1, doc(v=0)))
    first = load_changes(pipeline.request())
    pipeline.change((A, "update", 2, doc(v=1)), (B, "insert", 2, doc(v=2)))
    load_changes(pipeline.request())
    pipeline.sql(f"""UPDATE "analytics"."orders" SET doc = '{{"v":"marker"}}' WHERE _id = '{B}'""")
    after = pipeline.warehouse_rows()

    real_query = DuckDBWarehouse.query
    table_id = pipeline.control_row()[0]

    def stale_state(self, statement):
        if statement.label == "loaded_state":
            return [(table_id, first.lake_version)]  # the control row as read before the load
        return real_query(self, statement)

    monkeypatch.setattr(DuckDBWarehouse, "query", stale_state)
    with pytest.raises(duckdb.ConversionException, match="control row changed"):
        load_changes(pipeline.request(), check=False)
    assert pipeline.warehouse_rows() == after  # nothing re-applied, not even the marker undone


def test_a_full_reload_can_be_requested_and_replaces_every_row(pipeline):
    pipeline.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    load_changes(pipeline.request())
    pipeline.sql(f"""INSERT INTO "analytics"."orders" SELECT * REPLACE ('{D}' AS _id)
                     FROM "analytics"."orders" LIMIT 1""")
    result = load_changes(pipeline.request(force_full_reload=True))
    assert result.full_reload and result.reason == "full reload requested"
    assert pipeline.warehouse_rows() == pipeline.lake_rows()


def test_recreated_lake_table_triggers_a_full_reload(pipeline, tmp_path):
    pipeline.change((A, "insert", 1, doc(v=0)))
    load_changes(pipeline.request())
    import shutil

    shutil.rmtree(tmp_path / "lake" / "tables")  # e.g. a re-snapshot into a new table
    pipeline.change((C, "insert", 2, doc(v=5)))  # rebuilt from every batch in the raw zone
    result = load_changes(pipeline.request())
    assert result.full_reload and "re-created" in result.reason
    assert pipeline.warehouse_rows() == pipeline.lake_rows()
    assert result.reconciliation.matches


def test_missing_lake_table_says_to_merge_first(pipeline):
    from lambda_functions.warehouse_load.load import LakeTableMissingError

    with pytest.raises(LakeTableMissingError, match="merge stage first"):
        load_changes(pipeline.request())


EXTENDED = {
    "n": {"$numberInt": "5"},
    "big": {"$numberLong": "5000000000"},
    "price": {"$numberDecimal": "12.50"},
    "ratio": {"$numberDouble": "0.25"},
    "ok": True,
    "when": {"$date": {"$numberLong": "1700000000123"}},
    "ref": {"$oid": "65920080aaaaaaaaaaaaaaaa"},
    "name": "x",
    "customer": {"address": {"city": "Lyon"}},
    "empty": "",
    "nothing": None,
    "iso": "2024-03-01T12:00:00",
}
PROJECTION = {
    "n": "INTEGER",
    "big": "BIGINT",
    "price": "DECIMAL(10,2)",
    "ratio": "DOUBLE PRECISION",
    "ok": "BOOLEAN",
    "when": "TIMESTAMPTZ",
    "ref": "VARCHAR(24)",
    "name": "VARCHAR(8)",
    "customer.address.city": "VARCHAR(16)",
    "empty": "VARCHAR(8)",
    "nothing": "INTEGER",
    "iso": "TIMESTAMP",
    "absent": "DATE",
}


def test_projected_columns_take_the_value_inside_canonical_extended_json(pipeline):
    pipeline.change((A, "insert", 1, json.dumps(EXTENDED)))
    load_changes(pipeline.request(projection=PROJECTION))
    columns = [c.replace(".", "_") for c in PROJECTION]
    quoted = ", ".join(f'"{c}"' for c in columns)
    (row,) = pipeline.sql(f'SELECT {quoted}, epoch_ms("when") FROM "analytics"."orders"')
    values = dict(zip([*columns, "when_ms"], row, strict=True))
    assert values["when_ms"] == 1700000000123
    assert {k: v for k, v in values.items() if k not in ("when", "iso", "when_ms")} == {
        "n": 5,
        "big": 5000000000,
        "price": Decimal("12.50"),
        "ratio": 0.25,
        "ok": True,
        "ref": "65920080aaaaaaaaaaaaaaaa",
        "name": "x",
        "customer_address_city": "Lyon",
        "empty": None,
        "nothing": None,
        "absent": None,
    }
    assert values["iso"].isoformat() == "2024-03-01T12:00:00"


def test_a_value_that_does_not_fit_the_declared_type_fails_the_load_and_commits_nothing(
    pipeline,
):
    pipeline.change((A, "insert", 1, doc(name="x")))
    with pytest.raises(duckdb.ConversionException, match="x"):
        load_changes(pipeline.request(projection={"name": "INTEGER"}))
    assert pipeline.control_row() is None
    assert "name" not in {row[0] for row in pipeline.sql('DESCRIBE "analytics"."orders"')}
    result = load_changes(pipeline.request(projection={"name": "VARCHAR(8)"}))
    assert result.full_reload and result.reconciliation.matches
    assert pipeline.sql('SELECT "name" FROM "analytics"."orders"') == [("x",)]


def test_projection_gains_columns_by_full_reload_and_never_drops_one(pipeline):
    pipeline.change(
        (A, "insert", 1, json.dumps({"status": "paid", "total": {"$numberDecimal": "10.00"}})),
        (B, "insert", 1, json.dumps({"status": "new", "total": {"$numberDecimal": "2.50"}})),
    )
    load_changes(pipeline.request(projection={"status": "VARCHAR(16)"}))

    widened = load_changes(
        pipeline.request(projection={"status": "VARCHAR(16)", "total": "DECIMAL(18,2)"})
    )
    assert widened.full_reload and widened.columns_added == ["total"]
    assert "projection added column(s) total" in widened.reason
    assert "add_column:total" in widened.statements
    assert pipeline.sql('SELECT _id, status, total FROM "analytics"."orders" ORDER BY 1') == [
        (A, "paid", Decimal("10.00")),
        (B, "new", Decimal("2.50")),
    ]

    pipeline.change((C, "insert", 2, json.dumps({"status": "new", "total": 1})))
    narrowed = load_changes(pipeline.request(projection={"total": "DECIMAL(18,2)"}))
    assert not narrowed.full_reload and narrowed.undeclared_columns == ["status"]
    assert pipeline.sql('SELECT _id, status, total FROM "analytics"."orders" ORDER BY 1') == [
        (A, "paid", Decimal("10.00")),
        (B, "new", Decimal("2.50")),
        (C, None, Decimal("1.00")),  # kept, not dropped; no longer filled
    ]
    assert narrowed.reconciliation.matches


def test_reconciliation_names_the_buckets_and_keys_that_differ(pipeline):
    pipeline.change(*[(key(JAN, n), "insert", 1, doc(v=n)) for n in range(1, 40)])
    load_changes(pipeline.request())
    gone, stale, dup = key(JAN, 1), key(JAN, 2), key(JAN, 3)
    pipeline.sql(f"""DELETE FROM "analytics"."orders" WHERE _id = '{gone}'""")
    pipeline.sql(f"""UPDATE "analytics"."orders" SET _pos = 0 WHERE _id = '{stale}'""")
    pipeline.sql(f"""INSERT INTO "analytics"."orders" SELECT * REPLACE ('{D}' AS _id)
                     FROM "analytics"."orders" WHERE _id = '{dup}'""")
    pipeline.sql(f"""INSERT INTO "analytics"."orders" SELECT * FROM "analytics"."orders"
                     WHERE _id = '{dup}'""")

    check = load_changes(pipeline.request()).reconciliation
    assert not check.matches
    assert (check.warehouse_rows, check.lake_rows, check.duplicate_keys) == (40, 39, 1)
    assert 1 <= check.buckets_differing <= 4 and check.differing_buckets
    assert check.missing_keys == [gone]
    assert check.extra_keys == [D]
    assert check.stale_keys == [stale]
    shown = check.metadata()
    assert shown["differing_buckets"][0].keys() == {
        "bucket",
        "lake_rows",
        "warehouse_rows",
        "lake_hash",
        "warehouse_hash",
    }


def test_sql_buckets_and_hashes_are_md5_as_python_computes_it():
    """What makes the Redshift and DuckDB figures comparable: both are MD5 of the UTF-8 text."""
    keys = [key(JAN, n) for n in range(300)] + ["plain-key", "ключ", '{"$numberLong":"7"}']
    lake = pa.table({"_id": keys, "_pos": list(range(len(keys)))})
    expected: dict[int, tuple[int, int]] = {}
    for pos, k in enumerate(keys):
        rows, total = expected.get(key_bucket(k), (0, 0))
        expected[key_bucket(k)] = (rows + 1, total + version_hash(k, pos))
    assert key_bucket("abc") == int(hashlib.md5(b"abc").hexdigest()[:2], 16)
    assert version_hash("abc", 7) == int(hashlib.md5(b"abc:7").hexdigest()[:8], 16)
    with duckdb.connect() as db:
        db.execute('CREATE SCHEMA "analytics"')
        db.execute('CREATE TABLE "analytics"."orders" AS SELECT * FROM lake')
        target = TargetTable.named(DUCKDB, "analytics", "orders")
        measured = db.execute(reconciliation_query(DUCKDB, target).sql).fetchall()
        first = measured[0][0]
        in_bucket = db.execute(bucket_rows_query(DUCKDB, target, [first]).sql).fetchall()
    assert {b: (rows, int(h)) for b, rows, _, h in measured} == expected
    assert lake_buckets(lake) == expected
    assert sorted(k for k, _ in in_bucket) == sorted(k for k in keys if key_bucket(k) == first)


def test_a_vacuumed_change_feed_falls_back_to_a_full_reload(pipeline, tmp_path):
    pipeline.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    load_changes(pipeline.request())
    pipeline.change((A, "update", 2, doc(v=1)), (C, "insert", 2, doc(v=2)))
    for cdc_file in (tmp_path / "lake" / "tables").rglob("_change_data/**/*.parquet"):
        cdc_file.unlink()  # what VACUUM does once the retention has passed
    result = load_changes(pipeline.request())
    assert result.full_reload and result.reason.startswith("change feed unavailable")
    assert pipeline.warehouse_rows() == pipeline.lake_rows()


def test_a_failure_reading_the_change_feed_fails_the_load_instead_of_reloading_everything(
    pipeline, monkeypatch
):
    pipeline.change((A, "insert", 1, doc(v=0)))
    load_changes(pipeline.request())
    pipeline.change((A, "update", 2, doc(v=1)))

    def unreachable(*args, **kwargs):
        raise OSError("Generic S3 error: error sending request (connection reset)")

    monkeypatch.setattr(DeltaTable, "load_cdf", unreachable)
    with pytest.raises(OSError, match="connection reset"):
        load_changes(pipeline.request())
    monkeypatch.undo()
    assert load_changes(pipeline.request()).reason == "incremental"


def test_a_second_process_waits_for_the_duckdb_file_lock_then_connects(tmp_path):
    """Loads of several collections share one DuckDB file: they take turns instead of failing."""
    import time

    from lambda_functions.warehouse_load.duckdb_warehouse import connect_waiting

    path = tmp_path / "w.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; db = duckdb.connect(sys.argv[1]); "
            "print('held', flush=True); time.sleep(1.5); db.close()",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(duckdb.IOException, match="lock"):
            connect_waiting(str(path), wait_s=0.2)  # gives up after its wait
        db = connect_waiting(str(path), wait_s=60)
        waited = time.monotonic() - started
        db.execute("CREATE TABLE t AS SELECT 1 AS x")
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
        db.close()
    finally:
        holder.wait(timeout=30)
    assert waited > 0.2  # it did have to wait for the holder


def fail_statement(monkeypatch, failing_step: str) -> None:
    """Make the DuckDB warehouse lose its connection at the statement labelled ``failing_step``
    (``monkeypatch.undo()`` restores it)."""
    real_execute = DuckDBWarehouse._execute

    def failing(self, statement):
        if statement.label == failing_step:
            raise ConnectionError(f"connection lost at {failing_step}")
        return real_execute(self, statement)

    monkeypatch.setattr(DuckDBWarehouse, "_execute", failing)
