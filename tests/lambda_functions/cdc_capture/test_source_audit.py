"""The source audit against lake tables built by the real capture and merge.

Expected figures come from the source itself (its documents, encoded the way capture encodes
them) and from what each test did to the lake by hand, never from the audit's own code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from bson import ObjectId
from deltalake import DeltaTable, write_deltalake

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.source_audit import audit_bucket, audit_source
from lambda_functions.contracts import (
    SOURCE_AUDIT_BUCKETS,
    CaptureRequest,
    MergeRequest,
    SourceAuditRequest,
)
from lambda_functions.lake import open_store
from lambda_functions.lake.extended_json import encode_document
from lambda_functions.lake.record_key import record_key
from lambda_functions.lake.table_layout import key_bucket
from lambda_functions.merge import lake_table_location, merge_batches

DB, COLL = "shop", "orders"


def no_wait(_seconds: float) -> None:
    pass


class Pipeline:
    """An embedded source with the demo workload, captured and merged into a local lake."""

    def __init__(self, root: Path, initial_documents: int = 80):
        self.lake = str(root / "lake")
        self.source = EmbeddedChangeStreamSource(root / "source.db")
        self.workload = DemoWorkload(self.source, DB, COLL, initial_documents=initial_documents)
        self.workload.run(0)

    def capture_and_merge(self, changes: int = 0, *, deadline: Any = None, **capture: Any) -> None:
        self.workload.run(changes)
        request = CaptureRequest(lake_uri=self.lake, database=DB, collection=COLL, **capture)
        result = capture_changes(request, source=self.source, deadline=deadline)
        while deadline is None and result.stopped_by == "max_rows":
            result = capture_changes(request, source=self.source)
        merge_batches(MergeRequest(lake_uri=self.lake, database=DB, collection=COLL))

    def audit(self, source: Any = None, **fields: Any):
        request = SourceAuditRequest(
            lake_uri=self.lake, database=DB, collection=COLL, recheck_delay_s=0, **fields
        )
        return audit_source(request, source=source or self.source, sleep=no_wait)

    def source_docs(self) -> dict[str, str]:
        """record key -> canonical document, the way capture encodes them."""
        docs = self.source.documents(DB, COLL)
        return {record_key(d["_id"]): encode_document(d) for d in docs}

    def table(self) -> DeltaTable:
        uri, options = lake_table_location(open_store(self.lake), DB, COLL)
        return DeltaTable(uri, storage_options=options)

    def close(self) -> None:
        self.source.close()


@pytest.fixture
def pipeline(tmp_path: Path):
    pipeline = Pipeline(tmp_path)
    pipeline.capture_and_merge()  # the snapshot
    pipeline.capture_and_merge(changes=60)  # inserts, updates and deletes from the stream
    yield pipeline
    pipeline.close()


def test_a_lake_built_by_capture_and_merge_matches_its_source(pipeline):
    result = pipeline.audit()

    source = pipeline.source_docs()
    assert result.status == "audited" and result.passed
    assert (result.source_count, result.lake_count) == (len(source), len(source))
    assert result.source_scanned == len(source)
    assert result.sampled_rate == 1.0 and len(result.buckets) == SOURCE_AUDIT_BUCKETS
    assert result.in_flight == 0 and not (result.missing or result.extra or result.different)
    assert all(f.matches for f in result.bucket_figures)
    assert sum(f.source_count for f in result.bucket_figures) == len(source)


def test_changes_the_lake_has_not_reached_are_in_flight_not_differences(pipeline):
    lake_before = pipeline.source_docs()
    pipeline.workload.run(40)  # the application keeps writing; no capture, no merge yet
    now = pipeline.source_docs()
    changed = {k for k in lake_before.keys() | now.keys() if lake_before.get(k) != now.get(k)}
    assert changed

    result = pipeline.audit()

    assert result.passed, result
    assert result.in_flight >= len(changed)  # every changed key, plus keys changed back
    assert result.source_count == len(now)


def test_a_row_deleted_from_the_lake_is_named_missing(pipeline):
    key = sorted(pipeline.source_docs())[7]
    pipeline.table().delete(predicate=f"_id = '{key}'")

    result = pipeline.audit()

    assert not result.passed and result.severity == "ERROR"
    assert result.missing == (key,) and result.extra == () and result.different == ()
    differing = [f for f in result.bucket_figures if not f.matches]
    assert [f.bucket for f in differing] == [audit_bucket(key)]
    assert differing[0].source_count == differing[0].lake_count + 1
    assert key in result.metadata(sample_keys=5)["missing_keys"]["raw_value"]
    findings = result.findings(sample_keys=5)  # the run's log lines: the key, then the fix
    assert f"1 keys missing from the lake: {key}" in findings[0]
    assert '{"reset": true}' in findings[-1]


def test_a_changed_lake_document_is_named_different(pipeline):
    key = sorted(pipeline.source_docs())[3]
    pipeline.table().update(
        new_values={"doc": f'{{"_id": {{"$oid": "{key}"}}, "status": "tampered"}}'},
        predicate=f"_id = '{key}'",
    )

    result = pipeline.audit()

    assert not result.passed
    assert result.different == (key,) and result.missing == () and result.extra == ()
    assert result.source_count == result.lake_count


def test_a_lake_row_the_source_never_had_is_named_extra(pipeline):
    table = pipeline.table()
    row = table.to_pyarrow_table().slice(0, 1).to_pylist()[0]
    ghost = ObjectId()
    row |= {"_id": str(ghost), "_bucket": key_bucket(str(ghost))}
    row["doc"] = encode_document({"_id": ghost, "status": "ghost"})
    write_deltalake(
        table, pa.Table.from_pylist([row], schema=table.to_pyarrow_table().schema), mode="append"
    )

    result = pipeline.audit()

    assert not result.passed
    assert result.extra == (str(ghost),) and result.missing == () and result.different == ()
    assert result.resolved_on_recheck == 0  # re-read by _id: still absent from the source


def test_tombstone_rows_are_not_documents(pipeline):
    table = pipeline.table()
    row = table.to_pyarrow_table().slice(0, 1).to_pylist()[0]
    gone = ObjectId()
    row |= {"_id": str(gone), "_bucket": key_bucket(str(gone)), "_op": "delete", "doc": None}
    write_deltalake(
        table, pa.Table.from_pylist([row], schema=table.to_pyarrow_table().schema), mode="append"
    )

    assert pipeline.audit().passed


def test_sampled_runs_cover_every_bucket_once_per_pass(pipeline):
    key = sorted(pipeline.source_docs())[11]
    pipeline.table().delete(predicate=f"_id = '{key}'")
    total = len(pipeline.source_docs())

    runs = [pipeline.audit(buckets_per_run=16) for _ in range(SOURCE_AUDIT_BUCKETS // 16)]

    assert [r.sampled_rate for r in runs] == [0.25] * 4
    covered = [b for r in runs for b in r.buckets]
    assert sorted(covered) == list(range(SOURCE_AUDIT_BUCKETS))  # each bucket exactly once
    assert sum(r.source_count for r in runs) == total
    assert [r.pass_complete for r in runs] == [False, False, False, True]
    assert [r.missing for r in runs if r.missing] == [(key,)]  # found by the run holding it
    assert [audit_bucket(key) in r.buckets for r in runs] == [not r.passed for r in runs]
    assert pipeline.audit(buckets_per_run=16).buckets == runs[0].buckets  # the next pass


def test_a_difference_gone_on_the_recheck_is_not_reported(pipeline):
    """A secondary behind the primary shows one document as it was before the lake's position;
    read again by _id (after the re-check delay) it has caught up."""
    key = sorted(pipeline.source_docs())[5]

    class LaggingSecondary:
        def __init__(self, source: EmbeddedChangeStreamSource):
            self.source = source

        def documents(self, *args: Any, **kwargs: Any) -> list[dict]:
            docs = self.source.documents(*args, **kwargs)
            return [d | {"stale": True} if record_key(d["_id"]) == key else d for d in docs]

        def __getattr__(self, name: str) -> Any:
            return getattr(self.source, name)

    result = pipeline.audit(source=LaggingSecondary(pipeline.source))

    assert result.passed and result.resolved_on_recheck == 1


def test_a_change_made_during_the_recheck_delay_counts_as_in_flight(pipeline):
    key = sorted(pipeline.source_docs())[9]
    pipeline.table().delete(predicate=f"_id = '{key}'")
    _id = ObjectId(key)

    def app_writes_meanwhile(_seconds: float) -> None:
        pipeline.source.update_one(DB, COLL, {"_id": _id}, {"$set": {"status": "shipped"}})

    request = SourceAuditRequest(lake_uri=pipeline.lake, database=DB, collection=COLL)
    result = audit_source(request, source=pipeline.source, sleep=app_writes_meanwhile)

    assert result.passed and result.in_flight == 1 and result.resolved_on_recheck == 1


def test_a_lake_still_loading_its_snapshot_is_not_audited(tmp_path):
    pipeline = Pipeline(tmp_path, initial_documents=50)
    try:
        time_left = iter([100.0, 100.0])  # the function's time runs out after the first chunk
        pipeline.capture_and_merge(max_rows=20, deadline=lambda: next(time_left, 0.0))
        result = pipeline.audit()
    finally:
        pipeline.close()

    assert result.status == "snapshot_in_progress"
    assert not result.passed and result.severity == "WARN"
    assert result.next_bucket == 0  # the cursor does not move


def test_a_collection_without_a_lake_table_is_not_audited(tmp_path):
    pipeline = Pipeline(tmp_path, initial_documents=5)
    try:
        result = pipeline.audit()
    finally:
        pipeline.close()
    assert result.status == "no_lake_table" and not result.passed
    assert "no merge has run" in result.reason


def test_more_sampled_documents_than_the_budget_stop_the_run_unaudited(pipeline):
    result = pipeline.audit(max_rows=10)
    assert result.status == "over_budget" and "buckets_per_run" in result.reason


def test_audit_request_refuses_a_sample_outside_the_bucket_range():
    event = SourceAuditRequest(lake_uri="/l", database=DB, collection=COLL).to_event()
    with pytest.raises(ValueError, match="buckets_per_run must be 1 to 64"):
        SourceAuditRequest.from_event({**event, "buckets_per_run": 65})
