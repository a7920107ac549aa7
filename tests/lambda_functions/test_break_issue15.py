"""Adversarial inputs for issue 15 (partial updates, PII masking at the edge, history tables).

Each expected value is written from the documented semantics, not from the code:
- MongoDB Manual, "Change Events" > "update Event" (``updateDescription``: ``updatedFields``,
  ``removedFields``, ``truncatedArrays``), "$set" (dot notation, array indexes, padding),
  "$unset" (an array element becomes null); events apply in ``clusterTime`` order;
- README "PII masking": a hashed field holds ``hash_value`` of the field's whole value, as a full
  document would be masked; no clear value of a masked field reaches the raw zone or quarantine;
- README "Partial updates": an update for a key the table does not hold is set aside, never
  guessed; a later full version supersedes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import open_store
from lambda_functions.lake.extended_json import encode_document
from lambda_functions.lake.masking import MaskingRules, mask_change_event, mask_document
from lambda_functions.lake.masking_key import MaskingKey
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.lake.table_layout import key_buckets
from lambda_functions.lake.update_description import (
    UnappliableUpdateError,
    apply_update_description,
)
from lambda_functions.merge import merge_batches
from lambda_functions.merge.partial_updates import (
    PARTIAL_UPDATE_OP,
    StoredRow,
    resolve_partial_updates,
)
from tests.lambda_functions.merge.test_partial_updates import doc, live, publish_changes

KEY = MaskingKey(b"k" * 32)
SECRET = "bob@example.com"


def lake_changes(rows: list[tuple[str, str, int, str | None]], seqs: list[int] | None = None):
    ids = pa.array([r[0] for r in rows], pa.string())
    n = len(rows)
    return pa.table(
        {
            "_id": ids,
            "_bucket": key_buckets(ids),
            "doc": pa.array([r[3] for r in rows], pa.string()),
            "_op": [r[1] for r in rows],
            "_pos": pa.array([r[2] for r in rows], pa.int64()),
            "_batch": pa.array([2] * n, pa.int64()),
            "_seq": pa.array(seqs if seqs is not None else range(n), pa.int64()),
        }
    )


@pytest.fixture
def lake(tmp_path: Path) -> tuple[RawZone, MergeRequest]:
    store = open_store(str(tmp_path / "lake"))
    zone = RawZone(store, "shop", "orders")
    return zone, MergeRequest(lake_uri=str(tmp_path / "lake"), database="shop", collection="orders")


def update_event(description: dict[str, Any]) -> dict[str, Any]:
    return {"operationType": "update", "documentKey": {"_id": 1}, "updateDescription": description}


def merge_masked(before: dict[str, Any], description: dict[str, Any], rules: MaskingRules):
    """The stored (masked) document after the masked delta, or ``None`` when it is refused."""
    masked_description = mask_change_event(update_event(description), rules, KEY)[
        "updateDescription"
    ]
    try:
        return apply_update_description(mask_document(before, rules, KEY), masked_description)
    except UnappliableUpdateError:
        return None  # set aside: acceptable, never a wrong value


# -- masking x partial updates -------------------------------------------------------------------
@pytest.mark.parametrize(
    "rule, before, description",
    [
        # $set of one element of a hashed array: the hash must cover the new array.
        ("tags", {"_id": 1, "tags": ["a", "b"]}, {"updatedFields": {"tags.1": "z"}}),
        # $set of a subfield of a hashed embedded document.
        ("card", {"_id": 1, "card": {"n": "4111", "cvc": 1}}, {"updatedFields": {"card.n": "9"}}),
        # $unset of a subfield of a hashed document (removedFields).
        ("card", {"_id": 1, "card": {"n": "4111", "cvc": 1}}, {"removedFields": ["card.cvc"]}),
        # $unset of an element of a hashed array: the element becomes null.
        ("tags", {"_id": 1, "tags": ["a", "b"]}, {"removedFields": ["tags.0"]}),
        # an index path under a hashed field inside an array of documents.
        (
            "addresses.phone",
            {"_id": 1, "addresses": [{"phone": ["1", "2"]}]},
            {"updatedFields": {"addresses.0.phone.1": "3"}},
        ),
    ],
)
def test_a_masked_delta_under_a_hashed_path_never_leaves_a_stale_hash(rule, before, description):
    """Expected: the stored value equals the full-document mask of the new document (or the
    delta is set aside). Observed before the fix: the delta was dropped silently and the stored
    hash kept the old value's hash: the lake held a wrong document with no report."""
    rules = MaskingRules(hash=(rule,))
    after = apply_update_description(before, description)

    merged = merge_masked(before, description, rules)

    assert merged is None or merged == mask_document(after, rules, KEY)


