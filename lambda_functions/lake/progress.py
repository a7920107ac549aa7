"""How far a collection's lake table is behind its raw zone, read without running any stage.

Orchestration (the raw-batch sensor) asks one question per collection and tick: is there a
published batch the lake table has not applied? It needs three cheap reads, all here so it
imports no stage:

- the raw zone's newest batch number (a listing of manifest names);
- the raw zone's *identity*: the first batch's number and creation time. A raw zone that was
  removed and captured anew restarts its numbering at 1, so a batch number alone cannot say
  whether batch 3 is "the" batch 3 already seen; the identity changes with every new raw zone;
- the last batch the lake table applied: the Delta app transaction ``lakehouse-merge:<ns>``
  that every merge commit records (``merge.app_id``), and the table's own id (Delta metadata
  ``id``, new for every table created), or ``None`` for both when there is no table.

Guarantees: read-only (nothing is created, not even an empty folder), one listing plus one small
manifest read per collection, and one Delta log read when the table exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import ObjectStore

# The Delta app transaction every merge commit records (same string as ``merge.app_id``).
MERGE_APP_PREFIX = "lakehouse-merge:"


def lake_table_key(database: str, collection: str) -> str:
    """Where a collection's lake table lives in the lake's object store."""
    return f"tables/{database}/{collection}"


@dataclass(frozen=True)
class LakeProgress:
    """One collection's raw zone against its lake table.

    ``raw_identity`` is ``None`` when the raw zone has no batch; ``table_id`` is ``None`` when
    there is no lake table (then ``applied`` is 0)."""

    namespace: str
    newest_batch: int  # 0: no published batch
    raw_identity: str | None
    applied: int  # last batch the table recorded as applied (0: none)
    table_id: str | None

    @property
    def behind(self) -> bool:
        """The raw zone holds a batch the table has not applied."""
        return self.newest_batch > self.applied

    @property
    def pending(self) -> tuple[int, int] | None:
        """First and last batch a merge would read (``None`` when not behind)."""
        return (self.applied + 1, self.newest_batch) if self.behind else None


def raw_zone_identity(zone: RawZone) -> str | None:
    """``"<first batch>@<its creation time>"``: differs for every raw zone captured anew.

    Returns ``None`` when the zone has no published batch. A first manifest that cannot be
    read still yields an identity (from its number alone): the merge names that damage."""
    numbers = zone.batch_numbers()
    if not numbers:
        return None
    try:
        created = zone.read_manifest(numbers[0]).created_at
    except Exception:  # damage is the merge's to report, with its fix
        created = "unreadable"
    return f"{numbers[0]}@{created}"


def read_lake_progress(store: ObjectStore, database: str, collection: str) -> LakeProgress:
    """The raw zone's newest batch and identity, and what the lake table applied."""
    zone = RawZone(store, database, collection)
    numbers = zone.batch_numbers()
    applied, table_id = _table_applied(store, database, collection, zone.namespace)
    return LakeProgress(
        namespace=zone.namespace,
        newest_batch=numbers[-1] if numbers else 0,
        raw_identity=raw_zone_identity(zone) if numbers else None,
        applied=applied,
        table_id=table_id,
    )


def _table_applied(
    store: ObjectStore, database: str, collection: str, namespace: str
) -> tuple[int, str | None]:
    key = lake_table_key(database, collection)
    if not any(True for _ in store.list(f"{key}/_delta_log/")):
        return 0, None  # no table: do not let delta_location create its folder
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, options = store.delta_location(key)
    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return 0, None
    return table.transaction_version(MERGE_APP_PREFIX + namespace) or 0, table.metadata().id


__all__ = ["LakeProgress", "lake_table_key", "raw_zone_identity", "read_lake_progress"]
