"""Typed top-level columns beyond the core ones: added when new, never a reason to fail a merge.

Capture may publish typed columns next to the core batch columns (a document's top-level fields).
The merge carries them into the lake table:

- a column the table does not have yet is added (Delta schema evolution, in the same commit);
- a column whose values no longer fit the table's type (``total`` was an integer, now a string) is
  stored as null for that batch and reported: the full document is always in ``doc``, so nothing
  is lost, and the merge does not stop;
- a column the table has but a batch lacks is null in that batch's rows (an update that drops a
  field clears its typed column too);
- a name that collides with a core lake column or with a column the change data feed adds
  (``_change_type``, ``_commit_version``, ``_commit_timestamp``), or a type Delta cannot hold here (nested, null-only
  in a new column), is ignored and reported;
- names are compared as Delta compares them, without case: Delta requires column names unique
  regardless of case (delta-rs refuses the commit: "Duplicate field name (case-insensitive)"), so
  ``Total`` beside ``total`` (in the table or the batches) would fail every merge of the
  collection. The column admitted first keeps the name; the other is ignored and reported, and
  its values stay in ``doc``.

Any name Delta accepts is kept as it is (``order-id``, ``first name``, ``1st``, ``a.b``): the merge
quotes every column in the SQL it gives delta-rs (see ``apply.delta_column``).

Types are normalised so that small differences between batches do not count as changes: every
integer becomes int64, every float float64, strings and binaries their plain Arrow type,
timestamps microseconds in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from lambda_functions.lake.table_layout import TABLE_SCHEMA

CORE_COLUMNS = frozenset(TABLE_SCHEMA.names)


def fold_column(name: str) -> str:
    """The name Delta compares: column names are unique regardless of case."""
    return name.lower()


_FOLDED_CORE = {fold_column(name): name for name in CORE_COLUMNS}
# The columns Delta's change data feed adds to every change row (Delta protocol, "Change Data
# Files"; the feed is on for lake tables and the warehouse load reads it): a table column of one
# of these names makes every feed read fail ("duplicate qualified field name") and the MERGE too.
CDF_COLUMNS = frozenset(("_change_type", "_commit_version", "_commit_timestamp"))


@dataclass
class TypedColumns:
    """The extra columns of a table and the batches being merged into it, with what changed."""

    types: dict[str, pa.DataType]  # name -> type, the table's first, in order
    new: list[str] = field(default_factory=list)  # added by this merge
    notes: list[str] = field(default_factory=list)  # human-readable, for the run's metadata

    @classmethod
    def of_table(cls, schema: pa.Schema | None) -> TypedColumns:
        if schema is None:
            return cls({})
        return cls({f.name: f.type for f in schema if f.name not in CORE_COLUMNS})

    def admit(self, batch: int, extras: pa.Table) -> None:
        """Learn the typed columns of one batch (before ``conform`` is called on any batch)."""
        folded = {fold_column(name): name for name in self.types}
        for name in extras.column_names:
            if name in self.types:
                continue
            if fold_column(name) in _FOLDED_CORE:
                core = _FOLDED_CORE[fold_column(name)]
                self.notes.append(
                    f"batch {batch}: column {name!r} has the name of a lake column; ignored "
                    "(the value stays in doc)"
                    + (f"; Delta compares names without case, so it is {core!r}" * (name != core))
                )
                continue
            if fold_column(name) in CDF_COLUMNS:
                self.notes.append(
                    f"batch {batch}: column {name!r} has the name of a column Delta's change "
                    "data feed adds to every change row; ignored (the value stays in doc)"
                )
                continue
            if fold_column(name) in folded:
                self.notes.append(
                    f"batch {batch}: column {name!r} differs only in case from the column "
                    f"{folded[fold_column(name)]!r} (Delta column names are unique regardless "
                    "of case); ignored (the value stays in doc)"
                )
                continue
            published = extras.schema.field(name).type
            kind = normal_type(published)
            if kind is None:
                if not pa.types.is_null(published):
                    self.notes.append(
                        f"batch {batch}: column {name!r} of type {published} "
                        "cannot be a typed lake column; ignored (the value stays in doc)"
                    )
                continue
            self.types[name] = kind
            folded[fold_column(name)] = name
            self.new.append(name)
            self.notes.append(f"batch {batch}: added column {name!r} ({kind})")

    def conform(self, batch: int, extras: pa.Table) -> list[tuple[str, pa.Array]]:
        """The typed columns for one batch's rows, in ``types`` order, each of its column's type."""
        columns = []
        for name, kind in self.types.items():
            if name not in extras.column_names:
                columns.append((name, pa.nulls(extras.num_rows, kind)))
                continue
            values = extras.column(name)
            try:
                columns.append((name, values.cast(kind, safe=True).combine_chunks()))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                self.notes.append(
                    f"batch {batch}: column {name!r} holds {values.type} values that do not fit "
                    f"its type {kind}; stored as null for this batch (the value stays in doc)"
                )
                columns.append((name, pa.nulls(extras.num_rows, kind)))
        return columns


def normal_type(kind: pa.DataType) -> pa.DataType | None:
    """The type a typed column is stored as, or None if it is not stored."""
    if pa.types.is_boolean(kind):
        return pa.bool_()
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_floating(kind):
        return pa.float64()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_timestamp(kind):
        return pa.timestamp("us", tz="UTC")
    if pa.types.is_date(kind):
        return pa.date32()
    if pa.types.is_decimal(kind):
        return kind
    return None
