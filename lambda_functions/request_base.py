"""The base of every request of the contract (``lambda_functions.contracts``): a frozen dataclass
with a ``schema_version`` that crosses the Lambda boundary as a JSON event (``to_event`` /
``from_event``, checked field by field), and the fields every collection request and every request
that reads the source carries. ``lambda_functions.contracts`` re-exports these names.
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
    validate_name,
)

SCHEMA_VERSION = 1


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
