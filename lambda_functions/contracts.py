"""Requests that cross the Lambda boundary: the invoke contract between Dagster and the data plane.

Each request is a frozen dataclass with a ``schema_version``. The orchestrator builds one and sends
``to_event()``; the handler rebuilds it with ``from_event()``, which rejects unknown versions and
missing or mistyped fields with a message naming the field, so a bad event fails before any work.
Secrets never travel in events: requests name where credentials live, never the credentials.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

SCHEMA_VERSION = 1
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


class InvalidRequestError(ValueError):
    """The event does not describe a valid request; the message says which field and why."""


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
class CaptureRequest(CollectionRequest):
    """Capture the changes since the last checkpoint into one raw batch."""

    kind: ClassVar[str] = "cdc_capture"
    source_kind: str = "embedded"  # "embedded" | "documentdb"
    # embedded: path of the store file; documentdb: name of the env var holding the URI
    source_location: str = ""
    demo_changes: int = 0  # embedded only: changes the demo workload makes before capturing
    max_rows: int = 100_000
    max_bytes: int = 256 * 1024 * 1024

    def validate(self) -> None:
        super().validate()
        if self.source_kind not in ("embedded", "documentdb"):
            raise InvalidRequestError(
                f"source_kind {self.source_kind!r} is unknown: use 'embedded' or 'documentdb'"
            )
        if self.max_rows < 1 or self.max_bytes < 1:
            raise InvalidRequestError("max_rows and max_bytes must be positive")


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

    def validate(self) -> None:
        super().validate()
        if self.warehouse_kind not in ("duckdb", "redshift"):
            raise InvalidRequestError(
                f"warehouse_kind {self.warehouse_kind!r} is unknown: use 'duckdb' or 'redshift'"
            )
        validate_name(self.target_schema, "target_schema")
        validate_name(self.table_name, "target_table")

    @property
    def table_name(self) -> str:
        return self.target_table or self.collection
