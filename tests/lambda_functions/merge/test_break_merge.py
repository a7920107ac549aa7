"""Inputs of the kinds issue 10 names that still broke the merge side (found by adversarial review).

Expected values come from the sources' documented semantics, never from the code:
- MongoDB orders a collection's changes by ``clusterTime``; the latest change is the document's
  state, and a ``drop`` removes the collection
  (https://www.mongodb.com/docs/manual/reference/change-events/).
- AWS DMS CDC rows carry ``Op`` I/U/D and a commit time; late CDC files are delivered after newer
  ones (AWS DMS user guide, "Using Amazon S3 as a target"); a key-only delete row carries the
  bare ``_id`` value.
"""

from __future__ import annotations

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from lambda_functions.cdc_capture.dms_ingest import ingest_dms_files
from lambda_functions.contracts import DmsIngestRequest, MergeRequest
from lambda_functions.lake import open_store
from lambda_functions.lake.record_key import record_key
from lambda_functions.merge.merge import lake_table_location, merge_batches
from tests.lambda_functions.merge.tables import stored_docs, tombstones

DB, COLL = "shop", "orders"


def ext(value) -> str:
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if "," in text or '"' in text else text


def test_dms_key_only_delete_hits_an_older_insert_of_the_same_commit_delivered_after_it(tmp_path):
    """A DMS CDC file with ``I "42"`` at 10:14 lands after the file with the key-only delete
    ``D 42`` at 10:15 (late CDC file); both are merged in one commit. By commit time the insert
    comes first, so the delete means the string ``"42"`` (the only record with that bare value
    the lake ever sees) and the document is gone. The delete must be attributed by position,
    not by the order the files were delivered in."""
    folder = tmp_path / "dms" / DB / COLL
    folder.mkdir(parents=True)
    request = DmsIngestRequest(
        lake_uri=str(tmp_path / "lake"), database=DB, collection=COLL, dms_uri=str(folder)
    )
    (folder / "20240105-101500123.csv").write_text("D,2024-01-05 10:15:00.000000,42,\n")
    ingest_dms_files(request)
    doc = ext({"_id": "42", "n": 1})
    (folder / "20240105-101400000.csv").write_text(
        f"I,2024-01-05 10:14:00.000000,42,{csv_field(doc)}\n"
    )
    ingest_dms_files(request)

    result = merge_batches(MergeRequest(lake_uri=request.lake_uri, database=DB, collection=COLL))

    uri, options = lake_table_location(open_store(request.lake_uri), DB, COLL)
    assert stored_docs(uri, options) == {}
    assert record_key("42") in tombstones(uri, options)
    assert result.table_rows == 0
