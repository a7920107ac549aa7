"""Partial updates end to end: update events that carry only ``updateDescription`` (no
``fullDocument``), through the MQ/SQS relay and the change stream opened without
``fullDocument: "updateLookup"``, merged into the lake and loaded into DuckDB.

Expected documents follow MongoDB's documented semantics, written out by hand:
- MongoDB Manual, "Change Events" > "update Event": without ``fullDocument: "updateLookup"`` an
  update event omits ``fullDocument`` and describes the change in ``updateDescription``
  (``updatedFields`` by dotted path, ``removedFields``, ``truncatedArrays``);
- MongoDB Manual, "$set": a dotted path sets an embedded field, ``"tags.1"`` the array element at
  index 1, and a field that does not exist is added last; "$unset": the field is removed;
- a change older than the stored one is ignored (latest ``clusterTime`` wins), and an update for a
  document the lake does not hold (never captured, or deleted) cannot be applied: it is counted and
  set aside, never guessed.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pytest
from deltalake import DeltaTable

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.mq_handler import handler as mq_handler
from lambda_functions.contracts import (
    CaptureRequest,
    InvalidRequestError,
    LoadRequest,
    MergeRequest,
)
from lambda_functions.lake import open_store
from lambda_functions.lake.extended_json import decode_document, encode_document
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.merge.results import MergeResult
from lambda_functions.warehouse_load.load import load_changes
from tests.lambda_functions.change_events import change_event, sqs_event

DB, COLL = "shop", "orders"
event = partial(change_event, db=DB, coll=COLL)

ORDER = {"_id": "a1", "n": 1, "tags": ["x", "y", "z"], "addr": {"city": "Oslo", "zip": "0150"}}
# $set n, addr.city and tags.1, $unset addr.zip, $set a new field: what the server reports.
DESCRIPTION = {
    "updatedFields": {"n": 2, "addr.city": "Bergen", "tags.1": "Y", "note": "gift"},
    "removedFields": ["addr.zip"],
    "truncatedArrays": [],
}
# The document after it (existing fields keep their place, the new one goes last).
UPDATED = {"_id": "a1", "n": 2, "tags": ["x", "Y", "z"], "addr": {"city": "Bergen"}, "note": "gift"}


def partial_update(_id: Any, t: int, description: dict[str, Any]) -> dict[str, Any]:
    """An update event as a stream without ``updateLookup`` returns it: no ``fullDocument``."""
    change = event("update", _id, t)
    assert "fullDocument" not in change
    return change | {"updateDescription": description}


class Lakehouse:
    def __init__(self, root: Path):
        self.lake = str(root / "lake")
        self.warehouse = str(root / "warehouse.duckdb")

    def deliver(self, *events: dict[str, Any]) -> dict[str, Any]:
        """One SQS delivery through the relay's Lambda handler; its response."""
        return mq_handler(sqs_event(*events, queue="shop-orders"), None)

    def merge(self) -> MergeResult:
        return merge_batches(MergeRequest(lake_uri=self.lake, database=DB, collection=COLL))

    def load(self) -> None:
        load_changes(
            LoadRequest(
                lake_uri=self.lake, database=DB, collection=COLL, warehouse_location=self.warehouse
            )
        )

    def lake_rows(self) -> dict[str, str]:
        uri, options = lake_table_location(open_store(self.lake), DB, COLL)
        rows = DeltaTable(uri, storage_options=options).to_pyarrow_table(
            columns=["_id", "doc", "_op"]
        )
        return {r["_id"]: r["doc"] for r in rows.to_pylist() if r["_op"] != "delete"}

    def warehouse_rows(self) -> dict[str, str]:
        with duckdb.connect(self.warehouse, read_only=True) as db:
            rows = db.execute(f"SELECT _id, doc::VARCHAR FROM analytics.{COLL}").fetchall()
        return {key: encode_document(decode_document(doc)) for key, doc in rows}

    def set_aside(self) -> list[dict[str, Any]]:
        folder = Path(self.lake) / "raw" / DB / COLL / "unapplied_updates"
        if not folder.exists():
            return []
        return [
            json.loads(line)
            for path in sorted(folder.iterdir())
            for line in path.read_text().splitlines()
        ]


