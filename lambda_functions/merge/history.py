"""Incremental and time-travel reads of the lake table.

- ``read_version``: the table as of any version still retained (time travel).
- ``changes_between``: one row per key whose state differs between two versions, read from the
  change data feed, with the state at the newer version (or a delete).

The merge writes an exact feed (change data files with only the changed rows), but the feed
needs care in two cases, both handled here:

- a version written without change data files (an overwrite by another tool, a repair, an append
  by ``write_deltalake``) has its changes derived from the files it replaced and added: every row
  of those files appears as a ``delete`` and, unless it was deleted, an ``insert`` of the same
  version. Within a version the ``insert``/``update_postimage`` describes the state after it, the
  ``delete``/``update_preimage`` the state before it;
- a key whose state at the newer version is the one it had at the older version (rewritten but not
  changed, or inserted and deleted in between) did not change and is left out, so a reader loads
  exactly the rows changed between the two versions.

Compaction commits (``dataChange=false``) add nothing to the feed, nor does tombstone expiry.
Tombstones (rows of deleted documents, see ``lake.table_layout``) are never returned: ``read_version``
returns live rows, and the feed is read through ``table_layout.live_changes``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lambda_functions.errors import TerminalError
from lambda_functions.lake.change_feed import feed_is_gone, read_failure
from lambda_functions.lake.table_layout import live_changes, live_rows

_BEFORE = ("delete", "update_preimage")  # the state before a version
_IDENTITY = ("_pos", "_batch", "_seq")  # a stored row's identity: which change wrote it


class VersionNotAvailableError(TerminalError, RuntimeError):
    """The version asked for is no longer retained (vacuumed or its log expired)."""


def read_version(
    uri: str, options: dict[str, str], version: int, columns: list[str] | None = None
) -> pa.Table:
    """Every live row of the table as it was at ``version`` (tombstones left out): Delta time
    travel (delta-rs ``DeltaTable(uri, version=...)``).

    Args:
        uri: the lake table's location (``lake_table_location``).
        options: delta-rs storage options for it.
        version: a table version (0-based Delta log entry number).
        columns: the columns to return, in this order; default all of them.

    Returns:
        An Arrow table of the live rows at ``version``, strings as plain ``string`` (not
        ``string_view``); row order is not defined.

    Raises:
        VersionNotAvailableError: the version is no longer retained (its log or files were
            removed by log retention or vacuum); terminal: read a newer version.
    """
    try:
        table = DeltaTable(uri, version=version, storage_options=options)
        wanted = None if columns is None else list(dict.fromkeys([*columns, "_op"]))
        rows = live_rows(_plain(table.to_pyarrow_table(columns=wanted)))
        return rows if columns is None else rows.select(columns)
    except Exception as error:
        if "not found" in str(error).lower() or "no such file" in str(error).lower():
            raise VersionNotAvailableError(
                f"version {version} of {uri} is no longer retained ({error}); read a newer "
                "version, or raise delta.logRetentionDuration / the vacuum retention"
            ) from error
        raise


def changes_between(
    uri: str, options: dict[str, str], since_version: int, to_version: int | None = None
) -> pa.Table:
    """Keys changed after ``since_version`` up to ``to_version`` (default: the latest), from
    the Delta change data feed (Delta protocol, "Change Data Files"; delta-rs
    ``DeltaTable.load_cdf``), reduced to one row per key (see the module docstring).

    Args:
        uri: the lake table's location (``lake_table_location``).
        options: delta-rs storage options for it.
        since_version: the version the caller already has (exclusive).
        to_version: the version to read up to (inclusive); default the latest.

    Returns:
        An Arrow table with the table's columns and ``_deleted`` (bool): for each key whose
        state differs between the two versions, its row at ``to_version``, or, for a key gone
        by then, its last stored row with ``_deleted`` true. Tombstones are never returned.
        Empty when ``to_version <= since_version``. Row order is by ``_id``.

    Raises:
        VersionNotAvailableError: the feed for those versions was vacuumed: the caller must
            then read the whole table (``read_version``) instead.
        ChangeFeedReadError: (an ``OSError``) the read failed otherwise (network, timeout,
            access): the feed may be intact, so the caller should retry, not read everything.
    """
    table = DeltaTable(uri, storage_options=options)
    to_version = table.version() if to_version is None else to_version
    schema = pa.schema(table.schema().to_arrow())
    out_schema = pa.schema([*_plain_schema(schema), pa.field("_deleted", pa.bool_())])
    if to_version <= since_version:
        return out_schema.empty_table()
    try:
        feed = pa.RecordBatchReader.from_stream(
            table.load_cdf(starting_version=since_version + 1, ending_version=to_version)
        ).read_all()
    except Exception as error:  # delta-rs raises one generic error type for every failure
        if not feed_is_gone(error):
            raise read_failure(uri, since_version + 1, to_version, error) from error
        raise VersionNotAvailableError(
            f"the change feed of {uri} for versions {since_version + 1}..{to_version} is not "
            f"available ({error}); read the whole table with read_version instead"
        ) from error
    return net_changes(_plain(feed), out_schema)


def net_changes(feed: pa.Table, out_schema: pa.Schema) -> pa.Table:
    """Reduce a change feed to one row per changed key (see the module docstring)."""
    feed = live_changes(feed)
    if feed.num_rows == 0:
        return out_schema.empty_table()
    before = pc.is_in(feed.column("_change_type"), value_set=pa.array(_BEFORE))
    phase = pc.if_else(before, 0, 1)  # within a version: the state before, then after
    feed = feed.append_column("_phase", phase).sort_by(
        [("_id", "ascending"), ("_commit_version", "ascending"), ("_phase", "ascending")]
    )
    ids = feed.column("_id").combine_chunks()
    n = len(ids)
    is_first = pa.concat_arrays([pa.array([True]), pc.not_equal(ids.slice(1), ids.slice(0, n - 1))])
    is_last = pa.concat_arrays([pc.not_equal(ids.slice(0, n - 1), ids.slice(1)), pa.array([True])])
    first, last = feed.filter(is_first), feed.filter(is_last)
    existed = pc.equal(first.column("_phase"), 0)  # the key had a state at since_version
    exists = pc.equal(last.column("_phase"), 1)  # ... and has one at to_version
    same = pa.array([True] * last.num_rows)
    for name in _IDENTITY:
        same = pc.and_(same, pc.equal(first.column(name), last.column(name)))
    unchanged = pc.or_(
        pc.and_(pc.and_(existed, exists), same),  # rewritten, not changed
        pc.and_(pc.invert(existed), pc.invert(exists)),  # inserted, then deleted
    )
    keep = pc.invert(unchanged)
    last = last.filter(keep)
    deleted = pc.invert(exists.filter(keep))
    columns = [last.column(f.name).cast(f.type) for f in out_schema if f.name != "_deleted"]
    return pa.table([*columns, deleted], schema=out_schema)


def _plain_schema(schema: pa.Schema) -> list[pa.Field]:
    return [
        pa.field(f.name, pa.string(), f.nullable) if pa.types.is_string_view(f.type) else f
        for f in schema
    ]


def _plain(rows: pa.Table) -> pa.Table:
    """delta-rs returns ``string_view`` columns; plain strings are what callers expect."""
    return rows.cast(pa.schema(_plain_schema(rows.schema)))
