"""The merge applies partial updates (raw rows with an ``updateDescription`` and no document) at
their position: on the latest earlier full version of the same merge, else on the stored row.

Expected documents follow MongoDB's ``$set``/``$unset`` semantics (MongoDB Manual, "$set":
a dotted path sets an embedded field, an existing field keeps its place; "$unset": the field is
removed) and its ordering: a change older than the stored one is ignored (latest ``clusterTime``
wins), a delete makes later updates meaningless until a new insert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lambda_functions.lake.extended_json import encode_document
from lambda_functions.lake.raw_zone import (
    BATCH_SCHEMA,
    UPDATE_DESCRIPTION_COLUMN,
    CorruptBatchError,
    RawZone,
)
from lambda_functions.lake.table_layout import key_buckets
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.merge.partial_updates import (
    PARTIAL_UPDATE_OP,
    StoredRow,
    resolve_partial_updates,
)
from tests.lambda_functions.raw_batches import publish

KEY = "k1"
BEFORE = {"_id": KEY, "a": {"b": 1, "c": 2}, "n": 1}
SET_B = {"updatedFields": {"a.b": 5}, "removedFields": ["n"], "truncatedArrays": []}
AFTER = {"_id": KEY, "a": {"b": 5, "c": 2}}


def doc(document: dict[str, Any]) -> str:
    return encode_document(document)


def publish_changes(zone: RawZone, changes: list[tuple[str, str, int, Any, Any]]) -> int:
    """One batch of (key, op, pos, doc, updateDescription) changes; with a description the row
    is a partial update (op "update", no doc). A doc is its text or a document to encode."""
    now = datetime.now(UTC)
    table = pa.table(
        {
            "_id": [c[0] for c in changes],
            "op": [c[1] for c in changes],
            "pos": [c[2] for c in changes],
            "seq": list(range(len(changes))),
            "event_time": [now] * len(changes),
            "doc": [doc(c[3]) if isinstance(c[3], dict) else c[3] for c in changes],
        },
        schema=BATCH_SCHEMA,
    ).append_column(
        pa.field(UPDATE_DESCRIPTION_COLUMN, pa.string()),
        pa.array([doc(c[4]) if c[4] is not None else None for c in changes], pa.string()),
    )
    return zone.write_batch([table], after=zone.read_checkpoint(), state={}).batch


def live(zone: RawZone) -> dict[str, str]:
    uri, options = lake_table_location(zone.store, "shop", "orders")
    rows = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["_id", "doc", "_op"])
    return {r["_id"]: r["doc"] for r in rows.to_pylist() if r["_op"] != "delete"}


def lake_changes(rows: list[tuple[str, str, int, str | None]]) -> pa.Table:
    """Change rows as ``plan.read_changes`` gives them (partial updates marked)."""
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
            "_seq": pa.array(range(n), pa.int64()),
        }
    )


# -- resolution, against a stored row given by hand -----------------------------------------------
def test_a_stale_full_version_in_the_merge_is_not_the_document_a_later_delta_applies_to():
    stored = {KEY: StoredRow(10, doc(BEFORE))}
    changes = lake_changes(
        [
            (KEY, "insert", 5, doc({"_id": KEY, "old": True})),  # older than the stored row
            (KEY, PARTIAL_UPDATE_OP, 12, doc(SET_B)),
        ]
    )

    outcome = resolve_partial_updates(changes, lambda keys, buckets: stored)

    assert outcome.applied == 1 and outcome.unapplied == 0
    update = [r for r in outcome.rows.to_pylist() if r["_pos"] == 12]
    assert update == [{**update[0], "_op": "update", "doc": doc(AFTER)}]


def test_a_delta_at_the_stored_position_is_a_replay_and_is_ignored():
    stored = {KEY: StoredRow(12, doc(AFTER))}
    changes = lake_changes([(KEY, PARTIAL_UPDATE_OP, 12, doc(SET_B))])

    outcome = resolve_partial_updates(changes, lambda keys, buckets: stored)

    assert (outcome.applied, outcome.unapplied, outcome.stale) == (0, 0, 1)
    assert outcome.rows.num_rows == 0


def test_the_table_is_read_only_for_the_keys_of_partial_updates():
    asked: list[list[str]] = []
    changes = lake_changes(
        [("other", "insert", 3, doc({"_id": "other"})), (KEY, PARTIAL_UPDATE_OP, 4, doc(SET_B))]
    )

    def stored(keys: list[str], buckets: list[str]) -> dict[str, StoredRow]:
        asked.append(keys)
        return {KEY: StoredRow(1, doc(BEFORE))}

    outcome = resolve_partial_updates(changes, stored)

    assert asked == [[KEY]] and outcome.applied == 1
    assert resolve_partial_updates(changes.slice(0, 1), stored).rows.num_rows == 1
    assert asked == [[KEY]]  # no partial update: the table is not read


def test_a_tombstone_in_the_table_sets_the_delta_aside():
    changes = lake_changes([(KEY, PARTIAL_UPDATE_OP, 20, doc(SET_B))])

    outcome = resolve_partial_updates(changes, lambda k, b: {KEY: StoredRow(15, None)})

    assert outcome.unapplied == 1 and "tombstone" in outcome.set_aside[0]["reason"]
    assert outcome.rows.num_rows == 0


def test_an_insert_after_a_delete_in_the_merge_is_the_new_base():
    changes = lake_changes(
        [
            (KEY, "delete", 2, None),
            (KEY, "insert", 3, doc(BEFORE)),
            (KEY, PARTIAL_UPDATE_OP, 4, doc(SET_B)),
        ]
    )

    outcome = resolve_partial_updates(changes, lambda k, b: {})

    assert outcome.applied == 1
    assert [r["doc"] for r in outcome.rows.to_pylist() if r["_pos"] == 4] == [doc(AFTER)]


# -- through merge_batches -------------------------------------------------------------------------
def test_old_batches_without_the_column_and_new_ones_merge_together(lake):
    zone, request = lake
    publish(zone, [(KEY, "insert", 1, doc(BEFORE))])  # the format before partial updates
    publish_changes(zone, [(KEY, "update", 2, None, SET_B)])

    result = merge_batches(request)

    assert [zone.read_manifest(n).format_version for n in (1, 2)] == [1, 2]
    assert result.partial_updates_applied == 1 and result.commits == 1
    assert live(zone) == {KEY: doc(AFTER)}


def test_a_redelivered_delta_after_it_was_applied_changes_nothing(lake):
    zone, request = lake
    publish(zone, [(KEY, "insert", 1, doc(BEFORE))])
    publish_changes(zone, [(KEY, "update", 2, None, SET_B)])
    merge_batches(request)
    unset_c = {"updatedFields": {}, "removedFields": ["a.c"], "truncatedArrays": []}
    publish_changes(zone, [(KEY, "update", 2, None, SET_B), (KEY, "update", 3, None, unset_c)])

    result = merge_batches(request)

    assert result.partial_updates_applied == 1 and result.partial_updates_unapplied == 0
    assert live(zone) == {KEY: doc({"_id": KEY, "a": {"b": 5}})}


def test_a_delta_after_a_positional_drop_is_set_aside(lake):
    zone, request = lake
    publish(zone, [(KEY, "insert", 1, doc(BEFORE))])
    merge_batches(request)
    zone.write_batch(
        [], after=zone.read_checkpoint(), state={}, extra={"dropped": True, "drop_pos": 5}
    )
    publish_changes(zone, [(KEY, "update", 6, None, SET_B)])

    result = merge_batches(request)

    assert result.partial_updates_unapplied == 1 and live(zone) == {}


def test_a_manifest_of_an_unknown_format_version_is_refused(lake):
    zone, _ = lake
    number = publish_changes(zone, [(KEY, "update", 2, None, SET_B)])
    key = zone.manifest_key(number)
    zone.store.put(key, zone.store.get(key).replace(b'"format_version": 2', b'"format_version": 3'))

    with pytest.raises(CorruptBatchError, match="v3"):
        zone.read_manifest(number)


MISFIT = {"updatedFields": {"a.b.x": 1}, "removedFields": [], "truncatedArrays": []}  # a.b: 1


def test_after_a_delta_was_set_aside_later_merges_set_its_key_aside_until_a_full_version(lake):
    zone, request = lake
    publish(zone, [(KEY, "insert", 1, doc(BEFORE))])
    publish_changes(zone, [(KEY, "update", 2, None, MISFIT)])
    assert merge_batches(request).partial_updates_unapplied == 1

    publish_changes(zone, [(KEY, "update", 3, None, SET_B)])  # fits, but its base is unknown
    result = merge_batches(request)
    assert (result.partial_updates_applied, result.partial_updates_unapplied) == (0, 1)
    assert live(zone) == {KEY: doc(BEFORE)}

    publish(zone, [(KEY, "replace", 4, doc(BEFORE))])
    publish_changes(zone, [(KEY, "update", 5, None, SET_B)])
    assert merge_batches(request).partial_updates_applied == 1
    assert live(zone) == {KEY: doc(AFTER)}


def test_a_delta_older_than_one_set_aside_before_still_applies():
    """A retried commit finds its own set-aside object: the deltas before it still apply."""
    stored = {KEY: StoredRow(1, doc(BEFORE), set_aside_pos=3)}
    changes = lake_changes(
        [(KEY, PARTIAL_UPDATE_OP, 2, doc(SET_B)), (KEY, PARTIAL_UPDATE_OP, 3, doc(MISFIT))]
    )

    outcome = resolve_partial_updates(changes, lambda k, b: stored)

    assert (outcome.applied, outcome.unapplied) == (1, 1)
    assert [r["doc"] for r in outcome.rows.to_pylist()] == [doc(AFTER)]