def stored(*documents: dict[str, Any]) -> dict[str, str]:
    return {record_key(d["_id"]): encode_document(d) for d in documents}


@pytest.fixture
def house(tmp_path, monkeypatch) -> Lakehouse:
    house = Lakehouse(tmp_path)
    monkeypatch.setenv("LAKEHOUSE_LAKE_URI", house.lake)
    return house


# -- the owners' case: an update with only updateDescription, after the document's insert --------
def test_relayed_partial_update_in_the_same_batch_as_the_insert_ends_updated(house):
    response = house.deliver(
        event("insert", "a1", 100, ORDER), partial_update("a1", 101, DESCRIPTION)
    )
    result = house.merge()
    house.load()

    assert response == {"batchItemFailures": []}  # not a batch item failure
    assert result.partial_updates_applied == 1 and result.partial_updates_unapplied == 0
    assert house.lake_rows() == stored(UPDATED)
    assert house.warehouse_rows() == stored(UPDATED)


def test_relayed_partial_update_in_a_later_merge_applies_to_the_stored_document(house):
    assert house.deliver(event("insert", "a1", 100, ORDER)) == {"batchItemFailures": []}
    house.merge()
    house.load()
    assert house.warehouse_rows() == stored(ORDER)

    response = house.deliver(partial_update("a1", 101, DESCRIPTION))
    result = house.merge()
    house.load()

    assert response == {"batchItemFailures": []}
    assert result.partial_updates_applied == 1 and result.updated == 1
    assert house.lake_rows() == stored(UPDATED)
    assert house.warehouse_rows() == stored(UPDATED)


def test_partial_updates_chain_and_a_later_full_version_supersedes(house):
    second = {"updatedFields": {"n": 3}, "removedFields": ["note"], "truncatedArrays": []}
    house.deliver(event("insert", "a1", 100, ORDER), partial_update("a1", 101, DESCRIPTION))
    house.merge()
    house.deliver(partial_update("a1", 102, second), event("insert", "b2", 103, {"_id": "b2"}))
    house.merge()
    after_two = {"_id": "a1", "n": 3, "tags": ["x", "Y", "z"], "addr": {"city": "Bergen"}}
    assert house.lake_rows() == stored(after_two, {"_id": "b2"})

    replaced = {"_id": "a1", "whole": True}
    house.deliver(event("replace", "a1", 104, replaced), partial_update("b2", 105, second))
    house.merge()
    house.load()

    assert house.lake_rows() == stored(replaced, {"_id": "b2", "n": 3})
    assert house.warehouse_rows() == stored(replaced, {"_id": "b2", "n": 3})


# -- set aside, never guessed ----------------------------------------------------------------------
def test_partial_update_of_an_unknown_key_is_counted_and_set_aside(house):
    response = house.deliver(
        event("insert", "a1", 100, ORDER), partial_update("ghost", 101, DESCRIPTION)
    )
    result = house.merge()

    assert response == {"batchItemFailures": []}
    assert result.partial_updates_unapplied == 1 and result.partial_updates_applied == 0
    assert result.as_metadata()["partial_updates_unapplied"] == 1
    assert house.lake_rows() == stored(ORDER)  # no "ghost" document was made up
    (entry,) = house.set_aside()
    assert entry["_id"] == record_key("ghost") and "does not hold" in entry["reason"]
    assert decode_document(entry["update_description"]) == DESCRIPTION


@pytest.mark.parametrize("same_merge", [True, False])
def test_partial_update_after_a_delete_is_set_aside(house, same_merge):
    house.deliver(event("insert", "a1", 100, ORDER), event("delete", "a1", 101))
    if not same_merge:
        house.merge()
    house.deliver(partial_update("a1", 102, DESCRIPTION))
    result = house.merge()

    assert result.partial_updates_unapplied == 1
    assert house.lake_rows() == {}
    (entry,) = house.set_aside()
    assert "deleted" in entry["reason"]


