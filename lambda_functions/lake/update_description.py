"""Apply a change stream update event's ``updateDescription`` to the stored copy of a document.

An ``update`` event carries what changed (MongoDB Manual, "Change Events" > "update Event"):
``updatedFields`` (dotted path -> value), ``removedFields``, ``truncatedArrays`` and, from 6.1
with ``showExpandedEvents`` (always from 8.2), ``disambiguatedPaths``: the components (``str``
field names, ``int`` array indices) of each ambiguous path, one through a field name containing a
dot or a numeric field name below the top level.

The semantics are MongoDB's own:

- ``updatedFields`` follow ``$set`` (MongoDB Manual, "$set"): missing embedded documents on the
  path are created (documents, even for a numeric component); a numeric component indexes an
  array parent, padding it with nulls (at most 1,500,000: ``pathsupport::kMaxPaddingAllowed``),
  and names a field of a document parent. A path through a scalar or null cannot be set (the
  server: "Cannot create field 'b' in element {a: 1}"): the event does not fit the stored copy.
- ``removedFields`` follow ``$unset`` (MongoDB Manual, "$unset"): removing an array element sets it
  to null, keeping the array's size and positions; removing a path that does not resolve in the
  stored document (absent, or through a scalar) does nothing.
- ``truncatedArrays`` (pipeline-style updates) are applied first, then removals, then updates:
  the server's ``change_stream_document_diff_parser.cpp`` reports one array diff as a
  ``truncatedArrays`` entry plus ``updatedFields`` for its changed indices, and
  ``document_diff_applier.cpp`` (``applyDiffToArray``) keeps only the elements below ``newSize``
  while applying those updates. A diff never names a field both removed and updated ("duplicate
  field name in diff"), so removals and updates commute.
- Without ``disambiguatedPaths`` a path is split on dots, and a component's kind follows the
  stored document, as ``$set`` resolves it on the server's copy. A split path that could also run
  through a stored field whose name has a dot is refused; a field with a dot in its name that the
  event *creates* cannot be told from nested fields without ``disambiguatedPaths`` (sent from
  MongoDB 6.1 with ``showExpandedEvents``): it is applied as nested fields.
- BSON documents are ordered: an existing field keeps its position, a new one goes last in its
  embedded document (``$set``; the diff applier's insert section).

Values are BSON-decoded (``bson`` types; ``dict``/``SON``/``RawBSONDocument``; ``list``), opaque.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambda_functions.errors import TerminalError
from lambda_functions.lake.masking import MASKED_UNAPPLIABLE_FIELD

# The server pads an array with at most this many nulls (src/mongo/db/update/path_support.h).
MAX_ARRAY_PADDING = 1_500_000

PathComponent = str | int
_ABSENT = object()  # a path's end that the stored document does not have


class UnappliableUpdateError(TerminalError, ValueError):
    """An update event's ``updateDescription`` does not fit the stored copy of the document.

    The stored copy differs from the source (or the event is malformed): applying the event would
    mean guessing. The caller sets the event aside and takes the document whole instead (the
    event's ``fullDocument`` with ``fullDocument: "updateLookup"``, or a re-snapshot).

    Attributes:
        path: the dotted path of ``updateDescription`` that could not be applied.
        reason: why, in words.
    """

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(
            f"cannot apply updateDescription path {path!r}: {reason}; the stored document does "
            "not match the source: set this event aside and take the document whole (the event "
            "with fullDocument: 'updateLookup', or a re-snapshot of the collection)"
        )


def apply_update_description(
    document: Mapping[str, Any], update_description: Mapping[str, Any]
) -> dict[str, Any]:
    """The document after an update event, from the document before it.

    Args:
        document: the stored document before the event (a BSON-decoded mapping, ``_id`` included).
            Not mutated.
        update_description: the event's ``updateDescription``: ``updatedFields`` (mapping of dotted
            path -> value), ``removedFields`` (list of dotted paths), ``truncatedArrays`` (list of
            ``{"field": dotted path, "newSize": int >= 0}``), ``disambiguatedPaths`` (mapping of
            dotted path -> list of components, ``str`` field names and ``int`` array indices).
            Every key is optional; an absent key changes nothing.

    Returns:
        A new ``dict`` (documents and arrays rebuilt as ``dict``/``list``, other values shared
        with the inputs), in the input's field order with new fields last in their document.
        Idempotent: applying the event again to its result returns an equal document.

    Raises:
        UnappliableUpdateError: the event does not fit the document: an updated path through a
            scalar or null, a non-index component on an array, a disambiguated component whose
            kind disagrees with the document, an index needing more than 1,500,000 nulls of
            padding, a truncated array that is absent, not an array or shorter than ``newSize``;
            a path without ``disambiguatedPaths`` that could also name a stored field whose name
            has a dot; a description that edge masking marked (``MASKED_UNAPPLIABLE_FIELD``: it
            changed part of a hashed field); or a malformed description. (A removed path that does not resolve is
            ignored, as by ``$unset``.) Nothing is applied partially: the input is untouched.

    MongoDB Manual: "Change Events" (update event, ``updateDescription``), "$set", "$unset",
    "Array Update Operators"; server: ``change_stream_document_diff_parser.cpp``,
    ``document_diff_applier.cpp``.
    """
    masked = update_description.get(MASKED_UNAPPLIABLE_FIELD)
    if masked:
        raise UnappliableUpdateError(
            ", ".join(map(str, masked)),
            "the event changes part of a hashed field (PII masking rule): its new hash needs the "
            "whole new value, which only the full document has",
        )
    updated = _member(update_description, "updatedFields", Mapping)
    removed = _member(update_description, "removedFields", list | tuple)
    truncated = _member(update_description, "truncatedArrays", list | tuple)
    disambiguated = _member(update_description, "disambiguatedPaths", Mapping)

    result = _copy(document)
    for entry in truncated:
        ok = isinstance(entry, Mapping)
        path, new_size = (entry.get("field"), entry.get("newSize")) if ok else (None, None)
        if not isinstance(path, str) or isinstance(new_size, str) or not _is_component(new_size):
            raise UnappliableUpdateError("truncatedArrays", f"{entry!r} is not {{field, newSize}}")
        _truncate(result, path, _components(result, path, disambiguated), int(new_size))
    for path in removed:
        if not isinstance(path, str):
            raise UnappliableUpdateError("removedFields", f"entry {path!r} is not a dotted path")
        _unset(result, path, _components(result, path, disambiguated))
    for path, value in updated.items():
        _set(result, path, _components(result, path, disambiguated), _copy(value))
    return result


def _member(update_description: Mapping[str, Any], key: str, kind: Any) -> Any:
    value = update_description.get(key)
    if value is None:
        return {} if kind is Mapping else ()
    if not isinstance(value, kind):
        raise UnappliableUpdateError(key, f"unexpected {type(value).__name__} {value!r}")
    return value


def _copy(value: Any) -> Any:
    """Documents and arrays rebuilt as ``dict``/``list`` all the way down; leaves shared."""
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value


def _components(
    document: dict[str, Any], path: str, disambiguated: Mapping[str, Any]
) -> tuple[PathComponent, ...]:
    """Typed components from ``disambiguatedPaths`` (``str`` a field, ``int`` an index), else the
    dotted split, whose ``_Split`` parts index an array parent and name a document parent's field."""
    if path in disambiguated:
        parts = disambiguated[path]
        if not isinstance(parts, list | tuple) or not parts or not all(map(_is_component, parts)):
            raise UnappliableUpdateError(
                path, f"disambiguatedPaths entry {parts!r} is not a list of names and indices"
            )
        return tuple(str(part) if isinstance(part, str) else int(part) for part in parts)
    if not path or "" in path.split("."):
        raise UnappliableUpdateError(path, "the path has an empty component")
    split = tuple(_Split(part) for part in path.split("."))
    _refuse_dotted_names(document, path, split)
    return split


