"""Staged values: the projected columns computed from the document while the rows are staged.

See the comment below for the value rules per type family; ``stage_query`` renders them as one
DuckDB query, run for both warehouses, and ``projected_value`` turns a staged value into the
warehouse's column value inside the load's INSERT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lambda_functions.warehouse_sql.literals import sql_string
from lambda_functions.warehouse_sql.names import (
    HISTORY_STAGE_COLUMNS,
    STAGE_COLUMNS,
    quote_identifier,
)
from lambda_functions.warehouse_sql.projection import ProjectedColumn
from lambda_functions.warehouse_sql.statements import Statement

if TYPE_CHECKING:
    from lambda_functions.warehouse_sql.dialects import Dialect

# Projected columns are computed ONCE, by DuckDB, while the rows are staged (``stage_query``), for
# either warehouse: DuckDB evaluates it inside its load transaction, and the Redshift load runs the
# same query in process and writes the result into the staged Parquet. Redshift then COPYs typed
# columns and the INSERT only names them, so (a) a statement's size does not grow with the JSON
# path expressions (the Data API refuses SQL over 100 KB, see ``Dialect.max_statement_bytes``),
# (b) the document is never read as text by Redshift (its JSON text functions stop at VARCHAR's
# 65,535 bytes), and (c) both warehouses get the same values by construction.
#
# Which canonical extended JSON wrappers hold the value, per type family, tried in this order
# before the bare value. Canonical extended JSON writes every number wrapped ({"$numberInt": "5"},
# {"$numberLong": ..}, {"$numberDouble": ..}, {"$numberDecimal": "12.50"}), ObjectIds as
# {"$oid": hex} and datetimes as {"$date": {"$numberLong": "<ms since epoch>"}} (relaxed:
# {"$date": "<ISO-8601>"}).
#
#   family                  accepted JSON values                               column value
#   VARCHAR                 "text" | {"$oid": h} | anything else               text, h, its JSON
#   SMALLINT/INTEGER/BIGINT 5 | {"$numberInt"} | {"$numberLong"}                the integer
#                           | {"$numberDouble": "5.0"} | {"$numberDecimal"}    (numbers compare by
#                                                                              value in MongoDB;
#                                                                              drivers store 5 as
#                                                                              a double)
#   DECIMAL                 {"$numberDecimal"} | {"$numberDouble"} | ints | 5   the number
#   REAL/DOUBLE PRECISION   {"$numberDouble"} | {"$numberDecimal"} | ints | 5   the number
#   BOOLEAN                 true | false                                       the boolean
#   DATE/TIMESTAMP[TZ]      {"$date": ..} | "ISO-8601 text"                    the instant, UTC
#
# Temporal values keep their instant. ISO-8601 text is cast to TIMESTAMP WITH TIME ZONE by DuckDB
# with the session time zone set to UTC: an offset (``Z``, ``+02:00``, ``-05:00``) is applied
# ("12:00:00+02:00" is 10:00 UTC), text without one is read as UTC, fractional seconds are kept
# to the microsecond. The instant is staged as microseconds since the Unix epoch (BIGINT: no
# time-zone rule of any engine or file format is involved in transit) and the warehouse turns it
# into: TIMESTAMPTZ = that instant; TIMESTAMP = its UTC wall-clock time (Redshift stores TIMESTAMP
# as UTC and ignores offsets in text, "Datetime types", so the conversion must happen before);
# DATE = the UTC calendar date of the instant, as for a ``$date``, which has no other time zone.
#
# Text follows RFC 3339 too, whose 'T' and 'z' may be lower case ("2024-03-01t12:00:00z", section
# 5.6), which DuckDB's cast does not read: they are upper-cased first.
#
# VARCHAR(n) holds n BYTES of UTF-8 on Redshift ("Character types"), and DuckDB does not enforce
# n at all: a longer value fails the stage here, naming the column, on both warehouses alike
# (Redshift's COPY would refuse it; DuckDB would have loaded it whole).
#
# A missing field, JSON null and "" load as NULL. A present value that does not convert to the
# declared type FAILS the load with DuckDB's cast error before anything is committed (a silent
# NULL would hide bad data): fix the projection's type or the data, then re-run.
_NUMBER_WRAPPERS = ("$numberInt", "$numberLong")
_INTEGER_WRAPPERS = (*_NUMBER_WRAPPERS, "$numberDouble", "$numberDecimal")
_WRAPPERS: dict[str, tuple[str, ...]] = {
    "text": ("$oid",),
    "smallint": _INTEGER_WRAPPERS,
    "integer": _INTEGER_WRAPPERS,
    "bigint": _INTEGER_WRAPPERS,
    "decimal": ("$numberDecimal", "$numberDouble", *_NUMBER_WRAPPERS),
    "real": ("$numberDouble", "$numberDecimal", *_NUMBER_WRAPPERS),
    "double": ("$numberDouble", "$numberDecimal", *_NUMBER_WRAPPERS),
    "boolean": (),
}
_TEMPORAL = ("date", "timestamp", "timestamptz")


def staged_type(column: ProjectedColumn) -> str:
    """The column's type in the staging table: temporal values travel as epoch microseconds."""
    return "BIGINT" if column.family in _TEMPORAL else column.sql_type


