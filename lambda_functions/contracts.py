"""Requests that cross the Lambda boundary: the invoke contract between Dagster and the data plane.

Each request is a frozen dataclass with a ``schema_version``. The orchestrator builds one and sends
``to_event()``; the handler rebuilds it with ``from_event()``, which rejects unknown versions and
missing or mistyped fields with a message naming the field, so a bad event fails before any work.
Secrets never travel in events: requests name where credentials live, never the credentials.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

SCHEMA_VERSION = 1
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


class InvalidRequestError(ValueError):
    """The event does not describe a valid request; the message says which field and why."""


def name_problem(value: Any) -> str | None:
    """What keeps ``value`` from being a database/collection name here (``None`` when it is
    one), in words: MongoDB allows names this product cannot turn into lake paths and SQL
    identifiers (dots, as in GridFS's ``fs.files``; ``$``; spaces; more than 63 characters)."""
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a string"
    if _NAME.match(value):
        return None
    problems = []
    if len(value) > 63:
        problems.append(f"it is {len(value)} characters long (at most 63)")
    if not value:
        problems.append("it is empty")
    elif not (value[0].isascii() and (value[0].isalpha() or value[0] == "_")):
        problems.append(f"it starts with {value[0]!r} (a letter or '_' is needed)")
    odd = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "_-"))})
    named = {".": "dots", "$": "'$'", " ": "spaces"}
    if odd:
        problems.append(
            "it contains "
            + ", ".join(named.get(c, repr(c)) for c in odd)
            + (" (e.g. GridFS's fs.files and fs.chunks)" if "." in odd else "")
        )
    return "; ".join(problems)


# Warehouse identifiers (schemas, tables, columns). Redshift: 1 to 127 bytes of UTF-8, and ASCII
# letters fold to lower case, quoted or not, unless enable_case_sensitive_identifier is on (AWS,
# "Names and identifiers"). DuckDB keeps the case it was given but resolves names without case,
# quoted or not, and has no length limit. So one rule serves both: at most 127 bytes, and two
# names are the same table or column when their lower-case forms are equal.
WAREHOUSE_IDENTIFIER_BYTES = 127
_WAREHOUSE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Tables the load itself keeps in every warehouse schema (see warehouse_load.sql_plan).
RESERVED_TABLES = frozenset(("_lakehouse_loads", "_lakehouse_stage", "_lakehouse_set_aside"))


def fold_identifier(name: str) -> str:
    """The name a warehouse resolves ``name`` to: Redshift lower-cases ASCII letters and DuckDB
    compares without case, so two names are one table (or column) when these are equal."""
    return name.lower()


def warehouse_name_problem(value: Any, what: str = "warehouse table") -> str | None:
    """What keeps ``value`` from being a warehouse schema or table name (``None`` when it is
    one): the product's plain-name pattern, Redshift's 127-byte limit, the load's own tables.
    ``what`` ("warehouse table" or "warehouse schema") names the value in the message."""
    if not isinstance(value, str):
        return f"{what} name {value!r} is a {type(value).__name__}, not a string"
    if not _WAREHOUSE_NAME.match(value):
        return (
            f"{what} name {value!r} is not a plain name: use letters, digits, '_' or '-', "
            "starting with a letter or '_'"
        )
    size = len(value.encode("utf-8"))
    if size > WAREHOUSE_IDENTIFIER_BYTES:
        return (
            f"{what} name {value!r} is {size} bytes long; Redshift allows at most "
            f"{WAREHOUSE_IDENTIFIER_BYTES} bytes for an identifier"
        )
    if what == "warehouse table" and fold_identifier(value) in RESERVED_TABLES:
        return (
            f"{what} name {value!r} is the load's own control/staging table "
            f"({', '.join(sorted(RESERVED_TABLES))})"
        )
    return None


def validate_warehouse_name(value: str, what: str) -> str:
    """A warehouse schema or table name (``what``: "warehouse table" or "warehouse schema"),
    checked; ``InvalidRequestError`` says what is wrong (see ``warehouse_name_problem``)."""
    problem = warehouse_name_problem(value, what)
    if problem:
        raise InvalidRequestError(problem)
    return value


def closest_names(name: str, existing: list[str] | tuple[str, ...], limit: int = 3) -> list[str]:
    """The names of ``existing`` closest to ``name`` (a likely typo's intended name), best first.

    Args:
        name: the name that was not found, e.g. ``"ordrs"``.
        existing: the names that exist.
        limit: at most this many suggestions.

    Returns:
        Up to ``limit`` names (``difflib`` ratio 0.6 or more); empty when none is close.
    """
    return difflib.get_close_matches(name, list(existing), n=limit, cutoff=0.6)


