"""The target table's existing columns, read from ``information_schema``, against the projection.

The load adds projected columns but never alters one: a declared type the existing column cannot
hold is refused before the load, naming the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lambda_functions.warehouse_sql.errors import PlanError
from lambda_functions.warehouse_sql.names import quote_identifier
from lambda_functions.warehouse_sql.projection import ProjectedColumn
from lambda_functions.warehouse_sql.statements import Statement, TargetTable

if TYPE_CHECKING:
    from lambda_functions.warehouse_sql.dialects import Dialect


def columns_query(dialect: Dialect, target: TargetTable) -> Statement:
    """The target's columns: name, then (for ``table_column_type``) data type, character length,
    numeric precision and scale, as ``information_schema.columns`` reports them."""
    return Statement(
        "target_columns",
        "SELECT column_name, data_type, character_maximum_length, numeric_precision, "
        "numeric_scale FROM information_schema.columns "
        f"WHERE LOWER(table_schema) = {dialect.param('schema_name')} "
        f"AND LOWER(table_name) = {dialect.param('table_name')}",
        {"schema_name": target.schema, "table_name": target.table},
    )


_CATALOG_TYPES = {
    "SMALLINT": "SMALLINT",
    "INTEGER": "INTEGER",
    "BIGINT": "BIGINT",
    "REAL": "REAL",
    "FLOAT": "REAL",  # DuckDB's name for REAL
    "DOUBLE PRECISION": "DOUBLE PRECISION",
    "DOUBLE": "DOUBLE PRECISION",
    "BOOLEAN": "BOOLEAN",
    "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP",
    "TIMESTAMP WITHOUT TIME ZONE": "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
}
_INTEGER_WIDTHS = {"SMALLINT": 1, "INTEGER": 2, "BIGINT": 3}


def table_column_type(row: Sequence[object]) -> str | None:
    """A ``columns_query`` row's type in this module's names ("VARCHAR(8)", "DECIMAL(18,2)",
    "TIMESTAMPTZ"; "VARCHAR" when the warehouse keeps no length, as DuckDB), or None when the
    row carries no type or one no projection declares."""
    if len(row) < 5 or row[1] is None:
        return None
    data_type, length, precision, scale = (str(row[1]).upper(), *row[2:5])
    base = data_type.split("(")[0].strip()
    if base in ("CHARACTER VARYING", "VARCHAR"):
        return f"VARCHAR({int(str(length))})" if length not in (None, "") else "VARCHAR"
    if base in ("NUMERIC", "DECIMAL"):
        return f"DECIMAL({int(str(precision))},{int(str(scale or 0))})"
    return _CATALOG_TYPES.get(base)


def holds(table_type: str, column: ProjectedColumn) -> bool:
    """Whether a table column of ``table_type`` holds every value the load stages for
    ``column`` (the stage computes values of the declared type)."""
    declared = column.sql_type
    if table_type == declared:
        return True
    if column.family == "text":
        if table_type == "VARCHAR":  # DuckDB: no length
            return True
        return table_type.startswith("VARCHAR(") and int(table_type[8:-1]) >= int(declared[8:-1])
    if declared in _INTEGER_WIDTHS and table_type in _INTEGER_WIDTHS:
        return _INTEGER_WIDTHS[declared] <= _INTEGER_WIDTHS[table_type]
    if column.family == "decimal" and table_type.startswith("DECIMAL("):
        p, s = map(int, declared[8:-1].split(","))
        tp, ts = map(int, table_type[8:-1].split(","))
        return p - s <= tp - ts and s <= ts
    return declared == "REAL" and table_type == "DOUBLE PRECISION"


def check_column_types(
    target: TargetTable, projection: Sequence[ProjectedColumn], rows: Sequence[Sequence[object]]
) -> None:
    """Refuse, naming the fix, a projection whose declared type the table's existing column
    cannot hold: the load never alters a column, so every load would fail on the first value
    of the new type (a cast error, or Redshift's "value too long")."""
    types = {str(row[0]).lower(): table_column_type(row) for row in rows}
    for column in projection:
        table_type = types.get(column.column)
        if table_type is None or holds(table_type, column):
            continue
        name = quote_identifier(column.column)
        widen = (
            f" (on Redshift a VARCHAR can be lengthened in place: ALTER TABLE "
            f"{target.qualified} ALTER COLUMN {name} TYPE {column.sql_type}, outside a "
            "transaction)"
            if column.family == "text" and table_type.startswith("VARCHAR(")
            else ""
        )
        raise PlanError(
            f"projected column {column.column!r} of {target} is {table_type} but "
            f"LAKEHOUSE_WAREHOUSE_PROJECTION declares {column.sql_type}, which it cannot hold; "
            "the load never alters a column. Declare the table's type again, or change the "
            f"column yourself{widen}, or drop it (ALTER TABLE {target.qualified} DROP COLUMN "
            f"{name}): the next load adds it with the declared type and reloads every row"
        )
