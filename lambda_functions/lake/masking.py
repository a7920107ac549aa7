"""PII masking at the edge: named fields are dropped or replaced by a keyed hash before any record
is written to the raw zone, so clear values never reach the lake, the warehouse or a dead letter.

Rules are per collection (``database.collection``), set in ``LAKEHOUSE_MASKING`` as JSON::

    {"shop.customers": {"drop": ["ssn", "card.number"], "hash": ["email", "addresses.phone"]}}

A path is MongoDB's dotted notation (MongoDB Manual, "Dot Notation", "Query an Array of Embedded
Documents", "Project Fields to Return from Query"): where it meets an array it applies to every
element, arrays in arrays included (like ``$project`` exclusion; over-masking beats a leak); a
missing path masks nothing. ``drop`` removes the field; ``hash`` replaces its whole value, whatever
its type, by ``hash_value``'s string. ``_id`` and its subfields are refused: ``_id`` is the record
key, and masking it would change the identity the merge upserts by.

Hash format: ``"hmac-sha256:" + 64 lowercase hex``, HMAC-SHA256 (RFC 2104) under the masking key
(``lake.masking_key``) of ``b"bson-v1\x00" + BSON({"v": value})`` (BSON spec 1.1): type-tagged,
so ``"1"``, Int32 ``1``, Int64 ``1`` and ``1.0`` differ, and equal values hash equally in every
process (field order in an embedded document counts, as in MongoDB). A string that is not UTF-8
(``surrogateescape``) is hashed over its original bytes, under the tag ``bson-v1-bytes``.
``key_id`` and ``rules_fingerprint`` let a manifest name the key and rules of a batch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson
from bson.binary import Binary
from bson.errors import InvalidDocument, InvalidStringData

from lambda_functions.errors import TerminalError
from lambda_functions.lake.masking_key import (
    GENERATE_KEY_HINT,
    KEY_SECRET_ARN_VARIABLE,
    KEY_VARIABLE,
    MaskingKey,
    MaskingKeyError,
)

RULES_VARIABLE = "LAKEHOUSE_MASKING"
HASH_PREFIX = "hmac-sha256:"
_ENCODING_TAG = b"bson-v1\x00"
_BYTES_ENCODING_TAG = b"bson-v1-bytes\x00"
_SURROGATE_SUBTYPE = 0x80  # a user-defined BSON binary subtype: a string's original bytes
# Added to a masked ``updateDescription``: hashed rule paths the event changes below their level
# (its new hash needs the whole value); ``lake.update_description`` refuses such an event.
MASKED_UNAPPLIABLE_FIELD = "lakehouseMaskedUnappliable"


class MaskingRulesError(TerminalError, ValueError):
    """The masking rules (``LAKEHOUSE_MASKING``) are malformed; the message names the fix."""


@dataclass(frozen=True)
class MaskingRules:
    """The dotted paths of one collection to drop and to hash, normalised (sorted, no repeats).

    Raises:
        MaskingRulesError: a path is empty, has an empty, ``$``-prefixed or numeric component,
            names ``_id``, is in both lists, or lies under another path of the rules.
    """

    drop: tuple[str, ...] = ()
    hash: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("drop", "hash"):
            paths = getattr(self, name)
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise MaskingRulesError(f'"{name}" must be a list of dotted paths, got {paths!r}')
            for path in paths:
                _check_path(path)
            object.__setattr__(self, name, tuple(sorted(set(paths))))
        actions = [(p, "drop") for p in self.drop] + [(p, "hash") for p in self.hash]
        for path, action in actions:
            for other, other_action in actions:
                if path == other and action != other_action:
                    raise MaskingRulesError(f"{path!r} is both dropped and hashed: keep one")
                if other.startswith(path + "."):
                    raise MaskingRulesError(
                        f"{other!r} ({other_action}) lies under {path!r} ({action}), which "
                        f"already masks it: list only {path!r}"
                    )

    def __bool__(self) -> bool:
        return bool(self.drop or self.hash)


def _check_path(path: str) -> None:
    parts = path.split(".")
    index = "has a numeric component: leave the index out (rules apply to every element)"
    record_key = "names _id, the record key: masking it would change which record a change is for"
    for refused, problem in (
        (not all(parts), "is empty or has an empty component"),
        (any(p.startswith("$") for p in parts), "has a component starting with '$' (an operator)"),
        (any(p.isdigit() for p in parts), index),
        (parts[0] == "_id", record_key + "; mask the fields that hold the personal data instead"),
    ):
        if refused:
            raise MaskingRulesError(f"masking path {path!r} {problem}")


def parse_masking_rules(text: str | None) -> dict[str, MaskingRules]:
    """The rules of ``LAKEHOUSE_MASKING``, by collection.

    Args:
        text: JSON ``{"<database>.<collection>": {"drop": [path...], "hash": [path...]}}``;
            empty or ``None`` means no masking.

    Returns:
        ``{namespace: MaskingRules}`` for every collection the text names.

    Raises:
        MaskingRulesError: the text is not such JSON, a namespace is not ``database.collection``,
            a rule has a key other than ``drop``/``hash``, or a path is refused (``MaskingRules``).
    """
    if not text or not text.strip():
        return {}
    example = '{"shop.customers": {"drop": ["ssn"], "hash": ["email"]}}'
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise MaskingRulesError(f"{RULES_VARIABLE} is not JSON ({error}); e.g. {example}") from None
    if not isinstance(settings, dict):
        raise MaskingRulesError(f"{RULES_VARIABLE} must be a JSON object, e.g. {example}")
    rules: dict[str, MaskingRules] = {}
    for namespace, spec in settings.items():
        database, _, collection = namespace.partition(".")
        if not database or not collection:
            raise MaskingRulesError(
                f"{RULES_VARIABLE}: {namespace!r} is not 'database.collection', e.g. {example}"
            )
        lists = [spec.get(name, []) for name in ("drop", "hash")] if isinstance(spec, dict) else []
        if not lists or set(spec) - {"drop", "hash"} or not all(isinstance(v, list) for v in lists):
            raise MaskingRulesError(
                f"{RULES_VARIABLE}[{namespace!r}] must be an object with only 'drop' and/or "
                f"'hash' lists of dotted paths, got {spec!r}"
            )
        try:
            rules[namespace] = MaskingRules(*(tuple(paths) for paths in lists))
        except MaskingRulesError as error:
            raise MaskingRulesError(f"{RULES_VARIABLE}[{namespace!r}]: {error}") from None
    return rules


def collection_rules(namespace: str, environ: Mapping[str, str] | None = None) -> MaskingRules:
    """The rules of one collection (``database.collection``) from ``LAKEHOUSE_MASKING`` in
    ``environ`` (default ``os.environ``); empty rules (falsy) when it names no rules for it.

    Raises:
        MaskingRulesError: the setting is malformed, for every collection alike.
    """
    environ = os.environ if environ is None else environ
    return parse_masking_rules(environ.get(RULES_VARIABLE)).get(namespace, MaskingRules())


def rules_fingerprint(rules: MaskingRules, key: MaskingKey | None) -> str:
    """A stable name of what masking does to a collection: the same rules and key (when the
    rules hash anything) give the same fingerprint in every process; any change gives another.

    Returns:
        16 lowercase hex of SHA-256 over the normalised rules, the hash format and ``key_id``.

    Raises:
        MaskingKeyError: the rules hash fields and ``key`` is ``None``.
    """
    key_id = _require_key(rules, key).key_id if rules.hash else None
    spec = {"drop": rules.drop, "hash": rules.hash, "format": "hmac-sha256/bson-v1", "key": key_id}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def hash_value(value: Any, key: MaskingKey) -> str:
    """The keyed hash that replaces a masked value (format: the module docstring).

    Args:
        value: any BSON value (a string, number, document, array, ``None``...).
        key: the masking key.

    Returns:
        ``"hmac-sha256:<64 lowercase hex>"``: the same for equal values of the same BSON type
        under one key, in every process; not reversible without the key (RFC 2104).
    """
    try:
        message = _ENCODING_TAG + bson.encode({"v": value})
    except (InvalidDocument, InvalidStringData, UnicodeEncodeError):
        message = _BYTES_ENCODING_TAG + bson.encode({"v": _original_bytes(value)})
    return HASH_PREFIX + hmac.new(key.secret, message, hashlib.sha256).hexdigest()


def _original_bytes(value: Any) -> Any:
    """``value`` with each ``surrogateescape`` string as a Binary of its original bytes."""
    if isinstance(value, str):
        return Binary(value.encode("utf-8", "surrogateescape"), _SURROGATE_SUBTYPE)
    if isinstance(value, Mapping):
        return {k: _original_bytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_original_bytes(v) for v in value]
    return value


def mask_document(
    document: Mapping[str, Any], rules: MaskingRules, key: MaskingKey | None
) -> Mapping[str, Any]:
    """``document`` with the rules' paths dropped or hashed (see the module docstring).

    Args:
        document: a document as the driver decodes it (``dict``, ``RawBSONDocument``...).
        rules: the collection's rules.
        key: the masking key; may be ``None`` when the rules hash nothing.

    Returns:
        A new mapping when a path was found; ``document`` itself when nothing was masked (so a
        raw BSON document keeps its fast path). The input is never modified; the result shares
        the subdocuments it did not change with it.

    Raises:
        MaskingKeyError: the rules hash fields and ``key`` is ``None``.
    """
    if rules.hash:
        _require_key(rules, key)
    for path in rules.drop:
        document = _apply(document, path.split("."), None)
    for path in rules.hash:
        document = _apply(document, path.split("."), key)
    return document


def mask_change_event(
    event: Mapping[str, Any], rules: MaskingRules, key: MaskingKey | None
) -> Mapping[str, Any]:
    """A change event (MongoDB Manual, "Change Events") with its documents masked.

    ``fullDocument`` and ``fullDocumentBeforeChange`` are masked like ``mask_document``;
    ``documentKey`` too (its ``_id`` is never masked; a sharded collection adds its shard key
    fields, which may be personal data); ``updateDescription`` as ``mask_update_description``.
    Everything else is kept (``ns``, ``clusterTime``, the token).

    Args:
        event: a change event as the driver or a relay decodes it; rules and key as in
            ``mask_document``.

    Returns:
        A new mapping when something was masked, else ``event`` itself; never modifies ``event``.

    Raises:
        MaskingKeyError: the rules hash fields and ``key`` is ``None``.
    """
    masked = dict(event)
    for name in ("fullDocument", "fullDocumentBeforeChange", "documentKey"):
        if isinstance(event.get(name), Mapping):
            masked[name] = mask_document(event[name], rules, key)
    description = event.get("updateDescription")
    if isinstance(description, Mapping):
        masked["updateDescription"] = mask_update_description(description, rules, key)
    return event if all(masked[name] is event[name] for name in masked) else masked


def mask_update_description(
    description: Mapping[str, Any], rules: MaskingRules, key: MaskingKey | None
) -> Mapping[str, Any]:
    """An update event's ``updateDescription`` masked so that, applied by the merge to the masked
    stored document, it gives the full-document mask of the new document, or is refused.

    ``updatedFields`` as ``mask_updated_fields``. A path of ``removedFields``, ``truncatedArrays``
    or ``disambiguatedPaths`` under a dropped path is removed (the stored copy has no such field;
    a removal at it is kept: a no-op; a truncation at it is removed). A change *under* a hashed path (``"card.number.last4"``, an element ``"tags.1"`` of a
    hashed ``tags``, set, removed or truncated) cannot be masked: the new hash needs the whole new
    value, which the event does not carry. Such an entry is removed (its field names may be the
    personal data: ``{"emails": {"bob@example.com": true}}``) and the hashed rule path is listed
    in ``MASKED_UNAPPLIABLE_FIELD``, which makes ``lake.update_description`` refuse the event:
    the merge sets it aside rather than keep a hash of the old value. A removal or truncation
    *at* a hashed path is kept (``$unset`` removes the hash as it removes the value).

    Returns:
        A new mapping when something was masked, else ``description`` itself.

    Raises:
        MaskingKeyError: the rules hash fields and ``key`` is ``None``.
    """
    if rules.hash:
        _require_key(rules, key)
    masked = dict(description)
    refused: set[str] = set(description.get(MASKED_UNAPPLIABLE_FIELD) or ())
    updated = description.get("updatedFields")
    if isinstance(updated, Mapping):
        refused.update(
            path
            for path in rules.hash
            for name in updated
            if _place(_parts(name), _parts(path)) == "under"
        )
        masked["updatedFields"] = mask_updated_fields(updated, rules, key)

    def kept(path: Any) -> bool:
        if not isinstance(path, str):
            return True  # malformed: the merge refuses it
        for rule_path in (*rules.drop, *rules.hash):
            place = _place(_parts(path), _parts(rule_path))
            if place == "under" and rule_path in rules.hash:
                refused.add(rule_path)
            if place == "under":
                return False
        return True

    removed = description.get("removedFields")
    if isinstance(removed, list | tuple):
        masked["removedFields"] = [path for path in removed if kept(path)]
    truncated = description.get("truncatedArrays")
    if isinstance(truncated, list | tuple):
        entries = []
        for entry in truncated:
            path = entry.get("field") if isinstance(entry, Mapping) else None
            rule_paths = rules.drop + rules.hash if isinstance(path, str) else ()
            at = [p for p in rule_paths if _place(_parts(path), _parts(p)) == "at"]
            if at and at[0] in rules.hash:
                refused.add(at[0])  # the stored copy holds a hash, not the array
            elif not at and kept(path):  # at a dropped path: the stored copy has no array
                entries.append(entry)
        masked["truncatedArrays"] = entries
    disambiguated = description.get("disambiguatedPaths")
    if isinstance(disambiguated, Mapping):
        named = {*(masked.get("updatedFields") or {}), *(masked.get("removedFields") or ())}
        named.update(
            e.get("field") for e in masked.get("truncatedArrays") or () if isinstance(e, Mapping)
        )
        masked["disambiguatedPaths"] = {p: c for p, c in disambiguated.items() if p in named}
    if refused:
        masked[MASKED_UNAPPLIABLE_FIELD] = sorted(refused)
    if all(
        masked[name] is description.get(name) or masked[name] == description.get(name)
        for name in masked
    ):
        return description
    return masked


def _parts(path: str) -> list[str]:
    return path.split(".")


def mask_updated_fields(
    updated: Mapping[str, Any], rules: MaskingRules, key: MaskingKey | None
) -> Mapping[str, Any]:
    """``updateDescription.updatedFields`` (dotted keys, as the server reports them) masked.

    Numeric components of a key are array indexes (``"addresses.0.phone"``), skipped when matched
    against rule paths. A key at a rule path is dropped or hashed as in a full document; a key
    above it (``"card"``, ``"addresses.0"``) has the rest of the path applied to its value; a key
    under it (``"card.number.last4"``, an element ``"addresses.0.phone.1"``) is dropped: its hash
    could not equal the field's. ``fullDocument`` (``updateLookup``) has the masked field.

    Args:
        updated: ``{dotted key: new value}``; rules and key as in ``mask_document``.

    Returns:
        A new mapping when something was masked, else ``updated`` itself.

    Raises:
        MaskingKeyError: the rules hash fields and ``key`` is ``None``.
    """
    if rules.hash:
        _require_key(rules, key)
    masked: dict[str, Any] = {}
    for name, value in updated.items():
        for path, action_key in [(p, None) for p in rules.drop] + [(p, key) for p in rules.hash]:
            rule = path.split(".")
            place = _place(name.split("."), rule)
            if place in ("at", "under"):
                value = hash_value(value, action_key) if place == "at" and action_key else _DROP
                break
            if place == "above":  # mask inside the value
                depth = sum(not p.isdigit() for p in name.split("."))
                value = _apply_to_value(value, rule[depth:], action_key)
        if value is not _DROP:
            masked[name] = value
    unchanged = len(masked) == len(updated) and all(masked[k] is updated[k] for k in masked)
    return updated if unchanged else masked


_DROP = object()


def _place(components: list[str], rule: list[str]) -> str | None:
    """Where an update key (its components, indexes included) lies relative to a rule path:
    ``"at"`` it, ``"under"`` it (``a.b.c`` or an element ``a.b.1`` of ``a.b``), ``"above"`` it
    (``a``, ``a.0``), or ``None``."""
    fields = [(i, p) for i, p in enumerate(components) if not p.isdigit()]
    names = [p for _, p in fields]
    if names[: len(rule)] == rule:
        return "at" if fields[len(rule) - 1][0] == len(components) - 1 else "under"
    return "above" if rule[: len(names)] == names else None


def _apply(document: Mapping[str, Any], parts: list[str], key: MaskingKey | None) -> Any:
    """Mask ``parts`` in an embedded document: drop when ``key`` is ``None``, else hash."""
    name = parts[0]
    if name not in document:
        return document
    if len(parts) == 1:
        masked = dict(document)  # a field keeps its place when its value is replaced
        if key is None:
            del masked[name]
        else:
            masked[name] = hash_value(document[name], key)
        return masked
    inner = _apply_to_value(document[name], parts[1:], key)
    return document if inner is document[name] else {**document, name: inner}


def _apply_to_value(value: Any, parts: list[str], key: MaskingKey | None) -> Any:
    """Mask ``parts`` in a value: a document, or every element of an array (nested too)."""
    if isinstance(value, Mapping):
        return _apply(value, parts, key)
    if isinstance(value, list | tuple):
        items = [_apply_to_value(item, parts, key) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _require_key(rules: MaskingRules, key: MaskingKey | None) -> MaskingKey:
    if key is None:
        raise MaskingKeyError(
            f"masking rules hash {list(rules.hash)} but no masking key is configured: set "
            f"{KEY_SECRET_ARN_VARIABLE} (AWS) or {KEY_VARIABLE} (local); {GENERATE_KEY_HINT}"
        )
    return key
