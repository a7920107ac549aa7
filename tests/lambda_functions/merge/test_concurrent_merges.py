"""Merges racing on one table, locally and on S3 (moto), and a merge killed mid-commit on S3.

On S3, deltalake >= 1.0 makes each commit exclusive with a conditional write: the log entry is
PUT with ``If-None-Match: *``, which S3 (and moto's server) rejects when that version exists. No
locking provider (DynamoDB) and no ``AWS_S3_ALLOW_UNSAFE_RENAME`` are needed; the only storage
options are those ``S3ObjectStore.delta_location`` passes (endpoint, http, region).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

import lambda_functions.merge.apply as apply_module
import lambda_functions.merge.copy_on_write as copy_on_write
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import ObjectStore, RawZone, open_store
from lambda_functions.merge import MergeResult, lake_table_location, merge_batches
from lambda_functions.merge.table_files import TableFiles
from tests.lambda_functions.merge.tables import APP, commits, stored_docs
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Lake:
    uri: str
    store: ObjectStore
    zone: RawZone
    request: MergeRequest

    @property
    def table(self) -> tuple[str, dict[str, str]]:
        return lake_table_location(self.store, "shop", "orders")


@pytest.fixture(params=["local", "s3"])
def any_lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        uri = str(tmp_path / "lake")
    else:
        request.getfixturevalue("aws_env")
        uri = s3_lake_uri()
    store = open_store(uri)
    return Lake(uri, store, RawZone(store, "shop", "orders"), lake_request(uri))


@pytest.fixture
def s3_lake(aws_env: dict[str, str]) -> Lake:
    uri = s3_lake_uri()
    store = open_store(uri)
    return Lake(uri, store, RawZone(store, "shop", "orders"), lake_request(uri))


def s3_lake_uri() -> str:
    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prod"


def lake_request(uri: str) -> MergeRequest:
    return MergeRequest(lake_uri=uri, database="shop", collection="orders")


def commit_together(monkeypatch: pytest.MonkeyPatch, merges: int) -> None:
    """Every merge reads the table and plans before any commits: a commit race, every time."""
    barrier = threading.Barrier(merges, timeout=60)
    apply = apply_module.apply_plan
    first_attempt = threading.local()

    def synchronized(*args: Any, **kwargs: Any) -> Any:
        if not getattr(first_attempt, "passed", False):
            first_attempt.passed = True
            barrier.wait()
        return apply(*args, **kwargs)

    monkeypatch.setattr(apply_module, "apply_plan", synchronized)


def race(lake: Lake, merges: int = 2) -> list[MergeResult]:
    results: list[MergeResult | None] = [None] * merges
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = merge_batches(lake.request, store=lake.store)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(merges)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return [r for r in results if r is not None]


@pytest.mark.parametrize("path", ["create", "rewrite", "merge"])
def test_two_concurrent_merges_apply_each_batch_exactly_once(any_lake, monkeypatch, path):
    lake = any_lake
    if path == "merge":
        monkeypatch.setattr(copy_on_write, "supports", lambda _table: False)
    expected = {key(JAN, 1): '{"v":1}', key(JUN, 2): '{"v":1}'}
    publish(lake.zone, [(k, "insert", 1, doc) for k, doc in expected.items()])
    if path != "create":
        merge_batches(lake.request, store=lake.store)
        expected = {key(JAN, 1): '{"v":2}', key(JUN, 2): '{"v":1}', key(JAN, 3): '{"v":2}'}
        publish(
            lake.zone,
            [(key(JAN, 1), "update", 2, '{"v":2}'), (key(JAN, 3), "insert", 2, '{"v":2}')],
        )
    batch = 1 if path == "create" else 2
    commit_together(monkeypatch, merges=2)

    results = race(lake)

    winner, loser = sorted(results, key=lambda r: len(r.batches_applied), reverse=True)
    assert winner.batches_applied == [batch] and winner.merge_path == path
    assert loser.batches_applied == [] and loser.commit_attempts == 2  # lost, reloaded, saw it
    uri, options = lake.table
    assert stored_docs(uri, options) == expected
    table = DeltaTable(uri, storage_options=options)
    assert table.transaction_version(APP) == batch
    assert TableFiles.of(table).rows == len(expected)  # no row written twice
    recorded = [c.get("lakehouse.batches") for c in commits(uri)]
    assert recorded.count(f"{batch}-{batch}") == 1


def test_delta_log_entries_are_written_with_conditional_puts_on_s3(s3_lake, monkeypatch):
    from botocore.exceptions import ClientError
    from moto.s3.responses import S3Response

    seen: list[tuple[str, str | None]] = []
    put_object = S3Response.put_object

    def recording(self: S3Response) -> Any:
        name = self.parse_key_name()
        if "/_delta_log/" in name and name.endswith(".json"):
            seen.append((name.rsplit("/", 1)[-1], self.headers.get("If-None-Match")))
        return put_object(self)

    monkeypatch.setattr(S3Response, "put_object", recording)
    publish(s3_lake.zone, [(key(JAN, 1), "insert", 1, "{}")])
    merge_batches(s3_lake.request, store=s3_lake.store)
    publish(s3_lake.zone, [(key(JAN, 1), "update", 2, "{}")])
    merge_batches(s3_lake.request, store=s3_lake.store)

    assert [name for name, _ in seen] == [f"{v:020d}.json" for v in (0, 1)]
    assert all(condition == "*" for _, condition in seen)
    bucket, prefix = s3_lake.uri[5:].split("/", 1)
    with pytest.raises(ClientError, match="PreconditionFailed"):  # moto enforces the condition
        s3_lake.store.client.put_object(  # type: ignore[attr-defined]
            Bucket=bucket,
            Key=f"{prefix}/tables/shop/orders/_delta_log/{1:020d}.json",
            Body=b"{}",
            IfNoneMatch="*",
        )


class HeldLogWrite:
    """Holds the PUT of one Delta log entry inside moto's server; once released, fails it."""

    def __init__(self, version: int):
        self.name = f"/_delta_log/{version:020d}.json"
        self.reached = threading.Event()
        self.released = threading.Event()

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.s3.responses import S3Response

        put_object = S3Response.put_object

        def holding(response: S3Response) -> Any:
            if response.parse_key_name().endswith(self.name) and not self.released.is_set():
                self.reached.set()
                self.released.wait(120)
                raise ConnectionAbortedError("the client died before its log entry was stored")
            return put_object(response)

        monkeypatch.setattr(S3Response, "put_object", holding)


