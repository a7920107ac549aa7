"""PII masking at the edge, end to end: snapshot, change stream, DMS files and SQS messages into the
raw zone, merged into Delta and loaded into DuckDB, with rules that drop ``ssn`` and hash
``email``. The clear values appear nowhere: not in any byte under the lake (raw zone, dead
letters, Delta log and data files, Parquet read back value by value), not in the warehouse (every
table, every value), not in the logs, not in the Pipes messages. Changing the rules starts a new
generation: values the old rules let through leave the current lake snapshot and the warehouse.

Expected values come from the rules' definition (``lake.masking``: the hash is
HMAC-SHA256 of the type-tagged BSON value, RFC 2104), not from the code under test.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from bson import ObjectId
from deltalake import DeltaTable

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.cdc_capture.edge_masking import MaskingByCollection
from lambda_functions.cdc_capture.handler import handler
from lambda_functions.cdc_capture.mq_ingest import ingest_messages, parse_event
from lambda_functions.cdc_capture.source_audit import audit_source
from lambda_functions.contracts import (
    CaptureRequest,
    CompactRequest,
    DmsIngestRequest,
    LoadRequest,
    MergeRequest,
    SourceAuditRequest,
)
from lambda_functions.lake import open_store
from lambda_functions.lake.extended_json import decode_document
from lambda_functions.lake.masking import hash_value
from lambda_functions.lake.masking_key import KEY_VARIABLE, MaskingKey
from lambda_functions.merge import compact_table, lake_table_location, merge_batches
from lambda_functions.warehouse_load.load import load_changes
from tests.lambda_functions.cdc_capture.test_handler import pipes_event as handler_pipes_event
from tests.lambda_functions.change_events import change_event, sqs_event

DB = "shop"
KEY_TEXT = "k3y-for-tests-only-0123456789abcdef-0123456789"
KEY = MaskingKey(KEY_TEXT.encode())
RULES = {"drop": ["ssn"], "hash": ["email"]}
# Every clear value below carries this marker, so one scan finds any of them.
CLEAR = "PIICLEAR"


def ssn(tag: str) -> str:
    return f"{CLEAR}-ssn-{tag}"


def email(tag: str) -> str:
    return f"{CLEAR}.{tag}@example.com"


def customer(_id: Any, tag: str, **more: Any) -> dict[str, Any]:
    return {"_id": _id, "name": f"name-{tag}", "ssn": ssn(tag), "email": email(tag), **more}


class FakeLambdaContext:
    function_name = "lakehouse-cdc-capture"
    memory_limit_in_mb = 1024
    aws_request_id = "00000000-0000-4000-8000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def pipes_event(request: CaptureRequest, messages: Path) -> dict[str, Any]:
    """What PipesLambdaClient sends: the request plus the two Pipes bootstrap keys."""
    asset = f"raw/{request.database}/{request.collection}"
    return handler_pipes_event(request.to_event(), messages, asset)


class Lakehouse:
    def __init__(self, root: Path):
        self.root = root
        self.lake = root / "lake"
        self.warehouse = root / "warehouse.duckdb"

    def merge_and_load(self, collection: str) -> None:
        merge_batches(MergeRequest(lake_uri=str(self.lake), database=DB, collection=collection))
        load_changes(
            LoadRequest(
                lake_uri=str(self.lake),
                database=DB,
                collection=collection,
                warehouse_location=str(self.warehouse),
            )
        )

    def current_lake_docs(self, collection: str) -> list[dict[str, Any]]:
        uri, options = lake_table_location(open_store(str(self.lake)), DB, collection)
        rows = DeltaTable(uri, storage_options=options).to_pyarrow_table().to_pylist()
        return [dict(decode_document(r["doc"])) for r in rows if r["doc"]]

    def warehouse_values(self) -> list[str]:
        """Every value of every table in the warehouse, as text."""
        values: list[str] = []
        with duckdb.connect(str(self.warehouse), read_only=True) as db:
            tables = db.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            ).fetchall()
            assert tables
            for schema, table in tables:
                for row in db.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall():
                    values.extend(str(v) for v in row)
        return values

    def warehouse_docs(self, collection: str) -> list[dict[str, Any]]:
        with duckdb.connect(str(self.warehouse), read_only=True) as db:
            rows = db.execute(f"SELECT doc::VARCHAR FROM analytics.{collection}").fetchall()
        return [dict(decode_document(doc)) for (doc,) in rows]

    def lake_leaks(self, needle: str) -> list[str]:
        """Files under the lake holding ``needle``: raw bytes of every file (raw zone, dead
        letters, Delta log), the exact BSON a dead letter keeps as base64, and every value of every Parquet file read back (Parquet pages may
        be compressed, so a byte scan alone could miss a value)."""
        leaks = []
        for path in self.lake.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if needle.encode() in data:
                leaks.append(f"{path} (bytes)")
            for encoded in re.findall(rb'"\$bsonBase64": "([A-Za-z0-9+/=]+)"', data):
                if needle.encode() in base64.b64decode(encoded):  # a dead letter's exact BSON
                    leaks.append(f"{path} ($bsonBase64)")
            if path.suffix == ".parquet":
                text = json.dumps(pq.read_table(path).to_pylist(), default=str)
                if needle in text:
                    leaks.append(f"{path} (values)")
        return leaks


def dms_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def dms_doc(document: dict[str, Any]) -> str:
    return json.dumps(document)


@pytest.fixture
def house(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lakehouse:
    monkeypatch.setenv(KEY_VARIABLE, KEY_TEXT)  # the function's key (local: an env variable)
    return Lakehouse(tmp_path)


def test_clear_values_appear_nowhere_on_any_input_path(house, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    messages_file = tmp_path / "pipes-messages.jsonl"
    bad_utf8 = b"\xff".decode("utf-8", "surrogateescape")

    # -- snapshot + change stream, through the Lambda handler (Pipes messages to a file) ---------
    capture = CaptureRequest(
        lake_uri=str(house.lake),
        database=DB,
        collection="customers",
        source_location=str(tmp_path / "source.db"),
        masking=RULES,
    )
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        source.enable_change_streams(DB, "customers")
        for n in range(3):
            source.insert_one(DB, "customers", customer(n, f"snap{n}", card={"ssn": "nested-ok"}))
        # a poison document (a string that is not UTF-8): a dead letter, masked
        source.insert_one(DB, "customers", customer(ObjectId(), "poison", note="x" + bad_utf8))
    handler(pipes_event(capture, messages_file), FakeLambdaContext())
    with EmbeddedChangeStreamSource(tmp_path / "source.db") as source:
        source.update_one(
            DB, "customers", {"_id": 1}, {"$set": {"email": email("upd1"), "ssn": ssn("upd1")}}
        )
        source.insert_one(DB, "customers", customer(10, "ins10"))
        source.replace_one(DB, "customers", {"_id": 2}, customer(2, "repl2"))
    handler(pipes_event(capture, messages_file), FakeLambdaContext())
    house.merge_and_load("customers")

    # -- DMS files: a full load, a CDC file, and a row whose _doc does not decode -----------------
    folder = tmp_path / "dms" / DB / "dms_customers"
    folder.mkdir(parents=True)
    dms_csv(
        folder / "LOAD00000001.csv",
        [
            ["d1", dms_doc(customer("d1", "dms1"))],
            ["d2", dms_doc(customer("d2", "dms2"))],
            # a bad type wrapper quoting the clear value: the reason would quote it too
            ["d3", dms_doc(customer("d3", "dms3") | {"email": {"$oid": email("dmsbad")}})],
        ],
    )
    dms_csv(
        folder / "20240105-101500123.csv",
        [
            ["Op", "dms_commit_ts", "_id", "_doc"],
            ["U", "2024-01-05 10:14:30.250000", "d1", dms_doc(customer("d1", "dmsupd"))],
        ],
    )
    dms = DmsIngestRequest(
        lake_uri=str(house.lake),
        database=DB,
        collection="dms_customers",
        dms_uri=str(folder),
        masking=RULES,
    )
    assert ingest_dms_files(dms, on_progress=logging.getLogger("test.dms").info).quarantined == 1
    house.merge_and_load("dms_customers")

    # -- SQS messages: inserts, an update with updatedFields, a bad message, an unroutable one ---
    ns = {"coll": "mq_customers"}
    insert = change_event("insert", "m1", 100, customer("m1", "mq1"), coll=ns["coll"])
    update = change_event("update", "m1", 101, customer("m1", "mqupd"), coll=ns["coll"])
    update["updateDescription"] = {
        "updatedFields": {"email": email("mqupd"), "ssn": ssn("mqupd")},
        "removedFields": [],
    }
    bad = change_event("insert", "m2", 102, None, coll=ns["coll"])  # no fullDocument
    bad["fullDocumentBeforeChange"] = customer("m2", "mqbad")
    delivery = sqs_event(insert, update, bad)
    delivery["Records"].append(
        {  # JSON with a bad wrapper quoting a clear value, routed by its ns
            "messageId": "bad-wrapper",
            "body": json.dumps(
                {
                    "operationType": "insert",
                    "ns": {"db": DB, "coll": ns["coll"]},
                    "documentKey": {"_id": "m3"},
                    "fullDocument": {"_id": "m3", "email": {"$oid": email("mqwrapper")}},
                }
            ),
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:111122223333:shop-customers",
        }
    )
    delivery["Records"].append(
        {  # no ns and no default collection: unroutable, kept without its payload
            "messageId": "unroutable",
            "body": json.dumps({"operationType": "insert", "fullDocument": customer(9, "lost")}),
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:111122223333:shop-customers",
        }
    )
    rules = json.dumps({f"{DB}.mq_customers": RULES})
    masking = MaskingByCollection({"LAKEHOUSE_MASKING": rules, KEY_VARIABLE: KEY_TEXT})
    _, messages = parse_event(delivery)
    result = ingest_messages(messages, open_store(str(house.lake)), masking=masking)
    logging.getLogger("test.mq").info("mq result %s", result.response("aws:sqs"))
    assert result.quarantined == 3  # the bad event, the bad wrapper, the unroutable message
    # not returned to SQS, whose redrive policy would keep them in clear in the queue's DLQ
    assert result.failed_message_ids == [] and len(result.withheld_failures) == 3
    house.merge_and_load("mq_customers")

    # -- what was kept, masked as the rules say --------------------------------------------------
    by_id = {d["_id"]: d for d in house.warehouse_docs("customers")}
    assert by_id[1]["email"] == hash_value(email("upd1"), KEY)
    assert by_id[2]["email"] == hash_value(email("repl2"), KEY)
    assert by_id[10]["email"] == hash_value(email("ins10"), KEY)
    assert all("ssn" not in d for d in by_id.values())
    assert by_id[0]["card"] == {"ssn": "nested-ok"}  # only the top-level path is named
    dms_docs = {d["_id"]: d for d in house.warehouse_docs("dms_customers")}
    assert dms_docs["d1"] == {
        "_id": "d1",
        "name": "name-dmsupd",
        "email": hash_value(email("dmsupd"), KEY),
    }
    (mq_doc,) = house.warehouse_docs("mq_customers")
    assert mq_doc == {"_id": "m1", "name": "name-mqupd", "email": hash_value(email("mqupd"), KEY)}
    quarantine = [p for p in house.lake.rglob("*") if "quarantine" in str(p) and p.is_file()]
    assert len(quarantine) >= 4  # capture, DMS, MQ (collection), MQ (unroutable)
    letters = [json.loads(line) for p in quarantine for line in p.read_text().splitlines()]
    assert any("<masked>" in letter["reason"] for letter in letters)  # DMS: the $oid quoted it
    assert any("$bsonBase64" in json.dumps(letter) for letter in letters)  # scanned decoded

    # -- and the clear values nowhere -------------------------------------------------------------
    assert house.lake_leaks(CLEAR) == []
    assert [v for v in house.warehouse_values() if CLEAR in v] == []
    assert CLEAR.encode() not in house.warehouse.read_bytes()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    out, err = capsys.readouterr()
    assert logged and CLEAR not in logged
    assert CLEAR not in out and CLEAR not in err
    pipes = messages_file.read_text()
    assert "report_asset_materialization" in pipes and CLEAR not in pipes
    assert '"masking_rules_fingerprint"' in pipes  # Dagster sees which rules masked the run
    assert KEY_TEXT not in pipes and not house.lake_leaks(KEY_TEXT)  # nor the key


def test_a_rules_change_starts_a_new_generation_and_old_values_leave_the_table(house, tmp_path):
    source_file = tmp_path / "source.db"
    capture = CaptureRequest(
        lake_uri=str(house.lake),
        database=DB,
        collection="customers",
        source_location=str(source_file),
        masking={"drop": ["ssn"]},
    )
    with EmbeddedChangeStreamSource(source_file) as source:
        source.enable_change_streams(DB, "customers")
        source.insert_one(DB, "customers", customer(1, "a", phone=f"{CLEAR}-phone-1"))
        first = capture_changes(capture, source=source)
        source.insert_one(DB, "customers", customer(2, "b", phone=f"{CLEAR}-phone-2"))
        capture_changes(capture, source=source)
        house.merge_and_load("customers")
        assert "-phone-" in json.dumps(house.warehouse_docs("customers"), default=str)

        stricter = CaptureRequest(**{**capture.__dict__, "masking": {"drop": ["ssn", "phone"]}})
        changed = capture_changes(stricter, source=source)
        again = capture_changes(stricter, source=source)
    house.merge_and_load("customers")

    shared = SourceAuditRequest.__dataclass_fields__
    audit = SourceAuditRequest(
        **{k: v for k, v in stricter.__dict__.items() if k in shared}, recheck_delay_s=0
    )
    with EmbeddedChangeStreamSource(source_file) as source:  # compares masked with masked
        assert audit_source(audit, source=source, sleep=lambda _s: None).passed
        unmasked = dataclasses.replace(audit, masking={})
        assert not audit_source(unmasked, source=source, sleep=lambda _s: None).passed
    assert first.resnapshot_reason is None and first.batches == (1,)  # no empty batch after it
    assert changed.resnapshot_reason == "masking_rules_changed" and changed.dropped
    assert again.resnapshot_reason is None and again.batch is None  # the same rules: no change
    for docs in (house.current_lake_docs("customers"), house.warehouse_docs("customers")):
        assert sorted(d["_id"] for d in docs) == [1, 2]
        assert all(set(d) == {"_id", "name", "email"} for d in docs)
        assert "-phone-" not in json.dumps(docs, default=str)
    # Older Delta versions keep the old values for time travel until a vacuum removes them:
    # README, "PII masking" (LAKEHOUSE_VACUUM_RETENTION_HOURS=0 purges them now).
    table_dir = Path(lake_table_location(open_store(str(house.lake)), DB, "customers")[0])
    data = [p for p in table_dir.rglob("*.parquet")]
    assert any("-phone-" in json.dumps(pq.read_table(p).to_pylist(), default=str) for p in data)
    compact_table(
        CompactRequest(
            lake_uri=str(house.lake),
            database=DB,
            collection="customers",
            cold_after_hours=0,
            z_order=False,
            vacuum_retention_hours=0,
            tombstone_retention_hours=0,
        )
    )
    for path in (p for p in table_dir.rglob("*") if p.is_file()):
        assert b"-phone-" not in path.read_bytes(), path
        if path.suffix == ".parquet":
            assert "-phone-" not in json.dumps(pq.read_table(path).to_pylist(), default=str)
    manifests = [
        json.loads(p.read_text())
        for p in sorted((house.lake / "raw/shop/customers/manifests").glob("*.json"))
    ]
    masked_with = [m["extra"]["masking"] for m in manifests if "masking" in m["extra"]]
    assert {m["rules_fingerprint"] for m in masked_with} == {
        m["state"]["masking_fingerprint"] for m in manifests
    }
    assert len({m["rules_fingerprint"] for m in masked_with}) == 2  # the old and the new rules
    assert {m["key_id"] for m in masked_with} == {None}  # nothing hashed: no key named


def test_a_rules_change_for_dms_reads_every_file_again_as_a_new_generation(house, tmp_path):
    folder = tmp_path / "dms" / DB / "people"
    folder.mkdir(parents=True)
    dms_csv(folder / "LOAD00000001.csv", [["p1", dms_doc(customer("p1", "p1"))]])
    request = DmsIngestRequest(
        lake_uri=str(house.lake), database=DB, collection="people", dms_uri=str(folder)
    )
    ingest_dms_files(request)  # no rules: clear values (as configured)
    house.merge_and_load("people")
    assert CLEAR in json.dumps(house.warehouse_docs("people"), default=str)

    masked = ingest_dms_files(DmsIngestRequest(**{**request.__dict__, "masking": RULES}))
    house.merge_and_load("people")

    assert masked.masking_rules_changed and masked.files  # the full load, read again
    (doc,) = house.warehouse_docs("people")
    assert doc == {"_id": "p1", "name": "name-p1", "email": hash_value(email("p1"), KEY)}
    assert CLEAR not in json.dumps(house.current_lake_docs("people"), default=str)
