"""Large documents and split change events end to end: capture -> merge -> DuckDB.

Expected values from MongoDB's documented semantics: a change event over the 16 MiB BSON limit
comes as ``$changeStreamSplitLargeEvent`` fragments that together are the event (MongoDB Manual,
"$changeStreamSplitLargeEvent (aggregation)"); a document itself is at most 16 MiB ("MongoDB Limits
and Thresholds", BSON Document Size), so a batch may hold one such document and goes through every
stage whole (a batch over the merge's byte budget is committed alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pytest
from deltalake import DeltaTable

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
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
from lambda_functions.merge.merge import segment_byte_budget
from lambda_functions.warehouse_load.load import load_changes

DB, COLL = "shop", "orders"
MiB = 1 << 20


class Lakehouse:
    def __init__(self, root: Path, **source_options: Any):
        self.root = root
        self.lake = str(root / "lake")
        self.warehouse = str(root / "warehouse.duckdb")
        self.source = EmbeddedChangeStreamSource(root / "store.db", **source_options)
        self.source.enable_change_streams(DB, COLL)

    def capture(self, **fields: Any) -> Any:
        request = CaptureRequest(lake_uri=self.lake, database=DB, collection=COLL, **fields)
        return capture_changes(request, source=self.source)

    def merge(self, **options: Any) -> Any:
        request = MergeRequest(lake_uri=self.lake, database=DB, collection=COLL)
        return merge_batches(request, **options)

    def load(self) -> Any:
        return load_changes(
            LoadRequest(
                lake_uri=self.lake, database=DB, collection=COLL, warehouse_location=self.warehouse
            )
        )

    def lake_docs(self) -> dict[str, str]:
        uri, options = lake_table_location(open_store(self.lake), DB, COLL)
        rows = DeltaTable(uri, storage_options=options).to_pyarrow_table(
            columns=["_id", "doc", "_op"]
        )
        return {r["_id"]: r["doc"] for r in rows.to_pylist() if r["_op"] != "delete"}

    def warehouse_docs(self) -> dict[str, str]:
        with duckdb.connect(self.warehouse, read_only=True) as db:
            rows = db.execute(f"SELECT _id, doc::VARCHAR FROM analytics.{COLL}").fetchall()
        return {key: encode_document(decode_document(doc)) for key, doc in rows}

    def batches(self) -> list[Any]:
        return list(RawZone(open_store(self.lake), DB, COLL).manifests())


def stored(*documents: dict[str, Any]) -> dict[str, str]:
    return {record_key(d["_id"]): encode_document(d) for d in documents}


def test_a_split_update_event_arrives_whole_in_the_lake_and_the_warehouse(tmp_path):
    house = Lakehouse(tmp_path, max_event_bytes=64 * 1024)
    field = 40_000  # the update event holds the document and the changed field: over 64 KiB
    big = {"_id": "big", "a": "x" * field, "nested": {"n": 1, "tags": ["p", "q"]}}
    updated = big | {"a": "y" * field}
    house.source.insert_one(DB, COLL, {"_id": "small"})
    house.capture()  # the snapshot
    house.source.insert_one(DB, COLL, big)
    house.source.update_one(DB, COLL, {"_id": "big"}, {"$set": {"a": "y" * field}})

    house.capture()
    house.merge()
    house.load()

    expected = stored({"_id": "small"}, updated)
    assert house.lake_docs() == expected  # the lake's canonical JSON, byte for byte
    assert house.warehouse_docs() == expected


@pytest.mark.parametrize("pattern", ["random", "ints"])
def test_near_16_mb_documents_go_through_every_stage_one_per_batch(tmp_path, monkeypatch, pattern):
    """Two documents of ~15.9 MB each and an update that replaces one's big field (an event of
    ~32 MB: split in two fragments at the real 16 MiB limit)."""
    monkeypatch.setenv("LAKEHOUSE_MERGE_SEGMENT_BYTES", str(4 * MiB))
    house = Lakehouse(tmp_path)
    size = 15_900_000

    def document(_id: str, seed: int) -> dict[str, Any]:
        if pattern == "random":  # incompressible: Parquet bytes ~ document bytes
            return {"_id": _id, "blob": os.urandom(size // 2).hex()}
        return {"_id": _id, "values": list(range(seed, seed + size // 13))}  # ~15 MB of BSON

    first, second = document("d1", 0), document("d2", 1)
    house.source.insert_one(DB, COLL, {"_id": "small"})
    house.capture()
    house.source.insert_one(DB, COLL, first)
    house.source.insert_one(DB, COLL, second)
    replaced = document("d1", 7)
    field = "blob" if pattern == "random" else "values"
    house.source.update_one(DB, COLL, {"_id": "d1"}, {"$set": {field: replaced[field]}})

    house.capture(max_bytes=1)  # one event per batch: the batch bound lets a big one through
    house.capture(max_bytes=1)
    house.capture(max_bytes=1)
    assert [m.rows for m in house.batches()] == [1, 1, 1, 1]
    result = house.merge()
    house.load()

    # Each batch is over the 4 MiB budget (int arrays by their JSON size: their Parquet
    # compresses well below it), so each is its own commit.
    assert result.commits == 4
    expected = stored({"_id": "small"}, replaced, second)
    assert house.lake_docs() == expected
    assert house.warehouse_docs() == expected


def test_the_merge_budget_groups_batches_by_bytes(tmp_path):
    house = Lakehouse(tmp_path)
    house.capture()
    for n in range(4):
        house.source.insert_one(DB, COLL, {"_id": n, "blob": os.urandom(300_000).hex()})
        house.capture()
    snapshot, *sizes = [m.decoded_bytes for m in house.batches()]
    assert len(sizes) == 4 and all(s > 600_000 for s in sizes)  # the documents' JSON size

    result = house.merge(max_bytes_per_commit=snapshot + sizes[0] + sizes[1])

    # batch 1 (the empty snapshot) with 2 and 3, then 4 with 5
    assert result.commits == 2 and result.table_rows == 4


def test_segment_byte_budget_comes_from_the_setting_or_the_memory():
    assert segment_byte_budget({"LAKEHOUSE_MERGE_SEGMENT_BYTES": "1234"}) == 1234
    assert segment_byte_budget({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}) == 64 * MiB
    assert segment_byte_budget({}) == 3008 * MiB // 16
    with pytest.raises(InvalidRequestError, match="LAKEHOUSE_MERGE_SEGMENT_BYTES"):
        segment_byte_budget({"LAKEHOUSE_MERGE_SEGMENT_BYTES": "lots"})
