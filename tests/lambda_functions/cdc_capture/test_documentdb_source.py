"""The pymongo change source at the wire level, against mockupdb playing DocumentDB.

Most tests run the real pymongo path against ``EmbeddedBackedServer`` (mockupdb answering from an
embedded store file) and compare with what capture publishes straight from the embedded source;
the rest script the server's replies by hand for answers the store never gives (no
post-batch token, an invalid token).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import boto3
import pytest
from bson import Int64, ObjectId, Timestamp
from mockupdb import MockupDB, OpMsg, go
from moto import mock_aws
from pymongo import MongoClient

from lakehouse_local.demo_workload import DemoWorkload
from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import (
    ChangeStreamsDisabledError,
    ResumeTokenExpiredError,
    capture_changes,
    open_source,
)
from lambda_functions.cdc_capture.documentdb_source import (
    DocumentDBChangeSource,
    client_options,
    connection_target,
    mask_credentials,
)
from lambda_functions.cdc_capture.errors import SourceConnectionError
from lambda_functions.cdc_capture.source_audit import READ_PREFERENCE, audit_source
from lambda_functions.contracts import (
    CaptureRequest,
    InvalidRequestError,
    MergeRequest,
    SourceAuditRequest,
)
from lambda_functions.lake.extended_json import encode_document
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.record_key import record_key
from lambda_functions.lake.store import LocalObjectStore
from lambda_functions.merge import merge_batches
from tests.lambda_functions.cdc_capture.mock_documentdb import HELLO, embedded_backed_server

DB, COLL = "shop", "orders"


def published(lake: Path) -> list[tuple[int, dict]]:
    zone = RawZone(LocalObjectStore(lake), DB, COLL)
    return [(m.batch, row) for m in zone.manifests() for row in zone.read_batch(m).to_pylist()]


def request_for(tmp_path: Path, lake: str, **fields) -> CaptureRequest:
    return CaptureRequest(lake_uri=str(tmp_path / lake), database=DB, collection=COLL, **fields)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedChangeStreamSource]:
    with EmbeddedChangeStreamSource(tmp_path / "store.db") as store:
        yield store


@pytest.fixture
def docdb(tmp_path: Path, store: EmbeddedChangeStreamSource):
    """(server, pymongo change source) over the store, with small getMore batches."""
    with embedded_backed_server(tmp_path / "store.db", events_per_batch=7) as server:
        client = MongoClient(server.uri, tls=False, serverSelectionTimeoutMS=5_000)
        source = DocumentDBChangeSource(client, max_await_time_ms=10)
        try:
            yield server, source
        finally:
            source.close()


def test_pymongo_path_captures_the_same_batches_as_the_embedded_source(tmp_path, store, docdb):
    server, pymongo_source = docdb
    workload = DemoWorkload(store, initial_documents=45)
    workload.run(0)

    for changes in (0, 30, 25):  # the snapshot, then two stream captures
        workload.run(changes)
        direct = capture_changes(request_for(tmp_path, "direct", max_rows=20), source=store)
        wire = capture_changes(request_for(tmp_path, "wire", max_rows=20), source=pymongo_source)
        while direct.stopped_by == "max_rows":  # drain both the same way
            direct = capture_changes(request_for(tmp_path, "direct", max_rows=20), source=store)
            assert wire.stopped_by == "max_rows"
            wire = capture_changes(
                request_for(tmp_path, "wire", max_rows=20), source=pymongo_source
            )

    rows = published(tmp_path / "wire")
    assert rows == published(tmp_path / "direct")
    assert {row["op"] for _, row in rows} >= {"snapshot", "insert", "update", "delete"}
    aggregates = [c for c in server.commands if "aggregate" in c]
    resumed = [c["pipeline"][0]["$changeStream"] for c in aggregates[1:]]
    assert all(stage["fullDocument"] == "updateLookup" for stage in resumed)
    assert all(set(stage["resumeAfter"]) == {"_data"} for stage in resumed)
    assert "getMore" in server.names() and "killCursors" in server.names()
    finds = [c for c in server.commands if "find" in c]
    assert all(c["sort"] == {"_id": 1} for c in finds)
    assert finds[1]["filter"] == {"_id": {"$gt": ObjectId(rows[19][1]["_id"])}}


def test_snapshot_pages_across_id_types_in_mongodb_order(tmp_path, store, docdb):
    _server, pymongo_source = docdb
    store.enable_change_streams(DB, COLL)
    ids = [3, Int64(7), 2.5, "b", "a", ObjectId(), ObjectId(), True]
    store.insert_many(DB, COLL, [{"_id": i, "v": n} for n, i in enumerate(ids)])

    capture_changes(request_for(tmp_path, "wire", max_rows=2), source=pymongo_source)

    keys = [row["_id"] for _, row in published(tmp_path / "wire")]
    expected = [record_key(d["_id"]) for d in store.documents(DB, COLL)]
    assert keys == expected and len(keys) == len(ids)  # each once, numbers < strings < oids < bool


def test_expired_token_136_over_the_wire_names_the_fix_and_auto_resnapshot_recovers(
    tmp_path, docdb
):
    _server, pymongo_source = docdb
    with EmbeddedChangeStreamSource(tmp_path / "store.db", max_events=30) as small_log:
        workload = DemoWorkload(small_log, initial_documents=40)
        workload.run(0)
        capture_changes(request_for(tmp_path, "wire"), source=pymongo_source)
        workload.run(80)  # the log keeps 30 events: the saved token is gone

        with pytest.raises(ResumeTokenExpiredError) as caught:
            capture_changes(request_for(tmp_path, "wire"), source=pymongo_source)
        recovered = capture_changes(
            request_for(tmp_path, "wire", auto_resnapshot=True), source=pymongo_source
        )
        current = {record_key(d["_id"]): encode_document(d) for d in small_log.documents(DB, COLL)}

    assert caught.value.__cause__.code == 136
    assert '{"ops": {"cdc_raw_batches": {"config": {"reset": true}}}}' in str(caught.value)
    assert recovered.resnapshot_reason == "resume_token_expired" and recovered.dropped
    marker, *snapshot = recovered.batches
    zone = RawZone(LocalObjectStore(tmp_path / "wire"), DB, COLL)
    assert zone.read_manifest(marker).extra["dropped"] is True
    assert zone.read_manifest(marker).rows == 0
    after_marker = {
        row["_id"]: row["doc"] for batch, row in published(tmp_path / "wire") if batch > marker
    }
    assert after_marker == current  # the new generation is the collection, nothing twice
    assert len(after_marker) == recovered.rows and len(snapshot) >= 1


def test_disabled_change_streams_over_the_wire_raise_the_enabling_command(tmp_path, store, docdb):
    _server, pymongo_source = docdb
    store.insert_one(DB, COLL, {"n": 1})  # change streams never enabled on shop.orders

    with pytest.raises(ChangeStreamsDisabledError, match="modifyChangeStreams: 1"):
        capture_changes(request_for(tmp_path, "wire"), source=pymongo_source)


def test_quiet_collection_token_advances_once_older_than_half_the_retention(
    tmp_path, docdb, monkeypatch
):
    """A post-batch resume token (other collections moved on) is saved by an empty batch only
    when the saved token is older than half the retention window."""
    _server, pymongo_source = docdb
    now = time.time()
    with EmbeddedChangeStreamSource(tmp_path / "store.db", clock=lambda: now) as store:
        store.enable_change_streams(DB, "")  # the whole database
        store.insert_one(DB, COLL, {"n": 1})
        capture_changes(request_for(tmp_path, "wire"), source=pymongo_source)
        zone = RawZone(LocalObjectStore(tmp_path / "wire"), DB, COLL)
        saved = zone.read_checkpoint()
        store.insert_one(DB, "other", {"n": 2})  # the log moves on, shop.orders stays quiet

        soon = capture_changes(request_for(tmp_path, "wire"), source=pymongo_source)
        assert soon.batch is None and zone.read_checkpoint() == saved

        monkeypatch.setattr(time, "time", lambda: now + 2 * 3600)  # 2 h later (> 3 h / 2)
        late = capture_changes(request_for(tmp_path, "wire"), source=pymongo_source)

    manifest = zone.read_manifest(late.batch)
    assert late.idle_token_advanced and manifest.rows == 0
    assert manifest.extra["idle_token_advance"] is True
    assert manifest.state["resume_token"] != saved.state["resume_token"]


# -- scripted replies -------------------------------------------------------------------------------
@pytest.fixture
def scripted() -> Iterator[tuple[MockupDB, DocumentDBChangeSource]]:
    server = MockupDB(auto_ismaster=HELLO, verbose=False, request_timeout=10)
    server.run()
    client = MongoClient(f"{server.uri}/?directConnection=true", serverSelectionTimeoutMS=5_000)
    try:
        # A server without the split stage (DocumentDB 5.0): no buildInfo probe to script.
        yield server, DocumentDBChangeSource(client, max_await_time_ms=10, split_large_events=False)
    finally:
        client.close()
        server.stop()


def test_position_falls_back_to_operation_time_and_resumes_with_start_at_operation_time(
    scripted,
):
    server, source = scripted
    position = go(source.current_position, DB, COLL)
    opened = server.receives(OpMsg("aggregate", COLL), timeout=10)
    opened.ok(
        cursor={"id": Int64(0), "ns": f"{DB}.{COLL}", "firstBatch": []},
        operationTime=Timestamp(1_700_000_000, 7),
    )
    assert position() == {"startAtOperationTime": {"t": 1_700_000_000, "i": 7}}

    stream = go(source.watch, DB, COLL, resume_after=position(), full_document="updateLookup")
    resumed = server.receives(OpMsg("aggregate", COLL), timeout=10)
    stage = resumed.doc["pipeline"][0]["$changeStream"]
    assert stage == {
        "fullDocument": "updateLookup",
        "startAtOperationTime": Timestamp(1_700_000_000, 7),
    }
    resumed.ok(cursor={"id": Int64(0), "ns": f"{DB}.{COLL}", "firstBatch": []})
    stream().close()


def test_a_rejected_resume_token_falls_back_to_its_cluster_time(scripted):
    server, source = scripted
    token = {"_data": "82" + f"{1_700_000_000:08X}{3:08X}" + "0" * 16}
    stream = go(source.watch, DB, COLL, resume_after=token, full_document="updateLookup")

    first = server.receives(OpMsg("aggregate", COLL), timeout=10)
    assert first.doc["pipeline"][0]["$changeStream"]["resumeAfter"] == token
    first.command_err(code=260, errmsg="Invalid resume token", codeName="InvalidResumeToken")
    second = server.receives(OpMsg("aggregate", COLL), timeout=10)
    stage = second.doc["pipeline"][0]["$changeStream"]
    second.ok(cursor={"id": Int64(0), "ns": f"{DB}.{COLL}", "firstBatch": []})

    assert stage["startAtOperationTime"] == Timestamp(1_700_000_000, 3)
    assert "resumeAfter" not in stage
    stream().close()


# -- connection and credentials ---------------------------------------------------------------------
def documentdb_request(**fields) -> CaptureRequest:
    defaults = {"lake_uri": "/tmp/lake", "database": DB, "collection": COLL}
    return CaptureRequest(source_kind="documentdb", **(defaults | fields))


def test_tls_is_on_by_default_with_the_configured_ca_bundle():
    secure = client_options(
        documentdb_request(source_location="DOCDB_URI", tls_ca_file="/opt/ca.pem")
    )
    plain = client_options(documentdb_request(source_location="DOCDB_URI", tls=False))

    assert secure["tls"] is True and secure["tlsCAFile"] == "/opt/ca.pem"
    assert secure["retryWrites"] is False
    assert plain["tls"] is False and "tlsCAFile" not in plain


def test_credentials_come_from_the_secret_named_by_arn(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    secret = {"username": "capture", "password": "s3cr3t!", "host": "docdb.example", "port": 27017}
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(
            Name="docdb/capture", SecretString=json.dumps(secret | {"engine": "docdb"})
        )["ARN"]
        target, masked = connection_target(documentdb_request(secret_arn=arn))

    assert target == {
        "host": "docdb.example",
        "port": 27017,
        "username": "capture",
        "password": "s3cr3t!",
        "replicaSet": "rs0",
    }
    assert "s3cr3t!" in masked


def test_a_uri_comes_from_the_environment_variable_whose_name_the_request_carries():
    request = documentdb_request(source_location="DOCDB_URI")

    target, _ = connection_target(request, environ={"DOCDB_URI": "mongodb://u:p@h:27017/"})
    with pytest.raises(SourceConnectionError, match=r"DOCDB_URI .* is not set"):
        connection_target(request, environ={})
    assert target == "mongodb://u:p@h:27017/"


def test_a_uri_in_the_request_is_refused_without_echoing_it():
    with pytest.raises(InvalidRequestError) as caught:
        documentdb_request(source_location="mongodb://admin:hunter2@db:27017").validate()

    assert "NAME of an environment variable" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_connection_failures_never_show_the_password():
    request = documentdb_request(source_location="DOCDB_URI", tls=False)
    uri = "mongodb://capture:hunter2@127.0.0.1:9/?directConnection=true"  # nothing listens
    source = DocumentDBChangeSource.open(
        request, environ={"DOCDB_URI": uri}, serverSelectionTimeoutMS=200
    )
    try:
        with pytest.raises(SourceConnectionError) as caught:
            source.current_position(DB, COLL)
    finally:
        source.close()

    assert "hunter2" not in str(caught.value) and "capture:" not in str(caught.value)
    assert "security group" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    text = "user capture, password hunter2, uri mongodb://capture:hunter2@db:27017/"
    assert mask_credentials(text, ("hunter2", "capture")) == (
        "user ***, password ***, uri mongodb://***@db:27017/"
    )


def test_open_source_picks_the_pymongo_source_for_documentdb(monkeypatch):
    monkeypatch.setenv("DOCDB_URI", "mongodb://127.0.0.1:9/?directConnection=true")
    source = open_source(documentdb_request(source_location="DOCDB_URI", tls=False))
    try:
        assert isinstance(source, DocumentDBChangeSource)
    finally:
        source.close()


def test_the_source_audit_reads_from_a_secondary_and_capture_does_not(tmp_path, store, monkeypatch):
    """Over the wire: the audit's finds and change stream carry secondaryPreferred; capture's
    commands keep the default (primary), and the audit over pymongo matches the embedded one."""
    workload = DemoWorkload(store, initial_documents=30)
    workload.run(0)
    with embedded_backed_server(
        tmp_path / "store.db", events_per_batch=7, replica_set="rs0"
    ) as server:
        monkeypatch.setenv("DOCDB_URI", server.uri)
        lake = str(tmp_path / "lake")
        capture = CaptureRequest(
            lake_uri=lake,
            database=DB,
            collection=COLL,
            source_kind="documentdb",
            source_location="DOCDB_URI",
            tls=False,
        )
        with closing(open_source(capture)) as source:
            capture_changes(capture, source=source)
        merge_batches(MergeRequest(lake_uri=lake, database=DB, collection=COLL))
        workload.run(10)  # changes the lake has not reached: in flight
        captured = len(server.commands)

        audit = SourceAuditRequest(
            lake_uri=lake,
            database=DB,
            collection=COLL,
            source_kind="documentdb",
            source_location="DOCDB_URI",
            tls=False,
            recheck_delay_s=0,
        )
        with closing(open_source(audit, read_preference=READ_PREFERENCE)) as source:
            result = audit_source(audit, source=source)

    assert result.passed and result.in_flight > 0
    assert result.source_count == store.count_documents(DB, COLL)
    audit_reads = [c for c in server.commands[captured:] if {"find", "aggregate"} & set(c)]
    assert {"find", "aggregate"} <= {next(iter(c)) for c in audit_reads}
    assert [c.get("$readPreference") for c in audit_reads] == [
        {"mode": "secondaryPreferred"}
    ] * len(audit_reads), [c.get("$readPreference") for c in audit_reads]
    capture_reads = [c for c in server.commands[:captured] if {"find", "aggregate"} & set(c)]
    # capture keeps the driver default (primary: no $readPreference is sent)
    assert capture_reads and all(
        c.get("$readPreference", {}).get("mode") != "secondaryPreferred" for c in capture_reads
    )
