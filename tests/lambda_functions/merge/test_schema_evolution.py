"""Typed top-level columns published by capture: added when new, never a reason to fail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lambda_functions.lake import RawZone
from lambda_functions.lake.raw_zone import BATCH_SCHEMA
from lambda_functions.merge import merge_batches
from tests.lambda_functions.merge.tables import stored_docs
from tests.lambda_functions.raw_batches import JAN, JUN, key


def publish_typed(zone: RawZone, rows: list[dict[str, Any]], typed: pa.Schema) -> int:
    """Publish one batch whose rows carry the typed columns of ``typed`` after the core ones."""
    now = datetime.now(UTC)
    columns = {
        "_id": [r["_id"] for r in rows],
        "op": [r["op"] for r in rows],
        "pos": [r["pos"] for r in rows],
        "seq": list(range(len(rows))),
        "event_time": [now] * len(rows),
        "doc": [r.get("doc") for r in rows],
    }
    schema = pa.schema(list(BATCH_SCHEMA) + list(typed))
    for f in typed:
        columns[f.name] = [r.get(f.name) for r in rows]
    table = pa.table(columns, schema=schema)
    return zone.write_batch([table], after=zone.read_checkpoint(), state={}).batch


def column_values(table_uri: str, name: str) -> dict[str, Any]:
    rows = DeltaTable(table_uri).to_pyarrow_table(columns=["_id", name]).to_pylist()
    return {r["_id"]: r[name] for r in rows}


TOTAL_INT = pa.schema([pa.field("total", pa.int64())])
TOTAL_STRING = pa.schema([pa.field("total", pa.string())])


@pytest.mark.parametrize("path", ["merge", "append", "create"])
def test_new_typed_column_is_added_to_the_table(lake, path):
    zone, request = lake
    a, b = key(JAN, 1), key(JAN, 2)
    if path != "create":
        publish_typed(zone, [{"_id": a, "op": "insert", "pos": 1, "doc": "{}"}], pa.schema([]))
        merge_batches(request)
    new_key = key(JUN, 2) if path == "append" else b
    publish_typed(
        zone,
        [{"_id": new_key, "op": "insert", "pos": 2, "doc": '{"total":7}', "total": 7}],
        TOTAL_INT,
    )
    result = merge_batches(request)
    assert result.merge_path == path
    assert any("added column 'total' (int64)" in note for note in result.schema_changes)
    values = column_values(result.table_uri, "total")
    assert values[new_key] == 7
    assert values.get(a) is None  # rows written before the column existed read as null
    assert pa.schema(DeltaTable(result.table_uri).schema().to_arrow()).field("total").type == (
        pa.int64()
    )


def test_typed_column_survives_rewrites_of_files_written_before_it(lake):
    """A batch adding a column goes through delta-rs MERGE (which evolves the schema); later
    batches take the Arrow rewrite, which reads older files without the column as null."""
    zone, request = lake
    a, b = key(JAN, 1), key(JAN, 3)
    publish_typed(zone, [{"_id": a, "op": "insert", "pos": 1, "doc": "{}"}], pa.schema([]))
    merge_batches(request)
    publish_typed(zone, [{"_id": b, "op": "insert", "pos": 2, "total": 3}], TOTAL_INT)
    assert merge_batches(request).merge_path == "merge"
    publish_typed(zone, [{"_id": key(JAN, 2), "op": "insert", "pos": 3, "total": 5}], TOTAL_INT)
    result = merge_batches(request)
    assert result.merge_path == "rewrite"
    assert column_values(result.table_uri, "total") == {a: None, key(JAN, 2): 5, b: 3}


def test_type_change_is_reported_and_the_document_keeps_the_value(lake):
    zone, request = lake
    a = key(JAN, 1)
    publish_typed(
        zone, [{"_id": a, "op": "insert", "pos": 1, "doc": '{"total":7}', "total": 7}], TOTAL_INT
    )
    merge_batches(request)
    publish_typed(
        zone,
        [{"_id": a, "op": "update", "pos": 2, "doc": '{"total":"7.50"}', "total": "7.50"}],
        TOTAL_STRING,
    )
    result = merge_batches(request)
    assert result.batches_applied == [2]
    (note,) = result.schema_changes
    assert "'total' holds string values that do not fit its type int64" in note
    assert "stored as null" in note
    assert column_values(result.table_uri, "total") == {a: None}
    assert stored_docs(result.table_uri) == {a: '{"total":"7.50"}'}


def test_typed_column_missing_from_a_batch_is_cleared_by_the_update(lake):
    zone, request = lake
    a = key(JAN, 1)
    publish_typed(
        zone, [{"_id": a, "op": "insert", "pos": 1, "doc": '{"total":7}', "total": 7}], TOTAL_INT
    )
    merge_batches(request)
    publish_typed(zone, [{"_id": a, "op": "replace", "pos": 2, "doc": "{}"}], pa.schema([]))
    result = merge_batches(request)
    assert column_values(result.table_uri, "total") == {a: None}
    assert result.schema_changes == []


def test_column_named_like_a_lake_column_is_ignored_and_reported(lake):
    zone, request = lake
    publish_typed(
        zone,
        [{"_id": key(JAN, 1), "op": "insert", "pos": 1, "doc": "{}", "_pos": "not a position"}],
        pa.schema([pa.field("_pos", pa.string())]),
    )
    result = merge_batches(request)
    assert result.batches_applied == [1]
    assert column_values(result.table_uri, "_pos") == {key(JAN, 1): 1}
    (note,) = result.schema_changes
    assert "'_pos' has the name of a lake column; ignored" in note
