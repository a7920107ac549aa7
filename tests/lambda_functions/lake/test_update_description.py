"""Applying an update event's ``updateDescription`` to the stored document, against MongoDB's
documented semantics.

The expected documents below are written from the MongoDB Manual, not from the code under test:

- "Change Events" > update event (https://www.mongodb.com/docs/manual/reference/change-events/
  update/): ``updatedFields``, ``removedFields``, ``truncatedArrays`` (pipeline updates),
  ``disambiguatedPaths`` (6.1+: the components of an ambiguous path, strings for field names and
  integers for array indices; a numeric field name below the top level or a name containing a dot
  is ambiguous).
- "$set" (https://www.mongodb.com/docs/manual/reference/operator/update/set/): a dotted path to a
  missing field creates the embedded documents it needs; an existing field is replaced in place.
- "$unset" (https://www.mongodb.com/docs/manual/reference/operator/update/unset/): a missing field
  is left alone; an array element is replaced by null, keeping the array's size and positions.
- "Array Update Operators" / dot notation (https://www.mongodb.com/docs/manual/core/document/
  #dot-notation): ``<array>.<index>`` addresses an element; setting past the end pads with null.
- The drivers' ``UpdateDescription`` documentation (e.g. the Swift driver's) gives the worked
  truncation example used in ``test_truncation_then_set_on_an_element``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

import bson
import pytest
from bson import Decimal128, Int64, ObjectId
from bson.raw_bson import RawBSONDocument
from bson.son import SON

from lambda_functions.errors import TERMINAL_ERROR_TYPES, TerminalError, error_kind
from lambda_functions.lake.update_description import (
    UnappliableUpdateError,
    apply_update_description,
)


def ordered(value: Any) -> Any:
    """A form whose equality also compares field order (BSON documents are ordered)."""
    if isinstance(value, Mapping):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return value


def apply(document: Mapping[str, Any], **description: Any) -> dict[str, Any]:
    return apply_update_description(document, description)


# -- updatedFields: $set ---------------------------------------------------------------------------


def test_missing_embedded_documents_are_created() -> None:
    assert apply({"_id": 1}, updatedFields={"a.b.c": 1}) == {"_id": 1, "a": {"b": {"c": 1}}}


def test_numeric_component_under_a_missing_parent_is_a_field_name() -> None:
    # $set creates embedded *documents* for a missing path, even for a numeric component.
    assert apply({"_id": 1}, updatedFields={"a.0": "x"}) == {"_id": 1, "a": {"0": "x"}}


def test_numeric_component_under_a_document_is_a_field_name() -> None:
    document = {"_id": 1, "a": {"1": "old"}}
    assert apply(document, updatedFields={"a.1": "new", "a.0": "added"}) == {
        "_id": 1,
        "a": {"1": "new", "0": "added"},
    }


def test_array_element_is_set_by_index() -> None:
    assert apply({"_id": 1, "arr": [1, 2, 3]}, updatedFields={"arr.1": 9}) == {
        "_id": 1,
        "arr": [1, 9, 3],
    }


def test_index_past_the_end_pads_with_null() -> None:
    assert apply({"_id": 1, "arr": [1]}, updatedFields={"arr.3": 4}) == {
        "_id": 1,
        "arr": [1, None, None, 4],
    }


def test_field_of_an_array_element_is_set_and_created() -> None:
    document = {"_id": 1, "arr": [{"x": 1}, {"x": 2}]}
    result = apply(document, updatedFields={"arr.1.x": 5, "arr.1.y": 6, "arr.3.z": 7})
    assert result == {"_id": 1, "arr": [{"x": 1}, {"x": 5, "y": 6}, None, {"z": 7}]}


def test_top_level_numeric_field_name_is_a_field() -> None:
    assert apply({"_id": 1, "1": "a"}, updatedFields={"1": "b", "2": "c"}) == {
        "_id": 1,
        "1": "b",
        "2": "c",
    }


def test_existing_fields_keep_their_position_and_new_fields_go_last() -> None:
    document = {"_id": 1, "a": 1, "nested": {"x": 1, "y": 2}, "z": 3}
    result = apply(document, updatedFields={"a": 10, "nested.x": 11, "nested.new": 12, "new": 13})
    assert ordered(result) == ordered(
        {"_id": 1, "a": 10, "nested": {"x": 11, "y": 2, "new": 12}, "z": 3, "new": 13}
    )


def test_values_are_kept_opaque() -> None:
    oid, amount, count = ObjectId(), Decimal128("12.30"), Int64(7)
    result = apply({"_id": oid}, updatedFields={"total": amount, "lines": {"count": count}})
    assert result["_id"] is oid
    assert result["total"] is amount
    assert result["lines"]["count"] is count


def test_raw_bson_input_is_read_as_documents_and_arrays() -> None:
    raw = RawBSONDocument(bson.encode({"_id": 1, "a": {"b": [1, 2]}}))
    assert ordered(apply(raw, updatedFields={"a.b.1": 3, "a.c": 4})) == ordered(
        {"_id": 1, "a": {"b": [1, 3], "c": 4}}
    )


def test_input_is_not_mutated_and_result_shares_no_containers() -> None:
    document = SON([("_id", 1), ("a", {"b": [1, {"c": 2}]}), ("gone", 1)])
    value = {"new": [1]}
    before = copy.deepcopy(document)
    result = apply(
        document, updatedFields={"a.b.1.c": 3, "v": value}, removedFields=["gone", "a.b.0"]
    )
    assert ordered(document) == ordered(before)
    assert value == {"new": [1]}
    assert type(result) is dict
    assert result["a"] is not document["a"] and result["v"] is not value
    result["v"]["new"].append(2)
    assert value == {"new": [1]}


# -- removedFields: $unset --------------------------------------------------------------------------


def test_removed_field_leaves_the_others_in_order() -> None:
    document = {"_id": 1, "a": 1, "b": {"c": 1, "d": 2}, "e": 3}
    assert ordered(apply(document, removedFields=["a", "b.c"])) == ordered(
        {"_id": 1, "b": {"d": 2}, "e": 3}
    )


def test_removed_array_element_becomes_null() -> None:
    assert apply({"_id": 1, "arr": [1, 2, 3]}, removedFields=["arr.1"]) == {
        "_id": 1,
        "arr": [1, None, 3],
    }


def test_removing_a_path_that_does_not_resolve_is_a_no_op() -> None:
    document = {"_id": 1, "s": 5, "arr": [1], "d": {"k": 1}}
    removed = ["missing", "d.missing.deeper", "arr.7", "arr.x", "s.x", "d.k.x"]
    assert apply(document, removedFields=removed) == document


# -- truncatedArrays -------------------------------------------------------------------------------


def test_truncation_then_set_on_an_element() -> None:
    # The drivers' documented example: "arrayField": ["foo", {"a": "bar"}, 1, 2, 3] becomes
    # ["foo", {"a": "bar", "b": 3}] with updatedFields {"arrayField.1.b": 3} and truncatedArrays
    # [{"field": "arrayField", "newSize": 2}].
    document = {"_id": 1, "arrayField": ["foo", {"a": "bar"}, 1, 2, 3]}
    result = apply(
        document,
        updatedFields={"arrayField.1.b": 3},
        removedFields=[],
        truncatedArrays=[{"field": "arrayField", "newSize": 2}],
    )
    assert result == {"_id": 1, "arrayField": ["foo", {"a": "bar", "b": 3}]}


def test_truncation_is_applied_before_updates() -> None:
    # A pipeline update [1, 2, 3, 4] -> [1, 2, "new"] is one array diff: keep the elements below
    # newSize, then write index 2 (document_diff_applier's applyDiffToArray).
    result = apply(
        {"_id": 1, "arr": [1, 2, 3, 4]},
        updatedFields={"arr.2": "new"},
        truncatedArrays=[{"field": "arr", "newSize": 3}],
    )
    assert result == {"_id": 1, "arr": [1, 2, "new"]}
    # Had the update gone first, the truncation to 2 would have dropped the new element.
    grown = apply(
        {"_id": 1, "arr": [1, 2, 3, 4]},
        updatedFields={"arr.2": "new"},
        truncatedArrays=[{"field": "arr", "newSize": 2}],
    )
    assert grown == {"_id": 1, "arr": [1, 2, "new"]}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"_id": 1}, "absent"),
        ({"_id": 1, "arr": "text"}, "str"),
        ({"_id": 1, "arr": {"0": 1}}, "dict"),
        ({"_id": 1, "arr": [1]}, "fewer than newSize 2"),
    ],
)
def test_truncation_of_what_is_not_a_long_enough_array_is_refused(
    document: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnappliableUpdateError, match=reason) as raised:
        apply(document, truncatedArrays=[{"field": "arr", "newSize": 2}])
    assert raised.value.path == "arr"


# -- disambiguatedPaths ----------------------------------------------------------------------------


def test_field_named_1_is_set_as_a_field() -> None:
    document = {"_id": 1, "a": {"1": "x", "b": 2}}
    result = apply(document, updatedFields={"a.1": "y"}, disambiguatedPaths={"a.1": ["a", "1"]})
    assert ordered(result) == ordered({"_id": 1, "a": {"1": "y", "b": 2}})


def test_field_named_1_meeting_an_array_is_refused() -> None:
    # The event says "a" is a document with a field "1"; the stored "a" is an array.
    with pytest.raises(UnappliableUpdateError, match="meets an array"):
        apply(
            {"_id": 1, "a": [10, 20]},
            updatedFields={"a.1": "y"},
            disambiguatedPaths={"a.1": ["a", "1"]},
        )


def test_disambiguated_index_meeting_a_document_is_refused() -> None:
    with pytest.raises(UnappliableUpdateError, match="array index 1"):
        apply(
            {"_id": 1, "a": {"1": "x"}},
            updatedFields={"a.1": "y"},
            disambiguatedPaths={"a.1": ["a", 1]},
        )


def test_field_containing_a_dot_is_one_component() -> None:
    document = {"_id": 1, "x": {"a.b": 1, "c": 2}}
    result = apply(document, updatedFields={"x.a.b": 3}, disambiguatedPaths={"x.a.b": ["x", "a.b"]})
    assert ordered(result) == ordered({"_id": 1, "x": {"a.b": 3, "c": 2}})
    # Without disambiguatedPaths the same dotted path could be x -> a -> b as well: not guessed.
    with pytest.raises(UnappliableUpdateError, match=r"field named 'a\.b'"):
        apply(document, updatedFields={"x.a.b": 3})
    with pytest.raises(UnappliableUpdateError, match="ambiguous"):
        apply(document, removedFields=["x.a.b.c"])
    # Where no stored field has a dot in its name, a dotted path is field names, as $set reads it.
    assert apply({"_id": 1, "x": {"c": 2}}, updatedFields={"x.a.b": 3}) == {
        "_id": 1,
        "x": {"c": 2, "a": {"b": 3}},
    }


def test_dotted_field_name_then_array_index() -> None:
    document = {"_id": 1, "a.b": [1, 2], "keep": 0}
    result = apply(
        document,
        updatedFields={"a.b.1": 5},
        removedFields=["a.b.0"],
        disambiguatedPaths={"a.b.1": ["a.b", 1], "a.b.0": ["a.b", 0]},
    )
    assert result == {"_id": 1, "a.b": [None, 5], "keep": 0}


def test_disambiguated_removal_and_truncation() -> None:
    document = {"_id": 1, "m": {"1": [1, 2, 3], "2": "drop me", "k": 1}}
    result = apply(
        document,
        removedFields=["m.2"],
        truncatedArrays=[{"field": "m.1", "newSize": 1}],
        disambiguatedPaths={"m.2": ["m", "2"], "m.1": ["m", "1"]},
    )
    assert ordered(result) == ordered({"_id": 1, "m": {"1": [1], "k": 1}})


# -- what cannot be applied -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"_id": 1, "a": 1}, "a.b"),
        ({"_id": 1, "a": {"b": "text"}}, "a.b.c"),
        ({"_id": 1, "a": None}, "a.b"),
        ({"_id": 1, "arr": [1, None]}, "arr.1.x"),
        ({"_id": 1, "arr": [1, 2]}, "arr.x"),
        ({"_id": 1, "arr": [1, 2]}, "arr.01"),
    ],
)
def test_setting_through_a_scalar_or_a_name_on_an_array_is_refused(
    document: dict[str, Any], path: str
) -> None:
    before = copy.deepcopy(document)
    with pytest.raises(UnappliableUpdateError) as raised:
        apply(document, updatedFields={"ok": 1, path: 2})
    assert raised.value.path == path
    assert path in str(raised.value) and "set this event aside" in str(raised.value)
    assert document == before


def test_unappliable_update_is_a_terminal_value_error() -> None:
    assert issubclass(UnappliableUpdateError, TerminalError)
    assert issubclass(UnappliableUpdateError, ValueError)
    assert "UnappliableUpdateError" in TERMINAL_ERROR_TYPES
    assert error_kind("UnappliableUpdateError") == "terminal"


def test_padding_beyond_the_server_limit_is_refused() -> None:
    with pytest.raises(UnappliableUpdateError, match="1500000 nulls"):
        apply({"_id": 1, "arr": []}, updatedFields={"arr.1500001": 1})
    assert len(apply({"_id": 1, "arr": []}, updatedFields={"arr.1499999": 1})["arr"]) == 1500000


@pytest.mark.parametrize(
    "description",
    [
        {"updatedFields": [("a", 1)]},
        {"removedFields": "a"},
        {"removedFields": [1]},
        {"truncatedArrays": [{"field": "arr"}]},
        {"truncatedArrays": [{"field": "arr", "newSize": -1}]},
        {"truncatedArrays": [{"field": "arr", "newSize": True}]},
        {"updatedFields": {"a..b": 1}},
        {"updatedFields": {"a.b": 1}, "disambiguatedPaths": {"a.b": "a.b"}},
        {"updatedFields": {"a.b": 1}, "disambiguatedPaths": {"a.b": ["a", 1.5]}},
    ],
)
def test_malformed_description_is_refused(description: dict[str, Any]) -> None:
    with pytest.raises(UnappliableUpdateError):
        apply_update_description({"_id": 1, "arr": [1, 2]}, description)


def test_empty_description_changes_nothing() -> None:
    document = {"_id": 1, "a": {"b": [1]}}
    assert ordered(apply_update_description(document, {})) == ordered(document)


# -- idempotence -----------------------------------------------------------------------------------


def test_set_and_unset_applied_twice_equal_once() -> None:
    document = {"_id": 1, "a": {"b": 1}, "arr": [1, 2, 3], "gone": True}
    description = {
        "updatedFields": {"a.c.d": 1, "arr.5": "x", "arr.0": {"n": 1}, "top": [1]},
        "removedFields": ["gone", "arr.1", "a.b", "never.there"],
    }
    once = apply_update_description(document, description)
    twice = apply_update_description(once, description)
    assert ordered(twice) == ordered(once)
    assert once == {
        "_id": 1,
        "a": {"c": {"d": 1}},
        "arr": [{"n": 1}, None, 3, None, None, "x"],
        "top": [1],
    }


def test_an_event_with_a_truncation_applied_twice_equals_once() -> None:
    description = {
        "updatedFields": {"arr.1.b": 3},
        "truncatedArrays": [{"field": "arr", "newSize": 2}],
    }
    once = apply_update_description({"_id": 1, "arr": [0, {"a": 1}, 2, 3]}, description)
    assert apply_update_description(once, description) == once


# -- against the embedded stand-in's $set/$unset/$inc/$push ----------------------------------------


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.choice(["int", "str", "doc", "arr"] if depth < 3 else ["int", "str"])
    if kind == "int":
        return rng.randint(0, 9)
    if kind == "str":
        return rng.choice("xyz") * rng.randint(1, 3)
    if kind == "doc":
        return {
            rng.choice("abcd1"): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))
        }
    return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def _random_path(rng: random.Random, document: Mapping[str, Any]) -> list[str]:
    """A path through existing values, sometimes one step further (new field, index past end)."""
    parts: list[str] = []
    node: Any = document
    while True:
        if isinstance(node, dict) and node and rng.random() < 0.7:
            key = rng.choice([k for k in node if k != "_id"] or ["new"])
        elif isinstance(node, list) and rng.random() < 0.7:
            key = str(rng.randint(0, len(node) + 1))
        else:
            return (
                [*parts, rng.choice(["new", "1", "q"])]
                if not parts or rng.random() < 0.5
                else parts
            )
        parts.append(key)
        node = (
            node.get(key)
            if isinstance(node, dict)
            else (node[int(key)] if int(key) < len(node) else None)
        )
        if not isinstance(node, dict | list):
            return parts


def _through_null(document: Mapping[str, Any], parts: list[str]) -> bool:
    """Whether the path passes through a null: the stand-in treats null as missing there and
    creates a document, where MongoDB refuses ("Cannot create field ... in element {a: null}")."""
    node: Any = document
    for part in parts[:-1]:
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
        if node is None:
            return True
    return False


def _value_at(document: Mapping[str, Any], parts: list[str]) -> Any:
    node: Any = document
    for part in parts:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def test_replaying_the_stand_ins_update_events_rebuilds_its_documents(tmp_path) -> None:
    from lakehouse_local.embedded_source import EmbeddedChangeStreamSource

    rng = random.Random(20261201)
    checked = 0
    with EmbeddedChangeStreamSource(tmp_path / "source.sqlite") as source:
        source.enable_change_streams("db", "coll")
        stream = source.watch("db", "coll")
        for _id in range(40):
            source.insert_one("db", "coll", {"_id": _id, "a": _random_value(rng, 1), "b": [1]})
            assert stream.try_next()["operationType"] == "insert"
            for _ in range(15):
                before = source.find_one("db", "coll", _id)
                parts = _random_path(rng, before)
                path = ".".join(parts)
                if not parts or _through_null(before, parts):
                    continue
                operator = rng.choice(["$set", "$set", "$unset", "$inc", "$push"])
                if operator == "$push" and not isinstance(_value_at(before, parts), list):
                    # The stand-in reports a $push that creates an array as "path.0", where
                    # MongoDB reports the new array itself ("path": [value]).
                    continue
                value: Any = rng.randint(1, 5) if operator != "$set" else _random_value(rng, 1)
                if operator == "$unset":
                    value = ""
                try:
                    changed = source.update_one(
                        "db", "coll", {"_id": _id}, {operator: {path: value}}
                    )
                except Exception:  # the stand-in refuses it (a scalar parent, $inc on text...)
                    continue
                if not changed:
                    continue
                event = stream.try_next()
                assert event["operationType"] == "update"
                after = source.find_one("db", "coll", _id)
                rebuilt = apply_update_description(before, event["updateDescription"])
                assert ordered(rebuilt) == ordered(after), (before, operator, path, value)
                checked += 1
    assert checked > 100
