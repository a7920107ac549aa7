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
wrote it (``_commit_version``); a delete then carries the delete's own position and time (those
of the tombstone its commit wrote; the commit's timestamp when there is none), ``_op = 'delete'``
and no document. One merge commit precombines its batch to one change per key, so this is one
version per key per merge commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lambda_functions.lake.change_feed import feed_is_gone, read_failure
from lambda_functions.lake.record_key import REKEYED_AT_APP
from lambda_functions.lake.table_layout import is_tombstone, live_changes, live_rows

# Columns handed to the warehouse, in order.
STAGE_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("doc", pa.string()),
        pa.field("_op", pa.string()),
        pa.field("_pos", pa.int64()),
        pa.field("_event_time", pa.timestamp("us", tz="UTC")),
        pa.field("_deleted", pa.bool_(), nullable=False),
        pa.field("_commit_version", pa.int64()),
    ]
)


@dataclass(frozen=True)
class LakeChanges:
    table_id: str
    to_version: int
    rows: pa.Table  # STAGE_SCHEMA, one row per key (per key and commit with every_version)
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
        return _full(table, table_id, version, "first load")
    if full_reason:
        return _full(table, table_id, version, full_reason)
    if since_table_id != table_id:
        return _full(table, table_id, version, "lake table was re-created (new table id)")
    rekeyed_at = table.transaction_version(REKEYED_AT_APP)
    if rekeyed_at is not None and since_version < rekeyed_at <= version:
        # That commit deleted and inserted the same key texts: its feed cannot be reduced to
        # one change per key.
        return _full(table, table_id, version, f"record keys re-encoded at version {rekeyed_at}")
    if since_version >= version:
        empty = STAGE_SCHEMA.empty_table()
        return LakeChanges(table_id, version, empty, False, "up to date")
    try:
        feed = pa.RecordBatchReader.from_stream(
            table.load_cdf(starting_version=since_version + 1, ending_version=version)
        ).read_all()
        raw = _plain_types(feed)
        feed = live_changes(raw)
    except Exception as error:  # delta-rs raises one generic error type for every failure
        if not feed_is_gone(error):  # a failed or stalled read: fail with the cause, no reload
            raise read_failure(table.table_uri, since_version + 1, version, error) from error
        return _full(table, table_id, version, f"change feed unavailable ({error}); full reload")
    feed = feed.filter(pc.not_equal(feed.column("_change_type"), "update_preimage"))
    if every_version:
        rows = _every_version(raw, feed)
        return LakeChanges(table_id, version, rows, False, "incremental")
    # One row per key: its last change. Within one commit a key changes at most once.
    feed = feed.sort_by([("_id", "ascending"), ("_commit_version", "ascending")])
    ids = feed.column("_id").combine_chunks()
    if len(ids):
        last = pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1))
        feed = feed.filter(pa.concat_arrays([last, pa.array([True])]))
    deleted = pc.equal(feed.column("_change_type"), "delete")
    return LakeChanges(table_id, version, _stage(feed, deleted), False, "incremental")


