"""The warehouse load as SQL: one logical plan, rendered for DuckDB or for Redshift.

Everything that differs between the two warehouses lives in this module, in the two ``Dialect``
classes at the bottom; the executors (``duckdb_warehouse.DuckDBWarehouse`` and
``redshift.RedshiftWarehouse``) only run the statements they are given. The plan of one load::

    guard              abort unless the control row still says what the load was planned from
    create_stage       a temporary staging table (dropped with the session if anything fails)
    load_stage         COPY the staged Parquet from S3 (Redshift) / insert the Arrow rows (DuckDB),
                       projected columns already computed (``stage_query``)
    add_column:<name>  ALTER TABLE ADD COLUMN for projected columns the table lacks (never DROP)
    delete_changed     DELETE target rows whose key is staged (every row on a full reload)
    delete_set_aside   \\ forget set-aside records of staged keys, record the staged documents
    insert_upserts      | the warehouse cannot hold (``set_aside``) instead of loading them, and
    insert_set_aside   /  INSERT the latest staged change per key unless it is a delete
    delete_control     \\ the control row names the lake table and version now in the warehouse
    insert_control     /
    drop_stage

All of it runs as ONE transaction (one ``batch_execute_statement`` on Redshift, BEGIN..COMMIT on
DuckDB), so a load that dies anywhere leaves the previous data *and* the previous control row, and
the re-run applies the same changes again: nothing lost, nothing doubled. Redshift's MERGE allows a
single unconditional WHEN MATCHED branch, hence the delete + insert shape on both warehouses.

Values in SQL. The Data API's named ``Parameters`` are used for reads (``execute_statement``), but
the transaction renders its few values as literals, because: the COPY statement's ``FROM`` and
``IAM_ROLE`` cannot be bind parameters on any SDK; ``Parameters`` on ``batch_execute_statement``
only exist in recent SDKs (older Lambda images reject them); and the values involved are all
machine-made and checked against strict patterns before rendering: integers (versions), identifiers
(``quote_identifier``), the Delta table id (a UUID), the S3 staging URI and the IAM role ARN. The
only free text, the guard's message, is ours. ``sql_string`` doubles quotes and refuses what the
dialects read differently (a backslash escapes in Redshift and is a plain character in DuckDB) and
control characters, so a rendered literal means the same thing in both. Document data never
enters SQL text: it travels as Parquet (Redshift) or Arrow (DuckDB).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

# Plain names (letters, digits, '_' or '-'; ASCII, so characters are bytes) up to Redshift's
# identifier limit of 127 bytes (contracts.WAREHOUSE_IDENTIFIER_BYTES; DuckDB has none).
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,126}$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TABLE_ID = re.compile(
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
)
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_.=+/-]+)?$")
_IAM_ROLE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=.@_/-]{1,512}$")

CONTROL_TABLE = "_lakehouse_loads"
STAGE_TABLE = "_lakehouse_stage"
# Documents the warehouse cannot hold (see ``Dialect.max_document_bytes``), one row per key, kept
# in the same transaction as the data so reconciliation counts them as accounted for.
SET_ASIDE_TABLE = "_lakehouse_set_aside"
# Columns the load owns; projected columns may not take these names.
BASE_COLUMNS = ("_id", "doc", "_op", "_pos", "_event_time", "_lake_version", "_loaded_at")
# The staged rows, in this order (Redshift's Parquet COPY matches columns by position), followed
# by the projected columns, already computed (see ``stage_query``).
STAGE_COLUMNS = ("_id", "doc", "_op", "_pos", "_event_time", "_deleted", "_set_aside", "_doc_bytes")
# Redshift's system columns (PostgreSQL's), which no user column may be named ("Names and
# identifiers"): an ADD COLUMN "xmin" would fail every load.
SYSTEM_COLUMNS = ("oid", "tableoid", "xmin", "cmin", "xmax", "cmax", "ctid")
RESERVED_COLUMNS = frozenset((*BASE_COLUMNS, *STAGE_COLUMNS, "_rank", *SYSTEM_COLUMNS))
MAX_IDENTIFIER_BYTES = 127  # Redshift; see _IDENTIFIER
# Key-set reconciliation: 256 buckets by the first byte of md5(_id), each with the row count and
# the sum of a 32-bit slice of md5("_id:_pos") (order-free, so SQL and Python agree).
BUCKET_HEX_DIGITS = 2


class UnsafeSqlValueError(ValueError):
    """A name or value failed its pattern and was not put into SQL; the message says which."""


class PlanError(ValueError):
    """The requested load cannot be expressed as one transaction; the message says what to change."""


# -- identifiers and literals ------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """``"name"`` for a name matching the contract's pattern; anything else is refused, not escaped."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise UnsafeSqlValueError(
            f"{name!r} is not a valid SQL identifier here: use letters, digits, '_' or '-', "
            f"starting with a letter or '_', at most {MAX_IDENTIFIER_BYTES} characters"
        )
    return f'"{name}"'


