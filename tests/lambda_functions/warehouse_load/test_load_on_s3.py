"""The load's incremental path on S3: the Delta change feed read through moto's server running in
its own process (in-process, delta-rs's feed planning holds the GIL and the read stalls), and a
stalled or failed feed read told apart from a vacuumed feed."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from deltalake import DeltaTable

from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, S3ObjectStore, open_store
from lambda_functions.lake.change_feed import ChangeFeedReadError
from lambda_functions.warehouse_load import load_changes
from tests.lambda_functions.warehouse_load.test_duckdb_load import A, B, C, Pipeline, doc

# object_store's defaults (30 s per request, retries for 3 minutes) would make a stall last
# minutes; the stall test shortens them (storage options delta-rs passes to object_store).
SHORT_TIMEOUTS = {
    "timeout": "2s",
    "connect_timeout": "1s",
    "max_retries": "1",
    "retry_timeout": "3s",
}


class S3Pipeline(Pipeline):
    """The same pipeline with its lake in a fresh bucket on the moto server process."""

    def __init__(self, root: Path):
        super().__init__(root)
        bucket = f"lake-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        self.bucket = bucket
        self.lake = f"s3://{bucket}/lake"
        self.zone = RawZone(open_store(self.lake), "shop", "orders")
        self.merge = MergeRequest(lake_uri=self.lake, database="shop", collection="orders")

    def delete_change_data_files(self) -> int:
        """What VACUUM does to the feed once the retention has passed."""
        s3 = boto3.client("s3")
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            for item in page.get("Contents", [])
            if "/_change_data/" in item["Key"]
        ]
        for key in keys:
            s3.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)


@pytest.fixture
def s3_pipeline(aws_process_env, tmp_path: Path) -> S3Pipeline:
    return S3Pipeline(tmp_path)


def test_incremental_load_reads_the_change_feed_on_s3(s3_pipeline):
    s3_pipeline.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    first = load_changes(s3_pipeline.request())
    assert first.full_reload and first.reason == "first load"
    s3_pipeline.change(
        (A, "update", 2, doc(v=1)), (C, "insert", 2, doc(v=2)), (B, "delete", 2, None)
    )
    second = load_changes(s3_pipeline.request())
    assert not second.full_reload and second.reason == "incremental"
    assert s3_pipeline.warehouse_rows() == s3_pipeline.lake_rows()
    assert set(s3_pipeline.warehouse_rows()) == {A, C}


def test_a_vacuumed_feed_on_s3_falls_back_to_a_full_reload(s3_pipeline):
    s3_pipeline.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    load_changes(s3_pipeline.request())
    s3_pipeline.change((A, "update", 2, doc(v=1)), (C, "insert", 2, doc(v=2)))
    assert s3_pipeline.delete_change_data_files() > 0
    result = load_changes(s3_pipeline.request())
    assert result.full_reload and result.reason.startswith("change feed unavailable")
    assert s3_pipeline.warehouse_rows() == s3_pipeline.lake_rows()


def test_a_stalled_feed_read_on_s3_fails_the_load_with_the_cause(
    s3_pipeline, moto_process, monkeypatch
):
    s3_pipeline.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    load_changes(s3_pipeline.request())
    s3_pipeline.change((A, "update", 2, doc(v=1)))
    before = s3_pipeline.control_row()

    location = S3ObjectStore.delta_location
    load_cdf = DeltaTable.load_cdf

    def load_cdf_while_s3_stalls(self, *args, **kwargs):
        with moto_process.frozen():  # S3 stops answering while the feed is read
            return load_cdf(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(
            S3ObjectStore,
            "delta_location",
            lambda self, key: (
                location(self, key)[0],
                {**location(self, key)[1], **SHORT_TIMEOUTS},
            ),
        )
        patch.setattr(DeltaTable, "load_cdf", load_cdf_while_s3_stalls)
        with pytest.raises(ChangeFeedReadError, match="reading the change feed") as failed:
            load_changes(s3_pipeline.request())
    assert "LAKEHOUSE_LAKE_URI" in str(failed.value)
    assert s3_pipeline.control_row() == before  # nothing loaded, no full reload either

    # the store answers again: the same load goes incremental
    resumed = load_changes(s3_pipeline.request())
    assert resumed.reason == "incremental"
    assert s3_pipeline.warehouse_rows() == s3_pipeline.lake_rows()