def test_removed_field_names_under_a_hashed_path_do_not_reach_the_raw_zone():
    """A document keyed by personal data (``{"emails": {"bob@example.com": true}}``, hashed
    whole): ``removedFields``/``updatedFields``/``disambiguatedPaths`` name the address."""
    rules = MaskingRules(hash=("emails",))
    event = update_event(
        {
            "updatedFields": {f"emails.{SECRET}": True},
            "removedFields": [f"emails.old-{SECRET}"],
            "truncatedArrays": [{"field": f"emails.{SECRET}.x", "newSize": 0}],
            "disambiguatedPaths": {f"emails.{SECRET}": ["emails", SECRET]},
        }
    )

    masked = mask_change_event(event, rules, KEY)

    assert SECRET not in encode_document(dict(masked))


def test_a_set_aside_masked_delta_holds_no_clear_value_in_the_quarantine_file():
    rules = MaskingRules(hash=("emails",))
    masked = mask_change_event(
        update_event({"updatedFields": {}, "removedFields": [f"emails.{SECRET}"]}), rules, KEY
    )
    changes = lake_changes([("k", PARTIAL_UPDATE_OP, 5, doc(masked["updateDescription"]))])

    outcome = resolve_partial_updates(changes, lambda keys, buckets: {})  # no stored document

    assert outcome.unapplied == 1
    assert SECRET not in outcome.quarantine_lines().decode()


def test_a_masked_delta_at_a_hashed_index_path_equals_the_full_document_mask():
    """Probe (passes): ``addresses.1.phone`` at the rule ``addresses.phone``, index past the end."""
    rules = MaskingRules(hash=("addresses.phone",))
    before = {"_id": 1, "addresses": [{"phone": "1"}]}
    description = {"updatedFields": {"addresses.2.phone": SECRET}}

    merged = merge_masked(before, description, rules)

    expected = {"_id": 1, "addresses": [{"phone": "1"}, None, {"phone": SECRET}]}
    assert merged == mask_document(expected, rules, KEY)
    assert SECRET not in json.dumps(merged)


# -- partial updates: ordering ------------------------------------------------------------------
def test_partial_replace_partial_in_one_batch_delivered_in_reverse():
    """Probe (passes): precombine order is clusterTime, not delivery (SQS does not order)."""
    stored = {"k": StoredRow(1, doc({"_id": "k", "a": 1}))}
    changes = lake_changes(
        [
            ("k", PARTIAL_UPDATE_OP, 4, doc({"updatedFields": {"c": 3}})),
            ("k", "replace", 3, doc({"_id": "k", "b": 2})),
            ("k", PARTIAL_UPDATE_OP, 2, doc({"updatedFields": {"a": 9}})),
        ],
        seqs=[0, 1, 2],
    )

    outcome = resolve_partial_updates(changes, lambda keys, buckets: stored)

    latest = max(outcome.rows.to_pylist(), key=lambda r: r["_pos"])
    assert latest["doc"] == doc({"_id": "k", "b": 2, "c": 3}) and outcome.applied == 2


def test_a_partial_update_delivered_before_its_insert_is_applied_when_the_insert_arrives(lake):
    """SQS delivers the update (clusterTime 6) in batch 1 and the insert (clusterTime 5) in
    batch 2. Expected (clusterTime order): the inserted document with the update applied.
    Observed before the fix: the first merge set the update aside (right: no document yet), the
    second stored the insert and the update was lost for good (the stored copy silently stale)."""
    zone, request = lake
    publish_changes(zone, [("k", "update", 6, None, {"updatedFields": {"a": 2}})])
    assert merge_batches(request).partial_updates_unapplied == 1
    publish_changes(zone, [("k", "insert", 5, {"_id": "k", "a": 1, "b": 1}, None)])

    merge_batches(request)

    assert live(zone) == {"k": doc({"_id": "k", "a": 2, "b": 1})}