def sql_string(value: str) -> str:
    """A single-quoted literal that reads the same in DuckDB and Redshift, or an error.

    Quotes are doubled. Backslashes are refused (Redshift treats them as escapes, DuckDB does not,
    so no one rendering is right for both), as are NUL and other control characters. Callers pass
    only values that already matched a strict pattern; this is the last line, not the first.
    """
    if not isinstance(value, str):
        raise UnsafeSqlValueError(f"expected a string literal, got {type(value).__name__}")
    bad = [c for c in value if c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise UnsafeSqlValueError(
            f"refusing to render {value[:40]!r} as SQL text: it contains {bad[0]!r} "
            "(backslashes and control characters are not allowed in generated literals)"
        )
    return "'" + value.replace("'", "''") + "'"


def sql_integer(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsafeSqlValueError(f"expected an integer, got {value!r}")
    return str(value)


def checked_table_id(value: str) -> str:
    if not _TABLE_ID.match(value or ""):
        raise UnsafeSqlValueError(f"lake table id {value!r} is not a UUID")
    return value


def checked_s3_uri(value: str) -> str:
    if not _S3_URI.match(value or ""):
        raise UnsafeSqlValueError(
            f"staging URI {value!r} is not a plain s3://bucket/key (letters, digits, '_.=+/-')"
        )
    return value


def checked_iam_role(value: str) -> str:
    """One IAM role ARN, or a comma-separated chain of them (Redshift role chaining)."""
    parts = (value or "").split(",")
    if not all(_IAM_ROLE.match(part) for part in parts):
        raise UnsafeSqlValueError(
            "the Redshift IAM role must be an ARN like arn:aws:iam::123456789012:role/name "
            "(set LAKEHOUSE_REDSHIFT_IAM_ROLE to the role attached to the workgroup or cluster)"
        )
    return value


# -- statements ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a plan. ``label`` names its step; ``parameters`` are named values bound
    by the executor (reads only); ``secrets`` are literals shown as ``***`` wherever the
    statement is displayed (errors, logs)."""

    label: str
    sql: str
    parameters: Mapping[str, str | int] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def display(self) -> str:
        return redact(self.sql, self.secrets)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class StageSource:
    """Where the staged rows come from: an Arrow relation registered with DuckDB, or a Parquet
    object in S3 that Redshift COPYs with an IAM role."""

    relation: str = ""
    s3_uri: str = ""
    iam_role: str = ""


@dataclass(frozen=True)
class LoadedState:
    table_id: str
    version: int


# -- projection ----------------------------------------------------------------------------------

_TYPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(?:VARCHAR|CHARACTER VARYING)(?:\((\d+)\))?$"), "text"),
    (re.compile(r"^(?:SMALLINT|INT2)$"), "smallint"),
    (re.compile(r"^(?:INTEGER|INT|INT4)$"), "integer"),
    (re.compile(r"^(?:BIGINT|INT8)$"), "bigint"),
    (re.compile(r"^(?:DECIMAL|NUMERIC)(?:\((\d+)(?:,(\d+))?\))?$"), "decimal"),
    (re.compile(r"^(?:REAL|FLOAT4)$"), "real"),
    (re.compile(r"^(?:DOUBLE PRECISION|DOUBLE|FLOAT8|FLOAT)$"), "double"),
    (re.compile(r"^(?:BOOLEAN|BOOL)$"), "boolean"),
    (re.compile(r"^DATE$"), "date"),
    (re.compile(r"^(?:TIMESTAMP|TIMESTAMP WITHOUT TIME ZONE)$"), "timestamp"),
    (re.compile(r"^(?:TIMESTAMPTZ|TIMESTAMP WITH TIME ZONE)$"), "timestamptz"),
)
SUPPORTED_TYPES = (
    "VARCHAR(n), SMALLINT, INTEGER, BIGINT, DECIMAL(p,s), REAL, DOUBLE PRECISION, BOOLEAN, DATE, "
    "TIMESTAMP, TIMESTAMPTZ"
)

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


@dataclass(frozen=True)
class ProjectedColumn:
    """A document field loaded as a typed column beside the full document."""

    column: str  # lower case: Redshift folds identifiers, DuckDB ignores case: the folded name
    path: tuple[str, ...]  # field path in the document
    sql_type: str  # normalized, e.g. "DECIMAL(18,2)"
    family: str


def parse_projection(declared: Mapping[str, str]) -> tuple[ProjectedColumn, ...]:
    """``{"status": "VARCHAR(32)", "customer.address.city": "VARCHAR(64)"}`` → columns ``status``
    and ``customer_address_city``, in declaration order. Raises ``PlanError`` naming the entry.

    Column names are folded to lower case (Redshift folds identifiers, DuckDB resolves them
    without case), so two fields that differ only in case, or whose paths join to the same
    name, would be one column: refused here, at configuration, rather than at every load."""
    columns: list[ProjectedColumn] = []
    seen: dict[str, str] = {}
    for raw_path, raw_type in declared.items():
        path = tuple(str(raw_path).split("."))
        if not 1 <= len(path) <= 3 or not all(_PATH_SEGMENT.match(p) for p in path):
            raise PlanError(
                f"projection field {raw_path!r}: use a field name or a dotted path of at most 3 "
                "names made of letters, digits and '_' (e.g. 'customer.address.city')"
            )
        column = "_".join(path).lower()
        if column in RESERVED_COLUMNS or len(column) > MAX_IDENTIFIER_BYTES:
            raise PlanError(
                f"projection field {raw_path!r} would become column {column!r}, which is reserved "
                f"or longer than Redshift's {MAX_IDENTIFIER_BYTES} bytes; reserved: "
                f"{', '.join(sorted(RESERVED_COLUMNS))}. Leave the field out of "
                "LAKEHOUSE_WAREHOUSE_PROJECTION (its value stays in the doc column)"
            )
        if column in seen:
            raise PlanError(
                f"projection fields {seen[column]!r} and {raw_path!r} both become column "
                f"{column!r} (warehouse column names are compared in lower case: Redshift folds "
                "them, DuckDB ignores case). Project only one of them in "
                "LAKEHOUSE_WAREHOUSE_PROJECTION; the other stays in the doc column"
            )
        seen[column] = raw_path
        sql_type, family = _parse_type(str(raw_path), str(raw_type))
        columns.append(ProjectedColumn(column, path, sql_type, family))
    return tuple(columns)


def _parse_type(path: str, declared: str) -> tuple[str, str]:
    text = " ".join(declared.upper().replace(" (", "(").replace(", ", ",").split())
    for pattern, family in _TYPES:
        match = pattern.match(text)
        if not match:
            continue
        if family == "text":
            length = int(match.group(1) or 256)
            if not 1 <= length <= 65535:
                raise PlanError(f"projection {path!r}: VARCHAR length must be 1..65535")
            return f"VARCHAR({length})", family
        if family == "decimal":
            precision = int(match.group(1) or 18)
            scale = int(match.group(2) or 0)
            if not (1 <= precision <= 38 and 0 <= scale <= precision):
                raise PlanError(f"projection {path!r}: DECIMAL(p,s) needs 1<=p<=38 and 0<=s<=p")
            return f"DECIMAL({precision},{scale})", family
        canonical = {
            "smallint": "SMALLINT",
            "integer": "INTEGER",
            "bigint": "BIGINT",
            "real": "REAL",
            "double": "DOUBLE PRECISION",
            "boolean": "BOOLEAN",
            "date": "DATE",
            "timestamp": "TIMESTAMP",
            "timestamptz": "TIMESTAMPTZ",
        }
        return canonical[family], family
    raise PlanError(
        f"projection {path!r}: type {declared!r} is not supported; use {SUPPORTED_TYPES}"
    )


# -- the target ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetTable:
    """The loaded table, its control table and the staging table, named for one dialect."""

    schema: str
    table: str

    @classmethod
    def named(cls, dialect: Dialect, schema: str, table: str) -> TargetTable:
        quote_identifier(schema)
        quote_identifier(table)
        return cls(dialect.fold(schema), dialect.fold(table))

    @property
    def qualified(self) -> str:
        return f"{quote_identifier(self.schema)}.{quote_identifier(self.table)}"

    @property
    def control(self) -> str:
        return f"{quote_identifier(self.schema)}.{quote_identifier(CONTROL_TABLE)}"

    @property
    def stage(self) -> str:
        return quote_identifier(STAGE_TABLE)

    @property
    def set_aside(self) -> str:
        return f"{quote_identifier(self.schema)}.{quote_identifier(SET_ASIDE_TABLE)}"

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


# -- the plan ------------------------------------------------------------------------------------


def ensure_tables(dialect: Dialect, target: TargetTable) -> list[Statement]:
    """Idempotent DDL: schema, control table, target table with the load's own columns.

    Projected columns are not created here but by the load transaction (``add_column:*``), so a
    load that fails, e.g. on a value that does not fit a declared type, leaves no column behind
    and a corrected projection applies cleanly on the re-run."""
    d = dialect
    columns = [
        f'"_id" {d.key_type} NOT NULL',
        f'"doc" {d.document_type}',
        '"_op" VARCHAR(16)',
        '"_pos" BIGINT',
        '"_event_time" TIMESTAMPTZ',
        '"_lake_version" BIGINT NOT NULL',
        '"_loaded_at" TIMESTAMPTZ NOT NULL',
    ]
    return [
        Statement(
            "create_schema", f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(target.schema)}"
        ),
        Statement(
            "create_control",
            f"CREATE TABLE IF NOT EXISTS {target.control} ("
            '"table_name" VARCHAR(127) NOT NULL, "lake_table_id" VARCHAR(64) NOT NULL, '
            '"lake_version" BIGINT NOT NULL, "loaded_at" TIMESTAMPTZ NOT NULL)',
        ),
        Statement(
            "create_set_aside",
            f"CREATE TABLE IF NOT EXISTS {target.set_aside} ("
            f'"table_name" VARCHAR(127) NOT NULL, "_id" {d.key_type} NOT NULL, "_pos" BIGINT, '
            '"doc_bytes" BIGINT, "reason" VARCHAR(256), "lake_version" BIGINT NOT NULL)',
        ),
        Statement(
            "create_target",
            f"CREATE TABLE IF NOT EXISTS {target.qualified} ({', '.join(columns)})"
            f"{d.table_options}",
        ),
    ]


def loaded_state_query(dialect: Dialect, target: TargetTable) -> Statement:
    return Statement(
        "loaded_state",
        f'SELECT "lake_table_id", "lake_version" FROM {target.control} '
        f'WHERE LOWER("table_name") = {dialect.param("table_name")}',
        {"table_name": target.table},
    )


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


def load_transaction(
    dialect: Dialect,
    target: TargetTable,
    *,
    source: StageSource,
    full: bool,
    expected: LoadedState | None,
    table_id: str,
    version: int,
    projection: Sequence[ProjectedColumn],
    add_columns: Sequence[ProjectedColumn] = (),
) -> list[Statement]:
    """The statements of one load, to run as one transaction, in order (see the module doc)."""
    d = dialect
    checked_table_id(table_id)
    staged = target.stage
    table_name = sql_string(target.table)
    stage_columns = [
        f'"_id" {d.key_type} NOT NULL',
        f'"doc" {d.staged_document_type}',
        '"_op" VARCHAR(16)',
        '"_pos" BIGINT',
        '"_event_time" TIMESTAMPTZ',
        '"_deleted" BOOLEAN NOT NULL',
        '"_set_aside" VARCHAR(256)',
        '"_doc_bytes" BIGINT',
        *(f"{quote_identifier(c.column)} {staged_type(c)}" for c in projection),
    ]
    statements = [
        _guard(target, expected),
        Statement(
            "create_stage",
            f"CREATE TEMP TABLE {staged} ({', '.join(stage_columns)}){d.stage_options}",
        ),
        d.load_stage(staged, source, projection),
        *(_add_column(target, c) for c in add_columns),
    ]
    if full:
        statements += [
            Statement("delete_changed", f"DELETE FROM {target.qualified}"),
            Statement(
                "delete_set_aside",
                f'DELETE FROM {target.set_aside} WHERE "table_name" = {table_name}',
            ),
        ]
    else:
        statements += [
            Statement(
                "delete_changed",
                f"DELETE FROM {target.qualified} USING {staged} "
                f'WHERE {target.qualified}."_id" = {staged}."_id"',
            ),
            Statement(
                "delete_set_aside",
                f"DELETE FROM {target.set_aside} USING {staged} "
                f'WHERE {target.set_aside}."table_name" = {table_name} '
                f'AND {target.set_aside}."_id" = {staged}."_id"',
            ),
        ]
    names = [*BASE_COLUMNS, *(c.column for c in projection)]
    values = [
        's."_id"',
        d.json_parse('s."doc"'),
        's."_op"',
        's."_pos"',
        's."_event_time"',
        sql_integer(version),
        d.now,
        *(projected_value(d, c, f"s.{quote_identifier(c.column)}") for c in projection),
    ]
    latest = (
        f'(SELECT *, ROW_NUMBER() OVER (PARTITION BY "_id" ORDER BY "_pos" DESC) AS "_rank" '
        f'FROM {staged}) AS s WHERE s."_rank" = 1 AND NOT s."_deleted"'
    )
    statements += [
        Statement(
            "insert_upserts",
            f"INSERT INTO {target.qualified} ({', '.join(map(quote_identifier, names))}) "
            f'SELECT {", ".join(values)} FROM {latest} AND s."_set_aside" IS NULL',
        ),
        Statement(
            "insert_set_aside",
            f'INSERT INTO {target.set_aside} ("table_name", "_id", "_pos", "doc_bytes", '
            f'"reason", "lake_version") SELECT {table_name}, s."_id", s."_pos", '
            f's."_doc_bytes", s."_set_aside", {sql_integer(version)} FROM {latest} '
            'AND s."_set_aside" IS NOT NULL',
        ),
        Statement(
            "delete_control",
            f"DELETE FROM {target.control} WHERE {_control_row(target)}",
        ),
        Statement(
            "insert_control",
            f'INSERT INTO {target.control} ("table_name", "lake_table_id", "lake_version", '
            f'"loaded_at") VALUES ({table_name}, {sql_string(table_id)}, '
            f"{sql_integer(version)}, {d.now})",
        ),
        Statement("drop_stage", f"DROP TABLE {staged}"),
    ]
    if d.max_batch_statements and len(statements) > d.max_batch_statements:
        raise PlanError(
            f"this load needs {len(statements)} statements but {d.name} runs at most "
            f"{d.max_batch_statements} in one transaction; add fewer projected columns per load "
            f"(at most {d.max_batch_statements - len(statements) + len(add_columns)} at once)"
        )
    check_statement_sizes(d, statements)
    return statements


def _guard(target: TargetTable, expected: LoadedState | None) -> Statement:
    """Fail the transaction (a cast error carrying the message) unless the control row is the one
    the plan was made from: a stale or replayed plan can never commit over a newer load."""
    where = _control_row(target)
    if expected is None:
        condition = f"(SELECT COUNT(*) FROM {target.control} WHERE {where}) = 0"
    else:
        condition = (
            f"(SELECT COUNT(*) FROM {target.control} WHERE {where} AND "
            f'"lake_table_id" = {sql_string(checked_table_id(expected.table_id))} AND '
            f'"lake_version" = {sql_integer(expected.version)}) = 1'
        )
    message = (
        f"lakehouse load of {target} stopped: the control row changed since this load was "
        "planned (another load committed first); nothing was applied, re-run the load"
    )
    return Statement(
        "guard",
        f"SELECT CAST(CASE WHEN {condition} THEN '0' ELSE {sql_string(message)} END AS INTEGER)",
    )


# Statements of ``load_transaction`` besides its ADD COLUMNs (a test holds it to the plan).
LOAD_STATEMENTS = 10


def columns_fit_in_load(dialect: Dialect, count: int) -> bool:
    """Whether ``count`` ADD COLUMNs fit in the load's one transaction (``max_batch_statements``:
    40 for the Data API's ``batch_execute_statement``)."""
    limit = dialect.max_batch_statements
    return not limit or LOAD_STATEMENTS + count <= limit


def column_additions(
    dialect: Dialect, target: TargetTable, columns: Sequence[ProjectedColumn]
) -> list[list[Statement]]:
    """ADD COLUMN for projected columns too many for the load's transaction, as transactions of at
    most ``max_batch_statements`` to run before it (Redshift adds one column per ALTER TABLE).

    The first transaction deletes the control row before anything else, so the load that follows
    is a full reload, and so is any retry if the run stops between these transactions and the
    load: no row is left with NULL in a new column while the control row says it is loaded.
    """
    statements = [
        Statement("delete_control", f"DELETE FROM {target.control} WHERE {_control_row(target)}"),
        *(_add_column(target, c) for c in columns),
    ]
    size = dialect.max_batch_statements or len(statements)
    return [statements[i : i + size] for i in range(0, len(statements), size)]


def _add_column(target: TargetTable, column: ProjectedColumn) -> Statement:
    return Statement(
        f"add_column:{column.column}",
        f"ALTER TABLE {target.qualified} ADD COLUMN {quote_identifier(column.column)} "
        f"{column.sql_type}",
    )


def _control_row(target: TargetTable) -> str:
    """The control row of ``target``, matched by folded name: a row written with another case
    (DuckDB kept the case it was given before names were folded) is the same table's row."""
    return f'LOWER("table_name") = {sql_string(target.table)}'


def staged_type(column: ProjectedColumn) -> str:
    """The column's type in the staging table: temporal values travel as epoch microseconds."""
    return "BIGINT" if column.family in _TEMPORAL else column.sql_type


def stage_query(projection: Sequence[ProjectedColumn], relation: str) -> str:
    """DuckDB SQL: the staged rows of ``relation`` (``STAGE_COLUMNS``) followed by the projected
    columns computed from ``doc``. Run by DuckDB for both warehouses, with ``TimeZone`` = UTC."""
    columns = [quote_identifier(c) for c in STAGE_COLUMNS]
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


def set_aside_query(dialect: Dialect, target: TargetTable) -> Statement:
    """The keys of ``target`` set aside because the warehouse cannot hold their documents."""
    return Statement(
        "set_aside_keys",
        f'SELECT "_id", "_pos", "reason" FROM {target.set_aside} '
        f'WHERE "table_name" = {dialect.param("table_name")}',
        {"table_name": target.table},
    )


def check_statement_sizes(dialect: Dialect, statements: Sequence[Statement]) -> None:
    """Refuse a plan holding a statement the warehouse's API would reject for its size."""
    limit = dialect.max_statement_bytes
    if not limit:
        return
    for statement in statements:
        size = len(statement.sql.encode())
        if size > limit:
            raise PlanError(
                f"statement {statement.label} of this load is {size} bytes but {dialect.name} "
                f"accepts at most {limit} bytes per statement; project fewer columns or use "
                "shorter column names"
            )


# The longest names a load can have (Redshift's 127 bytes), for checks made before the table is
# known (configuration): a projection that fits with these fits with any table.
_LONGEST_NAME = "t" * MAX_IDENTIFIER_BYTES
_CHECK_TABLE_ID = "00000000-0000-0000-0000-000000000000"


def check_projection_limits(
    dialect: Dialect,
    projection: Sequence[ProjectedColumn],
    *,
    schema: str = _LONGEST_NAME,
    table: str = _LONGEST_NAME,
) -> None:
    """Refuse, with ``PlanError``, a projection that no load into ``schema.table`` could carry:
    more columns than the warehouse's table limit, or a steady-state load statement over the
    warehouse API's size limit. Called at configuration (settings, worst-case names) and when a
    load request is validated (its names), so it never first fails at every load."""
    columns = len(BASE_COLUMNS) + len(projection)
    if dialect.max_table_columns and columns > dialect.max_table_columns:
        raise PlanError(
            f"the projection has {len(projection)} columns, which with the load's "
            f"{len(BASE_COLUMNS)} own columns makes {columns}; {dialect.name} tables hold at most "
            f"{dialect.max_table_columns} columns: project at most "
            f"{dialect.max_table_columns - len(BASE_COLUMNS)} fields"
        )
    if not dialect.max_statement_bytes:
        return
    source = StageSource(
        relation="_lakehouse_stage_rows",
        s3_uri="s3://" + "b" * 63 + "/" + "k" * 900,
        iam_role=f"arn:aws:iam::123456789012:role/{'r' * 64}",
    )
    check_statement_sizes(
        dialect,
        load_transaction(
            dialect,
            TargetTable.named(dialect, schema, table),
            source=source,
            full=False,
            expected=LoadedState(_CHECK_TABLE_ID, 2**62),
            table_id=_CHECK_TABLE_ID,
            version=2**62,
            projection=projection,
        ),
    )


# -- reconciliation ----------------------------------------------------------------------------


def reconciliation_query(dialect: Dialect, target: TargetTable) -> Statement:
    """Per key bucket: rows, distinct keys and the sum of a 32-bit hash of ``_id:_pos``."""
    d = dialect
    bucket = d.hex_to_int(f'SUBSTRING(MD5("_id"), 1, {BUCKET_HEX_DIGITS})')
    row_hash = d.hex_to_int("""SUBSTRING(MD5("_id" || ':' || CAST("_pos" AS VARCHAR)), 1, 8)""")
    return Statement(
        "reconcile_buckets",
        f'SELECT {bucket} AS "bucket", COUNT(*) AS "row_count", '
        f'COUNT(DISTINCT "_id") AS "key_count", SUM({row_hash}) AS "hash_sum" '
        f"FROM {target.qualified} GROUP BY 1 ORDER BY 1",
    )


def bucket_rows_query(dialect: Dialect, target: TargetTable, buckets: Sequence[int]) -> Statement:
    """Keys and positions of the warehouse rows in a few buckets (to name what differs)."""
    bucket = dialect.hex_to_int(f'SUBSTRING(MD5("_id"), 1, {BUCKET_HEX_DIGITS})')
    listed = ", ".join(sql_integer(b) for b in buckets)
    return Statement(
        "bucket_rows",
        f'SELECT "_id", "_pos" FROM {target.qualified} WHERE {bucket} IN ({listed})',
    )


def key_bucket(key: str) -> int:
    """The bucket of ``key``, as ``reconciliation_query`` computes it in SQL (the first
    ``BUCKET_HEX_DIGITS`` hex digits of md5 are its first byte)."""
    return hashlib.md5(key.encode()).digest()[0]


def version_hash(key: str, pos: int) -> int:
    """The per-row hash summed by ``reconciliation_query`` (8 hex digits = the first 4 bytes)."""
    return int.from_bytes(hashlib.md5(f"{key}:{pos}".encode()).digest()[:4], "big")


# -- dialects ---------------------------------------------------------------------------------


class Dialect:
    """What differs between the warehouses. Subclasses only set names and render small pieces."""

    name: ClassVar[str]
    key_type: ClassVar[str]
    document_type: ClassVar[str]  # the full document in the target
    staged_document_type: ClassVar[str]  # the document in the staging table
    # Largest document (UTF-8 bytes of its JSON text) the warehouse holds; larger ones are set
    # aside (``SET_ASIDE_TABLE``). ``max_string_bytes``: the same for one string value inside.
    max_document_bytes: ClassVar[int | None] = None
    max_string_bytes: ClassVar[int | None] = None
    max_key_bytes: ClassVar[int | None] = None
    table_options: ClassVar[str] = ""
    stage_options: ClassVar[str] = ""
    now: ClassVar[str]
    max_batch_statements: ClassVar[int | None] = None
    max_statement_bytes: ClassVar[int | None] = None
    max_table_columns: ClassVar[int | None] = None

    def param(self, name: str) -> str:
        raise NotImplementedError

    def fold(self, identifier: str) -> str:
        # Redshift lower-cases identifiers, quoted or not (unless enable_case_sensitive_identifier
        # is on); DuckDB keeps their case but resolves them without it. Both use the folded name
        # for catalog lookups and the control row, so one table is always one name.
        return identifier.lower()

    def json_parse(self, expression: str) -> str:
        raise NotImplementedError

    def micros_to_timestamp(self, expression: str) -> str:
        """A TIMESTAMP (no time zone) from microseconds since 1970-01-01T00:00:00 UTC."""
        raise NotImplementedError

    def hex_to_int(self, expression: str) -> str:
        raise NotImplementedError

    def load_stage(
        self, stage: str, source: StageSource, projection: Sequence[ProjectedColumn]
    ) -> Statement:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} dialect>"


class DuckDBDialect(Dialect):
    name = "duckdb"
    key_type = "VARCHAR"
    document_type = "JSON"
    staged_document_type = "VARCHAR"  # no length limit below DuckDB's 4 GB string
    now = "now()"

    def param(self, name: str) -> str:
        return f"${name}"

    def json_parse(self, expression: str) -> str:
        return f"CAST({expression} AS JSON)"

    def micros_to_timestamp(self, expression: str) -> str:
        return f"make_timestamp({expression})"

    def hex_to_int(self, expression: str) -> str:
        return f"CAST('0x' || {expression} AS BIGINT)"

    def load_stage(
        self, stage: str, source: StageSource, projection: Sequence[ProjectedColumn]
    ) -> Statement:
        if not source.relation:
            raise PlanError("DuckDB stages from a registered Arrow relation; none was given")
        return Statement(
            "load_stage", f"INSERT INTO {stage} {stage_query(projection, source.relation)}"
        )


class RedshiftDialect(Dialect):
    """Redshift through the Data API.

    The document is staged as VARBYTE and parsed with ``JSON_PARSE`` (which takes VARCHAR or
    VARBYTE): VARCHAR stops at 65,535 bytes, VARBYTE goes to 16,777,216 ("VARBYTE type"), and a
    SUPER value holds up to 16 MB, any string literal in it up to 16,000,000 bytes ("SUPER
    limitations"). Paths considered and not taken: COPY ``FORMAT JSON 'noshred'``/``'auto'``
    stops at 4 MB per JSON object; Parquet ``SERIALIZETOJSON`` needs the document as nested
    Parquet types, but a collection's documents share no schema (the lake keeps them as extended
    JSON text). Documents over ``max_document_bytes`` are set aside, never loaded half.
    """

    name = "redshift"
    # The record key of an _id: DocumentDB indexes keys of at most 2,048 bytes and the key text
    # escapes a byte into at most 6 characters (\u00XX) plus wrappers; 65,535 is VARCHAR's
    # maximum and bounds any key text that can occur. Tables created before keep their type.
    key_type = "VARCHAR(65535)"
    max_key_bytes = 65535
    document_type = "SUPER"
    staged_document_type = "VARBYTE(16777216)"
    max_document_bytes = 16_000_000
    # One string value in a SUPER: 65,535 bytes unless the cluster opted into 16,000,000-byte
    # strings (a database parameter, announced 2026-11); the opt-in is not assumed.
    max_string_bytes = 65_535
    table_options = ' DISTKEY("_id") SORTKEY("_id")'
    stage_options = ' DISTKEY("_id")'
    now = "GETDATE()"
    max_batch_statements = 40  # batch_execute_statement's Sqls: 1..40
    # The Data API refuses a query string over 100 KB ("Cannot process query string larger than
    # 100kB"); kept under 100,000 bytes per statement.
    max_statement_bytes = 100_000
    # "Quotas and limits in Amazon Redshift": at most 1,600 columns in a table.
    max_table_columns = 1600

    def param(self, name: str) -> str:
        return f":{name}"

    def json_parse(self, expression: str) -> str:
        return f"JSON_PARSE({expression})"

    def micros_to_timestamp(self, expression: str) -> str:
        return f"TIMESTAMP 'epoch' + {expression} * INTERVAL '0.000001 second'"

    def hex_to_int(self, expression: str) -> str:
        return f"STRTOL({expression}, 16)"

    def load_stage(
        self, stage: str, source: StageSource, projection: Sequence[ProjectedColumn]
    ) -> Statement:
        if not (source.s3_uri and source.iam_role):
            raise PlanError("Redshift stages with COPY from S3: a staging URI and an IAM role")
        role = checked_iam_role(source.iam_role)
        return Statement(
            "load_stage",
            f"COPY {stage} FROM {sql_string(checked_s3_uri(source.s3_uri))} "
            f"IAM_ROLE {sql_string(role)} FORMAT AS PARQUET",
            secrets=(role,),
        )


DUCKDB = DuckDBDialect()
REDSHIFT = RedshiftDialect()
