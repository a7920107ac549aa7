"""Where a collection's lake table lives, how to open it, and how its merges are recorded.

Shared by every stage that reads the lake table (merge, warehouse load, source audit): the
table's key in the lake's object store, its delta-rs location, the Delta app transaction id
under which the merge records its last applied batch, and the error when there is no table yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lambda_functions.errors import TerminalError
from lambda_functions.lake.store import ObjectStore

__all__ = [
    "MASKING_RULES_CHANGED",
    "LakeTableMissingError",
    "TableLocation",
    "app_id",
    "lake_table_key",
    "lake_table_location",
    "masking_generation",
    "masking_generation_app_id",
    "open_table",
]

# The ``reason`` of a new-generation marker published because the collection's masking rules
# changed (capture ``_resnapshot``, DMS ingest): what was captured before it holds values the
# new rules would have masked.
MASKING_RULES_CHANGED = "masking_rules_changed"


class LakeTableMissingError(TerminalError, RuntimeError):
    """There is no lake table yet (the merge stage has not run for this collection)."""


def lake_table_key(database: str, collection: str) -> str:
    """Where the collection's lake table lives in the lake's object store.

    Returns:
        The key prefix ``tables/<database>/<collection>``: the Delta table's root (its
        ``_delta_log/`` and data files are below it).
    """
    return f"tables/{database}/{collection}"


def lake_table_location(store: ObjectStore, database: str, collection: str) -> tuple[str, dict]:
    """The collection's lake table as delta-rs addresses it.

    Args:
        store: the lake's object store (a directory or an S3 bucket prefix).
        database: the source database name.
        collection: the source collection name.

    Returns:
        ``(table_uri, storage_options)``: a local path or ``s3://bucket/prefix/tables/<db>/<coll>``,
        and the delta-rs storage options for it (``ObjectStore.delta_location``). The table
        need not exist.
    """
    return store.delta_location(lake_table_key(database, collection))


@dataclass(frozen=True)
class TableLocation:
    """Where a collection's lake table is: its key in the lake's object store (for reading its
    log and files directly) and its URI and storage options (for delta-rs)."""

    store: ObjectStore
    key: str
    uri: str
    options: dict

    @classmethod
    def of(cls, store: ObjectStore, database: str, collection: str) -> TableLocation:
        key = lake_table_key(database, collection)
        return cls(store, key, *store.delta_location(key))


def app_id(namespace: str) -> str:
    """The Delta app transaction id (``txn`` action, Delta protocol "Transaction Identifiers")
    whose version is the last raw batch the merge applied to the ``database.collection``
    ``namespace``'s table."""
    return f"lakehouse-merge:{namespace}"


def masking_generation_app_id(namespace: str) -> str:
    """The Delta app transaction id (``txn`` action, Delta protocol "Transaction Identifiers")
    whose version is the position of the ``namespace``'s latest masking generation: the merge
    records it, in the same commit, when it applies a marker whose reason is
    ``MASKING_RULES_CHANGED``; the warehouse load purges history versions below it."""
    return f"lakehouse-masking-generation:{namespace}"


def masking_generation(table: DeltaTable | None, namespace: str) -> int:
    """The stream position (``_pos``) from which every change of ``namespace`` was captured
    under the current masking rules.

    Args:
        table: the collection's lake table (None: no table yet).
        namespace: ``database.collection``.

    Returns:
        The position recorded under ``masking_generation_app_id`` (a MongoDB ``clusterTime`` as
        the lake's ``_pos`` encodes it); 0 when the rules never changed (or no table yet).
        Only grows: a later rules change records a later position.
    """
    if table is None:
        return 0
    return table.transaction_version(masking_generation_app_id(namespace)) or 0


def open_table(uri: str, options: dict) -> DeltaTable | None:
    """The Delta table at ``uri`` as of its latest version, or None if there is none yet.

    Args:
        uri: the table's location (``lake_table_location``).
        options: delta-rs storage options for it.

    Returns:
        The ``deltalake.DeltaTable`` at its latest version; None when no Delta log is there.
    """
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
