"""Typed top-level columns published by capture: added when new, never a reason to fail."""

from __future__ import annotations

import json
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


# Delta requires column names unique regardless of case (delta-rs: "Duplicate field name
# (case-insensitive)"), so a second spelling of a column is ignored, never a failed merge.
CASE_PAIRS = {
    "in_one_batch": [
        [pa.field("total", pa.int64()), pa.field("Total", pa.int64())],
    ],
    "table_then_batch": [
        [pa.field("total", pa.int64())],
        [pa.field("Total", pa.int64())],
    ],
    "core_column": [
        [pa.field("DOC", pa.string()), pa.field("_ID", pa.string())],
    ],
}


@pytest.mark.parametrize("case", sorted(CASE_PAIRS))
def test_columns_differing_only_in_case_are_one_delta_column(lake, case):
    zone, request = lake
    a = key(JAN, 1)
    for pos, fields in enumerate(CASE_PAIRS[case], start=1):
        row = {"_id": a, "op": "insert" if pos == 1 else "update", "pos": pos}
        row["doc"] = json.dumps({f.name: pos for f in fields})
        row.update({f.name: (pos if pa.types.is_integer(f.type) else "x") for f in fields})
        publish_typed(zone, [row, {**row, "_id": key(JAN, 9 + pos)}], pa.schema(fields))
        result = merge_batches(request)
        assert result.batches_applied == [pos]
    names = DeltaTable(result.table_uri).schema().to_arrow().names
    folded = [n.lower() for n in names]
    assert len(folded) == len(set(folded)), names
    docs = stored_docs(result.table_uri)
    assert json.loads(docs[a]) == json.loads(row["doc"])  # every spelling kept in doc
    if case == "core_column":
        assert "DOC" not in names and "_ID" not in names
        assert column_values(result.table_uri, "_id")[a] == a
    else:
        assert "Total" not in names
        assert column_values(result.table_uri, "total")[a] == (
            1 if case == "in_one_batch" else None
        )


def test_a_case_variant_is_reported_with_the_column_it_collides_with(lake):
    zone, request = lake
    fields = [pa.field("total", pa.int64()), pa.field("Total", pa.int64())]
    publish_typed(
        zone,
        [{"_id": key(JAN, 1), "op": "insert", "pos": 1, "doc": "{}", "total": 1, "Total": 2}],
        pa.schema(fields),
    )
    notes = merge_batches(request).schema_changes
    assert any("'Total' differs only in case from the column 'total'" in n for n in notes), notes


@pytest.mark.parametrize("name", ["order-id", "first name", "1st", "a.b", "x`y", "select"])
def test_a_column_with_any_delta_name_merges_on_keys_in_an_existing_partition(lake, name):
    """A batch adding the column updates a key stored in an existing partition (delta-rs MERGE,
    the path that evolves the schema), then a later batch takes the Arrow rewrite."""
    zone, request = lake
    a, b = key(JAN, 1), key(JAN, 2)
    publish_typed(zone, [{"_id": a, "op": "insert", "pos": 1, "doc": "{}"}], pa.schema([]))
    merge_batches(request)
    column = pa.schema([pa.field(name, pa.int64())])
    publish_typed(
        zone,
        [
            {"_id": a, "op": "update", "pos": 2, "doc": "{}", name: 7},
            {"_id": b, "op": "insert", "pos": 2, "doc": "{}", name: 8},
        ],
        column,
    )
    result = merge_batches(request)
    assert (result.merge_path, result.batches_applied) == ("merge", [2])
    assert column_values(result.table_uri, name) == {a: 7, b: 8}
    publish_typed(zone, [{"_id": a, "op": "update", "pos": 3, "doc": "{}", name: 9}], column)
    result = merge_batches(request)
    assert result.batches_applied == [3]
    assert column_values(result.table_uri, name) == {a: 9, b: 8}
