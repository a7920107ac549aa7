"""Documents the warehouse cannot hold are set aside, counted and named, never loaded half.

A warehouse has hard limits on one value (``Dialect.max_document_bytes``, ``max_string_bytes``,
``max_key_bytes``: Redshift's SUPER, VARBYTE and VARCHAR limits; DuckDB has none that a
DocumentDB document can reach). A document over them would fail the COPY or ``JSON_PARSE`` and
with it the whole load, on every retry. Instead its staged row keeps its key and position, loses
its document, and says why (``_set_aside``); the load transaction deletes any older version of it
from the table and records it in ``_lakehouse_set_aside``, so reconciliation counts it as
accounted for and the asset check reports it until the document shrinks (its next change loads
normally and removes the record).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lambda_functions.warehouse_sql import Dialect

# A key over the warehouse's key limit cannot be staged either (Redshift's COPY refuses a value
# longer than the stage's VARCHAR(65535) and fails the whole load): its row carries this stand-in
# instead. Record key texts are 24 hex digits or JSON (``lake.record_key``): never '#...'.
STAND_IN_PREFIX = "#sha256:"


def warehouse_key(key: str, dialect: Dialect) -> str:
    """``key`` as the warehouse stores it: itself, or a stand-in when over ``max_key_bytes``
    (only set-aside rows have one; reconciliation maps lake keys the same way)."""
    data = key.encode("utf-8", "surrogatepass")
    if dialect.max_key_bytes and len(data) > dialect.max_key_bytes:
        return STAND_IN_PREFIX + hashlib.sha256(data).hexdigest()
    return key


def mark_set_aside(rows: pa.Table, dialect: Dialect) -> pa.Table:
    """``rows`` (``lake_changes.STAGE_SCHEMA``) with ``_set_aside`` (the reason, or null) and
    ``_doc_bytes`` appended, and ``doc`` emptied where a limit of ``dialect`` is exceeded (and
    ``_id`` replaced by ``warehouse_key``'s stand-in where the key itself is over the limit)."""
    doc = rows.column("doc")
    sizes = pc.binary_length(doc)
    reasons: list[str | None] = [None] * rows.num_rows
    stand_ins: dict[int, str] = {}
    limit = dialect.max_document_bytes
    strings = dialect.max_string_bytes
    keys = dialect.max_key_bytes
    if limit or strings or keys:
        # Only rows past the smallest limit are looked at in Python (a document no longer than
        # ``max_string_bytes`` cannot hold a longer string).
        floor = min(x for x in (limit, strings, keys) if x)
        key_sizes = pc.binary_length(rows.column("_id"))
        suspect = pc.or_(pc.greater(pc.fill_null(sizes, 0), floor), pc.greater(key_sizes, floor))
        for index in pc.indices_nonzero(suspect).to_pylist():
            key = rows.column("_id")[index].as_py()
            reasons[index] = _reason(key, doc[index].as_py(), dialect)
            if warehouse_key(key, dialect) != key:
                stand_ins[index] = warehouse_key(key, dialect)
    if stand_ins:
        keys = rows.column("_id").to_pylist()
        for index, stand_in in stand_ins.items():
            keys[index] = stand_in
        rows = rows.set_column(
            rows.schema.get_field_index("_id"),
            rows.schema.field("_id"),
            pa.array(keys, pa.string()),
        )
    marked = pa.array(reasons, pa.string())
    kept = pc.if_else(pc.is_null(marked), doc, pa.scalar(None, doc.type))
    return pa.table(
        {
            **{name: rows.column(name) for name in rows.column_names if name != "doc"},
            "doc": kept,
            "_set_aside": marked,
            "_doc_bytes": pc.cast(sizes, pa.int64()),
        }
    ).select([*rows.column_names, "_set_aside", "_doc_bytes"])


def _reason(key: str, doc: str | None, dialect: Dialect) -> str | None:
    if dialect.max_key_bytes and len(key.encode()) > dialect.max_key_bytes:
        return f"record key over {dialect.max_key_bytes} bytes ({dialect.name} limit)"
    if doc is None:
        return None
    size = len(doc.encode())
    if dialect.max_document_bytes and size > dialect.max_document_bytes:
        return (
            f"document of {size} bytes over {dialect.max_document_bytes} bytes "
            f"({dialect.name} limit)"
        )
    if dialect.max_string_bytes and size > dialect.max_string_bytes:
        longest = max((len(s.encode()) for s in _strings(json.loads(doc))), default=0)
        if longest > dialect.max_string_bytes:
            return (
                f"string value of {longest} bytes over {dialect.max_string_bytes} bytes "
                f"({dialect.name} limit)"
            )
    return None


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, field names included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            yield from item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
