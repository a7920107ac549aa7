"""Record keys of the odd BSON types MongoDB accepts as ``_id``.

Expected values come from MongoDB, not from the code under test:

- an ``_id`` may be any BSON type except an array, a regular expression or undefined (server
  ``storage_validation.cpp``, ``storageValidIdField``; manual, "Documents" > "The _id Field");
- in an ``_id`` document, ``$``-prefixed field names are refused except a DBRef's ``$ref``,
  ``$id`` and ``$db`` in that order (``validateDollarPrefixElement``), so ``{$ref, $id}`` is a
  legal ``_id``;
- JavaScript code (BSON type 13) and code with scope (type 15) are types of their own, apart
  from strings (BSON spec; MongoDB's canonical type order puts them after regular expressions:
  ``canonicalizeBSONType`` 60 and 65, strings 15): ``Code("x")`` and ``"x"`` are two documents.
  Code with scope compares its code, then its scope as a document (whose numbers compare by
  value).
"""

from __future__ import annotations

import bson
from bson import Code, DBRef, Int64, ObjectId
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument

from lambda_functions.lake.record_key import key_value, raw_record_key, record_key

RAW = CodecOptions(
    document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO
)


def test_javascript_code_and_the_string_of_its_text_are_two_records():
    assert record_key(Code("return 1")) != record_key("return 1")
    assert record_key({"f": Code("x")}) != record_key({"f": "x"})


def test_code_with_scope_is_another_record_than_code_and_compares_its_scope_by_value():
    assert record_key(Code("x", {})) != record_key(Code("x"))  # type 15 vs type 13
    assert record_key(Code("x", {"a": 1})) == record_key(Code("x", {"a": Int64(1)}))
    assert record_key(Code("x", {"a": 1})) == record_key(Code("x", {"a": 1.0}))
    assert record_key(Code("x", {"a": 1})) != record_key(Code("x", {"a": 2}))


def test_code_keys_read_back_as_code():
    for value in (Code("x"), Code("x", {"a": 1})):
        back = key_value(record_key(value))
        assert isinstance(back, Code) and str(back) == str(value)
        assert record_key(back) == record_key(value)


def test_a_dbref_id_is_keyed_as_the_document_it_is():
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    ref = DBRef("customers", oid)
    key = record_key(ref)
    # pymongo decodes {$ref, $id} as DBRef, raw BSON reads it as a document: one key
    raw = RawBSONDocument(bson.encode({"_id": ref}), RAW)
    assert record_key(raw["_id"]) == key
    assert record_key(bson.decode(bson.encode({"_id": ref}))["_id"]) == key
    assert record_key(DBRef("customers", 1)) == record_key(DBRef("customers", Int64(1)))
    assert record_key(DBRef("customers", oid)) != record_key(DBRef("orders", oid))
    assert record_key(DBRef("customers", oid, "shop")) != key
    assert record_key(key_value(key)) == key
    assert raw_record_key(raw.raw) is None  # not an ObjectId or string: the decoded path
