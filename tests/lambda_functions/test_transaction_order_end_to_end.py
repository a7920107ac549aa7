"""Events of one MongoDB transaction, relayed over a queue in any order, merge to the state the
change stream's order gives.

Expected values come from the documented semantics, not from the code: the changes of one
transaction share ``clusterTime`` (MongoDB Manual, "Change Events" > ``clusterTime``), resume
tokens compare in the stream's order (MongoDB Manual, "Change Streams" > "Resume Tokens from
Change Events"; the server's ``ResumeTokenData``: clusterTime, version, tokenType, txnOpIndex,
...), and an SQS standard queue may deliver messages in any order ("Amazon SQS standard queues":
best-effort ordering).
"""

from __future__ import annotations

from itertools import permutations
from typing import Any

import pytest
from bson import Timestamp

from lambda_functions.cdc_capture.mq_ingest import Message, ingest_messages
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import open_store
from lambda_functions.lake.extended_json import encode_document
from lambda_functions.lake.raw_manifest import TOKEN_ORDER_BASE
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.merge import lake_table_location, merge_batches
from tests.lambda_functions.merge.tables import stored_docs

DB, COLL = "shop", "orders"
T = 1_704_067_200  # the transaction's clusterTime: (T, 7)
UUID = "1A2B3C4D5E6F708192A3B4C5D6E7F809"


def token(seconds: int, increment: int, txn_op_index: int) -> dict[str, str]:
    """A version 2 event resume token as the server writes it (KeyString hex): ``82`` and the
    clusterTime, version 2 (``2B04``), tokenType 128 (``2C0100``), txnOpIndex (``29`` for 0, a
    one-byte integer ``2B`` + value << 1 below 64), fromInvalidate false (``6E``), the UUID."""
    index = "29" if txn_op_index == 0 else f"2B{txn_op_index << 1:02X}"
    return {"_data": f"82{seconds:08X}{increment:08X}2B042C0100{index}6E5A1004{UUID}04"}


def event(n: int, op: str, document: dict[str, Any] | None, *, at: int = 7) -> dict[str, Any]:
    """Event ``n`` of the transaction at ``(T, at)`` (its txnOpIndex is ``n``), on key ``K``."""
    body: dict[str, Any] = {
        "_id": token(T, at, n),
        "operationType": op,
        "ns": {"db": DB, "coll": COLL},
        "clusterTime": Timestamp(T, at),
        "documentKey": {"_id": "K"},
        "txnNumber": 3,
        "lsid": {"id": "session"},
    }
    if document is not None:
        body["fullDocument"] = {"_id": "K", **document}
    return body


def message(name: str, body: dict[str, Any]) -> Message:
    return Message(name, "aws:sqs", "shop-orders", encode_document(body).encode())


BEFORE = event(0, "insert", {"v": 0}, at=1)  # committed before the transaction
# The transaction, in stream order (txnOpIndex 0..3); the stream's result: {"v": 3}.
TRANSACTION = [
    event(0, "update", {"v": 1}),
    event(1, "delete", None),
    event(2, "insert", {"v": 2}),
    event(3, "update", {"v": 3}),
]
RESULT = {record_key("K"): encode_document({"_id": "K", "v": 3})}


class Lake:
    def __init__(self, path) -> None:
        self.uri = str(path / "lake")
        self.store = open_store(self.uri)
        self.request = MergeRequest(lake_uri=self.uri, database=DB, collection=COLL)
        ingest_messages([message("before", BEFORE)], self.store)
        merge_batches(self.request)

    def deliver(self, indexes: tuple[int, ...]) -> None:
        """One SQS delivery of the transaction's events ``indexes``, in that order."""
        ingest_messages([message(f"m-{i}", TRANSACTION[i]) for i in indexes], self.store)

    def live(self) -> dict[str, str]:
        merge_batches(self.request)
        return stored_docs(*lake_table_location(self.store, DB, COLL))


ORDERS = list(permutations(range(len(TRANSACTION))))


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(map(str, o)))
def test_one_delivery_in_any_order_merges_to_the_stream_order_result(tmp_path, order):
    lake = Lake(tmp_path)
    lake.deliver(order)

    assert lake.live() == RESULT


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(map(str, o)))
def test_one_delivery_per_event_merged_each_time_ends_in_the_stream_order_result(tmp_path, order):
    """Each event merged alone: the stored row (a tombstone too) must refuse an earlier event of
    the transaction that arrives later."""
    lake = Lake(tmp_path)
    for index in order:
        lake.deliver((index,))
        lake.live()

    assert lake.live() == RESULT


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(map(str, o)))
def test_two_deliveries_merged_together_end_in_the_stream_order_result(tmp_path, order):
    """Two batches in one merge: the tie on position is broken by the token, not the batch."""
    lake = Lake(tmp_path)
    lake.deliver(order[:2])
    lake.deliver(order[2:])

    assert lake.live() == RESULT


def test_relayed_events_carry_their_token_order_as_seq_and_others_their_delivery_order(tmp_path):
    """Raw rows: a KeyString token gives ``seq >= TOKEN_ORDER_BASE`` in token order; a relay's
    own ids (not a MongoDB token) keep the delivery order."""
    store = open_store(str(tmp_path / "lake"))
    plain = event(0, "insert", {"v": 9}, at=9) | {"_id": {"_data": "relay-0001"}}
    ingest_messages(
        [message("m-2", TRANSACTION[2]), message("m-0", TRANSACTION[0]), message("p", plain)],
        store,
    )

    zone = RawZone(store, DB, COLL)
    seqs = zone.read_batch(zone.read_manifest(1)).column("seq").to_pylist()

    assert seqs[0] > seqs[1] >= TOKEN_ORDER_BASE
    assert seqs[2] == 2


def test_a_partial_update_later_in_the_transaction_applies_to_the_row_stored_before_it(tmp_path):
    """An update without ``fullDocument`` (txnOpIndex 1) merged after the transaction's insert
    (txnOpIndex 0) was merged: same position, later in the stream, so it is not stale."""
    lake = Lake(tmp_path)
    insert = event(0, "insert", {"v": 5})
    update = event(1, "update", None) | {"updateDescription": {"updatedFields": {"a": 1}}}
    ingest_messages([message("m-insert", insert)], lake.store)
    lake.live()
    ingest_messages([message("m-update", update)], lake.store)

    assert lake.live() == {record_key("K"): encode_document({"_id": "K", "v": 5, "a": 1})}
