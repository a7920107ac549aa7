"""Shared pieces for the capture tests: a settable clock, a store that fails on cue, and the
reference reconstruction of a collection from its raw batches (what the merge stage must compute)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.contracts import CaptureRequest
from lambda_functions.lake.extended_json import encode_document
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.lake.store import LocalObjectStore, ObjectStore


class ManualClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float | None = None):
        self.now = float(int(time.time())) if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class InjectedCrash(OSError):
    """The simulated failure (a Lambda killed mid-write, S3 unavailable)."""


class HookedStore(LocalObjectStore):
    """A local store that calls ``before_write(key)`` before every write (``put`` and
    ``put_if_absent``): where the failure-injecting stores of these tests hook in."""

    def before_write(self, key: str) -> None:
        pass

    def put(self, key: str, data: bytes) -> None:
        self.before_write(key)
        super().put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.before_write(key)
        super().put_if_absent(key, data)


class FailingStore(HookedStore):
    """A local store that raises after ``puts_allowed`` writes, or when a key matches."""

    def __init__(
        self,
        root: Path,
        *,
        puts_allowed: int | None = None,
        fail_on: Callable[[str], bool] | None = None,
    ):
        super().__init__(root)
        self.puts_allowed = puts_allowed
        self.fail_on = fail_on
        self.puts = 0

    def before_write(self, key: str) -> None:
        if self.fail_on is not None and self.fail_on(key):
            raise InjectedCrash(f"injected failure writing {key}")
        if self.puts_allowed is not None and self.puts >= self.puts_allowed:
            raise InjectedCrash(f"injected failure after {self.puts} writes ({key})")
        self.puts += 1


def batch_rows(
    store: ObjectStore, database: str = "shop", collection: str = "orders"
) -> list[dict]:
    """Every published row with its batch number, in batch order."""
    zone = RawZone(store, database, collection)
    return [
        row | {"batch": manifest.batch}
        for manifest in zone.manifests()
        for row in zone.read_batch(manifest).to_pylist()
    ]


def reconstruct(
    store: ObjectStore, database: str = "shop", collection: str = "orders"
) -> dict[str, str]:
    """The collection as the batches describe it: per ``_id`` the latest change by (pos, batch,
    seq) wins, deletes remove, a batch marked ``dropped`` clears what came before it."""
    zone = RawZone(store, database, collection)
    state: dict[str, tuple[tuple[int, int, int], str | None]] = {}
    for manifest in zone.manifests():
        table = zone.read_batch(manifest)
        for row in table.sort_by([("pos", "ascending"), ("seq", "ascending")]).to_pylist():
            order = (row["pos"], manifest.batch, row["seq"])
            if row["_id"] not in state or state[row["_id"]][0] <= order:
                state[row["_id"]] = (order, row["doc"])
        if manifest.extra.get("dropped"):
            state.clear()
    return {key: doc for key, (_order, doc) in state.items() if doc is not None}


def source_state(
    source: EmbeddedChangeStreamSource, database: str = "shop", collection: str = "orders"
) -> dict[str, str]:
    return {
        record_key(doc["_id"]): encode_document(doc)
        for doc in source.documents(database, collection)
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def source(tmp_path: Path, clock: ManualClock) -> Iterator[EmbeddedChangeStreamSource]:
    with EmbeddedChangeStreamSource(tmp_path / "source.db", clock=clock) as source:
        yield source


@pytest.fixture
def lake(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "lake")


@pytest.fixture
def make_request(tmp_path: Path) -> Callable[..., CaptureRequest]:
    """A capture request for shop.orders in this test's lake and source file."""

    def make(**overrides: Any) -> CaptureRequest:
        fields: dict[str, Any] = {
            "lake_uri": str(tmp_path / "lake"),
            "database": "shop",
            "collection": "orders",
            "source_location": str(tmp_path / "source.db"),
        }
        return CaptureRequest(**(fields | overrides))

    return make


@pytest.fixture
def failing_store(tmp_path: Path) -> Callable[..., FailingStore]:
    def make(**failure: Any) -> FailingStore:
        return FailingStore(tmp_path / "lake", **failure)

    return make


@pytest.fixture(name="reconstruct")
def reconstruct_fixture() -> Callable[..., dict[str, str]]:
    return reconstruct


@pytest.fixture(name="source_state")
def source_state_fixture() -> Callable[..., dict[str, str]]:
    return source_state
