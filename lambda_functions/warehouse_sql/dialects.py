"""What differs between the warehouses, in one place: DuckDB and Redshift (through the Data API).

The plan (``plan``) is the same for both; a ``Dialect`` only sets names, types and limits and
renders small pieces (parameters, JSON parsing, timestamps, the staging step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from lambda_functions.warehouse_sql.errors import PlanError
from lambda_functions.warehouse_sql.literals import checked_iam_role, checked_s3_uri, sql_string
from lambda_functions.warehouse_sql.names import fold_identifier
from lambda_functions.warehouse_sql.projection import ProjectedColumn
from lambda_functions.warehouse_sql.staging import stage_query
from lambda_functions.warehouse_sql.statements import StageSource, Statement


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

    # The small pieces each warehouse renders differently: a ``str.format`` template each.
    param_template: ClassVar[str]  # a named query parameter, ``{name}``
    json_parse_template: ClassVar[str]  # JSON text ``{expression}`` into the document type
    micros_to_timestamp_template: ClassVar[str]  # microseconds ``{expression}`` into a TIMESTAMP
    hex_to_int_template: ClassVar[str]  # hexadecimal text ``{expression}`` into a BIGINT

    def param(self, name: str) -> str:
        """The placeholder of the named query parameter ``name``."""
        return self.param_template.format(name=name)

    def fold(self, identifier: str) -> str:
        # Redshift lower-cases identifiers, quoted or not (unless enable_case_sensitive_identifier
        # is on); DuckDB keeps their case but resolves them without it. Both use the folded name
        # for catalog lookups and the control row, so one table is always one name.
        return fold_identifier(identifier)

    def json_parse(self, expression: str) -> str:
        """The document value parsed from the JSON text ``expression``."""
        return self.json_parse_template.format(expression=expression)

    def micros_to_timestamp(self, expression: str) -> str:
        """A TIMESTAMP (no time zone) from microseconds since 1970-01-01T00:00:00 UTC."""
        return self.micros_to_timestamp_template.format(expression=expression)

    def hex_to_int(self, expression: str) -> str:
        """The integer whose hexadecimal digits are the text ``expression``."""
        return self.hex_to_int_template.format(expression=expression)

    def own_columns(self, event_columns: Sequence[str]) -> list[str]:
        """Column definitions (DDL) of a target table's own columns, in the order its INSERT
        names them (``BASE_COLUMNS``, ``HISTORY_COLUMNS``).

        Args:
            event_columns: the definitions between ``_pos`` and ``_lake_version``: when the
                change happened (the current table) or the version's validity (history).

        Returns:
            ``_id`` (this warehouse's key type), ``doc`` (its document type), ``_op``, ``_pos``,
            then ``event_columns``, then ``_lake_version`` and ``_loaded_at``.
        """
        return [
            f'"_id" {self.key_type} NOT NULL',
            f'"doc" {self.document_type}',
            '"_op" VARCHAR(16)',
            '"_pos" BIGINT',
            *event_columns,
            '"_lake_version" BIGINT NOT NULL',
            '"_loaded_at" TIMESTAMPTZ NOT NULL',
        ]

    def load_stage(
        self,
        stage: str,
        source: StageSource,
        projection: Sequence[ProjectedColumn],
        *,
        history: bool = False,
    ) -> Statement:
        """Fill the staging table; ``history``: the rows carry ``_commit_version`` too."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} dialect>"


class DuckDBDialect(Dialect):
    name = "duckdb"
    key_type = "VARCHAR"
    document_type = "JSON"
    staged_document_type = "VARCHAR"  # no length limit below DuckDB's 4 GB string
    now = "now()"
    param_template = "${name}"
    json_parse_template = "CAST({expression} AS JSON)"
    micros_to_timestamp_template = "make_timestamp({expression})"
    hex_to_int_template = "CAST('0x' || {expression} AS BIGINT)"

    def load_stage(
        self,
        stage: str,
        source: StageSource,
        projection: Sequence[ProjectedColumn],
        *,
        history: bool = False,
    ) -> Statement:
        if not source.relation:
            raise PlanError("DuckDB stages from a registered Arrow relation; none was given")
        query = stage_query(projection, source.relation, history=history)
        return Statement("load_stage", f"INSERT INTO {stage} {query}")


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
    param_template = ":{name}"
    json_parse_template = "JSON_PARSE({expression})"
    micros_to_timestamp_template = "TIMESTAMP 'epoch' + {expression} * INTERVAL '0.000001 second'"
    hex_to_int_template = "STRTOL({expression}, 16)"

    def load_stage(
        self,
        stage: str,
        source: StageSource,
        projection: Sequence[ProjectedColumn],
        *,
        history: bool = False,
    ) -> Statement:
        # The staged Parquet holds the columns in the stage's order (``RedshiftWarehouse.stage``).
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