def test_a_partial_update_racing_a_delete_delivered_after_it_is_stale(lake):
    """Probe (passes): the delete (7) is newer than the update (6) that arrives after it."""
    zone, request = lake
    publish_changes(zone, [("k", "insert", 5, {"_id": "k", "a": 1}, None)])
    publish_changes(zone, [("k", "delete", 7, None, None)])
    merge_batches(request)
    publish_changes(zone, [("k", "update", 6, None, {"updatedFields": {"a": 2}})])

    result = merge_batches(request)

    assert live(zone) == {} and result.partial_updates_applied == 0


# -- update description semantics ---------------------------------------------------------------
@pytest.mark.parametrize(
    "before, description, after",
    [
        # $set beyond the end of an array of documents: padded with nulls, a document created.
        (
            {"_id": 1, "a": [{"x": 1}]},
            {"updatedFields": {"a.3.x": 5}},
            {"_id": 1, "a": [{"x": 1}, None, None, {"x": 5}]},
        ),
        # a numeric field name of an embedded document is a field, not an index.
        ({"_id": 1, "a": {"0": "z"}}, {"updatedFields": {"a.0": 1}}, {"_id": 1, "a": {"0": 1}}),
        # $unset of an array element nulls it; of an index past the end does nothing.
        (
            {"_id": 1, "a": [1, 2]},
            {"removedFields": ["a.0", "a.9"]},
            {"_id": 1, "a": [None, 2]},
        ),
        # unicode field names and values.
        (
            {"_id": 1, "ключ": {"名": "x"}},
            {"updatedFields": {"ключ.名": "значение ✓"}},
            {"_id": 1, "ключ": {"名": "значение ✓"}},
        ),
    ],
)
def test_update_description_semantics(before, description, after):
    assert apply_update_description(before, description) == after


def test_a_retried_update_and_a_newer_one_of_the_same_merge_both_apply_and_replays_change_nothing(
    lake,
):
    zone, request = lake
    publish_changes(zone, [("k", "update", 6, None, {"updatedFields": {"a": 2}})])
    merge_batches(request)
    publish_changes(
        zone,
        [
            ("k", "update", 7, None, {"updatedFields": {"c.0": "x"}}),
            ("k", "insert", 5, {"_id": "k", "a": 1, "b": 1}, None),
        ],
    )

    result = merge_batches(request)

    expected = doc({"_id": "k", "a": 2, "b": 1, "c": {"0": "x"}})
    assert live(zone) == {"k": expected}
    assert (result.partial_updates_applied, result.partial_updates_unapplied) == (2, 0)
    publish_changes(zone, [("k", "insert", 5, {"_id": "k", "a": 1, "b": 1}, None)])  # redelivered
    merge_batches(request)
    assert live(zone) == {"k": expected}


def test_a_set_aside_update_older_than_the_late_full_version_stays_superseded(lake):
    """The update (6) is older than the late replace (8): the replace wins, nothing retried."""
    zone, request = lake
    publish_changes(zone, [("k", "update", 6, None, {"updatedFields": {"a": 2}})])
    merge_batches(request)
    publish_changes(zone, [("k", "replace", 8, {"_id": "k", "z": 1}, None)])

    result = merge_batches(request)

    assert live(zone) == {"k": doc({"_id": "k", "z": 1})} and result.partial_updates_applied == 0


# -- through the MQ/SQS relay ---------------------------------------------------------------------
def relay(n: int, event: dict[str, Any]):
    from lambda_functions.cdc_capture.mq_ingest import Message

    return Message(f"m-{n}", "aws:sqs", "shop-orders", encode_document(event).encode())