def test_stale_partial_update_is_ignored(house):
    newer = {"_id": "a1", "n": 9}
    house.deliver(event("insert", "a1", 100, ORDER), event("replace", "a1", 105, newer))
    house.merge()

    response = house.deliver(partial_update("a1", 103, DESCRIPTION))  # older: delivered late
    result = house.merge()

    assert response == {"batchItemFailures": []}
    assert result.partial_updates_applied == 0 and result.partial_updates_unapplied == 0
    assert house.lake_rows() == stored(newer) and house.set_aside() == []


def test_partial_update_that_does_not_fit_is_set_aside_and_the_next_full_version_wins(house):
    # "$set": a path through a scalar cannot be set ("Cannot create field 'x' in element n: 1").
    misfit = {"updatedFields": {"n.x": 1}, "removedFields": [], "truncatedArrays": []}
    house.deliver(
        event("insert", "a1", 100, ORDER),
        partial_update("a1", 101, misfit),
        partial_update("a1", 102, DESCRIPTION),  # its base is unknown now: set aside too
    )
    result = house.merge()
    assert result.partial_updates_unapplied == 2 and result.partial_updates_applied == 0
    assert house.lake_rows() == stored(ORDER)

    house.deliver(event("replace", "a1", 103, {"_id": "a1", "n": {"x": 1}}))
    house.merge()
    assert house.lake_rows() == stored({"_id": "a1", "n": {"x": 1}})


# -- the change stream with updateLookup off -------------------------------------------------------
@pytest.mark.parametrize("merge_between", [False, True])
def test_stream_without_update_lookup_captures_deltas_that_the_merge_applies(
    tmp_path, merge_between
):
    house = Lakehouse(tmp_path)
    request = CaptureRequest(
        lake_uri=house.lake,
        database=DB,
        collection=COLL,
        source_location=str(tmp_path / "source.db"),
        full_document="default",
    )
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        source.enable_change_streams(DB, COLL)
        source.insert_one(DB, COLL, {"_id": "s1", "n": 1, "addr": {"city": "Oslo"}})
        while capture_changes(request, source=source).phase == "snapshot":
            pass
        source.insert_one(DB, COLL, dict(ORDER))
        source.update_one(DB, COLL, {"_id": "s1"}, {"$set": {"addr.city": "Bergen"}})
        if merge_between:  # the insert merged first; the update comes in a later batch/merge
            capture_changes(request, source=source)
            house.merge()
        source.update_one(
            DB, COLL, {"_id": "a1"}, {"$set": {"n": 2, "tags.1": "Y"}, "$unset": {"addr.zip": ""}}
        )
        capture_changes(request, source=source)
        result = house.merge()
        house.load()

        zone = RawZone(open_store(house.lake), DB, COLL)
        last = zone.read_manifest(zone.read_checkpoint().batch)
        raw = zone.read_batch(last).to_pylist()
        expected = {record_key(d["_id"]): encode_document(d) for d in source.documents(DB, COLL)}

    updates = [row for row in raw if row["op"] == "update"]
    assert updates and all(r["doc"] is None and r["update_description"] for r in updates)
    assert last.format_version == 2
    assert result.partial_updates_applied == (1 if merge_between else 2)
    assert expected == stored(
        {"_id": "s1", "n": 1, "addr": {"city": "Bergen"}},
        {"_id": "a1", "n": 2, "tags": ["x", "Y", "z"], "addr": {"city": "Oslo"}},
    )
    assert house.lake_rows() == expected
    assert house.warehouse_rows() == expected


def test_capture_request_refuses_an_unknown_full_document_option(tmp_path):
    with pytest.raises(InvalidRequestError, match="LAKEHOUSE_UPDATE_LOOKUP"):
        CaptureRequest(
            lake_uri=str(tmp_path), database=DB, collection=COLL, full_document="whenLookedUp"
        ).validate()
