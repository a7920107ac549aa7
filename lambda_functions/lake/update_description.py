"""Apply a change stream update event's ``updateDescription`` to the stored copy of a document.

An ``update`` change event without ``fullDocument`` carries only what changed (MongoDB Manual,
"Change Events" > "update Event", ``updateDescription``): ``updatedFields`` (dotted path -> new
value), ``removedFields`` (dotted paths), ``truncatedArrays`` (``{"field": path, "newSize": n}``)
and, from MongoDB 6.1 (``showExpandedEvents``; always from 8.2), ``disambiguatedPaths`` (dotted
path -> its components: strings for field names, integers for array indices) for every path whose
dotted form is ambiguous: a field name containing a dot, or a numeric field name below the top
level, which could also read as an array index.

The semantics are MongoDB's own:

- ``updatedFields`` follow ``$set`` (MongoDB Manual, "$set"): missing embedded documents on the
  path are created (as documents, even for a numeric component); a numeric component is an array
  index when its parent is an array, padding the array with nulls up to the index (at most
  1,500,000 nulls, the server's ``pathsupport::kMaxPaddingAllowed``), and a field name when its
  parent is a document. A path through a scalar (including null) cannot be set: the server
  refuses it ("Cannot create field 'b' in element {a: 1}", PathNotViable), so here the event does
  not fit the stored copy and ``UnappliableUpdateError`` says so.
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
- BSON documents are ordered: a field that exists keeps its position, a new field goes to the end
  of its embedded document (as ``$set`` does, and as the diff applier's insert section does).

Values are BSON-decoded Python values (``bson`` types, ``dict``/``SON``/``RawBSONDocument``
documents, ``list`` arrays) and are otherwise treated opaquely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambda_functions.errors import TerminalError

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
        A new ``dict`` (embedded documents as new ``dict``s, arrays as new ``list``s; other values
        are the same objects as in the inputs). Field order is the input's, with new fields
        appended to their embedded document. Idempotent: applying the event again to its result
        returns an equal document (``$set``/``$unset`` are; a truncation to ``newSize`` of an
        array that already has ``newSize`` elements changes nothing).

    Raises:
        UnappliableUpdateError: the event does not fit the document: an updated path through a
            scalar or null, a non-index component on an array, a disambiguated component whose
            kind disagrees with the document, an index needing more than 1,500,000 nulls of
            padding, a truncated array that is absent, not an array or shorter than ``newSize``;
            a path without ``disambiguatedPaths`` that could also name a stored field whose name
            has a dot; or a malformed description. (A removed path that does not resolve is
            ignored, as by ``$unset``.) Nothing is applied partially: the input is untouched.

    MongoDB Manual: "Change Events" (update event, ``updateDescription``), "$set", "$unset",
    "Array Update Operators"; server: ``change_stream_document_diff_parser.cpp``,
    ``document_diff_applier.cpp``.
    """
    updated = _member(update_description, "updatedFields", Mapping)
    removed = _member(update_description, "removedFields", list | tuple)
    truncated = _member(update_description, "truncatedArrays", list | tuple)
    disambiguated = _member(update_description, "disambiguatedPaths", Mapping)

    result = _copy(document)
    for entry in truncated:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("field"), str):
            raise UnappliableUpdateError(
                "truncatedArrays", f"entry {entry!r} is not {{'field': path, 'newSize': n}}"
            )
        path = entry["field"]
        new_size = entry.get("newSize")
        if isinstance(new_size, bool) or not isinstance(new_size, int) or new_size < 0:
            raise UnappliableUpdateError(path, f"newSize {new_size!r} is not an integer >= 0")
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
    """The path's components: typed ones from ``disambiguatedPaths``, else the dotted split.

    A split component (``_Split``) means what the parent it meets makes it (an index in an
    array, a field name in a document), as for ``$set``; a disambiguated ``str`` is always a field
    name and an ``int`` always an array index.
    """
    if path in disambiguated:
        parts = disambiguated[path]
        if not isinstance(parts, list | tuple) or not parts:
            raise UnappliableUpdateError(path, f"disambiguatedPaths entry {parts!r} is not a list")
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, str | int):
                raise UnappliableUpdateError(
                    path, f"disambiguatedPaths component {part!r} is neither a name nor an index"
                )
            if isinstance(part, int) and part < 0:
                raise UnappliableUpdateError(path, f"negative array index {part}")
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
    if size - len(array) > MAX_ARRAY_PADDING:
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
        if index >= len(parent):
            _pad(parent, index + 1, path)
        parent[index] = value
    elif parent is not None:  # always: missing containers were created on the way
        parent[_field_name(last, path)] = value


def _unset(document: dict[str, Any], path: str, parts: tuple[PathComponent, ...]) -> None:
    """``$unset``: a path that does not resolve in this document (absent, through a scalar, a
    name on an array, an index on a document) removes nothing."""
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
