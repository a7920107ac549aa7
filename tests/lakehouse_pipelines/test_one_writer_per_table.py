"""One writer per table, whatever the engine: the Lambda route (the local Lambda runtime) and the
ECS route (``python -m lambda_functions.ecs_task``, the task's real entry point, in its own
process) merge the same collection's batches into the same Delta table at the same moment, round
after round. Delta's conditional commit lets exactly one commit each version; the loser reloads,
finds the batch applied (the merge's app transaction) and applies nothing: every change lands
once, nothing is lost.

Dagster's side of the rule (one run per collection at a time, ``deploy/dagster.yaml``'s
``dagster/partition`` limit; both routes run inside that run's step) is checked by
``test_instance_settings``; this test shows what holds when two writers meet anyway (a run over a
range of collections beside a single-collection run, or an operator's manual invocation).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from dagster_pipes import encode_param

from lakehouse_local.lambda_runtime import LocalLambdaRuntime
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.merge import lake_table_location
from lambda_functions.registry import MERGE
from tests.lambda_functions.cdc_capture.conftest import reconstruct
from tests.lambda_functions.merge.tables import APP, commits, stored_docs
from tests.lambda_functions.raw_batches import JAN, key, publish

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 12
RETRIED = "a concurrent commit won"  # what the merge logs when it lost a commit race
# The ECS task process imports everything, then waits for the go file, then runs the entry point
# as ``python -m lambda_functions.ecs_task`` would: both routes start together.
TASK = """
import os, runpy, sys, time
import lambda_functions.merge.handler, deltalake  # the container's imports, before the start
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.002)
runpy.run_module("lambda_functions.ecs_task", run_name="__main__")
"""


def pipes_context(extras: dict) -> dict:
    return {
        "asset_keys": ["lake_table"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": "shop.orders",
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "race",
        "job_name": None,
        "retry_number": 0,
        "extras": extras,
    }


def pipes_messages(lines: list[str]) -> list[dict]:
    found = []
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and "__dagster_pipes_version" in message:
            found.append(message)
    return found


def batches_applied(messages: list[dict]) -> int:
    (done,) = [m for m in messages if m["method"] == "report_asset_materialization"]
    return done["params"]["metadata"]["batches_applied"]["raw_value"]


def test_lambda_and_ecs_routes_racing_on_one_table_commit_each_version_once(tmp_path):
    lake = str(tmp_path / "lake")
    store = open_store(lake)
    zone = RawZone(store, "shop", "orders")
    event = MergeRequest(lake_uri=lake, database="shop", collection="orders").to_event()
    messages = {"DAGSTER_PIPES_MESSAGES": encode_param({"stdio": "stdout"})}
    lambda_event = {
        **event,
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": pipes_context({})}),
        **messages,
    }
    task_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DAGSTER_PIPES_CONTEXT": encode_param(
            {"data": pipes_context({"function": MERGE.name, "request": event})}
        ),
        **messages,
    }
    applied_by = {"lambda": 0, "ecs": 0}
    overlapping = lost_races = 0
    pos = 0
    with LocalLambdaRuntime(
        {MERGE.name: MERGE},
        variables={
            "LAKEHOUSE_METRICS_NAMESPACE": "Lakehouse/Race",
            "LAKEHOUSE_MERGE_SEGMENT_BYTES": "",
        },
    ) as runtime:
        for round_number in range(1, ROUNDS + 1):
            changes = []
            for n in range(20):  # 20 changes a round: new keys, updates, a delete
                pos += 1
                changes.append(
                    (
                        key(JAN, round_number * 100 + n),
                        "insert",
                        pos,
                        json.dumps({"r": round_number, "n": n}),
                    )
                )
            if round_number > 1:
                pos += 1
                changes.append(
                    (
                        key(JAN, (round_number - 1) * 100),
                        "update",
                        pos,
                        json.dumps({"again": round_number}),
                    )
                )
                pos += 1
                changes.append((key(JAN, (round_number - 1) * 100 + 1), "delete", pos, None))
            publish(zone, changes)

            go = tmp_path / f"go-{round_number}"
            task = subprocess.Popen(
                [sys.executable, "-c", TASK, str(go)],
                env=task_env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(2.0)  # the task process has started and imported; the Lambda is warm
            spans: dict[str, tuple[float, float]] = {}
            answer: dict = {}

            def invoke_lambda(answer: dict = answer, spans: dict = spans) -> None:
                start = time.monotonic()
                answer.update(
                    runtime.invoke(
                        FunctionName=MERGE.name,
                        Payload=json.dumps(lambda_event).encode(),
                        LogType="Tail",
                    )
                )
                spans["lambda"] = (start, time.monotonic())

            lambda_thread = threading.Thread(target=invoke_lambda)
            go.touch()
            start = time.monotonic()
            lambda_thread.start()
            out, err = task.communicate(timeout=300)
            spans["ecs"] = (start, time.monotonic())
            lambda_thread.join(timeout=300)

            assert task.returncode == 0, err
            assert "FunctionError" not in answer, answer["Payload"].read()
            lambda_result = json.loads(answer["Payload"].read())
            ecs_applied = batches_applied(pipes_messages(out.splitlines()))
            lambda_applied = lambda_result["batches_applied"]
            assert isinstance(lambda_applied, list)
            # exactly one of the two routes applied this round's batch
            assert sorted([len(lambda_applied), ecs_applied]) == [0, 1], (lambda_result, out)
            applied_by["lambda"] += len(lambda_applied)
            applied_by["ecs"] += ecs_applied
            tail = base64.b64decode(answer.get("LogResult", "")).decode(errors="replace")
            lost_races += (RETRIED in out) + (RETRIED in tail)
            (a_start, a_end), (b_start, b_end) = spans["lambda"], spans["ecs"]
            overlapping += a_start < b_end and b_start < a_end

    uri, options = lake_table_location(store, "shop", "orders")
    infos = commits(uri)
    versions = [info.get("version", i) for i, info in enumerate(infos)]
    assert len(infos) == len(set(map(json.dumps, infos)))  # one commit info per log entry
    log_entries = sorted(
        name
        for name in store.list(f"{uri[len(lake) + 1 :]}/_delta_log/")
        if name.endswith(".json") and name.rsplit("/", 1)[-1][:20].isdigit()
    )
    numbers = [int(name.rsplit("/", 1)[-1][:20]) for name in log_entries]
    assert numbers == list(range(len(numbers)))  # versions 0..V, each committed exactly once
    assert len(versions) == len(numbers)
    assert sum(applied_by.values()) == ROUNDS  # every batch applied once, by one route
    assert stored_docs(uri, options) == reconstruct(store)  # nothing lost, nothing doubled
    assert overlapping >= ROUNDS // 2, f"the routes overlapped in only {overlapping} rounds"
    print(
        f"applied by route: {applied_by}; overlapping rounds: {overlapping}/{ROUNDS}; "
        f"commits lost to the other route and retried: {lost_races} ({APP})"
    )