def relayed(op: str, t: int, inc: int, **fields: Any) -> dict[str, Any]:
    from bson import Timestamp

    return {
        "_id": {"_data": f"82{t:08X}{inc:08X}"},
        "operationType": op,
        "clusterTime": Timestamp(t, inc),
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": "k"},
        **fields,
    }


def test_a_relayed_delta_under_a_hashed_path_is_set_aside_and_no_clear_value_is_stored(lake):
    from lambda_functions.cdc_capture.edge_masking import MaskingByCollection
    from lambda_functions.cdc_capture.mq_ingest import ingest_messages

    zone, request = lake
    masking = MaskingByCollection(
        {
            "LAKEHOUSE_MASKING": '{"shop.orders": {"hash": ["emails"]}}',
            "LAKEHOUSE_MASKING_KEY": "k" * 32,
        }
    )
    before = {"_id": "k", "emails": {"old@example.com": True}}
    messages = [
        relay(1, relayed("insert", 100, 1, fullDocument=before)),
        relay(
            2,
            relayed(
                "update",
                101,
                1,
                updateDescription={
                    "updatedFields": {f"emails.{SECRET}": True},
                    "removedFields": ["emails.old@example.com"],
                    "truncatedArrays": [],
                },
            ),
        ),
    ]
    ingest_messages(messages, zone.store, masking=masking)

    result = merge_batches(request)

    assert result.partial_updates_unapplied == 1
    stored = live(zone)[record_key("k")]
    assert stored == doc(mask_document(before, MaskingRules(hash=("emails",)), KEY))
    for name in zone.store.list("raw/"):
        body = zone.store.get(name)
        assert SECRET.encode() not in body and b"old@example.com" not in body, name


def test_two_deltas_of_one_transaction_delivered_in_reverse_apply_in_transaction_order(lake):
    from lambda_functions.cdc_capture.mq_ingest import ingest_messages

    zone, request = lake
    first = relayed("update", 101, 1, updateDescription={"updatedFields": {"a": 1}})
    second = relayed("update", 101, 1, updateDescription={"updatedFields": {"a": 2}})
    first["_id"], second["_id"] = (
        {"_data": "8200000065000000012B0429"},
        {"_data": "8200000065000000012B042A"},
    )
    for event in (first, second):
        event |= {"txnNumber": 7, "lsid": {"id": "session"}}
    ingest_messages([relay(1, relayed("insert", 100, 1, fullDocument={"_id": "k"}))], zone.store)
    ingest_messages([relay(2, second), relay(3, first)], zone.store)  # delivered in reverse

    merge_batches(request)

    assert live(zone) == {record_key("k"): doc({"_id": "k", "a": 2})}


# -- history tables (SCD2) -----------------------------------------------------------------------
def test_history_many_updates_delete_reinsert_across_loads_and_reruns(tmp_path):
    from lambda_functions.warehouse_load import load_changes
    from tests.lambda_functions.warehouse_load.test_history_table import (
        A,
        Pipeline,
        assert_chains_are_scd2,
    )
    from tests.lambda_functions.warehouse_load.test_history_table import doc as hdoc

    pipeline = Pipeline(tmp_path)
    pipeline.change(0, (A, "insert", 1, hdoc(v=0)))
    load_changes(pipeline.request())
    for n in range(1, 8):
        pipeline.change(n, (A, "update", 1 + n, hdoc(v=n)))
        if n % 3 == 0:
            load_changes(pipeline.request())
    pipeline.change(20, (A, "delete", 20, None))
    load_changes(pipeline.request())
    pipeline.change(21, (A, "insert", 21, hdoc(v=100)))
    load_changes(pipeline.request())
    load_changes(pipeline.request())  # a re-run adds nothing
    load_changes(pipeline.request(force_full_reload=True))  # nor does a full reload

    chains = pipeline.history()
    assert [row[0] for row in chains[A]] == ["insert"] + ["update"] * 7 + ["delete", "insert"]
    assert [row[5] for row in chains[A]] == [0, 1, 2, 3, 4, 5, 6, 7, None, 100]
    assert_chains_are_scd2(chains, {A})


