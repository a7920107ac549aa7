"""What the warehouse needs from the lake table: the rows changed since a version, or all rows.

Reads the Delta change data feed between two versions and reduces it to one row per key (its
state at the newer version, or a delete). Falls back to a full read, and says so, when there is no
previous load, when the table was re-created (a new table id, e.g. a re-snapshot) or when the feed
for the needed versions is no longer available (vacuumed): a partial feed is never loaded. A
feed read that fails otherwise (network, timeout, access) raises ``ChangeFeedReadError`` with the
cause: the load fails and is retried, rather than quietly rereading the whole table.

Tombstones (rows of deleted documents kept by the merge, ``_op = 'delete'``) never reach the
warehouse: the full read keeps live rows only, and the feed is read as live-row changes
(``layout.live_changes``), so writing, replacing or expiring a tombstone loads nothing.

For a collection that keeps history (``warehouse_sql.history``), ``every_version`` keeps every
lake commit's change of a key instead of the last one only, each with the commit version that
wrote it (``_commit_version``; ``lake_versions`` has the rules, deletes included).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lambda_functions.lake.change_feed import feed_is_gone, read_failure
from lambda_functions.lake.record_key import REKEYED_AT_APP
from lambda_functions.lake.table_layout import live_changes, live_rows
from lambda_functions.warehouse_load.lake_versions import commit_versions

# Columns handed to the warehouse, in order.
STAGE_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("doc", pa.string()),
        pa.field("_op", pa.string()),
        pa.field("_pos", pa.int64()),
        pa.field("_event_time", pa.timestamp("us", tz="UTC")),
        pa.field("_deleted", pa.bool_(), nullable=False),
    ]
)
# With history kept (``every_version``): also the lake version that wrote each change.
HISTORY_STAGE_SCHEMA = STAGE_SCHEMA.append(pa.field("_commit_version", pa.int64()))


@dataclass(frozen=True)
class LakeChanges:
    table_id: str
    to_version: int
    rows: pa.Table  # STAGE_SCHEMA, one row per key; every_version: HISTORY_STAGE_SCHEMA, per commit
    full: bool
    reason: str  # why a full read was chosen, or "incremental"


def read_lake_changes(
    table: DeltaTable,
    *,
    since_version: int | None,
    since_table_id: str | None,
    full_reason: str | None = None,
    every_version: bool = False,
) -> LakeChanges:
    """The changes of ``table`` (as opened: its version is ``to_version``) after ``since_version``,
    or every row when a full read is needed or asked for (``full_reason`` says why the caller
    wants one); with ``every_version``, every commit's change of a key (see the module doc)."""
    table_id = table.metadata().id
    version = table.version()
    if since_version is None:
        return _full(table, table_id, version, "first load", every_version)
    if full_reason:
        return _full(table, table_id, version, full_reason, every_version)
    if since_table_id != table_id:
        return _full(
            table, table_id, version, "lake table was re-created (new table id)", every_version
        )
    rekeyed_at = table.transaction_version(REKEYED_AT_APP)
    if rekeyed_at is not None and since_version < rekeyed_at <= version:
        # That commit deleted and inserted the same key texts: its feed cannot be reduced to
        # one change per key.
        return _full(
            table,
            table_id,
            version,
            f"record keys re-encoded at version {rekeyed_at}",
            every_version,
        )
    if since_version >= version:
        empty = (HISTORY_STAGE_SCHEMA if every_version else STAGE_SCHEMA).empty_table()
        return LakeChanges(table_id, version, empty, False, "up to date")
    try:
        feed = pa.RecordBatchReader.from_stream(
            table.load_cdf(starting_version=since_version + 1, ending_version=version)
        ).read_all()
        feed = live_changes(_plain_types(feed))
    except Exception as error:  # delta-rs raises one generic error type for every failure
        if not feed_is_gone(error):  # a failed or stalled read: fail with the cause, no reload
            raise read_failure(table.table_uri, since_version + 1, version, error) from error
        return _full(
            table,
            table_id,
            version,
            f"change feed unavailable ({error}); full reload",
            every_version,
        )
    feed = feed.filter(pc.not_equal(feed.column("_change_type"), "update_preimage"))
    if every_version:
        rows = commit_versions(table, feed)
        staged = _stage(rows, rows.column("_deleted"), rows.column("_commit_version"))
        return LakeChanges(table_id, version, staged, False, "incremental")
    # One row per key: its last change. Within one commit a key changes at most once, except
    # in a commit without change files that replaces the table (a new generation applied page
    # by page, merge.generation): its removed file's row is a delete and its added file's row
    # an insert of the same key; the insert is the key's state after the commit.
    live = pc.cast(pc.not_equal(feed.column("_change_type"), "delete"), pa.int8())
    feed = feed.append_column("_live", live)
    feed = feed.sort_by(
        [("_id", "ascending"), ("_commit_version", "ascending"), ("_live", "ascending")]
    ).drop_columns(["_live"])
    ids = feed.column("_id").combine_chunks()
    if len(ids):
        last = pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1))
        feed = feed.filter(pa.concat_arrays([last, pa.array([True])]))
    deleted = pc.equal(feed.column("_change_type"), "delete")
    return LakeChanges(table_id, version, _stage(feed, deleted), False, "incremental")


def _plain_types(feed: pa.Table) -> pa.Table:
    """delta-rs returns ``string_view`` columns; the compute kernels used here want ``string``."""
    fields = [
        pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f for f in feed.schema
    ]
    return feed.cast(pa.schema(fields))


def _full(
    table: DeltaTable, table_id: str, version: int, reason: str, every_version: bool
) -> LakeChanges:
    rows = live_rows(
        _plain_types(table.to_pyarrow_table(columns=["_id", "doc", "_op", "_pos", "_event_time"]))
    )
    deleted = pa.repeat(pa.scalar(False), rows.num_rows)
    # A full read knows a row's state at ``version``, not the commit that wrote it.
    commits = pa.repeat(pa.scalar(version, pa.int64()), rows.num_rows) if every_version else None
    return LakeChanges(table_id, version, _stage(rows, deleted, commits), True, reason)


def _stage(
    rows: pa.Table,
    deleted: pa.Array | pa.ChunkedArray,
    commits: pa.Array | pa.ChunkedArray | None = None,
) -> pa.Table:
    """``rows`` as ``STAGE_SCHEMA``, or with ``commits`` (the lake version that wrote each row)
    as ``HISTORY_STAGE_SCHEMA``."""
    return pa.table(
        {
            "_id": rows.column("_id"),
            "doc": rows.column("doc"),
            "_op": rows.column("_op"),
            "_pos": rows.column("_pos"),
            "_event_time": rows.column("_event_time").cast(pa.timestamp("us", tz="UTC")),
            "_deleted": deleted,
            **({} if commits is None else {"_commit_version": commits}),
        },
        schema=STAGE_SCHEMA if commits is None else HISTORY_STAGE_SCHEMA,
    )


def lake_keys(table: DeltaTable, changes: LakeChanges) -> pa.Table:
    """Every live key of ``table`` as of ``changes.to_version`` with its change position (``_id``,
    ``_pos``), for reconciliation (tombstones left out): a full read already holds them; otherwise
    they are read from the same snapshot the changes came from (no second open of the log)."""
    if changes.full:
        return changes.rows.select(["_id", "_pos"])
    rows = live_rows(_plain_types(table.to_pyarrow_table(columns=["_id", "_pos", "_op"])))
    return rows.select(["_id", "_pos"])
