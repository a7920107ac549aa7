"""Discovering the collections present in the raw zone, from key names only."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest

from lambda_functions.lake import ObjectStore, RawZone, list_namespaces, open_store
from lambda_functions.lake.raw_zone import Checkpoint
from tests.lambda_functions.raw_batches import JAN, key, publish


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "lake"))
    request.getfixturevalue("aws_env")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    # Outside the store's prefix: must not be seen.
    client.put_object(Bucket=bucket, Key="raw/other/coll/manifests/000000000001.json", Body=b"{}")
    return open_store(f"s3://{bucket}/prod")


def test_an_empty_lake_has_no_namespaces(store):
    assert list_namespaces(store) == []


def test_collections_with_a_published_batch_are_listed_sorted(store):
    for database, collection in [("shop", "orders"), ("crm", "accounts"), ("shop", "audit.log")]:
        publish(RawZone(store, database, collection), [(key(JAN, 1), "insert", 1, "{}")])
    publish(RawZone(store, "shop", "orders"), [(key(JAN, 2), "insert", 2, "{}")])
    assert list_namespaces(store) == ["crm.accounts", "shop.audit.log", "shop.orders"]


def test_a_manifest_whose_checkpoint_was_not_written_counts(store):
    """A capture that died between the manifest and the checkpoint has still published."""
    zone = RawZone(store, "shop", "orders")
    publish(zone, [(key(JAN, 1), "insert", 1, "{}")])
    store.delete(zone.checkpoint_key)
    assert list_namespaces(store) == ["shop.orders"]


def test_a_checkpoint_alone_counts(store):
    RawZone(store, "shop", "carts")._save_checkpoint(Checkpoint())
    assert list_namespaces(store) == ["shop.carts"]


def test_quarantine_half_written_batches_and_stray_keys_are_ignored(store):
    publish(RawZone(store, "shop", "orders"), [(key(JAN, 1), "insert", 1, "{}")])
    stray = [
        "raw/_mq_quarantine/0123abcd.json",  # dead letters of unroutable MQ messages
        "raw/shop/returns/quarantine/000000000001.jsonl",  # quarantine without a batch
        "raw/shop/refunds/data/000000000001/part.parquet",  # data written, manifest not yet
        "raw/shop/notes/manifests/readme.json",  # not a batch number
        "raw/shop/notes/manifests/000000000001.json.bak",
        "raw/shop/notes/manifests/nested/000000000001.json",
        "raw/shop/notes/sub/_checkpoint.json",
        "raw/shop/_checkpoint.json",  # too shallow: no collection
        "raw/stray.json",
        "lake/shop/orders/manifests/000000000001.json",  # not in the raw zone
    ]
    for stray_key in stray:
        store.put(stray_key, b"{}")
    assert list_namespaces(store) == ["shop.orders"]


def test_listing_reads_no_object(store, monkeypatch):
    for collection in ("orders", "customers"):
        publish(RawZone(store, "shop", collection), [(key(JAN, 1), "insert", 1, "{}")])

    def no_reads(key: str) -> bytes:
        raise AssertionError(f"list_namespaces read {key}")

    monkeypatch.setattr(store, "get", no_reads)
    assert list_namespaces(store) == ["shop.customers", "shop.orders"]
