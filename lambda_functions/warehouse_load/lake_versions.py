"""Every version of each changed key, for history tables: one row per key per lake commit.

``lake_changes`` reduces the change data feed to one row per key for the current-state table; a
collection that keeps history (``warehouse_sql.history``) needs every commit's change instead, in
order, each with the commit version that wrote it. Two facts of the lake shape this:

- One merge commit precombines its batch to the latest change per key, so the feed holds at most
  one change per key per commit: history has that granularity, not one row per source event.
- The merge writes a delete into its feed as the deleted live row (``delete``, the pre-image:
  the document's last ``_pos`` and ``_event_time``), not as the tombstone it stores. A history
  row for the delete needs the delete's own position and time: they are read from the tombstone
  the table holds for the key at the loaded version, when the delete is the key's last change in
  the window and the tombstone is newer than the deleted row (it is kept for the tombstone
  retention, 7 days by default). Otherwise (deleted and inserted again within the window, or
  the tombstone expired) the delete's time is the commit's timestamp, held between the deleted
  version's time and the next version's, so the chain stays ordered; its ``_pos`` stays the
  deleted row's (its ``_op``, ``delete``, tells the two apart).
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lambda_functions.lake.table_layout import TOMBSTONE_OP

_UTC_MICROS = pa.timestamp("us", tz="UTC")


def commit_versions(table: DeltaTable, feed: pa.Table) -> pa.Table:
    """``feed`` (live-row changes of ``table``'s change data feed, pre-images dropped, plain
    string types) as one row per key and commit, ordered by key and commit.

    Args:
        table: the lake table, opened at the version the feed ends at.
        feed: ``_id``, ``doc``, ``_op``, ``_pos``, ``_event_time``, ``_change_type``,
            ``_commit_version``, ``_commit_timestamp``.

    Returns:
        ``_id``, ``doc``, ``_op``, ``_pos``, ``_event_time`` (UTC microseconds), ``_deleted``,
        ``_commit_version``; a delete has ``_op = 'delete'``, no document, and the delete's
        position and time (see the module doc). Were a key both deleted and inserted in one
        commit (a commit without change files, described by its files), the insert is kept.
    """
    deleted = pc.equal(feed.column("_change_type"), "delete")
    feed = pa.table(
        {
            "_id": feed.column("_id"),
            "doc": pc.if_else(deleted, pa.scalar(None, pa.string()), feed.column("doc")),
            "_op": pc.if_else(deleted, pa.scalar(TOMBSTONE_OP), feed.column("_op")),
            "_pos": feed.column("_pos"),
            "_event_time": feed.column("_event_time").cast(_UTC_MICROS),
            "_deleted": deleted,
            "_commit_version": feed.column("_commit_version").cast(pa.int64()),
            "_commit_time": feed.column("_commit_timestamp").cast(_UTC_MICROS),
            "_live": pc.cast(pc.invert(deleted), pa.int8()),
        }
    )
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
    if pc.any(feed.column("_deleted")).as_py():
        feed = _delete_positions(table, feed)
    return feed.drop_columns(["_commit_time", "_live"])


def _delete_positions(table: DeltaTable, feed: pa.Table) -> pa.Table:
    """Give each delete row the delete's own ``_pos`` and ``_event_time`` (module doc)."""
    ids = feed.column("_id").to_pylist()
    positions = feed.column("_pos").to_pylist()
    times: list[datetime] = feed.column("_event_time").to_pylist()
    commit_times: list[datetime] = feed.column("_commit_time").to_pylist()
    deleted = pc.indices_nonzero(feed.column("_deleted")).to_pylist()
    count = len(ids)
    last = [i for i in deleted if i + 1 == count or ids[i + 1] != ids[i]]
    tombstones: dict[str, tuple[int, datetime]] = {}
    if last:
        rows = table.to_pyarrow_table(
            columns=["_id", "_op", "_pos", "_event_time"],
            filters=[("_op", "=", TOMBSTONE_OP), ("_id", "in", [ids[i] for i in last])],
        )
        for row in rows.to_pylist():
            tombstones[str(row["_id"])] = (row["_pos"], row["_event_time"])
    original = list(times)
    for i in deleted:
        found = tombstones.get(ids[i]) if i in last else None
        if found and found[0] > positions[i]:
            positions[i], times[i] = found
            continue
        when = max(commit_times[i], original[i])  # not before the version it deleted
        if i + 1 < count and ids[i + 1] == ids[i]:
            when = min(when, original[i + 1])  # nor after the version that followed it
        times[i] = when
    return feed.set_column(
        feed.schema.get_field_index("_pos"), "_pos", pa.array(positions, pa.int64())
    ).set_column(
        feed.schema.get_field_index("_event_time"), "_event_time", pa.array(times, _UTC_MICROS)
    )
