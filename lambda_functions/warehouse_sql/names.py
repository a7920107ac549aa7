"""Warehouse names: the identifier rule, the load's own tables and columns.

Redshift identifiers are 1 to 127 bytes of UTF-8 and ASCII letters fold to lower case, quoted or
not, unless ``enable_case_sensitive_identifier`` is on (Amazon Redshift Database Developer Guide,
"Names and identifiers"). DuckDB keeps the case it was given but resolves names without case and
has no length limit. So one rule serves both: plain ASCII names of at most 127 bytes, and two names
are one table or column when their lower-case forms are equal.
"""

from __future__ import annotations

import re

from lambda_functions.warehouse_sql.errors import UnsafeSqlValueError

MAX_IDENTIFIER_BYTES = 127  # Redshift; DuckDB has no limit
# Plain names (letters, digits, '_' or '-'; ASCII, so characters are bytes) up to Redshift's
# identifier limit of MAX_IDENTIFIER_BYTES.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,126}$")

CONTROL_TABLE = "_lakehouse_loads"
STAGE_TABLE = "_lakehouse_stage"
# Documents the warehouse cannot hold (see ``Dialect.max_document_bytes``), one row per key, kept
# in the same transaction as the data so reconciliation counts them as accounted for.
SET_ASIDE_TABLE = "_lakehouse_set_aside"
# Tables the load itself keeps in every warehouse schema: no collection may load into them.
LOAD_TABLES = frozenset((CONTROL_TABLE, STAGE_TABLE, SET_ASIDE_TABLE))
# Columns the load owns; projected columns may not take these names.
BASE_COLUMNS = ("_id", "doc", "_op", "_pos", "_event_time", "_lake_version", "_loaded_at")
# The staged rows, in this order (Redshift's Parquet COPY matches columns by position), followed
# by the projected columns, already computed (see ``stage_query``).
STAGE_COLUMNS = ("_id", "doc", "_op", "_pos", "_event_time", "_deleted", "_set_aside", "_doc_bytes")
# With history kept, the staged rows also carry the lake version that wrote each change.
HISTORY_STAGE_COLUMNS = (*STAGE_COLUMNS, "_commit_version")
# Redshift's system columns (PostgreSQL's), which no user column may be named ("Names and
# identifiers"): an ADD COLUMN "xmin" would fail every load.
SYSTEM_COLUMNS = ("oid", "tableoid", "xmin", "cmin", "xmax", "cmax", "ctid")
RESERVED_COLUMNS = frozenset((*BASE_COLUMNS, *STAGE_COLUMNS, "_rank", *SYSTEM_COLUMNS))
# A collection's history table (``warehouse_sql.history``) is its table's name plus this suffix;
# its own columns, in order, before the projected ones. Projected columns may not take these
# names when history is kept (checked then only: without history they are ordinary fields).
HISTORY_SUFFIX = "_history"
HISTORY_COLUMNS = (
    "_id",
    "doc",
    "_op",
    "_pos",
    "valid_from",
    "valid_to",
    "is_current",
    "_lake_version",
    "_loaded_at",
)


def fold_identifier(name: str) -> str:
    """The name a warehouse resolves ``name`` to: Redshift lower-cases ASCII letters and DuckDB
    compares without case, so two names are one table (or column) when these are equal."""
    return name.lower()


def quote_identifier(name: str) -> str:
    """``"name"`` for a name matching the identifier rule; anything else is refused, not escaped.

    Raises:
        UnsafeSqlValueError: ``name`` is not a string of letters, digits, '_' or '-', starting
            with a letter or '_', of at most ``MAX_IDENTIFIER_BYTES`` characters.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise UnsafeSqlValueError(
            f"{name!r} is not a valid SQL identifier here: use letters, digits, '_' or '-', "
            f"starting with a letter or '_', at most {MAX_IDENTIFIER_BYTES} characters"
        )
    return f'"{name}"'