@pytest.mark.xfail(
    strict=True,
    reason="valid_from is the change's event time (wallTime) and the chain is ordered by "
    "position: a wall clock stepping back gives valid_to < valid_from; needs a running maximum "
    "of the event time per key, seeded by the open row's valid_from (both dialects)",
)
def test_history_a_later_position_with_an_earlier_event_time_never_gives_a_negative_interval(
    tmp_path,
):
    """wallTime is the primary's clock, which may step back (NTP, failover), while clusterTime
    (the position) only grows: the chain follows positions and must not go backwards."""
    from lambda_functions.warehouse_load import load_changes
    from tests.lambda_functions.warehouse_load.test_history_table import A, Pipeline
    from tests.lambda_functions.warehouse_load.test_history_table import doc as hdoc

    pipeline = Pipeline(tmp_path)
    pipeline.change(10, (A, "insert", 1, hdoc(v=1)))
    load_changes(pipeline.request())
    pipeline.change(5, (A, "update", 2, hdoc(v=2)))  # newer position, earlier wall clock
    load_changes(pipeline.request())

    chain = pipeline.history()[A]
    assert all(row[3] is None or row[2] <= row[3] for row in chain), chain


def test_setting_index_1500000_of_an_empty_array_pads_exactly_1500000_nulls_and_is_allowed():
    """The server pads up to the index (1,500,000 nulls at most: ``maybePadTo(newIdx)``, error
    "can't backfill array to larger than 1500000 elements" only beyond), then appends."""
    array = apply_update_description({"_id": 1, "a": []}, {"updatedFields": {"a.1500000": 1}})["a"]

    assert len(array) == 1_500_001 and array[-1] == 1 and array[0] is None
    with pytest.raises(UnappliableUpdateError):
        apply_update_description({"_id": 1, "a": []}, {"updatedFields": {"a.1500001": 1}})


def test_history_keeps_no_clear_value_after_a_masking_rules_change(tmp_path):
    from lambda_functions.warehouse_load import load_changes
    from tests.lambda_functions.raw_batches import publish
    from tests.lambda_functions.warehouse_load.test_history_table import A, Pipeline, at
    from tests.lambda_functions.warehouse_load.test_history_table import doc as hdoc

    pipeline = Pipeline(tmp_path)
    pipeline.change(0, (A, "insert", 1, hdoc(v=1, email=SECRET)))
    load_changes(pipeline.request())
    # the rules now hash "email": capture publishes a generation marker, then a new snapshot
    zone = pipeline.zone
    zone.write_batch(
        [],
        after=zone.read_checkpoint(),
        state={},
        extra={"dropped": True, "drop_pos": 2, "reason": "masking_rules_changed"},
    )
    publish(
        zone, [(A, "snapshot", 3, hdoc(v=1, email="hmac-sha256:" + "0" * 64))], event_time=at(1)
    )
    merge_batches(pipeline.merge)
    load_changes(pipeline.request())

    assert SECRET not in pipeline.current()[A]
    assert not [row for row in pipeline.history()[A] if row[6] and SECRET in row[6]]


def test_after_a_drop_a_set_aside_delta_is_retried_on_the_late_reinsert_but_never_below_the_floor(
    lake,
):
    zone, request = lake
    publish_changes(zone, [("k", "insert", 1, {"_id": "k", "a": 1}, None)])
    publish_changes(zone, [("k", "update", 3, None, {"updatedFields": {"a": 3}})])
    merge_batches(request)
    zone.write_batch(
        [], after=zone.read_checkpoint(), state={}, extra={"dropped": True, "drop_pos": 5}
    )
    publish_changes(zone, [("k", "update", 9, None, {"updatedFields": {"b": 9}})])
    assert merge_batches(request).partial_updates_unapplied == 1  # dropped: no document
    publish_changes(zone, [("k", "insert", 2, {"_id": "k", "old": True}, None)])  # below floor
    merge_batches(request)
    assert live(zone) == {}
    publish_changes(zone, [("k", "insert", 8, {"_id": "k", "a": 8}, None)])  # late re-insert

    result = merge_batches(request)

    assert live(zone) == {"k": doc({"_id": "k", "a": 8, "b": 9})}
    assert result.partial_updates_applied == 1