def s3_keys(lake: Lake) -> Iterator[str]:
    yield from lake.store.list("tables/shop/orders/")


def test_merge_killed_while_writing_its_log_entry_on_s3_leaves_the_previous_version(
    s3_lake, monkeypatch
):
    lake = s3_lake
    publish(lake.zone, [(key(JAN, 1), "insert", 1, '{"v":1}'), (key(JUN, 2), "insert", 1, "{}")])
    first = merge_batches(lake.request, store=lake.store)
    publish(lake.zone, [(key(JAN, 1), "update", 2, '{"v":2}'), (key(JAN, 3), "insert", 2, "{}")])
    uri, options = lake.table
    before = stored_docs(uri, options)
    keys_before = set(s3_keys(lake))
    held = HeldLogWrite(first.version + 1)
    with monkeypatch.context() as patched:
        held.patch(patched)
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.lambda_functions.merge.kill_merge", lake.uri, "none"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        reached = held.reached.wait(120)
        child.kill()
        child.wait(30)
        held.released.set()
    assert reached, "the merge never tried to write its log entry"

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == first.version and table.transaction_version(APP) == 1
    assert stored_docs(uri, options) == before
    written = {k for k in set(s3_keys(lake)) - keys_before if "_delta_log" not in k}
    assert any(k.endswith(".parquet") for k in written)  # its data files, named by no log entry
    rerun = merge_batches(lake.request, store=lake.store)
    assert rerun.batches_applied == [2] and rerun.version == first.version + 1
    assert stored_docs(uri, options)[key(JAN, 1)] == '{"v":2}'
    assert merge_batches(lake.request, store=lake.store).batches_applied == []
