"""Projection: document fields declared as typed warehouse columns beside the full document.

``parse_projection`` reads a declaration such as ``{"status": "VARCHAR(32)"}`` (the
``LAKEHOUSE_WAREHOUSE_PROJECTION`` setting, a ``LoadRequest``'s ``projection``) into
``ProjectedColumn`` records, refusing at configuration what could never load. How the values are
computed from the document is ``staging``'s job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from lambda_functions.warehouse_sql.errors import PlanError
from lambda_functions.warehouse_sql.names import MAX_IDENTIFIER_BYTES, RESERVED_COLUMNS

_PATH_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
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


@dataclass(frozen=True)
class ProjectedColumn:
    """A document field loaded as a typed column beside the full document."""

    column: str  # lower case: Redshift folds identifiers, DuckDB ignores case: the folded name
    path: tuple[str, ...]  # field path in the document
    sql_type: str  # normalized, e.g. "DECIMAL(18,2)"
    family: str


def parse_projection(declared: Mapping[str, str]) -> tuple[ProjectedColumn, ...]:
    """The projection a declaration describes.

    Column names are folded to lower case (Redshift folds identifiers, DuckDB resolves them
    without case), so two fields that differ only in case, or whose paths join to the same
    name, would be one column: refused here, at configuration, rather than at every load.

    Args:
        declared: field path -> SQL type, e.g. ``{"status": "VARCHAR(32)",
            "customer.address.city": "VARCHAR(64)"}``; a path has 1 to 3 names; types are
            ``SUPPORTED_TYPES`` (Redshift's names and DuckDB's aliases, any case).

    Returns:
        One ``ProjectedColumn`` per entry, in declaration order (here ``status`` and
        ``customer_address_city``).

    Raises:
        PlanError: naming the entry: a bad path, a reserved or over-long column name, two
            entries folding to one column, or an unsupported type or size.
    """
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
