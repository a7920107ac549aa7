"""Requests that cross the Lambda boundary: the invoke contract between Dagster and the data plane.

Each request is a frozen dataclass with a ``schema_version``. The orchestrator builds one and sends
``to_event()``; the handler rebuilds it with ``from_event()``, which rejects unknown versions and
missing or mistyped fields with a message naming the field, so a bad event fails before any work.
Secrets never travel in events: requests name where credentials live, never the credentials.

The contract sits under every stage and imports none: what it checks about a load (the warehouse
naming rules, the projection and the Redshift limits its worst-case statement must fit) comes from
``lambda_functions.warehouse_sql``, the pure SQL plan the ``warehouse_load`` stage executes. An
event is the ``Payload`` of a Lambda ``Invoke`` (AWS Lambda API Reference, "Invoke"): a JSON
object of at most 6 MB, so requests carry names and numbers, never data. The field rules
(names, warehouse names, the Redshift connection) are ``lambda_functions.request_fields``'s and
are part of this module's surface too (``__all__``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from lambda_functions.request_fields import (
    InvalidRequestError,
    check_masking,
    check_redshift_connection,
    closest_names,
    fold_identifier,
    name_problem,
    validate_name,
    validate_warehouse_name,
    warehouse_name_problem,
)
from lambda_functions.warehouse_sql import (
    REDSHIFT,
    PlanError,
    UnsafeSqlValueError,
    check_history,
    check_projection_limits,
    checked_iam_role,
    parse_projection,
)

SCHEMA_VERSION = 1
# Part of this module's public surface (the contract's field rules, used by every stage and by
# the Dagster side as ``lambda_functions.contracts.<name>``); defined in ``request_fields``.
__all__ = [
    "SCHEMA_VERSION",
    "SOURCE_AUDIT_BUCKETS",
    "CaptureRequest",
    "CollectionRequest",
    "CompactRequest",
    "DmsIngestRequest",
    "InvalidRequestError",
    "LoadRequest",
    "MergeRequest",
    "SourceAuditRequest",
    "SourceRequest",
    "check_redshift_connection",
    "closest_names",
    "fold_identifier",
    "name_problem",
    "validate_name",
    "validate_warehouse_name",
    "warehouse_name_problem",
]


@dataclasses.dataclass(frozen=True)
class _Request:
    """A request of one kind (``kind``, the event's ``request`` field), at ``SCHEMA_VERSION``."""

    kind: ClassVar[str]

    def to_event(self) -> dict[str, Any]:
        """The event to invoke the function with.

        Returns:
            A JSON-ready dict: ``request`` (the kind), ``schema_version`` and every field by
            name. ``from_event(to_event())`` gives an equal request.
        """
        return {"request": self.kind, "schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Self:
        """The request an event describes, checked field by field, then ``validate``-d.

        Args:
            event: the invoke payload (a JSON object), Pipes keys already removed; fields
                missing from it take their defaults, unknown keys are ignored.

        Returns:
            The request.

        Raises:
            InvalidRequestError: not an object; another request kind; a ``schema_version``
                other than ``SCHEMA_VERSION`` (deploy matching versions); a required field
                missing; a field of the wrong type; or whatever ``validate`` refuses.
        """
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
        """Semantic checks beyond types; subclasses extend. Pure: reads no service.

        Raises:
            InvalidRequestError: a field value the stage cannot use; the message names it.
        """


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
    """Fields every stage needs: where the lake is and which collection.

    Attributes:
        lake_uri: the lake's root: ``s3://bucket/prefix``, ``file://`` URI or a directory path.
        database: the source database name (``validate_name``).
        collection: the source collection name (``validate_name``).
    """

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
        """``database.collection``, MongoDB's namespace of the collection."""
        return f"{self.database}.{self.collection}"


@dataclasses.dataclass(frozen=True)
class SourceRequest(CollectionRequest):
    """Fields of a request that reads the source collection: which source and how to reach it.

    Attributes:
        source_kind: ``"embedded"`` (the local stand-in) or ``"documentdb"``.
        source_location: embedded: path of the store file; documentdb: the NAME of the
            environment variable holding the connection URI (never the URI itself).
        secret_arn: documentdb: ARN of a Secrets Manager secret ``{username, password, host,
            port, ...}`` (Amazon DocumentDB Developer Guide, "Password management with Secrets
            Manager"); used instead of the URI variable when set.
        tls: documentdb: TLS is on unless explicitly turned off.
        tls_ca_file: documentdb: CA bundle path (e.g. ``global-bundle.pem``); "" = system CAs.
        masking: PII masking rules, ``{"drop": [path...], "hash": [path...]}`` (``lake.masking``,
            from ``LAKEHOUSE_MASKING``), applied to what is read; ``{}`` masks nothing.
        masking_key_secret_arn: the secret holding the masking key; "" = the function's
            ``LAKEHOUSE_MASKING_KEY_SECRET_ARN`` or ``LAKEHOUSE_MASKING_KEY`` (never the key).
    """

    source_kind: str = "embedded"
    source_location: str = ""
    secret_arn: str = ""
    tls: bool = True
    tls_ca_file: str = ""
    masking: dict[str, list] = dataclasses.field(default_factory=dict)
    masking_key_secret_arn: str = ""

    def validate(self) -> None:
        super().validate()
        check_masking(self.masking, self.namespace)
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
    """Capture the changes since the last checkpoint into one raw batch (request ``cdc_capture``).

    Attributes:
        demo_changes: embedded only: changes the demo workload makes before capturing.
        max_rows: at most this many change events per batch.
        max_bytes: canonical JSON bytes per batch; a batch's peak memory is ~4x this (Python
            strings, the Arrow copy, the Parquet buffer), so 64 MiB keeps a 1 GB Lambda well
            clear (``benchmarks/cdc_capture``).
        reset: publish a "dropped" marker batch, then take a new snapshot.
        auto_resnapshot: on an expired resume token, re-snapshot instead of failing.
        max_cdc_lag_seconds: the ``cdc_lag`` check fails above this lag, in seconds.
        stream_retention_seconds: the change-stream log's retention, in seconds (DocumentDB's
            ``change_stream_log_retention_duration``, 3 h by default).
        full_document: the change stream's ``fullDocument`` option: ``"updateLookup"`` (update
            events carry the document as it is when read) or ``"default"`` (they carry only
            ``updateDescription``: partial updates, applied by the merge to the stored
            document; one lookup less per update on the cluster).
        snapshot_ranges: ranges a new snapshot (first load or ``reset``) is planned as, 1 to
            256; 1 keeps the single-worker snapshot. Above 1 the invocation plans the ranges
            (or publishes the generation once every range is captured, then reads the stream):
            ``cdc_capture.range_snapshot``.
        snapshot_range: set, this invocation captures one range of a planned generation:
            ``{"generation": id, "index": i, "count": n, "lower": ejson | None, "upper":
            ejson | None}`` (bounds: canonical extended JSON of ``_id``s, ``[lower, upper)``).
    """

    kind: ClassVar[str] = "cdc_capture"
    demo_changes: int = 0
    max_rows: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    reset: bool = False
    auto_resnapshot: bool = False
    max_cdc_lag_seconds: float = 900.0
    stream_retention_seconds: int = 3 * 3600
    full_document: str = "updateLookup"
    snapshot_ranges: int = 1
    snapshot_range: dict | None = None

    def validate(self) -> None:
        super().validate()
        if self.max_rows < 1 or self.max_bytes < 1:
            raise InvalidRequestError("max_rows and max_bytes must be positive")
        if self.full_document not in ("updateLookup", "default"):
            raise InvalidRequestError(
                f"full_document must be 'updateLookup' or 'default', not {self.full_document!r} "
                "(set LAKEHOUSE_UPDATE_LOOKUP to true or false)"
            )
        if not 1 <= self.snapshot_ranges <= 256:
            raise InvalidRequestError(
                "snapshot_ranges must be 1 to 256 (LAKEHOUSE_SNAPSHOT_RANGES)"
            )
        if self.snapshot_range is not None:
            wanted = {"generation", "index", "count", "lower", "upper"}
            got = self.snapshot_range
            if set(got) != wanted or not (
                isinstance(got["generation"], str)
                and isinstance(got["index"], int)
                and isinstance(got["count"], int)
                and 0 <= got["index"] < got["count"]
            ):
                raise InvalidRequestError(
                    "snapshot_range must be {generation: str, index: int, count: int, lower, "
                    f"upper}} with 0 <= index < count, got {got!r}"
                )
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

    Attributes:
        buckets_per_run: buckets audited per run, 1 to 64 (sampled share = buckets_per_run / 64).
        max_rows: audited documents per side above which the run stops, unaudited.
        page_rows: source documents per read.
        max_in_flight: change events after the lake's position the audit will read.
        recheck_delay_s: pause before re-reading the keys that differ, in seconds.
        sample_keys: keys named per kind of difference.
    """

    kind: ClassVar[str] = "source_audit"
    buckets_per_run: int = SOURCE_AUDIT_BUCKETS
    max_rows: int = 2_000_000
    page_rows: int = 1_000
    max_in_flight: int = 200_000
    recheck_delay_s: float = 2.0
    sample_keys: int = 10

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
    """Apply every raw batch not yet in the lake table, in batch order, as one atomic commit.

    Attributes:
        max_batches: at most this many raw batches per merge (the rest wait for the next one).
    """

    kind: ClassVar[str] = "merge"
    max_batches: int = 1000


@dataclasses.dataclass(frozen=True)
class LoadRequest(CollectionRequest):
    """Load the lake table's changes since the last loaded version into the warehouse.

    Attributes:
        warehouse_kind: ``"duckdb"`` (embedded) or ``"redshift"`` (through the Data API).
        warehouse_location: duckdb: the database file's path.
        target_schema: the warehouse schema (``validate_warehouse_name``).
        target_table: the warehouse table; "" = the collection name (``table_name``).
        projection: document fields loaded as typed columns beside the full document, field
            path -> SQL type, e.g. ``{"status": "VARCHAR(32)", "total": "DECIMAL(18,2)"}``
            (``warehouse_sql.parse_projection``).
        force_full_reload: reload every row instead of the changes since the loaded version.
        redshift_database, redshift_workgroup, redshift_cluster, redshift_db_user,
        redshift_secret_arn: where statements run and as whom (``check_redshift_connection``);
            names of where credentials live, never credentials.
        redshift_iam_role: the IAM role ARN (or a comma-separated role chain) COPY reads the
            staged Parquet with.
        redshift_timeout_s: seconds per Data API statement before it is cancelled.
        history: also keep ``<table>_history``, every version of each document (SCD2).
    """

    kind: ClassVar[str] = "warehouse_load"
    warehouse_kind: str = "duckdb"
    warehouse_location: str = ""
    target_schema: str = "analytics"
    target_table: str = ""
    projection: dict[str, str] = dataclasses.field(default_factory=dict)
    force_full_reload: bool = False
    redshift_database: str = ""
    redshift_workgroup: str = ""
    redshift_cluster: str = ""
    redshift_db_user: str = ""
    redshift_secret_arn: str = ""
    redshift_iam_role: str = ""
    redshift_timeout_s: int = 600
    history: bool = False

    def validate(self) -> None:
        """Check names, projection and, for Redshift, connection, lake and role, before any work.

        A Redshift projection is also held to the warehouse's limits with this request's names:
        at most 1,600 columns per table ("Quotas and limits in Amazon Redshift") and every load
        statement under the Data API's 100 KB query limit; so a projection that could never load
        fails here, not at every load.

        Raises:
            InvalidRequestError: the first problem found, naming the field or setting to fix.
        """
        super().validate()
        if self.warehouse_kind not in ("duckdb", "redshift"):
            raise InvalidRequestError(
                f"warehouse_kind {self.warehouse_kind!r} is unknown: use 'duckdb' or 'redshift'"
            )
        validate_warehouse_name(self.target_schema, "warehouse schema")
        validate_warehouse_name(self.table_name, "warehouse table")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.projection.items()):
            raise InvalidRequestError("projection must map field names to SQL type names")
        try:
            projection = parse_projection(self.projection)
            if self.history:
                check_history(self.table_name, projection)
            if self.warehouse_kind == "redshift":
                names = {"schema": self.target_schema, "table": self.table_name}
                check_projection_limits(REDSHIFT, projection, **names, history=self.history)
        except PlanError as error:
            raise InvalidRequestError(str(error)) from None
        if self.warehouse_kind == "redshift":
            if not self.lake_uri.startswith("s3://"):
                raise InvalidRequestError(
                    "Redshift COPY reads the staged rows from S3: set LAKEHOUSE_LAKE_URI to "
                    "s3://bucket/prefix (a bucket in the cluster's region)"
                )
            check_redshift_connection(
                database=self.redshift_database,
                workgroup=self.redshift_workgroup,
                cluster=self.redshift_cluster,
                db_user=self.redshift_db_user,
                secret_arn=self.redshift_secret_arn,
            )
            try:
                checked_iam_role(self.redshift_iam_role)
            except UnsafeSqlValueError as error:
                raise InvalidRequestError(str(error)) from None
            if self.redshift_timeout_s < 1:
                raise InvalidRequestError("redshift_timeout_s must be positive")

    @property
    def table_name(self) -> str:
        """The warehouse table: ``target_table``, or the collection's name when it is ""."""
        return self.target_table or self.collection


@dataclasses.dataclass(frozen=True)
class DmsIngestRequest(CollectionRequest):
    """Ingest the AWS DMS output files not ingested yet (one collection folder) into raw batches.

    Attributes:
        dms_uri: the collection's DMS folder, ``s3://bucket/<folder>/<db>/<coll>`` or a path.
        max_rows: at most this many rows per raw batch.
        max_bytes: at most this many bytes of input per raw batch.
        csv_delimiter: the S3 target endpoint's ``CsvDelimiter``, one character (DMS default
            ","; AWS DMS User Guide, "Endpoint settings when using Amazon S3 as a target").
        masking, masking_key_secret_arn: PII masking, as in ``SourceRequest``.
    """

    kind: ClassVar[str] = "dms_ingest"
    dms_uri: str = ""
    max_rows: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    csv_delimiter: str = ","
    masking: dict[str, list] = dataclasses.field(default_factory=dict)
    masking_key_secret_arn: str = ""

    def validate(self) -> None:
        super().validate()
        check_masking(self.masking, self.namespace)
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
    """Maintain the lake table: compact its cold partitions, then vacuum unreferenced files.

    Attributes:
        cold_after_hours: a partition is cold when none of its files was written in this many
            hours; hot partitions are left to the merges (compacting them would only conflict
            with the next merge).
        z_order: sort cold partitions by ``_id`` (restores file pruning), else bin-pack.
        vacuum: delete files the table no longer references, after compacting.
        vacuum_retention_hours: files removed longer ago than this are deleted: time travel and
            the change feed reach back this far. Below 168 h (Delta's default), the load may
            lose the feed it needs (it then reloads in full).
        tombstone_retention_hours: tombstones (rows of deleted documents that refuse older
            changes delivered late) whose delete is older than this (by its event time) are
            removed. At least the longest delay any input can have: DocumentDB keeps a change
            stream at most 7 days (168 h).
        dry_run: report what would be compacted and deleted, change nothing.
    """

    kind: ClassVar[str] = "lake_maintenance"
    cold_after_hours: int = 72
    z_order: bool = True
    vacuum: bool = True
    vacuum_retention_hours: int = 168
    tombstone_retention_hours: int = 168
    dry_run: bool = False

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
