"""PII masking at the capture edge: one collection's rules and key, applied by every input
(snapshot, change stream, DMS files, MQ/SQS messages) before a row or a dead letter is written.

``lake.masking`` is the pure part (rules, hash format, ``mask_document``/``mask_change_event``);
this module is where capture meets it:

- **Rows.** ``BatchRows`` (``batches``) masks each snapshot document, change event and DMS
  ``_doc`` through ``EdgeMasking`` before it becomes canonical JSON; a collection without rules
  keeps the raw-BSON fast path (no document is decoded for masking).
- **Dead letters hold no clear value.** A dead letter of a collection with rules holds the input
  masked with the same rules (a document, a change event, a DMS ``_doc``, an MQ payload: each
  decoded, masked, written again); an input that cannot be decoded at all is stripped (only
  ``"stripped"`` and its size remain). Values the masking removed are redacted from the reason as
  ``<masked>`` (an encoder's message may quote a value).
- **Manifests** name what masking did to their batch: ``masking: {rules_fingerprint, key_id}``.
- **Generations.** ``fingerprint`` changes with the rules or the key; capture stores it in its
  state and starts a new generation (a re-snapshot behind a ``dropped`` marker) when it differs,
  DMS ingest re-reads its files behind one (``masking_generation`` in the docs).

Settings: rules travel in the request (``CaptureRequest.masking``, ``DmsIngestRequest.masking``:
``{"drop": [...], "hash": [...]}``), built by Dagster from ``LAKEHOUSE_MASKING``; the key never
travels: ``masking_key_secret_arn`` names a Secrets Manager secret (AWS), else the environment
variable ``LAKEHOUSE_MASKING_KEY`` of the function holds it (local). The MQ function has no
request: it reads ``LAKEHOUSE_MASKING`` and the key settings from its own environment.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from lambda_functions.lake.extended_json import decode_document, relaxed_json
from lambda_functions.lake.masking import (
    RULES_VARIABLE,
    MaskingRules,
    mask_change_event,
    mask_document,
    parse_masking_rules,
    rules_fingerprint,
)
from lambda_functions.lake.masking_key import (
    KEY_SECRET_ARN_VARIABLE,
    MaskingKey,
    load_masking_key,
)

REDACTED = "<masked>"
# Decodes a dead letter's raw BSON whatever its strings hold (surrogate escapes keep the bytes).
_DEAD_LETTER_OPTIONS: CodecOptions = CodecOptions(
    tz_aware=True, unicode_decode_error_handler="surrogateescape"
)

__all__ = [
    "REDACTED",
    "EdgeMasking",
    "MaskingByCollection",
    "masking_of_request",
]


@dataclass(frozen=True)
class EdgeMasking:
    """The masking of one collection at the capture edge.

    Attributes:
        namespace: ``database.collection``.
        rules: its ``MaskingRules`` (empty: nothing is masked, nothing is decoded for it).
        key: the masking key; ``None`` is allowed only when the rules hash nothing.
    """

    namespace: str
    rules: MaskingRules = field(default_factory=MaskingRules)
    key: MaskingKey | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        """Whether the collection has rules."""
        return bool(self.rules)

    @property
    def fingerprint(self) -> str | None:
        """``rules_fingerprint`` of the rules and key (16 hex), ``None`` without rules. A
        change (rules added, changed or removed; another key while fields are hashed) starts a
        new generation."""
        return rules_fingerprint(self.rules, self.key) if self.rules else None

    def manifest_fields(self) -> dict[str, Any]:
        """``{"masking": {"rules_fingerprint", "key_id", "drop", "hash"}}`` for a batch's
        manifest (``key_id``: 8 hex naming the key, ``None`` when nothing is hashed; ``drop`` and
        ``hash``: the paths), or ``{}`` without rules."""
        if not self.rules:
            return {}
        key_id = self.key.key_id if self.key is not None and self.rules.hash else None
        return {
            "masking": {
                "rules_fingerprint": self.fingerprint,
                "key_id": key_id,
                "drop": list(self.rules.drop),
                "hash": list(self.rules.hash),
            }
        }

    def document(self, document: Mapping[str, Any]) -> Mapping[str, Any]:
        """``mask_document`` under these rules; ``document`` itself without rules.

        Raises:
            MaskingKeyError: the rules hash fields and no key is configured.
        """
        return mask_document(document, self.rules, self.key) if self.rules else document

    def event(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """``mask_change_event`` (fullDocument, fullDocumentBeforeChange, documentKey,
        updateDescription.updatedFields) under these rules; ``event`` itself without rules.

        Raises:
            MaskingKeyError: the rules hash fields and no key is configured.
        """
        return mask_change_event(event, self.rules, self.key) if self.rules else event

    def dead_letter(self, reason: str, raw: Any) -> tuple[str, Any]:
        """A dead letter's reason and record with no clear value of a masked field.

        Args:
            reason: why the input could not become a row.
            raw: the input: a document (dict or ``RawBSONDocument``), a change event, a DMS row
                ``{"_id", "_doc", ...}`` (``_doc`` as text), an MQ message ``{"payload": text,
                ...}``, or anything else.

        Returns:
            ``(reason, record)``: unchanged without rules; else the record masked with the rules
            (text fields decoded as extended JSON, else JSON, masked and written again; text
            that decodes as neither is replaced by ``{"stripped": <characters>}``), and every
            value the masking removed redacted from the reason as ``<masked>``.
        """
        if not self.rules:
            return reason, raw
        removed: set[str] = set()
        masked = self._masked_record(raw, removed)
        for value in sorted(removed, key=len, reverse=True):
            reason = reason.replace(value, REDACTED)
        return reason, masked

    # -- dead letters ----------------------------------------------------------------------------
    def _masked_record(self, raw: Any, removed: set[str]) -> Any:
        if isinstance(raw, RawBSONDocument):
            try:
                raw = bson.decode(raw.raw, codec_options=_DEAD_LETTER_OPTIONS)
            except Exception:
                return {"stripped": len(raw.raw)}
        if isinstance(raw, Mapping) and any(isinstance(raw.get(k), str) for k in _TEXT_FIELDS):
            record = dict(raw)
            for name in _TEXT_FIELDS:
                if isinstance(record.get(name), str):
                    record[name] = self._masked_text(record[name], removed)
            return record
        return self._masked_value(raw, removed)

    def _masked_text(self, text: str, removed: set[str]) -> Any:
        """A JSON text field (a DMS ``_doc``, an MQ payload) masked, or stripped."""
        for decode, encode in ((decode_document, relaxed_json), (json.loads, json.dumps)):
            try:
                value = decode(text)
            except Exception:
                continue
            try:
                return encode(self._masked_value(value, removed))
            except Exception:
                break
        return {"stripped": len(text)}

    def _masked_value(self, value: Any, removed: set[str]) -> Any:
        if isinstance(value, list | tuple):
            return [self._masked_value(item, removed) for item in value]
        if not isinstance(value, Mapping):
            return value
        try:
            masked = self.event(value) if "operationType" in value else self.document(value)
        except Exception:
            return {"stripped": len(relaxed_json(value))}
        removed.update(_leaves(value) - _leaves(masked))
        return masked


# Dead-letter records whose text fields hold documents: DMS rows (_doc) and MQ messages (payload).
_TEXT_FIELDS = ("_doc", "payload")


def _leaves(value: Any) -> set[str]:
    """The text forms (``str``, ``repr``, JSON) of every scalar in a value, for redaction."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif item is not None and not isinstance(item, bool):
            found.update(form for form in (str(item), repr(item)) if len(form) > 1)
            with contextlib.suppress(TypeError, ValueError):
                found.add(json.dumps(item))
    return found


