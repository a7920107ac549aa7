"""Upgrade a lake table written with an older record key format, once.

Tables written before ``lake/record_key.py`` (format 1) keyed a string ``_id`` as the string
itself and other non-ObjectId types as ``json_util`` canonical JSON: ``ObjectId(h)`` and the string
``h`` shared one key, and ``1``/``NumberLong(1)``/``1.0`` were three keys. A table records its
format as the Delta app transaction ``RECORD_KEY_APP``; a table without it is format 1.

``upgrade_record_keys`` re-keys such a table in one atomic overwrite commit: each row's key is
recomputed from its document's ``_id`` (rows without a document keep their key read as format 1),
its partition ``_bucket`` follows, and rows that format 1 kept apart but MongoDB's equality joins
(``1`` and ``1.0``) become one, the latest change kept (``precombine``). The commit records
``RECORD_KEY_APP`` = ``RECORD_KEY_FORMAT`` and ``REKEYED_AT_APP`` = its own version (so the warehouse
load reads the table in full once) and keeps every other app transaction (applied batches).

What cannot be undone: documents format 1 had already merged into one row (an ObjectId and the
string of its hex digits) stay one row, the latest. The fix is a new snapshot of the collection
(capture ``reset``), which the commit metadata and the log say.

Cost: the whole table is read and rewritten once (memory: the table's rows), at the first merge
after the upgrade; re-running after a crash starts again from the table as it is (idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from lambda_functions.lake.record_key import (
    RECORD_KEY_APP,
    RECORD_KEY_FORMAT,
    REKEYED_AT_APP,
    InvalidRecordKeyError,
    document_record_key,
    record_key,
    v1_key_value,
)
from lambda_functions.lake.table_layout import (
    PARTITION_BY,
    WRITER_PROPERTIES,
    key_buckets,
    precombine,
)

__all__ = [
    "RekeyResult",
    "record_key_format",
    "record_key_transactions",
    "upgrade_batch_keys",
    "upgrade_record_keys",
]


def record_key_format(table: DeltaTable) -> int:
    """The record key format ``table`` is written in (1 when the table does not record one)."""
    return table.transaction_version(RECORD_KEY_APP) or 1


def record_key_transactions() -> list[Transaction]:
    """App transactions a commit that creates a table adds: the key format it writes."""
    return [Transaction(RECORD_KEY_APP, RECORD_KEY_FORMAT)]


@dataclass(frozen=True)
class RekeyResult:
    """What ``upgrade_record_keys`` changed."""

    rows: int  # rows in the table before
    rekeyed: int  # rows whose key text changed
    joined: int  # rows folded into another row with an equal _id
    version: int  # table version after the upgrade commit

    def describe(self, namespace: str) -> str:
        return (
            f"{namespace}: record keys upgraded to format {RECORD_KEY_FORMAT} at version "
            f"{self.version}: {self.rekeyed} of {self.rows} keys re-encoded, {self.joined} rows "
            "joined with an equal _id (MongoDB compares numbers by value). Documents the old "
            "format had merged (an ObjectId and the string of its hex digits) cannot be split: "
            "if the collection has such _ids, re-snapshot it (capture reset)"
        )


def upgrade_record_keys(
    table: DeltaTable, namespace: str, say: Callable[[str], None]
) -> RekeyResult | None:
    """Re-key ``table`` to ``RECORD_KEY_FORMAT`` if it is older (see the module docstring).

    Args:
        table: the lake table as of its latest version; updated in place to the new version.
        namespace: ``database.collection``, for messages.
        say: progress callback (a log line).

    Returns:
        What changed, or ``None`` when the table is already current.

    Raises:
        deltalake.exceptions.CommitFailedError: another writer committed first; nothing changed
            (the merge retries after reloading).
    """
    if record_key_format(table) >= RECORD_KEY_FORMAT:
        return None
    schema = pa.schema(table.schema().to_arrow())
    rows = table.to_pyarrow_table()
    rows = rows.cast(pa.schema([schema.field(name) for name in rows.column_names]))
    old_keys = rows.column("_id").to_pylist()
    documents = rows.column("doc").to_pylist()
    new_keys = [_new_key(key, doc) for key, doc in zip(old_keys, documents, strict=True)]
    rekeyed = sum(1 for old, new in zip(old_keys, new_keys, strict=True) if old != new)
    rows = rows.set_column(rows.column_names.index("_id"), "_id", pa.array(new_keys, pa.string()))
    rows = rows.set_column(
        rows.column_names.index("_bucket"), "_bucket", key_buckets(rows.column("_id"))
    )
    latest = precombine(rows)
    version = table.version() + 1
    write_deltalake(
        table,
        latest.select(schema.names).cast(schema),
        mode="overwrite",
        partition_by=PARTITION_BY,
        writer_properties=WRITER_PROPERTIES,
        commit_properties=CommitProperties(
            app_transactions=[
                *record_key_transactions(),
                Transaction(REKEYED_AT_APP, version),
            ],
            max_commit_retries=0,  # against the version read, or fail (see merge.py)
            custom_metadata={
                "lakehouse.namespace": namespace,
                "lakehouse.merge_path": "rekey",
                "lakehouse.record_key_format": str(RECORD_KEY_FORMAT),
            },
        ),
    )
    table.update_incremental()
    result = RekeyResult(rows.num_rows, rekeyed, rows.num_rows - latest.num_rows, table.version())
    say(result.describe(namespace))
    return result


def upgrade_batch_keys(batch: pa.Table, key_format: int) -> pa.Table:
    """A raw batch's rows with ``_id`` in ``RECORD_KEY_FORMAT`` (batches captured before the
    format existed carry format-1 keys; see the module docstring)."""
    if key_format >= RECORD_KEY_FORMAT or batch.num_rows == 0:
        return batch
    keys = [
        _new_key(key, doc)
        for key, doc in zip(
            batch.column("_id").to_pylist(), batch.column("doc").to_pylist(), strict=True
        )
    ]
    return batch.set_column(batch.column_names.index("_id"), "_id", pa.array(keys, pa.string()))


def _new_key(old: str, document: str | None) -> str:
    if document is not None:
        try:
            return document_record_key(document)
        except InvalidRecordKeyError:
            pass
    return record_key(v1_key_value(old))
