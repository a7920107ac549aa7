"""The masking points of capture: snapshot pages (raw BSON included), dead letters, requests."""

from __future__ import annotations

import json

import bson
import pytest
from bson.raw_bson import RawBSONDocument

from lambda_functions.cdc_capture.batches import BatchRows
from lambda_functions.cdc_capture.edge_masking import (
    EdgeMasking,
    MaskingByCollection,
    masking_of_request,
)
from lambda_functions.contracts import CaptureRequest, DmsIngestRequest, InvalidRequestError
from lambda_functions.lake.extended_json import decode_document
from lambda_functions.lake.masking import MaskingRules, MaskingRulesError, hash_value
from lambda_functions.lake.masking_key import KEY_VARIABLE, MaskingKey, MaskingKeyError

KEY = MaskingKey(b"k" * 32)
RULES = MaskingRules(drop=("ssn",), hash=("contact.email",))
MASKING = EdgeMasking("shop.customers", RULES, KEY)


def raw(document: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(document))


def page() -> list[RawBSONDocument]:
    return [
        raw({"_id": n, "ssn": f"ssn-{n}", "contact": {"email": f"e{n}@x.org"}, "n": n})
        for n in range(3)
    ]


def test_raw_bson_snapshot_pages_are_masked_before_they_become_rows():
    rows = BatchRows(MASKING)
    taken, last_id = rows.add_snapshot_page(page(), pos=1, time_ms=0, max_bytes=1 << 20)

    assert (taken, last_id) == (3, 2)
    docs = [decode_document(doc) for doc in rows.docs]
    assert [d["contact"]["email"] for d in docs] == [
        hash_value(f"e{n}@x.org", KEY) for n in range(3)
    ]
    assert all("ssn" not in d for d in docs)
    assert not any("ssn-" in doc or "@x.org" in doc for doc in rows.docs)


def test_a_collection_without_rules_keeps_the_raw_bson_fast_path(monkeypatch):
    def never(*_args):
        raise AssertionError("a collection without rules decodes nothing for masking")

    monkeypatch.setattr(EdgeMasking, "document", never)
    plain, unmasked = BatchRows(), BatchRows(EdgeMasking("shop.customers"))
    for rows in (plain, unmasked):
        rows.add_snapshot_page(page(), pos=1, time_ms=0, max_bytes=1 << 20)

    assert unmasked.masking is None and unmasked.docs == plain.docs
    assert "ssn-0" in plain.docs[0]


def test_dead_letters_are_masked_or_stripped_and_reasons_redacted():
    rows = BatchRows(MASKING)
    document = {"_id": 1, "ssn": "ssn-secret", "contact": {"email": "secret@x.org"}}
    rows.quarantine("cannot encode 'ssn-secret' of secret@x.org", document)
    rows.quarantine("not JSON", {"message_id": "m", "payload": "ssn-secret not json"})

    letters = [json.loads(line) for line in rows.dead_letters]
    assert letters[0]["reason"] == "cannot encode <masked> of <masked>"  # repr too
    assert letters[0]["raw"] == {
        "_id": 1,
        "contact": {"email": hash_value("secret@x.org", KEY)},
    }
    assert letters[1]["raw"]["payload"] == {"stripped": len("ssn-secret not json")}
    assert "secret" not in "\n".join(rows.dead_letters)


def test_hashing_rules_without_a_key_fail_before_anything_is_read():
    with pytest.raises(MaskingKeyError, match="LAKEHOUSE_MASKING_KEY"):
        masking_of_request("shop.customers", {"hash": ["email"]}, environ={})
    dropping = masking_of_request("shop.customers", {"drop": ["ssn"]}, environ={})
    assert dropping.active and dropping.key is None  # dropping needs no key
    keyed = masking_of_request(
        "shop.customers", {"hash": ["email"]}, environ={KEY_VARIABLE: "k" * 32}
    )
    assert keyed.manifest_fields()["masking"]["key_id"] == KEY.key_id


def test_requests_carry_the_rules_and_refuse_bad_ones():
    fields = {"lake_uri": "/lake", "database": "shop", "collection": "customers"}
    rules = {"drop": ["ssn"], "hash": ["email"]}
    for kind, extra in ((CaptureRequest, {}), (DmsIngestRequest, {"dms_uri": "/dms"})):
        request = kind(**fields, **extra, masking=rules, masking_key_secret_arn="arn:x")
        assert kind.from_event(request.to_event()) == request
        for bad in ({"drop": ["_id"]}, {"mask": ["ssn"]}, {"drop": ["a"], "hash": ["a"]}):
            with pytest.raises(InvalidRequestError, match=r"masking of shop\.customers"):
                kind.from_event({**request.to_event(), "masking": bad})


def test_the_mq_function_reads_the_rules_of_each_collection_from_its_environment():
    environ = {"LAKEHOUSE_MASKING": json.dumps({"shop.customers": {"drop": ["ssn"]}})}
    by_collection = MaskingByCollection(environ)

    assert by_collection.configured
    assert by_collection("shop.customers").rules == MaskingRules(drop=("ssn",))
    assert not by_collection("shop.orders").active
    with pytest.raises(MaskingRulesError):
        MaskingByCollection({"LAKEHOUSE_MASKING": "{not json"})