def validate_name(value: str, what: str) -> str:
    """Database, collection and table names become paths and SQL identifiers: keep them plain."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequestError(
            f"{what} {value!r} is not a valid name: use letters, digits, '_' or '-', "
            "starting with a letter or '_', at most 63 characters"
        )
    return value


@dataclasses.dataclass(frozen=True)
class _Request:
    kind: ClassVar[str]

    def to_event(self) -> dict[str, Any]:
        return {"request": self.kind, "schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Self:
        if not isinstance(event, Mapping):
            raise InvalidRequestError(
                f"the event must be a JSON object, got {type(event).__name__}"
            )
        if event.get("request") != cls.kind:
            raise InvalidRequestError(
                f"this function handles '{cls.kind}' requests, got request={event.get('request')!r}"
            )
        version = event.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InvalidRequestError(
                f"unsupported schema_version {version!r} (this function speaks {SCHEMA_VERSION}); "
                "deploy matching versions of the code location and the Lambda functions"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in event:
                values[field.name] = _check_type(field.name, event[field.name], hints[field.name])
            elif (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise InvalidRequestError(
                    f"'{cls.kind}' request is missing the field '{field.name}'"
                )
        request = cls(**values)
        request.validate()
        return request

    def validate(self) -> None:
        """Semantic checks beyond types; subclasses extend."""


def _check_type(name: str, value: Any, hint: Any) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(typing.get_origin(a) or a for a in allowed)
    allowed = tuple(type(None) if a is None else a for a in allowed)
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
    if not ok:
        names = " | ".join(getattr(a, "__name__", str(a)) for a in allowed)
        raise InvalidRequestError(f"field '{name}' must be {names}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class CollectionRequest(_Request):
    """Fields every stage needs: where the lake is and which collection."""

    lake_uri: str
    database: str
    collection: str

    def validate(self) -> None:
        validate_name(self.database, "database")
        validate_name(self.collection, "collection")
        if not self.lake_uri:
            raise InvalidRequestError("lake_uri must be a directory path, file:// or s3:// URI")

    @property
    def namespace(self) -> str:
        return f"{self.database}.{self.collection}"


@dataclasses.dataclass(frozen=True)
class SourceRequest(CollectionRequest):
    """Fields of a request that reads the source collection: which source and how to reach it."""

    source_kind: str = "embedded"  # "embedded" | "documentdb"
    # embedded: path of the store file; documentdb: name of the env var holding the URI
    source_location: str = ""
    # documentdb: ARN of a Secrets Manager secret {username, password, host, port, ...}; used
    # instead of the URI variable when set. The ARN names the secret, it is not the secret.
    secret_arn: str = ""
    tls: bool = True  # documentdb: TLS is on unless explicitly turned off
    tls_ca_file: str = ""  # documentdb: CA bundle path (e.g. global-bundle.pem); "" = system CAs

    def validate(self) -> None:
        super().validate()
        if self.source_kind not in ("embedded", "documentdb"):
            raise InvalidRequestError(
                f"source_kind {self.source_kind!r} is unknown: use 'embedded' or 'documentdb'"
            )
        if self.source_kind == "documentdb" and "://" in self.source_location:
            raise InvalidRequestError(
                "source_location must be the NAME of an environment variable holding the URI, "
                "not the URI itself: credentials never travel in the event (value not shown)"
            )
        if self.source_kind == "documentdb" and not (self.secret_arn or self.source_location):
            raise InvalidRequestError(
                "source_kind 'documentdb' needs secret_arn (a Secrets Manager secret) or "
                "source_location (the NAME of an environment variable holding the URI)"
            )


@dataclasses.dataclass(frozen=True)
class CaptureRequest(SourceRequest):
    """Capture the changes since the last checkpoint into one raw batch."""

    kind: ClassVar[str] = "cdc_capture"
    demo_changes: int = 0  # embedded only: changes the demo workload makes before capturing
    max_rows: int = 100_000
    # Canonical JSON bytes per batch; a batch's peak memory is ~4x this (Python strings, the Arrow
    # copy, the Parquet buffer), so 64 MiB keeps a 1 GB Lambda well clear (benchmarks/cdc_capture)
    max_bytes: int = 64 * 1024 * 1024
    reset: bool = False  # publish a "dropped" marker batch, then take a new snapshot
    auto_resnapshot: bool = False  # on an expired resume token, re-snapshot instead of failing
    max_cdc_lag_seconds: float = 900.0  # the cdc_lag check fails above this
    stream_retention_seconds: int = 3 * 3600  # change-stream log retention (DocumentDB: 3 h)

    def validate(self) -> None:
        super().validate()
        if self.max_rows < 1 or self.max_bytes < 1:
            raise InvalidRequestError("max_rows and max_bytes must be positive")
        if self.stream_retention_seconds < 1 or self.max_cdc_lag_seconds <= 0:
            raise InvalidRequestError(
                "stream_retention_seconds and max_cdc_lag_seconds must be positive"
            )


# The source audit hashes record keys into this many buckets (see cdc_capture.source_audit).
SOURCE_AUDIT_BUCKETS = 64


@dataclasses.dataclass(frozen=True)
class SourceAuditRequest(SourceRequest):
    """Compare the source collection with its lake table, bucket by bucket (read-only on both).

    A run audits ``buckets_per_run`` of the ``SOURCE_AUDIT_BUCKETS`` key-hash buckets (all of them
    by default), continuing where the previous run stopped, so a big collection is covered over
    ``SOURCE_AUDIT_BUCKETS / buckets_per_run`` runs at a bounded cost each.
    """

    kind: ClassVar[str] = "source_audit"
    buckets_per_run: int = SOURCE_AUDIT_BUCKETS  # sampled rate = buckets_per_run / 64
    max_rows: int = 2_000_000  # audited documents per side above which the run stops, unaudited
    page_rows: int = 1_000  # source documents per read
    max_in_flight: int = 200_000  # change events after the lake's position it will read
    recheck_delay_s: float = 2.0  # pause before re-reading the keys that differ
    sample_keys: int = 10  # keys named per kind of difference

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.buckets_per_run <= SOURCE_AUDIT_BUCKETS:
            raise InvalidRequestError(
                f"buckets_per_run must be 1 to {SOURCE_AUDIT_BUCKETS} (the sampled share of "
                f"the collection per run is buckets_per_run / {SOURCE_AUDIT_BUCKETS})"
            )
        if min(self.max_rows, self.page_rows, self.max_in_flight) < 1:
            raise InvalidRequestError("max_rows, page_rows and max_in_flight must be positive")
        if self.recheck_delay_s < 0 or self.sample_keys < 0:
            raise InvalidRequestError("recheck_delay_s and sample_keys must be 0 or more")


@dataclasses.dataclass(frozen=True)
class MergeRequest(CollectionRequest):
    """Apply every raw batch not yet in the lake table, in batch order, as one atomic commit."""

    kind: ClassVar[str] = "merge"
    max_batches: int = 1000


@dataclasses.dataclass(frozen=True)
class LoadRequest(CollectionRequest):
    """Load the lake table's changes since the last loaded version into the warehouse."""

    kind: ClassVar[str] = "warehouse_load"
    warehouse_kind: str = "duckdb"  # "duckdb" | "redshift"
    warehouse_location: str = ""  # duckdb: database file path
    target_schema: str = "analytics"
    target_table: str = ""  # defaults to the collection name
    # Document fields loaded as typed columns beside the full document, e.g.
    # {"status": "VARCHAR(32)", "total": "DECIMAL(18,2)"} (see warehouse_load.sql_plan).
    projection: dict[str, str] = dataclasses.field(default_factory=dict)
    force_full_reload: bool = False
    # redshift: where statements run (a Serverless workgroup, or a cluster with a database user
    # or a Secrets Manager secret ARN: a name of where credentials live, never credentials) and
    # the IAM role COPY reads the staged Parquet with.
    redshift_database: str = ""
    redshift_workgroup: str = ""
    redshift_cluster: str = ""
    redshift_db_user: str = ""
    redshift_secret_arn: str = ""
    redshift_iam_role: str = ""
    redshift_timeout_s: int = 600  # per Data API statement; cancelled after this

    def validate(self) -> None:
        super().validate()
        if self.warehouse_kind not in ("duckdb", "redshift"):
            raise InvalidRequestError(
                f"warehouse_kind {self.warehouse_kind!r} is unknown: use 'duckdb' or 'redshift'"
            )
        validate_warehouse_name(self.target_schema, "warehouse schema")
        validate_warehouse_name(self.table_name, "warehouse table")
        from lambda_functions.warehouse_load.sql_plan import (
            REDSHIFT,
            PlanError,
            UnsafeSqlValueError,
            check_projection_limits,
            checked_iam_role,
            parse_projection,
        )

        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.projection.items()):
            raise InvalidRequestError("projection must map field names to SQL type names")
        try:
            projection = parse_projection(self.projection)
            if self.warehouse_kind == "redshift":
                check_projection_limits(
                    REDSHIFT, projection, schema=self.target_schema, table=self.table_name
                )
        except PlanError as error:
            raise InvalidRequestError(str(error)) from None
        if self.warehouse_kind == "redshift":
            if not self.lake_uri.startswith("s3://"):
                raise InvalidRequestError(
                    "Redshift COPY reads the staged rows from S3: set LAKEHOUSE_LAKE_URI to "
                    "s3://bucket/prefix (a bucket in the cluster's region)"
                )
            if not self.redshift_database:
                raise InvalidRequestError(
                    "redshift_database is required: set LAKEHOUSE_REDSHIFT_DATABASE"
                )
            if bool(self.redshift_workgroup) == bool(self.redshift_cluster):
                raise InvalidRequestError(
                    "name exactly one of redshift_workgroup (LAKEHOUSE_REDSHIFT_WORKGROUP, "
                    "Serverless) or redshift_cluster (LAKEHOUSE_REDSHIFT_CLUSTER, provisioned)"
                )
            if self.redshift_cluster and not (self.redshift_db_user or self.redshift_secret_arn):
                raise InvalidRequestError(
                    "a provisioned cluster needs LAKEHOUSE_REDSHIFT_DB_USER (temporary "
                    "credentials) or LAKEHOUSE_REDSHIFT_SECRET_ARN (Secrets Manager)"
                )
            try:
                checked_iam_role(self.redshift_iam_role)
            except UnsafeSqlValueError as error:
                raise InvalidRequestError(str(error)) from None
            if self.redshift_timeout_s < 1:
                raise InvalidRequestError("redshift_timeout_s must be positive")

    @property
    def table_name(self) -> str:
        return self.target_table or self.collection


