"""Which warehouse table each collection loads into, checked where the name is born.

A collection's table is its ``LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES`` entry, else the name
``LAKEHOUSE_WAREHOUSE_TABLE_NAMES`` derives (``orders`` or ``shop_orders``). Two rules of the
engines decide whether that name works, and both are checked here, at registration (the
``collections_sensor`` and ``register_collections``) and again before a load is invoked, never
first at load time:

- **Folding.** Redshift folds ASCII letters in identifiers to lower case, quoted or not (unless
  ``enable_case_sensitive_identifier`` is on), and DuckDB resolves identifiers without case. So
  ``shop.Orders`` and ``shop.orders`` would both load into ``orders``: each load would replace
  the other collection's rows while its own check still passed. Names are compared folded, and
  the collection that comes later (registration order) gets no table until it is given one.
- **Length.** Redshift allows identifiers of 1 to 127 bytes of UTF-8 ("Names and identifiers");
  DuckDB has no limit. A derived ``<database>_<collection>`` can be longer.

Each refusal names the collection, the reason and the fix (an override, or the other naming mode
when that resolves it). One refused collection never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from lakehouse_pipelines.settings import (
    LakehouseSettings,
    SettingsError,
    derived_table_name,
    split_namespace,
    warehouse_table_name,
)
from lambda_functions.contracts import fold_identifier, warehouse_name_problem

NAMING_MODES = ("collection", "database_collection")


@dataclass(frozen=True)
class WarehouseTables:
    """The table of every collection that can have one, and why the others cannot."""

    tables: dict[str, str] = field(default_factory=dict)  # collection -> table, as configured
    # collection -> reason and fix, worded to follow "<collection> is not registered: "
    refused: dict[str, str] = field(default_factory=dict)


def assign_warehouse_tables(
    settings: LakehouseSettings, namespaces: Iterable[str]
) -> WarehouseTables:
    """Give each collection its warehouse table, first come first served, in the given order
    (registered collections first, in registration order, so a table never changes hands).

    Args:
        settings: the naming mode and overrides.
        namespaces: ``database.collection`` keys, in priority order.

    Returns:
        ``WarehouseTables``: ``tables`` for the collections whose table is a valid name that no
        earlier collection has (compared folded), ``refused`` with the reason and the fix for
        the others, including keys that are not valid collection names at all.
    """
    result = WarehouseTables()
    taken: dict[str, str] = {}  # folded table -> collection
    for namespace in dict.fromkeys(namespaces):
        try:
            table = warehouse_table_name(settings, namespace)
        except SettingsError as error:
            result.refused[namespace] = (
                f"it is not a collection name this product can load: {error}"
            )
            continue
        problem = warehouse_name_problem(table)
        if problem:
            result.refused[namespace] = (
                f"it has no warehouse table: {problem}. Fix: " + _override_fix(namespace, taken)
            )
            continue
        folded = fold_identifier(table)
        owner = taken.get(folded)
        if owner is not None:
            result.refused[namespace] = (
                f"it has no warehouse table: its table {table!r} is the table "
                f"{result.tables[owner]!r} of {owner} (Redshift folds identifiers to lower case "
                "and DuckDB compares them without case, so both would load into one table and "
                "each load would replace the other's rows). Fix: "
                + _override_fix(namespace, taken)
                + _other_mode_fix(settings, namespace, taken)
            )
            continue
        taken[folded] = namespace
        result.tables[namespace] = table
    return result


def _override_fix(namespace: str, taken: dict[str, str]) -> str:
    """An override naming a free table, e.g. ``LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES='{...}'``."""
    database, collection = split_namespace(namespace)
    base = fold_identifier(f"{database}_{collection}")
    if warehouse_name_problem(base):
        base = fold_identifier(collection)
    candidate, n = base, 1
    while candidate in taken or warehouse_name_problem(candidate):
        n += 1
        candidate = f"{base[:120]}_{n}"
    overrides = json.dumps({namespace: candidate})
    return (
        f"set LAKEHOUSE_WAREHOUSE_TABLE_OVERRIDES='{overrides}' (add it to the entries you "
        "have) to give it its own table"
    )


def _other_mode_fix(settings: LakehouseSettings, namespace: str, taken: dict[str, str]) -> str:
    """The other ``LAKEHOUSE_WAREHOUSE_TABLE_NAMES`` mode, when it gives this collection a table
    no collection ahead of it would have; empty otherwise."""
    other = next(m for m in NAMING_MODES if m != settings.warehouse_table_names)
    names = set()
    for owner in taken.values():
        override = settings.warehouse_table_overrides.get(owner)
        names.add(fold_identifier(override or derived_table_name(owner, other)))
    mine = derived_table_name(namespace, other)
    if warehouse_name_problem(mine) or fold_identifier(mine) in names:
        return ""
    return (
        f"; or set LAKEHOUSE_WAREHOUSE_TABLE_NAMES={other} (tables named "
        f"{'<database>_<collection>' if other == 'database_collection' else '<collection>'}: "
        "this renames the table of every collection without an override)"
    )
