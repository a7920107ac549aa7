"""Where a collection's lake table lives, how to open it, and how its merges are recorded.

Shared by every stage that reads the lake table (merge, warehouse load, source audit): the
table's key in the lake's object store, its delta-rs location, the Delta app transaction id
under which the merge records its last applied batch, and the error when there is no table yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltalake import DeltaTable, Transaction
from deltalake.exceptions import TableNotFoundError

from lambda_functions.errors import TerminalError
from lambda_functions.lake.store import ObjectStore

__all__ = [
    "MASKING_RULES_CHANGED",
    "LakeTableMissingError",
    "MaskingGeneration",
    "TableLocation",
    "app_id",
    "lake_table_key",
    "lake_table_location",
    "masking_generation",
    "masking_generation_app_ids",
    "masking_generation_transactions",
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


@dataclass(frozen=True)
class MaskingGeneration:
    """Where the lake table's latest masking generation starts: every change captured before
    the masking rules last changed has a ``_pos`` below ``position``, or equal to it and came
    from a lake version below ``lake_version`` (the marker's commit; a change at the snapshot's
    start position may precede the snapshot).

    Attributes:
        position: the marker's ``drop_pos``, else its ``generation_pos`` (a MongoDB
            ``clusterTime`` as the lake's ``_pos`` encodes it: seconds << 32 | increment).
        lake_version: the Delta version of the commit that applied the marker.
    """

    position: int
    lake_version: int


def masking_generation_app_ids(namespace: str) -> tuple[str, str]:
    """The Delta app transaction ids (``txn`` action, Delta protocol "Transaction Identifiers")
    whose versions are the ``namespace``'s latest ``MaskingGeneration``: its position, and its
    lake version. The merge records both in the commit that applies a marker whose reason is
    ``MASKING_RULES_CHANGED``; the warehouse load purges history versions captured before it."""
    return (
        f"lakehouse-masking-generation:{namespace}",
        f"lakehouse-masking-generation-version:{namespace}",
    )


def masking_generation_transactions(
    namespace: str, generation: MaskingGeneration
) -> list[Transaction]:
    """The app transactions that record ``generation`` (``masking_generation_app_ids``), to
    add to the marker's commit (atomic with it; Delta keeps the latest version per app id)."""
    position_app, version_app = masking_generation_app_ids(namespace)
    return [
        Transaction(position_app, generation.position),
        Transaction(version_app, generation.lake_version),
    ]


def masking_generation(table: DeltaTable | None, namespace: str) -> MaskingGeneration | None:
    """The ``namespace``'s latest masking generation as the lake table records it.

    Args:
        table: the collection's lake table (None: no table yet).
        namespace: ``database.collection``.

    Returns:
        The ``MaskingGeneration`` the merge recorded; None when the masking rules never changed
        for this table (or it was re-created since, or there is no table yet).
    """
    if table is None:
        return None
    position_app, version_app = masking_generation_app_ids(namespace)
    position = table.transaction_version(position_app)
    version = table.transaction_version(version_app)
    if not position or version is None:
        return None
    return MaskingGeneration(position, version)


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
