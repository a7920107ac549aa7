"""A batch's manifest is its exclusive claim: side files ride on it, a lost race leaves nothing."""

from __future__ import annotations

import pytest

from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import LocalObjectStore, ObjectExistsError
from tests.lambda_functions.raw_batches import JAN, key, publish


class LostResponseStore(LocalObjectStore):
    """Creates the manifest, then answers as S3 does to a retried conditional put whose first
    response was lost: 412, the object exists."""

    def put_if_absent(self, key: str, data: bytes) -> None:
        super().put_if_absent(key, data)
        if "/manifests/" in key:
            raise ObjectExistsError(f"{self.uri}/{key} already exists")


def test_side_file_keys_are_unique_per_attempt(tmp_path):
    zone = RawZone(LocalObjectStore(tmp_path), "shop", "orders")

    first, second = (zone.side_key("_mq", 7, ".json", stem="seen-") for _ in range(2))

    assert first != second
    assert first.startswith("raw/shop/orders/_mq/seen-000000000007-") and first.endswith(".json")


def test_a_writer_that_loses_the_batch_number_removes_its_files_and_keeps_the_winners(tmp_path):
    store = LocalObjectStore(tmp_path)
    zone = RawZone(store, "shop", "orders")
    before = zone.read_checkpoint()
    publish(zone, [(key(JAN, 1), "insert", 1, "{}")])  # the winner of batch 1
    winner = set(store.list(zone.prefix))
    side = zone.side_key("quarantine", 1, ".jsonl")

    with pytest.raises(ObjectExistsError):
        zone.write_batch([], after=before, state={}, side_files={side: b"x\n"})

    assert set(store.list(zone.prefix)) == winner  # the loser's side file is gone


def test_a_retried_claim_that_finds_its_own_manifest_has_won(tmp_path):
    zone = RawZone(LostResponseStore(tmp_path), "shop", "orders")
    side = zone.side_key("quarantine", 1, ".jsonl")

    manifest = zone.write_batch(
        [], after=zone.read_checkpoint(), state={}, extra={"q": side}, side_files={side: b"x\n"}
    )

    assert zone.read_manifest(1) == manifest and zone.store.get(side) == b"x\n"
    assert zone.read_checkpoint().batch == 1
