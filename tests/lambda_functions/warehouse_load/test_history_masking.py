"""History tables after a PII masking rules change (README "PII masking", "History tables"):
the merge records the masking generation's position in the lake (a Delta app transaction) and
the load NULLs ``doc`` and every projected column of the history versions captured below it, in
the load's transaction, once; other markers (``reset``, a drop) keep history as it was."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import sqlglot
from deltalake import DeltaTable
from sqlglot import exp

from lambda_functions.lake.lake_table import MaskingGeneration, masking_generation
from lambda_functions.merge import merge_batches
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_sql import (
    REDSHIFT,
    PurgeBelow,
    TargetTable,
    history_target,
    history_value_columns,
    parse_projection,
    unpurged_history_query,
)
from lambda_functions.warehouse_sql.history import purge_history
from tests.lambda_functions.raw_batches import publish
from tests.lambda_functions.warehouse_load.test_history_table import (
    A,
    B,
    Pipeline,
    assert_chains_are_scd2,
    at,
    doc,
)

CLEAR = "bob@example.com"
HASHED = "hmac-sha256:" + "0" * 64
PROJECTION = {"v": "INTEGER", "email": "VARCHAR(256)"}


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path)


def new_generation(pipeline: Pipeline, reason: str, position: int) -> None:
    """What capture's ``_resnapshot`` publishes: a ``dropped`` marker with the snapshot's start
    position, then the snapshot (at that position) under the new rules, merged."""
    zone = pipeline.zone
    zone.write_batch(
        [],
        after=zone.read_checkpoint(),
        state={},
        extra={"dropped": True, "reset": True, "reason": reason, "generation_pos": position},
    )
    publish(
        zone,
        [
            (A, "snapshot", position, doc(v=2, email=HASHED)),
            (B, "snapshot", position, doc(v=20, email=HASHED)),
        ],
        event_time=at(10),
    )
    merge_batches(pipeline.merge)


def history_emails(pipeline: Pipeline) -> list[tuple]:
    return pipeline.sql(
        'SELECT "_id", "_op", "_pos", "email", "doc"::VARCHAR FROM "analytics"."orders_history" '
        'ORDER BY "_id", "_lake_version", "_pos"'
    )


def lake_table(pipeline: Pipeline) -> DeltaTable:
    return DeltaTable(f"{pipeline.lake}/tables/shop/orders")


def test_a_masking_generation_nulls_old_versions_once_and_keeps_the_chain(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1, email=CLEAR)), (B, "insert", 1, doc(v=10)))
    pipeline.change(2, (A, "update", 2, doc(v=1, email="old@example.com")))
    load_changes(pipeline.request(projection=PROJECTION))
    pipeline.change(4, (A, "update", 3, doc(v=1, email=CLEAR)))  # loaded with the marker

    new_generation(pipeline, "masking_rules_changed", 5)
    generation = masking_generation(lake_table(pipeline), "shop.orders")
    assert generation == MaskingGeneration(5, lake_table(pipeline).version() - 1)
    # "email" is no longer projected: the history column keeps old values until purged
    result = load_changes(pipeline.request())

    assert "purge_history" in result.statements
    assert result.history_rows_purged == 3  # A's updates at 2 and 3, B's insert (deletes: none)
    assert result.statements.index("purge_history") > result.statements.index("insert_history")
    rows = history_emails(pipeline)
    assert not [row for row in rows if CLEAR in repr(row) or "old@example.com" in repr(row)]
    assert [row[:3] for row in rows if row[0] == A] == [
        (A, "update", 2),  # the first load is a full one: the latest version per key
        (A, "update", 3),
        (A, "delete", 3),  # the marker's commit removed the old row
        (A, "snapshot", 5),
    ]
    assert all(row[3] is None and row[4] is None for row in rows if row[2] < 5)
    assert [row[4] for row in rows if row[2] == 5] == [doc(v=v, email=HASHED) for v in (2, 20)]
    assert_chains_are_scd2(pipeline.history(), live={A, B})
    assert holds_no_clear_value(pipeline)

    before = pipeline.sql('SELECT * FROM "analytics"."orders_history" ORDER BY 1, 4, 3')
    rerun = load_changes(pipeline.request())  # nothing new, nothing left to purge
    full = load_changes(pipeline.request(force_full_reload=True))
    assert "purge_history" not in rerun.statements + full.statements
    after = pipeline.sql('SELECT * FROM "analytics"."orders_history" ORDER BY 1, 4, 3')
    assert before == after


def holds_no_clear_value(pipeline: Pipeline) -> bool:
    """No clear value in the current table or in any history row, column by column."""
    everything = pipeline.sql('SELECT * FROM "analytics"."orders"') + pipeline.sql(
        'SELECT * FROM "analytics"."orders_history"'
    )
    return not [row for row in everything if CLEAR in repr(row)]


def test_a_masking_generation_merged_before_the_first_history_load_stores_no_clear_value(
    pipeline,
):
    pipeline.change(0, (A, "insert", 1, doc(v=1, email=CLEAR)))
    new_generation(pipeline, "masking_rules_changed", 5)

    load_changes(pipeline.request(projection=PROJECTION))

    assert holds_no_clear_value(pipeline)


def test_a_reset_keeps_the_history_values(pipeline):
    pipeline.change(0, (A, "insert", 1, doc(v=1, email=CLEAR)))
    load_changes(pipeline.request(projection=PROJECTION))

    new_generation(pipeline, "reset", 5)
    result = load_changes(pipeline.request(projection=PROJECTION))

    assert masking_generation(lake_table(pipeline), "shop.orders") is None
    assert "purge_history" not in result.statements
    assert (A, "insert", 1, CLEAR, doc(v=1, email=CLEAR)) in history_emails(pipeline)


def test_capture_s_own_rules_change_leaves_no_clear_value_in_history(tmp_path):
    """End to end through the embedded change stream: capture's marker (``generation_pos``),
    the merge, a history load: the phone captured before the rules dropped it is gone."""
    from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
    from lambda_functions.cdc_capture import capture_changes
    from lambda_functions.contracts import CaptureRequest, LoadRequest, MergeRequest

    lake, source_file = str(tmp_path / "lake"), tmp_path / "source.db"
    capture = CaptureRequest(
        lake_uri=lake, database="shop", collection="customers", source_location=str(source_file)
    )
    merge = MergeRequest(lake_uri=lake, database="shop", collection="customers")
    load = LoadRequest(
        lake_uri=lake,
        database="shop",
        collection="customers",
        warehouse_location=str(tmp_path / "wh.duckdb"),
        history=True,
        projection={"phone": "VARCHAR(64)"},
    )
    with EmbeddedChangeStreamSource(source_file) as source:
        source.enable_change_streams("shop", "customers")
        source.insert_one("shop", "customers", {"_id": 1, "phone": CLEAR})
        capture_changes(capture, source=source)
        source.update_one("shop", "customers", {"_id": 1}, {"$set": {"n": 2}})
        capture_changes(capture, source=source)
        merge_batches(merge)
        load_changes(load)
        stricter = CaptureRequest(**{**capture.__dict__, "masking": {"drop": ["phone"]}})
        assert capture_changes(stricter, source=source).resnapshot_reason == (
            "masking_rules_changed"
        )
    merge_batches(merge)
    load_changes(load)

    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as db:
        rows = db.execute('SELECT * FROM "analytics"."customers_history"').fetchall()
        current = db.execute('SELECT * FROM "analytics"."customers"').fetchall()
    assert len(rows) >= 2 and len(current) == 1
    assert not [row for row in rows + current if CLEAR in repr(row)]


@pytest.mark.xfail(
    strict=True,
    reason="history keeps one row per (_id, _pos, _op): a re-snapshot (masking change or reset) "
    "at the position of the previous snapshot (no write in between) is taken as already kept, so "
    "the chain ends with the marker's delete while the document is live; needs the dedup to "
    "tell generations apart (e.g. a version after a later delete of the same key is new)",
)
def test_a_resnapshot_at_the_previous_snapshot_s_position_keeps_the_document_current(pipeline):
    pipeline.change(0, (A, "snapshot", 1, doc(v=1, email=CLEAR)))
    load_changes(pipeline.request(projection=PROJECTION))
    new_generation(pipeline, "masking_rules_changed", 1)  # nothing written since: same position

    load_changes(pipeline.request(projection=PROJECTION))

    assert pipeline.history()[A][-1][4] is True  # the open row is the current one


def test_the_purge_is_one_redshift_update_of_doc_and_every_projected_column():
    history = history_target(REDSHIFT, TargetTable.named(REDSHIFT, "analytics", "orders"))
    columns = history_value_columns(
        ["_id", "DOC", "_op", "_pos", "valid_from", "valid_to", "is_current", "old_field"],
        parse_projection(PROJECTION),
    )
    assert columns == ["doc", "email", "old_field", "v"]

    below = PurgeBelow(5 << 32, 7)
    purge = purge_history(history, below=below, columns=columns)
    (update,) = sqlglot.parse(purge.sql, read="redshift")
    assert isinstance(update, exp.Update) and not update.find(exp.From)
    assert {e.this.name for e in update.expressions} == set(columns)
    assert all(isinstance(e.expression, exp.Null) for e in update.expressions)
    h = '"analytics"."orders_history"'
    assert (
        f'WHERE ({h}."_pos" < {5 << 32} OR ({h}."_pos" = {5 << 32} AND {h}."_lake_version" < 7)) '
        f'AND ({h}."doc" IS NOT NULL OR {h}."email" IS NOT NULL' in purge.sql
    )
    query = unpurged_history_query(history, below=below, columns=columns)
    (select,) = sqlglot.parse(query.sql, read="redshift")
    assert isinstance(select, exp.Select) and select.args["limit"]