def _refuse_dotted_names(document: dict[str, Any], path: str, parts: tuple[str, ...]) -> None:
    """Refuse a split path that could also run through a stored field whose name has a dot."""
    node: Any = document
    for depth, part in enumerate(parts):
        if isinstance(node, dict):
            rest = ".".join(parts[depth:])
            for key in node:
                if "." in key and (rest == key or rest.startswith(key + ".")):
                    raise UnappliableUpdateError(
                        path,
                        f"the stored document has a field named {key!r}, so the path is "
                        "ambiguous without disambiguatedPaths (MongoDB 6.1+, showExpandedEvents)",
                    )
            node = node.get(part)
        elif isinstance(node, list) and _is_canonical_index(part) and int(part) < len(node):
            node = node[int(part)]
        else:
            return


def _is_component(part: Any) -> bool:
    return isinstance(part, str) or (type(part) is not bool and isinstance(part, int) and part >= 0)


class _Split(str):
    """A component from splitting a dotted path: its kind depends on the parent it meets."""


def _is_canonical_index(part: str) -> bool:
    # FieldRef::isNumericPathComponentStrict: digits only, no leading zero except "0" itself.
    return part.isascii() and part.isdigit() and (part == "0" or not part.startswith("0"))


def _field_name(part: PathComponent, path: str) -> str:
    if isinstance(part, int):
        raise UnappliableUpdateError(
            path, f"the event names array index {part}, but the stored value is a document"
        )
    return str(part)


