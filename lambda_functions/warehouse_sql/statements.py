"""What a plan is made of: statements, where staged rows come from, the loaded state, the target."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lambda_functions.warehouse_sql.names import (
    CONTROL_TABLE,
    SET_ASIDE_TABLE,
    STAGE_TABLE,
    quote_identifier,
)

if TYPE_CHECKING:
    from lambda_functions.warehouse_sql.dialects import Dialect


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
        """The SQL with ``secrets`` shown as ``***``."""
        return redact(self.sql, self.secrets)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
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
    """The control row: the lake table (``table_id``, a UUID) and version last loaded."""

    table_id: str
    version: int


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

    def bookkeeping_rows(
        self,
        label: str,
        dialect: Dialect,
        relation: str,
        columns: Iterable[str],
        *,
        any_case: bool = False,
    ) -> Statement:
        """This table's rows of a table shared by the schema's loads (``control``,
        ``set_aside``), selected by their ``table_name`` column through a bound parameter.

        Args:
            label: the statement's label.
            dialect: renders the parameter.
            relation: the qualified shared table.
            columns: the columns to read, in order (quoted here).
            any_case: compare ``LOWER("table_name")``: rows written before names were folded.

        Returns:
            A read-only ``SELECT`` with the parameter ``table_name`` = ``self.table``.
        """
        name = 'LOWER("table_name")' if any_case else '"table_name"'
        return Statement(
            label,
            f"SELECT {', '.join(map(quote_identifier, columns))} FROM {relation} "
            f"WHERE {name} = {dialect.param('table_name')}",
            {"table_name": self.table},
        )

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"
