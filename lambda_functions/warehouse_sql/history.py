"""History tables (slowly changing dimension type 2): every loaded version of every document.

Optional per collection (``LoadRequest.history``). Beside the current-state table ``<table>``
the load keeps ``<table>_history`` (``history_table_name``: the same folding and the same
127-byte limit as the current table's name), one row per version of a document::

    _id            the record key, as in the current table
    doc            the document of this version (NULL for a delete row and for a document set
                   aside as too big for the warehouse)
    _op            the lake's operation of the change: snapshot, insert, update, replace, or
                   delete for the row that ends the document's life
    _pos           the change's stream position (the lake's precombine field)
    valid_from     when this version began: the change's ``_event_time`` in the lake, which is
                   the event's ``wallTime`` (or its ``clusterTime`` seconds when the source sends
                   no wallTime; DMS: the commit timestamp column), UTC
    valid_to       when the next version of the key began (its ``valid_from``); NULL while open
    is_current     TRUE for the key's latest version while the document exists; FALSE otherwise
    _lake_version  the lake (Delta) version whose commit wrote this change
    _loaded_at     when the load committed it
    <projected>    the projected columns, computed from this version's document

Per key the rows chain without gaps or overlaps: ordered by (``_lake_version``, ``_pos``) each
row's ``valid_to`` is the next row's ``valid_from``, and exactly one row, the last, is open
(``valid_to IS NULL``). A live document's open row is its current row; a deleted document's open
row is its ``_op = 'delete'`` row, which is never current and is closed by a later re-insert of
the same ``_id`` (common SCD2 practice: the delete row records when the document went away; "as
of T" reads ``valid_from <= T AND (valid_to IS NULL OR T < valid_to) AND _op <> 'delete'``).
Two versions with the same event time (clusterTime has one-second resolution without wallTime)
give a zero-length row (``valid_from = valid_to``), never an overlap.

Granularity: one history row per key per lake commit. The load reads the Delta change data feed
since the last loaded version and keeps every commit's change of a key, in order (a key changed
by three merges between two loads gets three rows); but one merge precombines a batch to the
latest change per key, so changes inside one merge batch are not seen. Reading the raw-zone
batches would give every change; that is not done.

Masking generations: when a collection's PII masking rules change, the merge records the
position from which changes were captured under the new rules (``lake_table.masking_generation``)
and the load, in its one transaction and after ``insert_history``, runs ``purge_history``: it sets
``doc`` and every projected column (declared or no longer declared) to NULL in the history rows
captured before it (``_pos`` below that position, or equal to it from an earlier lake version)
that still hold a value. Nulling rather than deleting keeps the
validity chain (``_id``, ``_op``, ``_pos``, ``valid_from``, ``valid_to``, ``is_current``,
``_lake_version``, ``_loaded_at``: when which key had a version, not what it held), so "as of T"
still finds that a document existed, with no value from before the change. The statement only
touches rows still holding a value: a re-run, or a later load, changes nothing.

Incremental, in the load's one transaction (``load_transaction``), after the current table:

    close_history         UPDATE the key's open row: ``valid_to`` = its first new version's
                          ``valid_from``, ``is_current`` = FALSE
    close_history_absent  (full reload only) close open rows of keys the lake no longer holds:
                          ``valid_to`` = the load's time (the delete's own time is unknown)
    insert_history        INSERT every new version, ``valid_to`` = the next one's ``valid_from``
    purge_history         (after a masking rules change only) NULL ``doc`` and the projected
                          columns of versions captured before it (``PurgeBelow``)

"New" means: no history row has the same (``_id``, ``_pos``, ``_op``). With the control-row guard
(a loaded window is never planned again) this makes a replayed window add nothing, and a full
reload (first load, new lake table, lost feed, new projected columns) adds only versions not yet
kept: history is never truncated, the first load seeds one current row per live key, and a
reload after missed changes closes what changed. A crash before COMMIT leaves both tables as
they were (same transaction). On Redshift the statements are plain UPDATE ... FROM and INSERT ...
SELECT with window functions (no MERGE: its single unconditional WHEN MATCHED cannot close and
insert), the same logical plan as DuckDB. Redshift's UPDATE ("UPDATE", Amazon Redshift Database
Developer Guide) allows the target table inside a subquery but no outer join in FROM, hence
NOT EXISTS rather than an anti-join, and no alias on the target (it is named in full).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lambda_functions.warehouse_sql.dialects import Dialect
from lambda_functions.warehouse_sql.errors import PlanError
from lambda_functions.warehouse_sql.literals import sql_integer
from lambda_functions.warehouse_sql.names import (
    HISTORY_COLUMNS,
    HISTORY_SUFFIX,
    MAX_IDENTIFIER_BYTES,
    fold_identifier,
    quote_identifier,
)
from lambda_functions.warehouse_sql.projection import ProjectedColumn
from lambda_functions.warehouse_sql.staging import insert_changes
from lambda_functions.warehouse_sql.statements import Statement, TargetTable

# Columns the history statements compute next to the staged ones: no projected column may
# take these names when history is kept.
_WORK_COLUMNS = ("_commit_version", "_valid_to", "_first_new", "_last_new")
HISTORY_RESERVED_COLUMNS = frozenset((*HISTORY_COLUMNS, *_WORK_COLUMNS))
# Statements ``history_statements`` adds to an ordinary load at most (a full reload's three),
# and the one more after a masking rules change (``purge_history``).
HISTORY_STATEMENTS = 3
PURGE_HISTORY_STATEMENTS = 1
# The history columns a purge keeps: the validity chain, which holds no document value.
HISTORY_CHAIN_COLUMNS = tuple(c for c in HISTORY_COLUMNS if c != "doc")


def history_table_name(table: str) -> str:
    """The history table of ``table``: ``<table>_history``, folded as the table is.

    Args:
        table: the current-state table's name (an override or the derived name).

    Returns:
        The folded history table name, at most 127 bytes.

    Raises:
        PlanError: the name would be over Redshift's 127-byte identifier limit ("Names and
            identifiers"); the message says how long the table name may be.
    """
    name = fold_identifier(table) + HISTORY_SUFFIX
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        room = MAX_IDENTIFIER_BYTES - len(HISTORY_SUFFIX)
        raise PlanError(
            f"the history table of {table!r} would be {name!r}, over the "
            f"{MAX_IDENTIFIER_BYTES}-byte identifier limit: give the collection a table name of "
            f"at most {room} bytes in LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES, or keep no history "
            "for it (LAKEHOUSE_HISTORY_COLLECTIONS)"
        )
    return name


def check_history(table: str, projection: Sequence[ProjectedColumn]) -> None:
    """Refuse a history table that could not be loaded: its name (``history_table_name``) or
    projected columns that would collide with its own columns.

    Raises:
        PlanError: the name is over 127 bytes, or a projected column is named ``valid_from``,
            ``valid_to``, ``is_current`` or another history column; the message names the fix.
    """
    history_table_name(table)
    taken = sorted(c.column for c in projection if c.column in HISTORY_RESERVED_COLUMNS)
    if taken:
        raise PlanError(
            f"projected column(s) {', '.join(taken)} collide with the history table's own "
            'columns: rename them in LAKEHOUSE_WAREHOUSE_PROJECTION ("field": "TYPE" keys '
            "name the column after the field's last segment) or keep no history"
        )


def history_target(dialect: Dialect, target: TargetTable) -> TargetTable:
    """The history table beside ``target`` (same schema)."""
    return TargetTable.named(dialect, target.schema, history_table_name(target.table))


def create_history(dialect: Dialect, history: TargetTable) -> Statement:
    """Idempotent DDL of the history table with its own columns (projected ones are added by
    the load transaction, as for the current table)."""
    d = dialect
    columns = d.own_columns(
        ['"valid_from" TIMESTAMPTZ', '"valid_to" TIMESTAMPTZ', '"is_current" BOOLEAN NOT NULL']
    )
    return Statement(
        "create_history",
        f"CREATE TABLE IF NOT EXISTS {history.qualified} ({', '.join(columns)}){d.table_options}",
    )


def history_statements(
    dialect: Dialect,
    history: TargetTable,
    *,
    stage: str,
    full: bool,
    projection: Sequence[ProjectedColumn],
    purge_below: PurgeBelow | None = None,
    value_columns: Sequence[str] = (),
) -> list[Statement]:
    """The history part of the load transaction (see the module doc), to run after the staged
    rows are loaded and before the control row is replaced.

    Args:
        dialect: the warehouse's dialect.
        history: the history table (``history_target``).
        stage: the quoted staging table, holding every version of the window (one row per key
            per lake commit; ``_deleted`` rows with ``_op = 'delete'`` and no document).
        full: the load is a full reload (the stage holds every live key): also close the open
            rows of keys it does not hold.
        projection: every projected column, in declaration order.
        purge_below: the versions captured before the last masking rules change, when some
            may still hold values (``PurgeBelow``); None: no purge.
        value_columns: the history table's columns the purge sets to NULL
            (``history_value_columns``).

    Returns:
        ``close_history``, then ``close_history_absent`` when ``full``, then ``insert_history``,
        then ``purge_history`` when ``purge_below``.
    """
    d = dialect
    h = history.qualified
    order = 'n."_commit_version", n."_pos"'
    new = (
        f"(SELECT * FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM {h} AS k "
        'WHERE k."_id" = s."_id" AND k."_pos" = s."_pos" AND k."_op" = s."_op"))'
    )
    versions = (
        f'(SELECT n.*, LEAD(n."_event_time") OVER (PARTITION BY n."_id" ORDER BY {order}) '
        f'AS "_valid_to", ROW_NUMBER() OVER (PARTITION BY n."_id" ORDER BY {order}) '
        f'AS "_first_new", ROW_NUMBER() OVER (PARTITION BY n."_id" ORDER BY '
        f'n."_commit_version" DESC, n."_pos" DESC) AS "_last_new" FROM {new} AS n) AS v'
    )
    statements = [
        Statement(
            "close_history",
            f'UPDATE {h} SET "valid_to" = v."_event_time", "is_current" = FALSE FROM {versions} '
            f'WHERE v."_first_new" = 1 AND {h}."_id" = v."_id" AND {h}."valid_to" IS NULL',
        )
    ]
    if full:
        statements.append(
            Statement(
                "close_history_absent",
                f'UPDATE {h} SET "valid_to" = {d.now}, "is_current" = FALSE '
                f'WHERE "valid_to" IS NULL AND "_op" <> \'delete\' AND NOT EXISTS '
                f'(SELECT 1 FROM {stage} AS s WHERE s."_id" = {h}."_id")',
            )
        )
    statements.append(
        insert_changes(
            "insert_history",
            d,
            table=h,
            columns=HISTORY_COLUMNS,
            row="v",
            computed=[
                'v."_valid_to"',
                'v."_last_new" = 1 AND NOT v."_deleted"',
                'v."_commit_version"',
                d.now,
            ],
            projection=projection,
            source=versions,
        )
    )
    if purge_below is not None:
        statements.append(purge_history(history, below=purge_below, columns=value_columns))
    return statements


def history_value_columns(
    catalog: Sequence[str], projection: Sequence[ProjectedColumn]
) -> list[str]:
    """The history columns that hold a document's values: ``doc``, the projected columns, and
    any other column the table has beyond its own (a column no longer projected keeps the values
    of the versions loaded while it was).

    Args:
        catalog: the history table's column names (``columns_query``), any case.
        projection: every projected column (those the load adds in the same transaction too).

    Returns:
        Folded column names, ``doc`` first, then sorted; never a ``HISTORY_CHAIN_COLUMNS`` one.
    """
    others = {fold_identifier(c) for c in catalog} | {c.column for c in projection}
    return ["doc", *sorted(others - set(HISTORY_COLUMNS))]


@dataclass(frozen=True)
class PurgeBelow:
    """History versions captured before a masking rules change: ``_pos`` below ``position``,
    or equal to it from a lake version below ``lake_version`` (``lake_table.MaskingGeneration``:
    a change at the new snapshot's start position may still precede the snapshot)."""

    position: int
    lake_version: int

    def predicate(self, table: str) -> str:
        p, v = sql_integer(self.position), sql_integer(self.lake_version)
        return f'({table}."_pos" < {p} OR ({table}."_pos" = {p} AND {table}."_lake_version" < {v}))'


def _holding_values(table: str, below: PurgeBelow, columns: Sequence[str]) -> str:
    held = " OR ".join(f"{table}.{quote_identifier(c)} IS NOT NULL" for c in columns)
    return f"{below.predicate(table)} AND ({held})"


def purge_history(history: TargetTable, *, below: PurgeBelow, columns: Sequence[str]) -> Statement:
    """Set the value columns of history versions captured before a masking rules change to NULL.

    Args:
        history: the history table.
        below: which versions were captured under older rules (``PurgeBelow``).
        columns: the value columns (``history_value_columns``), ``doc`` included.

    Returns:
        ``purge_history``: an UPDATE of the versions ``below`` that still hold a value.
        Idempotent (a re-run matches no row); the validity chain is kept. Plain UPDATE ... WHERE
        on both dialects (Amazon Redshift Database Developer Guide, "UPDATE").

    Raises:
        UnsafeSqlValueError: a column name that is not a plain identifier, or a position or
            version that is not an integer.
    """
    h = history.qualified
    assignments = ", ".join(f"{quote_identifier(c)} = NULL" for c in columns)
    return Statement(
        "purge_history",
        f"UPDATE {h} SET {assignments} WHERE {_holding_values(h, below, columns)}",
    )


def unpurged_history_query(
    history: TargetTable, *, below: PurgeBelow, columns: Sequence[str]
) -> Statement:
    """At most one history version ``below`` the masking generation still holding a value in
    ``columns`` (none: purged already, the load needs no ``purge_history``)."""
    h = history.qualified
    return Statement(
        "unpurged_history",
        f'SELECT {h}."_id" FROM {h} WHERE {_holding_values(h, below, columns)} LIMIT 1',
    )


def history_rows_query(history: TargetTable) -> Statement:
    """At most one row of the history table: none means it holds no version yet, and a load of
    a collection already loaded reloads in full to seed it (one current row per live key)."""
    return Statement("history_rows", f'SELECT "_id" FROM {history.qualified} LIMIT 1')