def stage_query(
    projection: Sequence[ProjectedColumn], relation: str, *, history: bool = False
) -> str:
    """DuckDB SQL: the staged rows of ``relation`` (``STAGE_COLUMNS``, ``HISTORY_STAGE_COLUMNS``
    with ``history``) followed by the projected columns computed from ``doc``. Run by DuckDB for
    both warehouses, with ``TimeZone`` = UTC."""
    columns = [quote_identifier(c) for c in (HISTORY_STAGE_COLUMNS if history else STAGE_COLUMNS)]
    columns += [
        f"{_staged_value(c, quote_identifier('doc'))} AS {quote_identifier(c.column)}"
        for c in projection
    ]
    return f"SELECT {', '.join(columns)} FROM {quote_identifier(relation)}"


def _staged_value(column: ProjectedColumn, document: str) -> str:
    def at(*path: str) -> str:
        # Segments are validated names or fixed "$..." wrapper keys: no quotes to escape.
        return sql_string("$" + "".join(f'."{segment}"' for segment in (*column.path, *path)))

    def text(*path: str) -> str:
        return f"NULLIF(json_extract_string({document}, {at(*path)}), '')"

    if column.family in _TEMPORAL:
        millis = text("$date", "$numberLong")
        return (
            f"CASE WHEN {millis} IS NOT NULL THEN CAST({millis} AS BIGINT) * 1000 "
            f"WHEN json_type({document}, {at('$date')}) = 'VARCHAR' "
            f"THEN epoch_us(CAST({_rfc3339_upper(text('$date'))} AS TIMESTAMPTZ)) "
            f"ELSE epoch_us(CAST({_rfc3339_upper(text())} AS TIMESTAMPTZ)) END"
        )
    candidates = [text(wrapper) for wrapper in _WRAPPERS[column.family]] + [text()]
    value = candidates[0] if len(candidates) == 1 else f"COALESCE({', '.join(candidates)})"
    if column.family == "text":
        limit = int(column.sql_type[len("VARCHAR(") : -1])
        message = sql_string(
            f"projected column {column.column!r} is {column.sql_type}, which holds {limit} bytes "
            "of UTF-8 on Redshift, but a value of "
        )
        tail = sql_string(
            " bytes does not fit: declare a larger VARCHAR in LAKEHOUSE_WAREHOUSE_PROJECTION "
            "(at most 65535) or leave the field out (it stays in the doc column)"
        )
        return (
            f"CASE WHEN strlen({value}) > {limit} "
            f"THEN error({message} || CAST(strlen({value}) AS VARCHAR) || {tail}) "
            f"ELSE CAST({value} AS {column.sql_type}) END"
        )
    return f"CAST({value} AS {column.sql_type})"


def _rfc3339_upper(text: str) -> str:
    """DuckDB SQL: ``text`` with RFC 3339's lower-case 't' separator and 'z' zone upper-cased
    (DuckDB-only SQL, never sent to Redshift, so the regex's backslash is read as written)."""
    return (
        f"regexp_replace(regexp_replace({text}, '^([0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}})t', '\\1T'), "
        "'z$', 'Z')"
    )


def projected_value(dialect: Dialect, column: ProjectedColumn, staged: str) -> str:
    """The warehouse expression for one projected column, from its staged value."""
    if column.family not in _TEMPORAL:
        return staged
    instant = dialect.micros_to_timestamp(staged)  # a TIMESTAMP holding the UTC wall-clock time
    if column.family == "timestamptz":
        return f"({instant}) AT TIME ZONE 'UTC'"
    if column.family == "date":
        return f"CAST({instant} AS DATE)"
    return instant


def insert_changes(
    label: str,
    dialect: Dialect,
    *,
    table: str,
    columns: Sequence[str],
    row: str,
    computed: Sequence[str],
    projection: Sequence[ProjectedColumn],
    source: str,
) -> Statement:
    """One INSERT of staged changes into a target table (the current table or its history).

    Args:
        label: the statement's label.
        dialect: the warehouse.
        table: the qualified target table.
        columns: the table's own columns, in order (``BASE_COLUMNS`` or ``HISTORY_COLUMNS``);
            their first five are the change's own (``_id``, ``doc``, ``_op``, ``_pos``, then the
            event time).
        row: the alias of the staged row in ``source``.
        computed: SQL expressions for the remaining own columns, in order.
        projection: the projected columns, inserted after the own ones.
        source: what follows ``FROM``: the staged rows aliased ``row`` (with any ``WHERE``).

    Returns:
        ``INSERT INTO table (columns, projected) SELECT <change values>, computed, <projected
        values> FROM source``; the document is parsed into the warehouse's document type and the
        projected values are converted by ``projected_value``.
    """
    names = [*columns, *(c.column for c in projection)]
    values = [
        f'{row}."_id"',
        dialect.json_parse(f'{row}."doc"'),
        f'{row}."_op"',
        f'{row}."_pos"',
        f'{row}."_event_time"',
        *computed,
        *(projected_value(dialect, c, f"{row}.{quote_identifier(c.column)}") for c in projection),
    ]
    return Statement(
        label,
        f"INSERT INTO {table} ({', '.join(map(quote_identifier, names))}) "
        f"SELECT {', '.join(values)} FROM {source}",
    )
