"""Writers racing for one collection's raw zone lose nothing and double nothing.

Real concurrent ingests (threads, and processes for MQ), many rounds each, checked with the
documented semantics:
- MQ/SQS: delivery is at-least-once and ingestion idempotent by message id, so every message
  delivered (to any racer, any number of times, inside one event or across events) is published
  exactly once in the union of the published batches, and the ledger each batch points to holds
  exactly the messages of the batches up to it (no entry for data not published).
- DMS: every row of every file is in exactly one batch, and the bookmark of every batch marks
  done only files whose rows are all in that batch or an earlier one.
- Every ledger or bookmark object in the raw zone is named by a manifest: a racer that lost the
  batch number removed its own, and none overwrote the winner's.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.contracts import DmsIngestRequest
from lambda_functions.lake.raw_zone import BatchManifest, RawZone
from lambda_functions.lake.store import LocalObjectStore, ObjectStore, open_store
from tests.lambda_functions.cdc_capture.racers import (
    COLL,
    DB,
    RacerReport,
    change_message,
    deliver,
    deliver_in_process,
)

MQ_ROUNDS = 30
DMS_ROUNDS = 30
PROCESS_ROUNDS = 30


# -- reading what was published ---------------------------------------------------------------------
def published(store: ObjectStore) -> list[tuple[BatchManifest, list[dict[str, Any]]]]:
    """Every published batch with its documents (decoded ``doc``), in batch order."""
    zone = RawZone(store, DB, COLL)
    return [
        (m, [json.loads(doc) for doc in zone.read_batch(m).column("doc").to_pylist()])
        for m in zone.manifests()
    ]


def ledger(store: ObjectStore, manifest: BatchManifest, name: str) -> Any:
    return json.loads(store.get(manifest.state[f"{name}_key"]))


def assert_side_objects_all_named(store: ObjectStore, folder: str, name: str) -> None:
    """Every object under ``<zone>/<folder>/`` is the ledger some manifest points to."""
    zone = RawZone(store, DB, COLL)
    named = {m.state.get(f"{name}_key") for m in zone.manifests()}
    present = set(store.list(f"{zone.prefix}/{folder}/"))
    assert present <= named, f"objects no manifest names: {sorted(present - named)}"


# -- MQ ---------------------------------------------------------------------------------------------
def plan_deliveries(
    rng: random.Random, round_number: int, racers: int, messages: int = 120
) -> tuple[set[str], list[list[list[tuple[str, bytes]]]]]:
    """The messages of one round, delivered at least once each: to 1..``racers`` racers, in
    events of 3-12 messages, some with a message repeated inside the event (a redelivery)."""
    all_messages = [change_message(n, f"{round_number}-{n}") for n in range(messages)]
    per_racer: list[list[tuple[str, bytes]]] = [[] for _ in range(racers)]
    for message in all_messages:
        for racer in rng.sample(range(racers), rng.randint(1, racers)):
            per_racer[racer].append(message)
    plans = []
    for deliveries in per_racer:
        rng.shuffle(deliveries)
        events, at = [], 0
        while at < len(deliveries):
            size = rng.randint(3, 12)
            event = deliveries[at : at + size]
            if rng.random() < 0.3:
                event.insert(rng.randrange(len(event) + 1), rng.choice(event))
            events.append(event)
            at += size
        plans.append(events)
    return {message_id for message_id, _ in all_messages}, plans


def assert_mq_published_exactly_once(store: ObjectStore, expected: set[str]) -> None:
    batches = published(store)
    counts = Counter(f"ID:{doc['message']}" for _, docs in batches for doc in docs)
    assert set(counts) == expected, f"lost: {sorted(expected - set(counts))[:10]}"
    doubled = {m: n for m, n in counts.items() if n > 1}
    assert not doubled, f"published more than once: {doubled}"
    so_far: set[str] = set()
    for manifest, docs in batches:
        so_far |= {f"ID:{doc['message']}" for doc in docs}
        seen = ledger(store, manifest, "seen")
        assert set(seen) == so_far, f"batch {manifest.batch}: ledger != messages published"
    assert_side_objects_all_named(store, "_mq", "seen")


def race_mq_threads(
    store: ObjectStore, rng: random.Random, round_number: int, racers: int, messages: int = 120
) -> tuple[set[str], list[RacerReport]]:
    expected, plans = plan_deliveries(rng, round_number, racers, messages)
    start_at = time.time() + 0.05
    with ThreadPoolExecutor(racers) as pool:
        reports = list(pool.map(lambda events: deliver(store, events, start_at), plans))
    return expected, reports


def test_concurrent_mq_ingests_publish_every_message_exactly_once(tmp_path):
    rng = random.Random(20240105)
    for round_number in range(MQ_ROUNDS):
        store = LocalObjectStore(tmp_path / f"lake-{round_number}")
        racers = 2 + round_number % 3  # 2, 3 or 4 racers
        expected, reports = race_mq_threads(store, rng, round_number, racers)

        assert_mq_published_exactly_once(store, expected)
        batches = [b for r in reports for b in r.batches]
        assert len(batches) == len(set(batches))  # each batch reported by its publisher only


def test_concurrent_mq_ingests_in_separate_processes_publish_every_message_exactly_once(
    tmp_path,
):
    rng = random.Random(7)
    racers = 3
    with multiprocessing.get_context("spawn").Pool(racers) as pool:
        for round_number in range(PROCESS_ROUNDS):
            lake = tmp_path / f"lake-{round_number}"
            expected, plans = plan_deliveries(rng, round_number, racers, messages=60)
            start_at = time.time() + 0.2
            pending = [
                pool.apply_async(deliver_in_process, (str(lake), events, start_at))
                for events in plans
            ]
            for result in pending:
                result.get(timeout=120)

            assert_mq_published_exactly_once(LocalObjectStore(lake), expected)


def test_concurrent_mq_ingests_against_s3_publish_every_message_exactly_once(aws_env):
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    rng = random.Random(3)
    store = open_store(f"s3://{bucket}/lake")

    expected, _reports = race_mq_threads(store, rng, 0, racers=3, messages=60)

    assert_mq_published_exactly_once(store, expected)


def test_a_message_redelivered_inside_one_event_is_published_once(tmp_path):
    store = LocalObjectStore(tmp_path / "lake")
    first, second = change_message(1, "a"), change_message(2, "b")
    event = [[first, second, first, first]]

    report = deliver(store, event, start_at=0)

    assert report.duplicates == 2
    assert_mq_published_exactly_once(store, {first[0], second[0]})


# -- DMS --------------------------------------------------------------------------------------------
def dms_file(store: ObjectStore, name: str, rows: int) -> None:
    """A DMS CSV file (document mode, no header); CDC files carry ``Op``."""
    op = "" if name.startswith("LOAD") else "I,"
    lines = []
    for row in range(rows):
        label = f"{name}:{row}"
        doc = json.dumps({"_id": label, "file": name, "row": str(row)}).replace('"', '""')
        lines.append(f'{op}{label},"{doc}"')
    store.put(name, ("\n".join(lines) + "\n").encode())


def cdc_name(number: int) -> str:
    return f"20240105-10{number // 60:02d}{number % 60:02d}000.csv"


def assert_dms_rows_exactly_once(store: ObjectStore, files: dict[str, int]) -> None:
    batches = published(store)
    counts = Counter((doc["file"], int(doc["row"])) for _, docs in batches for doc in docs)
    expected = {(name, row) for name, rows in files.items() for row in range(rows)}
    assert set(counts) == expected, f"lost: {sorted(expected - set(counts))[:10]}"
    assert all(n == 1 for n in counts.values()), "a DMS row is in more than one batch"
    so_far: Counter[str] = Counter()
    for manifest, docs in batches:
        so_far.update(doc["file"] for doc in docs)
        bookmark = ledger(store, manifest, "bookmark")
        done = [*bookmark["loads_done"], *bookmark["cdc_recent"]]
        for name in done:
            assert so_far[name] == files[name], (
                f"batch {manifest.batch}'s bookmark marks {name} done; batches up to it hold "
                f"{so_far[name]} of its {files[name]} rows"
            )
        current = bookmark["current"]
        if current["key"] is not None:
            assert so_far[current["key"]] == current["rows_done"]
    assert_side_objects_all_named(store, "_dms", "bookmark")


def test_concurrent_dms_ingests_put_every_row_in_exactly_one_batch(tmp_path):
    rng = random.Random(11)
    for round_number in range(DMS_ROUNDS):
        lake = tmp_path / f"lake-{round_number}"
        folder = LocalObjectStore(tmp_path / f"dms-{round_number}")
        files = {"LOAD00000001.csv": rng.randint(1, 9)}
        files |= {cdc_name(n): rng.randint(1, 9) for n in range(4)}
        for name, rows in files.items():
            dms_file(folder, name, rows)
        racers = 2 + round_number % 3

        def request(
            max_rows: int, lake: Path = lake, folder: LocalObjectStore = folder
        ) -> DmsIngestRequest:
            return DmsIngestRequest(
                lake_uri=str(lake),
                database=DB,
                collection=COLL,
                dms_uri=folder.uri,
                max_rows=max_rows,
            )

        late = {cdc_name(n): rng.randint(1, 9) for n in range(4, 10)}
        start = threading.Barrier(racers + 1)

        def racer(
            max_rows: int, start: threading.Barrier = start, request=request, folder=folder
        ) -> int:
            start.wait()
            lost = 0
            for _run in range(3):  # a sensor's runs while DMS keeps writing files
                try:
                    ingest_dms_files(request(max_rows), dms_store=folder)
                except ConcurrentCaptureError:
                    lost += 1
            return lost

        def producer(start: threading.Barrier = start, late=late, folder=folder) -> None:
            start.wait()
            for name, rows in late.items():
                time.sleep(rng.random() * 0.01)
                dms_file(folder, name, rows)

        with ThreadPoolExecutor(racers + 1) as pool:
            runs = [pool.submit(racer, rng.choice([2, 3, 5, 50])) for _ in range(racers)]
            pool.submit(producer).result()
            for run in runs:
                run.result()
        ingest_dms_files(request(50), dms_store=folder)  # the next scheduled run

        assert_dms_rows_exactly_once(LocalObjectStore(lake), files | late)


def test_a_dms_ingest_that_loses_the_race_rebuilds_on_top_of_the_winner(tmp_path):
    folder = LocalObjectStore(tmp_path / "dms")
    files = {"LOAD00000001.csv": 3, cdc_name(1): 2}
    for name, rows in files.items():
        dms_file(folder, name, rows)
    lake = LocalObjectStore(tmp_path / "lake")
    request = DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"),
        database=DB,
        collection=COLL,
        dms_uri=folder.uri,
        max_rows=2,
    )

    class RivalFirst(LocalObjectStore):
        """Another ingest publishes the first batch just before this one claims it."""

        raced = False

        def put_if_absent(self, key: str, data: bytes) -> None:
            if "/manifests/" in key and not self.raced:
                self.raced = True
                ingest_dms_files(dataclasses.replace(request, max_rows=4), dms_store=folder)
            super().put_if_absent(key, data)

    result = ingest_dms_files(request, store=RivalFirst(tmp_path / "lake"), dms_store=folder)

    assert result.batches == []  # the rival took every file: nothing left to publish
    assert_dms_rows_exactly_once(lake, files)


def test_a_message_split_by_a_drop_is_resumed_not_redone_after_losing_the_race(tmp_path):
    lake = tmp_path / "lake"
    before, after = (json.loads(change_message(n, label)[1]) for n, label in ((1, "a"), (2, "b")))
    drop = {**before, "operationType": "drop", "_id": {"_data": "FF"}}
    del drop["documentKey"], drop["fullDocument"]
    split = ("ID:split", json.dumps([before, drop, after]).encode())
    rival = change_message(3, "rival")

    class RivalTakesTheSecondBatch(LocalObjectStore):
        manifests = 0

        def put_if_absent(self, key: str, data: bytes) -> None:
            if "/manifests/" in key:
                type(self).manifests += 1
                # The rows before the drop, then the drop (an empty batch of its own), then the
                # rival, before the rest of the message.
                if self.manifests == 3:
                    deliver(LocalObjectStore(lake), [[rival]], start_at=0)
            super().put_if_absent(key, data)

    report = deliver(RivalTakesTheSecondBatch(lake), [[split]], start_at=0)

    assert report.errors == [] and report.batches == [1, 2, 4]
    batches = published(LocalObjectStore(lake))
    assert [[d["message"] for d in docs] for _, docs in batches] == [["a"], [], ["rival"], ["b"]]
    assert batches[1][0].extra["dropped"] is True and not batches[0][0].extra.get("dropped")
    assert set(ledger(LocalObjectStore(lake), batches[-1][0], "seen")) == {"ID:split", rival[0]}


def test_an_older_batch_whose_ledger_is_at_the_shared_name_is_still_followed(tmp_path):
    store = LocalObjectStore(tmp_path / "lake")
    zone = RawZone(store, DB, COLL)
    old_key = f"{zone.prefix}/_mq/seen-000000000001.json"  # the layout before per-attempt keys
    store.put(old_key, json.dumps({"ID:old": "ok"}).encode())
    zone.write_batch([], after=zone.read_checkpoint(), state={"phase": "mq", "seen_key": old_key})

    report = deliver(store, [[change_message(1, "old"), change_message(2, "new")]], start_at=0)

    assert report.duplicates == 1 and report.batches == [2]
    (_, docs) = published(store)[-1]
    assert [d["message"] for d in docs] == ["new"]
    assert set(ledger(store, zone.read_manifest(2), "seen")) == {"ID:old", "ID:new"}
