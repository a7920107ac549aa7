"""The partial-update case of ``benchmarks/merge.py``: the same change batch with a share of its
updates delivered as ``updateDescription`` deltas (no document), as a change stream opened without
``fullDocument: "updateLookup"`` delivers them (``LAKEHOUSE_UPDATE_LOOKUP=false``).

A delta sets the fields an order update changes (``status``, ``note``, ``rev``: MongoDB Manual,
"Change Events" > "update Event", ``updatedFields``), so the merge must read the stored document
of each such key (from the table, or the batch's own insert) and apply it. Its result is checked
against the DuckDB baseline on every column but ``doc`` (keys, ops, positions agree), and each
delta's document for the fields the delta set and the fields it kept.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lambda_functions.lake.extended_json import decode_document, encode_document
from lambda_functions.lake.raw_zone import UPDATE_DESCRIPTION_COLUMN

PARTIAL_SHARE = 0.5  # of the batch's updates, delivered as deltas
DELTA_FIELDS = ("status", "note", "rev")


def as_partial_updates(batch: pa.Table, seed: int) -> tuple[pa.Table, dict[str, dict[str, object]]]:
    """``batch`` with ``PARTIAL_SHARE`` of its updates turned into partial updates (``doc``
    null, ``UPDATE_DESCRIPTION_COLUMN`` set), and the fields each delta sets, by key."""
    ops = batch.column("op").to_pylist()
    updates = [i for i, op in enumerate(ops) if op == "update"]
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(updates, round(len(updates) * PARTIAL_SHARE), replace=False).tolist())
    docs = batch.column("doc").to_pylist()
    ids = batch.column("_id").to_pylist()
    descriptions: list[str | None] = [None] * len(ops)
    expected: dict[str, dict[str, object]] = {}
    for i in sorted(chosen):
        full = json.loads(docs[i])
        fields = {name: full[name] for name in DELTA_FIELDS}
        descriptions[i] = encode_document(
            {"updatedFields": fields, "removedFields": [], "truncatedArrays": []}
        )
        docs[i] = None
        expected[ids[i]] = fields
    partial = batch.set_column(
        batch.schema.get_field_index("doc"), batch.schema.field("doc"), pa.array(docs, pa.string())
    )
    return (
        partial.append_column(
            pa.field(UPDATE_DESCRIPTION_COLUMN, pa.string()), pa.array(descriptions, pa.string())
        ),
        expected,
    )


def check_partial_documents(uri: str, expected: dict[str, dict[str, object]]) -> str | None:
    """None if every delta's document in the table at ``uri`` holds the fields it set (and the
    stored ones it did not touch: ``customer``, ``items``), else what is wrong."""
    table = DeltaTable(uri).to_pyarrow_table(columns=["_id", "doc", "_op"])
    table = table.filter(pc.is_in(table.column("_id"), value_set=pa.array(list(expected))))
    found = {r["_id"]: r for r in table.to_pylist()}
    if len(found) != len(expected):
        return f"{len(expected) - len(found)} documents updated by a delta are missing"
    for key, fields in expected.items():
        row = found[key]
        document = decode_document(row["doc"]) if row["doc"] else None
        if (
            row["_op"] != "update"
            or document is None
            or any(document.get(name) != value for name, value in fields.items())
            or not {"customer", "items", "total"} <= document.keys()
        ):
            return f"{key}: delta not applied as expected (op {row['_op']!r}, doc {row['doc']!r})"
    return None