def _index(part: PathComponent, path: str) -> int:
    if isinstance(part, int):
        return part
    if isinstance(part, _Split) and _is_canonical_index(part):
        return int(part)
    raise UnappliableUpdateError(
        path, f"field name {str(part)!r} meets an array in the stored document"
    )


def _step(node: Any, part: PathComponent, path: str, *, create: bool) -> Any:
    """The child of ``node`` at ``part``; ``_ABSENT`` if absent (``{}`` created if ``create``)."""
    if isinstance(node, dict):
        key = _field_name(part, path)
        if key not in node:
            if not create:
                return _ABSENT
            node[key] = {}
        return node[key]
    index = _index(part, path)
    if index >= len(node):
        if not create:
            return _ABSENT
        _pad(node, index + 1, path)
        node[index] = {}
    return node[index]


def _pad(array: list[Any], size: int, path: str) -> None:
    """Extend ``array`` with nulls to ``size`` elements (no change if it has as many), to set
    index ``size - 1``: the server pads up to the index (``maybePadTo(newIdx)``), then appends
    the element, so ``size - 1 - len(array)`` nulls count against the limit."""
    if size - 1 - len(array) > MAX_ARRAY_PADDING:
        raise UnappliableUpdateError(
            path, f"setting index {size - 1} would pad the array with more than 1500000 nulls"
        )
    array.extend([None] * (size - len(array)))


def _parent(
    document: dict[str, Any], path: str, parts: tuple[PathComponent, ...], *, create: bool
) -> dict[str, Any] | list[Any] | None:
    """The container holding the path's last component; ``None`` if absent and not ``create``."""
    node: Any = document
    for depth, part in enumerate(parts[:-1]):
        child = _step(node, part, path, create=create)
        if child is _ABSENT:
            return None
        if not isinstance(child, dict | list):
            where = ".".join(str(p) for p in parts[: depth + 1])
            raise UnappliableUpdateError(
                path, f"{where!r} holds {type(child).__name__} {child!r}, not a document or array"
            )
        node = child
    return node


def _set(document: dict[str, Any], path: str, parts: tuple[PathComponent, ...], value: Any) -> None:
    parent = _parent(document, path, parts, create=True)
    last = parts[-1]
    if isinstance(parent, list):
        index = _index(last, path)
        _pad(parent, index + 1, path)  # nothing to pad when the index exists
        parent[index] = value
    elif parent is not None:  # always: missing containers were created on the way
        parent[_field_name(last, path)] = value


def _unset(document: dict[str, Any], path: str, parts: tuple[PathComponent, ...]) -> None:
    """``$unset``: a path that does not resolve (absent, through a scalar...) removes nothing."""
    try:
        parent = _parent(document, path, parts, create=False)
        last = parts[-1]
        if isinstance(parent, dict):
            parent.pop(_field_name(last, path), None)
        elif isinstance(parent, list):
            index = _index(last, path)
            if index < len(parent):
                parent[index] = None  # an array element is nulled, not removed
    except UnappliableUpdateError:
        return


def _truncate(
    document: dict[str, Any], path: str, parts: tuple[PathComponent, ...], new_size: int
) -> None:
    parent = _parent(document, path, parts, create=False)
    array = _ABSENT if parent is None else _step(parent, parts[-1], path, create=False)
    if not isinstance(array, list):
        stored = "absent" if array is _ABSENT else type(array).__name__
        raise UnappliableUpdateError(path, f"truncatedArrays names it, but it is {stored}")
    if len(array) < new_size:
        raise UnappliableUpdateError(
            path, f"the stored array has {len(array)} elements, fewer than newSize {new_size}"
        )
    del array[new_size:]
