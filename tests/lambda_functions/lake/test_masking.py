"""PII masking before the raw zone: paths, change events, hashing, rules and the key."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re

import boto3
import bson
import pytest
from botocore.stub import Stubber
from bson import json_util
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from moto import mock_aws

from lambda_functions.errors import error_kind
from lambda_functions.lake import masking_key
from lambda_functions.lake.masking import (
    MaskingRules,
    MaskingRulesError,
    collection_rules,
    hash_value,
    mask_change_event,
    mask_document,
    mask_updated_fields,
    parse_masking_rules,
    rules_fingerprint,
)
from lambda_functions.lake.masking_key import (
    MaskingKey,
    MaskingKeyError,
    MaskingKeyUnavailableError,
    load_masking_key,
)

KEY = MaskingKey(b"k" * 32)
OTHER_KEY = MaskingKey(b"q" * 32)
RULES = MaskingRules(drop=("ssn", "card.number"), hash=("email", "addresses.phone"))


def customer() -> dict:
    return {
        "_id": 7,
        "name": "Ada",
        "ssn": "123-45-6789",
        "email": "ada@example.com",
        "card": {"number": "4111111111111111", "expiry": "12/30"},
        "addresses": [
            {"city": "Paris", "phone": "+33 1 23 45 67 89"},
            {"city": "Lyon"},
            "not a document",
            [{"phone": "+33 4 00 00 00 00"}],
        ],
    }


# -- documents ------------------------------------------------------------------------------------
def test_drop_and_hash_reach_nested_fields_and_every_array_element():
    document = customer()
    before = copy.deepcopy(document)

    masked = mask_document(document, RULES, KEY)

    assert document == before  # the input is never modified
    assert list(masked) == ["_id", "name", "email", "card", "addresses"]  # order kept
    assert masked["email"] == hash_value("ada@example.com", KEY)
    assert masked["card"] == {"expiry": "12/30"}
    assert masked["addresses"] == [
        {"city": "Paris", "phone": hash_value("+33 1 23 45 67 89", KEY)},
        {"city": "Lyon"},
        "not a document",
        [{"phone": hash_value("+33 4 00 00 00 00", KEY)}],  # arrays in arrays too
    ]


def test_a_missing_path_or_one_that_meets_a_scalar_masks_nothing_and_returns_the_input():
    document = {"_id": 1, "card": "no details", "addresses": [1, 2]}

    assert mask_document(document, RULES, KEY) is document
    assert mask_document(document, MaskingRules(), None) is document


def test_a_hashed_field_holding_a_document_or_array_is_hashed_as_one_value():
    rules = MaskingRules(hash=("card",))

    masked = mask_document({"_id": 1, "card": {"number": "4111"}}, rules, KEY)

    assert masked == {"_id": 1, "card": hash_value({"number": "4111"}, KEY)}


def test_a_raw_bson_document_is_masked_like_a_dict():
    document = customer()
    raw = RawBSONDocument(bson.encode(document))

    masked = mask_document(raw, RULES, KEY)

    assert bson.decode(bson.encode(masked)) == mask_document(document, RULES, KEY)


def test_rules_that_hash_need_a_key_and_rules_that_only_drop_do_not():
    with pytest.raises(MaskingKeyError, match="LAKEHOUSE_MASKING_KEY"):
        mask_document(customer(), RULES, None)

    masked = mask_document(customer(), MaskingRules(drop=("ssn",)), None)

    assert "ssn" not in masked


# -- change events --------------------------------------------------------------------------------
def update_event(updated: dict) -> dict:
    return {
        "_id": {"_data": "token"},
        "operationType": "update",
        "ns": {"db": "shop", "coll": "customers"},
        "documentKey": {"_id": 7, "email": "ada@example.com"},  # a shard key
        "updateDescription": {"updatedFields": updated, "removedFields": ["ssn", "card.number"]},
        "fullDocument": customer(),
        "fullDocumentBeforeChange": customer(),
    }


def test_a_change_event_has_its_documents_and_shard_key_masked_and_its_id_kept():
    event = update_event({"name": "Ada L."})

    masked = mask_change_event(event, RULES, KEY)

    assert masked["fullDocument"] == mask_document(customer(), RULES, KEY)
    assert masked["fullDocumentBeforeChange"] == mask_document(customer(), RULES, KEY)
    assert masked["documentKey"] == {"_id": 7, "email": hash_value("ada@example.com", KEY)}
    assert masked["updateDescription"] is event["updateDescription"]  # nothing to mask there
    assert masked["updateDescription"]["removedFields"] == ["ssn", "card.number"]
    assert {k: masked[k] for k in ("_id", "ns", "operationType")} == {
        k: event[k] for k in ("_id", "ns", "operationType")
    }
    assert event["fullDocument"] == customer()  # the input is never modified


def test_a_delete_event_without_personal_data_is_returned_as_is():
    event = {"operationType": "delete", "documentKey": {"_id": 7}, "ns": {"db": "s", "coll": "c"}}

    assert mask_change_event(event, RULES, KEY) is event


def test_updated_fields_at_a_masked_path_are_dropped_or_hashed_like_the_full_document():
    updated = {
        "card.number": "4111111111111111",
        "email": "new@example.com",
        "addresses.0.phone": "+33 6 00 00 00 00",
        "card.expiry": "01/31",
    }

    masked = mask_change_event(update_event(updated), RULES, KEY)

    assert masked["updateDescription"]["updatedFields"] == {
        "email": hash_value("new@example.com", KEY),
        "addresses.0.phone": hash_value("+33 6 00 00 00 00", KEY),
        "card.expiry": "01/31",
    }


def test_updated_fields_above_a_masked_path_have_the_rest_of_the_path_applied():
    updated = {
        "card": {"number": "4111111111111111", "expiry": "01/31"},
        "addresses.1": {"city": "Nice", "phone": "+33 4 11 11 11 11"},
        "addresses": [{"phone": "+33 4 22 22 22 22"}],
    }

    masked = mask_updated_fields(updated, RULES, KEY)

    assert masked == {
        "card": {"expiry": "01/31"},
        "addresses.1": {"city": "Nice", "phone": hash_value("+33 4 11 11 11 11", KEY)},
        "addresses": [{"phone": hash_value("+33 4 22 22 22 22", KEY)}],
    }


def test_updated_fields_under_a_masked_path_are_dropped():
    updated = {
        "card.number.last4": "1111",  # under a dropped field
        "addresses.0.phone.1": "+33 7 00 00 00 00",  # an element of a hashed (array) field
        "addresses.0.phone.code": "+33",  # a field of a hashed field: its hash would differ
        "name": "Ada",
    }

    assert mask_updated_fields(updated, RULES, KEY) == {"name": "Ada"}


def test_updated_fields_without_personal_data_are_returned_as_is():
    updated = {"name": "Ada", "addresses.0.city": "Paris", "cardholder": "Ada"}

    assert mask_updated_fields(updated, RULES, KEY) is updated


# -- hashing --------------------------------------------------------------------------------------
def test_the_hash_is_hmac_sha256_of_the_type_tagged_bson_value():
    expected = hmac.new(KEY.secret, b"bson-v1\x00" + bson.encode({"v": "1"}), hashlib.sha256)

    assert hash_value("1", KEY) == "hmac-sha256:" + expected.hexdigest()
    assert re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", hash_value(None, KEY))


def test_values_of_different_bson_types_hash_differently():
    values = ["1", 1, Int64(1), 1.0, True, [1], {"v": 1}, None, b"1"]

    hashes = {hash_value(value, KEY) for value in values}

    assert len(hashes) == len(values)


def test_equal_values_hash_equally_across_runs_and_differently_under_another_key():
    # A fixed figure: a change here would re-key every hashed column already in the lake.
    assert hash_value("ada@example.com", MaskingKey(b"k" * 32)) == (
        "hmac-sha256:c1ab0c8378a051d3e4611c6613578d6375c78427fb6aeb6975333a4237188bb7"
    )
    assert hash_value("ada@example.com", KEY) != hash_value("ada@example.com", OTHER_KEY)


def test_a_string_that_is_not_utf8_is_hashed_over_its_original_bytes():
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")

    assert hash_value(bad, KEY) == hash_value(bad, KEY)
    assert hash_value(bad, KEY) != hash_value("café", KEY)
    assert hash_value({"a": [bad]}, KEY) != hash_value({"a": ["caf"]}, KEY)


# -- rules ----------------------------------------------------------------------------------------
def test_rules_are_parsed_per_collection_and_normalised():
    text = json.dumps(
        {"shop.customers": {"drop": ["ssn", "ssn"], "hash": ["email"]}, "shop.orders": {}}
    )

    rules = parse_masking_rules(text)

    assert rules == {
        "shop.customers": MaskingRules(drop=("ssn",), hash=("email",)),
        "shop.orders": MaskingRules(),
    }
    assert parse_masking_rules("") == {} and parse_masking_rules(None) == {}
    assert collection_rules("shop.customers", {"LAKEHOUSE_MASKING": text}).hash == ("email",)
    assert not collection_rules("shop.carts", {"LAKEHOUSE_MASKING": text})


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("{not json", "is not JSON"),
        ('["ssn"]', "must be a JSON object"),
        ('{"customers": {"drop": ["ssn"]}}', "is not 'database.collection'"),
        ('{"shop.c": {"mask": ["ssn"]}}', "only 'drop' and/or 'hash'"),
        ('{"shop.c": {"drop": "ssn"}}', "'hash' lists of dotted paths"),
        ('{"shop.c": {"drop": [1]}}', "must be a list of dotted paths"),
        ('{"shop.c": {"drop": ["a..b"]}}', "empty component"),
        ('{"shop.c": {"drop": ["$set"]}}', "starting with '\\$'"),
        ('{"shop.c": {"hash": ["addresses.0.phone"]}}', "leave the index out"),
        ('{"shop.c": {"drop": ["ssn"], "hash": ["ssn"]}}', "both dropped and hashed"),
        ('{"shop.c": {"drop": ["card"], "hash": ["card.number"]}}', "list only 'card'"),
    ],
)
def test_malformed_rules_are_refused_with_the_fix(text, fix):
    with pytest.raises(MaskingRulesError, match=fix) as caught:
        parse_masking_rules(text)

    assert isinstance(caught.value, ValueError)
    assert error_kind(type(caught.value).__name__) == "terminal"


@pytest.mark.parametrize("path", ["_id", "_id.tenant"])
def test_the_record_key_cannot_be_masked(path):
    with pytest.raises(MaskingRulesError, match="names _id, the record key"):
        MaskingRules(hash=(path,))


def test_the_rules_fingerprint_names_the_rules_and_the_key_that_hashes():
    rules = MaskingRules(drop=("ssn", "card.number"), hash=("email",))
    same = MaskingRules(drop=("card.number", "ssn", "ssn"), hash=("email",))
    drops = MaskingRules(drop=("ssn",))

    assert re.fullmatch(r"[0-9a-f]{16}", rules_fingerprint(rules, KEY))
    assert rules_fingerprint(rules, KEY) == rules_fingerprint(same, KEY)
    assert rules_fingerprint(rules, KEY) != rules_fingerprint(rules, OTHER_KEY)
    assert rules_fingerprint(rules, KEY) != rules_fingerprint(drops, KEY)
    assert rules_fingerprint(drops, KEY) == rules_fingerprint(drops, None)  # no key in use


# -- the key --------------------------------------------------------------------------------------
def test_the_local_key_comes_from_the_environment_and_is_named_by_its_fingerprint():
    key = load_masking_key({"LAKEHOUSE_MASKING_KEY": "k" * 32})

    assert key == KEY
    assert key.key_id == hashlib.sha256(b"k" * 32).hexdigest()[:8]
    assert "kkkk" not in repr(key)
    assert load_masking_key({}) is None


def test_a_short_key_is_refused_with_how_to_make_one():
    with pytest.raises(MaskingKeyError, match=r"secrets\.token_hex") as caught:
        load_masking_key({"LAKEHOUSE_MASKING_KEY": "short"})

    assert error_kind(type(caught.value).__name__) == "terminal"


@pytest.mark.parametrize(
    "stored",
    [
        {"SecretString": "s" * 40},
        {"SecretString": json.dumps({"key": "s" * 40})},
        {"SecretBinary": b"s" * 40},
    ],
)
def test_the_aws_key_is_read_from_secrets_manager_once_per_process(monkeypatch, stored):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(masking_key, "_CACHED_KEYS", {})
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="lakehouse/masking", **stored)["ARN"]
        environ = {"LAKEHOUSE_MASKING_KEY_SECRET_ARN": arn, "LAKEHOUSE_MASKING_KEY": "x" * 32}

        key = load_masking_key(environ)
        client.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
        again = load_masking_key(environ)

    assert key == again == MaskingKey(b"s" * 40)


def test_an_unreadable_or_empty_secret_names_the_permission_or_the_shape(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(masking_key, "_CACHED_KEYS", {})
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="empty", SecretString=json.dumps({"user": "x"}))["ARN"]
        missing = arn.replace("empty", "gone")

        with pytest.raises(MaskingKeyError, match="secretsmanager:GetSecretValue"):
            load_masking_key({"LAKEHOUSE_MASKING_KEY_SECRET_ARN": missing})
        with pytest.raises(MaskingKeyError, match=re.escape('as {"key": "..."}')):
            load_masking_key({"LAKEHOUSE_MASKING_KEY_SECRET_ARN": arn})


def test_a_throttled_secret_read_is_transient(monkeypatch):
    monkeypatch.setattr(masking_key, "_CACHED_KEYS", {})
    client = boto3.client("secretsmanager", region_name="us-east-1")
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:masking"
    with Stubber(client) as stub:
        stub.add_client_error("get_secret_value", "ThrottlingException", "Rate exceeded")
        with pytest.raises(MaskingKeyUnavailableError) as caught:
            load_masking_key({"LAKEHOUSE_MASKING_KEY_SECRET_ARN": arn}, client=client)

    assert error_kind(type(caught.value).__name__) == "transient"


# -- no clear value left --------------------------------------------------------------------------
HOSTILE_VALUES = [
    "ünïcödé ✓ \u200b zero-width and 🙂",
    "PII" * 300_000,  # ~1 MB
    "email",  # the name of a field
    "card.number",  # the name of a masked path
    "$set",
    '{"$oid": "5f0c0c0c0c0c0c0c0c0c0c0c"}',
    'line\nbreak\ttab"quote\\backslash',
    {"nested": {"deeper": ["Secret Nested Value", {"x": "Secret In Array"}]}},
    ["Secret One", "Secret Two"],
]


def clear_strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in clear_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in clear_strings(v)]
    return [value]


def encodings(value) -> list[bytes]:
    return [
        bson.encode(value),
        json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS).encode(),
        json.dumps(value, default=str, ensure_ascii=False).encode(),
        json.dumps(value, default=str).encode(),
    ]


def occurrences(outputs: list[bytes], text: str) -> list[int]:
    needles = {text.encode(), json.dumps(text).strip('"').encode()}
    return [sum(out.count(n) for n in needles) for out in outputs]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=lambda v: repr(v)[:20])
def test_a_masked_value_appears_nowhere_in_the_encoded_output(value):
    def outputs(v) -> list[bytes]:
        document = customer() | {
            "ssn": v,
            "email": v,
            "card": {"number": v, "expiry": "12/30"},
            "addresses": [{"phone": v}, [{"phone": v}]],
        }
        event = update_event({"email": v, "card": {"number": v}, "addresses.1.phone": v})
        event["documentKey"] = {"_id": 7, "email": v}
        event["fullDocument"] = event["fullDocumentBeforeChange"] = document
        return encodings(mask_document(document, RULES, KEY)) + encodings(
            dict(mask_change_event(event, RULES, KEY))
        )

    placeholder = outputs("placeholder-value")
    for text in clear_strings(value):
        # As often as a value with nothing in common shows it (field names): never as a value.
        assert occurrences(outputs(value), text) == occurrences(placeholder, text)