def masking_of_request(
    namespace: str,
    rules: Mapping[str, Any],
    *,
    key_secret_arn: str = "",
    environ: Mapping[str, str] | None = None,
    secrets_client: Any = None,
) -> EdgeMasking:
    """The masking a request asks for (``CaptureRequest.masking``, ``DmsIngestRequest.masking``).

    Args:
        namespace: ``database.collection``.
        rules: ``{"drop": [path...], "hash": [path...]}`` (the request's ``masking``); ``{}``
            masks nothing and reads no key.
        key_secret_arn: the Secrets Manager secret holding the key (the request's
            ``masking_key_secret_arn``); "" = ``LAKEHOUSE_MASKING_KEY_SECRET_ARN``, else
            ``LAKEHOUSE_MASKING_KEY`` of ``environ``.
        environ: the function's environment (default ``os.environ``).
        secrets_client: a boto3 ``secretsmanager`` client (default: a new one when needed).

    Returns:
        The collection's ``EdgeMasking``; the key is read only when the rules hash fields.

    Raises:
        MaskingRulesError: the rules are malformed (terminal).
        MaskingKeyError: the rules hash fields and no key is configured or readable (terminal).
        MaskingKeyUnavailableError: Secrets Manager throttled the key read (transient).
    """
    parsed = MaskingRules(
        tuple(rules.get("drop", ())), tuple(rules.get("hash", ()))
    )  # raises MaskingRulesError
    if not parsed.hash:
        return EdgeMasking(namespace, parsed)
    environ = dict(os.environ if environ is None else environ)
    if key_secret_arn:
        environ[KEY_SECRET_ARN_VARIABLE] = key_secret_arn
    key = load_masking_key(environ, client=secrets_client)
    masking = EdgeMasking(namespace, parsed, key)
    masking.document({})  # MaskingKeyError now, before anything is read, when the key is missing
    return masking


class MaskingByCollection:
    """The masking of every collection from a function's own environment (the MQ function,
    which an event source invokes without a request): ``LAKEHOUSE_MASKING`` and the key
    settings (``LAKEHOUSE_MASKING_KEY_SECRET_ARN`` / ``LAKEHOUSE_MASKING_KEY``). Call it with a
    namespace for that collection's ``EdgeMasking``; the key is read on the first collection
    whose rules hash.

    Args:
        environ: the settings (default ``os.environ``).
        secrets_client: a boto3 ``secretsmanager`` client (default: a new one when needed).

    Raises:
        MaskingRulesError: ``LAKEHOUSE_MASKING`` is malformed (raised here, before any message).
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, secrets_client: Any = None
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.rules = parse_masking_rules(self.environ.get(RULES_VARIABLE))
        self.secrets_client = secrets_client
        self._found: dict[str, EdgeMasking] = {}

    @property
    def configured(self) -> bool:
        """Whether any collection has rules (then a message no collection takes is stripped)."""
        return bool(self.rules)

    def __call__(self, namespace: str) -> EdgeMasking:
        if namespace not in self._found:
            rules = self.rules.get(namespace, MaskingRules())
            self._found[namespace] = masking_of_request(
                namespace,
                {"drop": rules.drop, "hash": rules.hash},
                environ=self.environ,
                secrets_client=self.secrets_client,
            )
        return self._found[namespace]