def _every_version(raw: pa.Table, feed: pa.Table) -> pa.Table:
    """``feed`` (live-row changes, pre-images dropped) as staged rows, one per key and commit.

    A delete of a live row is its pre-image renamed (``live_changes``); its own position and
    time are those of the tombstone the same commit wrote for the key (the merge's deletes),
    else the commit's timestamp. Were a key both deleted and inserted in one commit (a commit
    without change files, described by its files), the insert is the state after it."""
    kinds = raw.column("_change_type")
    written = pc.and_(is_tombstone(raw), pc.is_in(kinds, pa.array(["insert", "update_postimage"])))
    tombstones = (
        raw.filter(written)
        .select(["_commit_version", "_id", "_pos", "_event_time"])
        .rename_columns(["_commit_version", "_id", "_delete_pos", "_delete_time"])
    )
    deleted = pc.equal(feed.column("_change_type"), "delete")
    feed = feed.append_column("_deleted", deleted).join(
        tombstones, ["_commit_version", "_id"], join_type="left outer"
    )
    deleted = feed.column("_deleted")
    when = pc.coalesce(
        feed.column("_delete_time").cast(pa.timestamp("us", tz="UTC")),
        feed.column("_commit_timestamp").cast(pa.timestamp("us", tz="UTC")),
    )
    changed = {
        "_pos": pc.if_else(
            deleted,
            pc.coalesce(feed.column("_delete_pos"), feed.column("_pos")),
            feed.column("_pos"),
        ),
        "_event_time": pc.if_else(
            deleted, when, feed.column("_event_time").cast(pa.timestamp("us", tz="UTC"))
        ),
        "_op": pc.if_else(deleted, pa.scalar("delete"), feed.column("_op")),
        "doc": pc.if_else(deleted, pa.scalar(None, pa.string()), feed.column("doc")),
    }
    for name, values in changed.items():
        feed = feed.set_column(feed.schema.get_field_index(name), name, values)
    # One row per key and commit (a non-delete last), in key and commit order.
    feed = feed.append_column("_live", pc.cast(pc.invert(deleted), pa.int8()))
    feed = feed.sort_by(
        [("_id", "ascending"), ("_commit_version", "ascending"), ("_live", "ascending")]
    )
    ids = feed.column("_id").combine_chunks()
    commits = feed.column("_commit_version").combine_chunks()
    if len(ids):
        last = pc.or_(
            pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1)),
            pc.not_equal(commits.slice(0, len(ids) - 1), commits.slice(1)),
        )
        feed = feed.filter(pa.concat_arrays([last, pa.array([True])]))
    return _stage(feed, feed.column("_deleted"))


def _plain_types(feed: pa.Table) -> pa.Table:
    """delta-rs returns ``string_view`` columns; the compute kernels used here want ``string``."""
    fields = [
        pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f for f in feed.schema
    ]
    return feed.cast(pa.schema(fields))


def _full(table: DeltaTable, table_id: str, version: int, reason: str) -> LakeChanges:
    rows = live_rows(
        _plain_types(table.to_pyarrow_table(columns=["_id", "doc", "_op", "_pos", "_event_time"]))
    )
    deleted = pa.repeat(pa.scalar(False), rows.num_rows)
    commits = pa.repeat(pa.scalar(version, pa.int64()), rows.num_rows)
    return LakeChanges(table_id, version, _stage(rows, deleted, commits), True, reason)


def _stage(
    rows: pa.Table,
    deleted: pa.Array | pa.ChunkedArray,
    commits: pa.Array | pa.ChunkedArray | None = None,
) -> pa.Table:
    """``rows`` as ``STAGE_SCHEMA``; ``commits``: the commit version of each row (default: the
    feed's ``_commit_version``)."""
    return pa.table(
        {
            "_id": rows.column("_id"),
            "doc": rows.column("doc"),
            "_op": rows.column("_op"),
            "_pos": rows.column("_pos"),
            "_event_time": rows.column("_event_time").cast(pa.timestamp("us", tz="UTC")),
            "_deleted": deleted,
            "_commit_version": rows.column("_commit_version") if commits is None else commits,
        },
        schema=STAGE_SCHEMA,
    )


def lake_keys(table: DeltaTable, changes: LakeChanges) -> pa.Table:
    """Every live key of ``table`` as of ``changes.to_version`` with its change position (``_id``,
    ``_pos``), for reconciliation (tombstones left out): a full read already holds them; otherwise
    they are read from the same snapshot the changes came from (no second open of the log)."""
    if changes.full:
        return changes.rows.select(["_id", "_pos"])
    rows = live_rows(_plain_types(table.to_pyarrow_table(columns=["_id", "_pos", "_op"])))
    return rows.select(["_id", "_pos"])
