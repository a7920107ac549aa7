"""Stream order of changes at one position: the resume-token order decides between rows that
carry one, comparable across batches; rows without one (DMS, snapshots) keep batch then row
order, as before. The merge's three comparisons (precombine, the copy-on-write rule, the SQL
predicate of delta-rs MERGE) agree."""

from __future__ import annotations

from itertools import product

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from lambda_functions.cdc_capture.batches import event_row
from lambda_functions.cdc_capture.positions import cluster_position, token_order
from lambda_functions.lake.raw_manifest import TOKEN_ORDER_BASE
from lambda_functions.lake.table_layout import (
    CHANGE_WINS_SQL,
    change_wins,
    precombine,
    stream_order,
)
from tests.lambda_functions.change_events import change_event

T = 1_704_067_200
POS = cluster_position(T, 5)


def token(txn_op_index_hex: str, rest: str = "6E5A1004") -> dict[str, str]:
    return {"_data": f"82{T:08X}{5:08X}2B042C0100{txn_op_index_hex}{rest}"}


def changes(rows: list[tuple[str, int, int, int]]) -> pa.Table:
    """(``_id``, ``_pos``, ``_batch``, ``_seq``) rows; ``doc`` names the row by its index."""
    return pa.table(
        {
            "_id": [r[0] for r in rows],
            "doc": [str(i) for i in range(len(rows))],
            "_pos": pa.array([r[1] for r in rows], pa.int64()),
            "_batch": pa.array([r[2] for r in rows], pa.int64()),
            "_seq": pa.array([r[3] for r in rows], pa.int64()),
        }
    )


# -- positions.token_order -----------------------------------------------------------------------
def test_token_order_sorts_like_the_tokens_of_one_cluster_time():
    # txnOpIndex 0, 1, 63, 64, 300 as KeyString integers (zero; 1-byte; 2-byte).
    indexes = ["29", "2B02", "2B7E", "2C0080", "2C0258"]
    tokens = [token(i) for i in indexes]
    orders = [token_order(t, POS) for t in tokens]

    assert sorted(tokens, key=lambda t: t["_data"]) == tokens
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert all(TOKEN_ORDER_BASE <= o < 2**63 for o in orders)


def test_token_order_is_none_without_a_mongodb_token_of_the_events_cluster_time():
    assert token_order({"_data": "relay-0001"}, POS) is None  # a relay's own id
    assert token_order({"_data": "0100000003"}, POS) is None  # not KeyString (DocumentDB-like)
    assert token_order(token("29"), cluster_position(T, 6)) is None  # another event's token
    assert token_order({"_data": f"82{T:08X}{5:08X}2B04_0"}, POS) is None  # not hex
    assert token_order(None, POS) is None


def test_a_change_stream_row_keeps_its_delivery_order_a_relayed_one_takes_the_token():
    event = change_event("insert", "K", T, {"_id": "K"})

    assert event_row(event).token_order is None  # the change stream's rows: unchanged
    assert event_row(event, order_by_token=True).token_order == token_order(
        event["_id"], cluster_position(T, 1)
    )


# -- table_layout: stream_order, precombine, change_wins, CHANGE_WINS_SQL ------------------------
def test_rows_without_a_token_order_keep_batch_then_row_order():
    """DMS files and snapshots: at one position, the later batch, then the later row, wins."""
    rows = changes([("K", POS, 3, 0), ("K", POS, 2, 1), ("K", POS, 3, 1), ("K", POS - 1, 9, 9)])

    assert stream_order(rows).column("doc").to_pylist() == ["3", "1", "0", "2"]
    assert precombine(rows).column("doc").to_pylist() == ["2"]


def test_the_token_order_decides_before_the_batch_at_one_position():
    early, late = TOKEN_ORDER_BASE + 10, TOKEN_ORDER_BASE + 20
    rows = changes([("K", POS, 1, late), ("K", POS, 2, early), ("K", POS, 3, 0)])

    # A row without a token order comes before token-ordered rows of its position.
    assert stream_order(rows).column("doc").to_pylist() == ["2", "1", "0"]
    assert precombine(rows).column("doc").to_pylist() == ["0"]


def test_change_wins_agrees_with_stream_order():
    seqs = [0, 5, TOKEN_ORDER_BASE + 1, TOKEN_ORDER_BASE + 2]
    for (stored_pos, stored_seq), (change_pos, change_seq) in product(
        product([POS - 1, POS], seqs), repeat=2
    ):
        # The stored row is from batch 1, the change from batch 2.
        rows = changes([("K", stored_pos, 1, stored_seq), ("K", change_pos, 2, change_seq)])
        latest = precombine(rows).column("doc").to_pylist()
        wins = change_wins(change_pos, change_seq, stored_pos, stored_seq)
        assert wins == (latest == ["1"]), (stored_pos, stored_seq, change_pos, change_seq)


def test_the_merge_predicate_in_sql_agrees_with_change_wins(tmp_path):
    """delta-rs evaluates ``CHANGE_WINS_SQL`` as the numpy rule does, for every pairing."""
    seqs = [0, 5, TOKEN_ORDER_BASE + 1, TOKEN_ORDER_BASE + 2]
    pairs = list(product(product([POS - 1, POS], seqs), repeat=2))
    keys = [f"k{i}" for i in range(len(pairs))]
    stored = pa.table(
        {
            "_id": keys,
            "_pos": pa.array([p[0][0] for p in pairs], pa.int64()),
            "_seq": pa.array([p[0][1] for p in pairs], pa.int64()),
            "won": [False] * len(pairs),
        }
    )
    write_deltalake(str(tmp_path), stored)
    source = pa.table(
        {
            "_id": keys,
            "_pos": pa.array([p[1][0] for p in pairs], pa.int64()),
            "_seq": pa.array([p[1][1] for p in pairs], pa.int64()),
            "won": [True] * len(pairs),
        }
    )
    (
        DeltaTable(str(tmp_path))
        .merge(source, predicate="t._id = s._id", source_alias="s", target_alias="t")
        .when_matched_update(updates={"won": "s.won"}, predicate=CHANGE_WINS_SQL)
        .execute()
    )

    result = DeltaTable(str(tmp_path)).to_pyarrow_table().sort_by("_id").to_pylist()
    won = {r["_id"]: r["won"] for r in result}
    expected = change_wins(
        source.column("_pos").to_numpy(),
        source.column("_seq").to_numpy(),
        stored.column("_pos").to_numpy(),
        stored.column("_seq").to_numpy(),
    )
    assert [won[k] for k in keys] == list(np.asarray(expected))
