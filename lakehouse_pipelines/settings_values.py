"""Parsing and checking one configuration value: each parser names its variable and the fix.

``LakehouseSettings.from_env`` (``lakehouse_pipelines.settings``) calls these for each variable
and collects every ``SettingsError`` so one round of corrections is enough.
"""

from __future__ import annotations

import json

from lambda_functions.contracts import fold_identifier, validate_name, warehouse_name_problem
from lambda_functions.errors import TerminalError


class SettingsError(TerminalError, ValueError):
    """A configuration variable is missing or wrong; the message names it and the fix."""


def split_namespace(namespace: str, variable: str = "collection") -> tuple[str, str]:
    """``database.collection`` -> (database, collection), both checked as names."""
    database, dot, collection = namespace.strip().partition(".")
    if not dot:
        raise SettingsError(
            f"{variable}: {namespace!r} must be 'database.collection', e.g. shop.orders"
        )
    try:
        validate_name(database, "database")
        if collection != "*":
            validate_name(collection, "collection")
    except ValueError as error:
        raise SettingsError(f"{variable}: {error}") from None
    return database, collection


def parse_collections(value: str) -> tuple[str, ...]:
    """LAKEHOUSE_COLLECTIONS: ``db.coll`` names and ``db.*`` patterns, checked, deduplicated."""
    names: dict[str, None] = {}
    for item in value.split(","):
        if item.strip():
            database, collection = split_namespace(item, "LAKEHOUSE_COLLECTIONS")
            names[f"{database}.{collection}"] = None
    if not names:
        raise SettingsError(
            "LAKEHOUSE_COLLECTIONS names no collection: list them as db.collection, "
            "comma-separated (or db.* for every collection of a database)"
        )
    return tuple(names)


def parse_string_object(variable: str, value: str, *, shape: str, example: str) -> dict[str, str]:
    """A variable holding a JSON object whose keys and values are strings.

    Args:
        variable: the variable's name, for the error.
        value: its text.
        shape: what maps to what, for the error (e.g. ``"field -> SQL type"``).
        example: a valid value, quoted in the error.

    Returns:
        The object, keys in their order in ``value``.

    Raises:
        SettingsError: ``value`` is not JSON, not an object, or holds a non-string key or value.
    """
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise SettingsError(f"{variable} must be a JSON object of {shape}, e.g. {example}")
    return parsed


def parse_table_overrides(value: str) -> dict[str, str]:
    """LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES: a JSON object of collection -> warehouse table, each
    checked now (a valid collection, a table name Redshift and DuckDB accept, no two tables that
    the warehouses would read as one)."""
    variable = "LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES"
    overrides = parse_string_object(
        variable,
        value,
        shape="collection -> warehouse table",
        example='{"shop.Orders": "orders_upper"}',
    )
    folded: dict[str, str] = {}
    for namespace, table in overrides.items():
        _database, collection = split_namespace(namespace, variable)
        if collection == "*":
            raise SettingsError(f"{variable}: name one collection, not a pattern ({namespace!r})")
        problem = warehouse_name_problem(table)
        if problem:
            raise SettingsError(f"{variable}: {namespace}: {problem}")
        other = folded.setdefault(fold_identifier(table), namespace)
        if other != namespace:
            raise SettingsError(
                f"{variable}: {other} and {namespace} would both load into warehouse table "
                f"{fold_identifier(table)!r} (Redshift folds names to lower case, DuckDB ignores "
                "case); give each its own table"
            )
    return overrides


def parse_history_collections(value: str, name: str) -> frozenset[str]:
    """``*`` or a comma list of ``database.collection`` (the collection may be ``*``), each
    checked (LAKEHOUSE_HISTORY_COLLECTIONS)."""
    names = frozenset(item.strip() for item in value.split(",") if item.strip())
    for namespace in names - {"*"}:
        split_namespace(namespace, name)
    return names


def parse_delimiter(value: str, name: str) -> str:
    """One CSV field delimiter; ``\\t`` (written as two characters) is a tab."""
    value = "\t" if value == "\\t" else value
    if len(value) != 1 or value in '"\r\n':
        raise SettingsError(
            f"{name}={value!r} must be one character, the CsvDelimiter of the DMS S3 target "
            "endpoint (DMS default ','; write \\t for a tab)"
        )
    return value


def parse_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} must be a whole number") from None


def parse_float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} must be a number") from None


def parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} must be true or false")


def parse_masking(value: str, name: str) -> dict[str, dict[str, list[str]]]:
    """LAKEHOUSE_MASKING: each collection's PII masking rules, checked now (``lake.masking``).

    Returns:
        ``{namespace: {"drop": [path...], "hash": [path...]}}``, normalised (sorted, no repeats).

    Raises:
        SettingsError: the JSON, a namespace or a path is refused (the message names the fix).
    """
    from lambda_functions.lake.masking import MaskingRulesError, parse_masking_rules

    try:
        rules = parse_masking_rules(value)
    except MaskingRulesError as error:
        raise SettingsError(str(error)) from None
    return {ns: {"drop": list(r.drop), "hash": list(r.hash)} for ns, r in rules.items()}