@dataclasses.dataclass(frozen=True)
class DmsIngestRequest(CollectionRequest):
    """Ingest the AWS DMS output files not ingested yet (one collection folder) into raw batches."""

    kind: ClassVar[str] = "dms_ingest"
    dms_uri: str = ""  # the collection's DMS folder: s3://bucket/<folder>/<db>/<coll> or a path
    max_rows: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    # The S3 target endpoint's CsvDelimiter (DMS default ","), one character.
    csv_delimiter: str = ","

    def validate(self) -> None:
        super().validate()
        if not self.dms_uri:
            raise InvalidRequestError(
                "dms_uri must name the folder DMS writes this collection to, e.g. "
                "s3://dms-output/cdc/shop/orders"
            )
        if len(self.csv_delimiter) != 1 or self.csv_delimiter in '"\r\n':
            raise InvalidRequestError(
                f"csv_delimiter {self.csv_delimiter!r} must be the one character the DMS S3 "
                "endpoint's CsvDelimiter setting names (default ','), not a quote or a newline"
            )
        if self.max_rows < 1 or self.max_bytes < 1:
            raise InvalidRequestError("max_rows and max_bytes must be positive")


@dataclasses.dataclass(frozen=True)
class CompactRequest(CollectionRequest):
    """Maintain the lake table: compact its cold partitions, then vacuum unreferenced files."""

    kind: ClassVar[str] = "lake_maintenance"
    # A partition is cold when none of its files was written in this many hours; hot partitions
    # are left to the merges (compacting them would only conflict with the next merge).
    cold_after_hours: int = 72
    z_order: bool = True  # sort cold partitions by _id (restores file pruning), else bin-pack
    vacuum: bool = True
    # Files removed longer ago than this are deleted: time travel and the change feed reach back
    # this far. Below 168 h (Delta's default), the load may lose the feed it needs (it then
    # reloads in full).
    vacuum_retention_hours: int = 168
    # Tombstones (rows of deleted documents that refuse older changes delivered late) whose
    # delete is older than this (by its event time) are removed. At least the longest delay any
    # input can have: DocumentDB keeps a change stream at most 7 days (168 h).
    tombstone_retention_hours: int = 168
    dry_run: bool = False  # report what would be compacted and deleted, change nothing

    def validate(self) -> None:
        super().validate()
        if (
            self.cold_after_hours < 0
            or self.vacuum_retention_hours < 0
            or self.tombstone_retention_hours < 0
        ):
            raise InvalidRequestError(
                "cold_after_hours, vacuum_retention_hours and tombstone_retention_hours must "
                "be 0 or more"
            )


@dataclasses.dataclass(frozen=True)
class DiscoveryRequest(SourceRequest):
    """List the collections of one source database: the ``database.*`` patterns of
    ``LAKEHOUSE_COLLECTIONS``, and the closest existing names for a misspelt collection.

    Served by ``lakehouse-collection-discovery`` so the code location never holds the source's
    credentials: like capture, the function reaches the source with ``secret_arn`` (Secrets
    Manager) or the URI variable named by ``source_location``. ``collection`` is always ``"*"``
    (the request covers the whole database). The function returns (no Pipes session) the JSON
    object ``{"database": str, "collections": [str, ...]}`` (sorted); a failure is Lambda's
    function-error payload (``errorType``/``errorMessage``).
    """

    kind: ClassVar[str] = "collection_discovery"
    collection: str = "*"

    def validate(self) -> None:
        if self.collection != "*":
            raise InvalidRequestError(
                f"a collection_discovery request covers a whole database: collection must be "
                f"'*', got {self.collection!r}"
            )
        # the lake, the database and the source fields are checked as for any source request
        SourceRequest.validate(dataclasses.replace(self, collection="listing"))
