"""Fixtures for the merge tests: a raw zone and a merge request on a temporary local lake."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, open_store


@pytest.fixture
def lake(tmp_path: Path) -> tuple[RawZone, MergeRequest]:
    store = open_store(str(tmp_path / "lake"))
    zone = RawZone(store, "shop", "orders")
    request = MergeRequest(lake_uri=str(tmp_path / "lake"), database="shop", collection="orders")
    return zone, request
