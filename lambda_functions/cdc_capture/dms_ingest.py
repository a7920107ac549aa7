"""AWS DMS output in S3 (DocumentDB source, document mode) into raw-zone batches.

DMS writes, per collection folder (``dms_uri``): full-load files ``LOAD00000001.csv`` (hex
counter; ``.parquet`` with ``DataFormat=parquet``; ``LOAD_<segment>_<n>`` with parallel load) and
CDC files named by time (``20240105-101500123.csv``), possibly in date folders. Document mode
gives two data columns, ``_id`` and ``_doc`` (the document as JSON). CDC rows start with ``Op``
(I/U/D); full-load rows have no ``Op`` unless ``IncludeOpForFullLoad``; ``TimestampColumnName``
adds a ``yyyy-MM-dd HH:mm:ss.SSSSSS`` column (the commit time for CDC). CSV files may have a
header (``AddColumnName``) or not: without one the layout is read from the field count and values
(``[Op,] [timestamp,] _id, _doc``); ``.csv.gz`` is read too. Fields are split at the endpoint's
``CsvDelimiter`` (``request.csv_delimiter``, DMS's default ``,``); rows end at ``\n`` (DMS's
default ``CsvRowDelimiter``; ``\r\n`` is read too). A row that does not split into ``_id`` and a
JSON ``_doc`` with that delimiter is a dead letter naming the delimiter it seems to use and the
setting to change (``LAKEHOUSE_DMS_CSV_DELIMITER``).

Rows:
- full-load rows are ``snapshot`` rows at ``pos`` 0, so every CDC change (DMS applies the changes
  cached during the load after it) orders after them;
- CDC rows are ``insert``/``update``/``delete`` at the commit time's ``pos`` (see ``positions``:
  ``(seconds << 32) | (microseconds << 12)``), or, without a timestamp column, the file name's
  time; rows of one file keep their order through ``seq``;
- ``_doc`` (MongoDB extended JSON) is re-encoded as canonical extended JSON like every input;
  a row that cannot be read is a dead letter with its file, line and reason.

Never twice, never skipped: full-load files are processed before CDC files, CDC files in name
(= time) order. What has been ingested is a bookmark written with each batch, before its manifest
(``_dms/bookmark-<batch>-<uuid>.json``, a name unique to the attempt; the manifest's state points
to it, so a concurrent ingest can never overwrite it): the full-load files done, the
most recent ``RECENT_CDC_FILES`` CDC files done plus the name below which all are done, and the
file in progress with its row offset (a file larger than a batch spans batches). A crash before
the manifest publishes nothing and the next run does the same files again; after it, the bookmark
is already there. A late CDC file (older name than files already ingested) is still picked up
while it is newer than the oldest remembered one. New full-load files after CDC has begun mean DMS
reloaded the table: a batch marked ``dropped`` (a new table generation) comes first.

PII masking (``request.masking``, ``edge_masking``): each ``_doc`` is masked once decoded, dead
letters too. The bookmark keeps the rules' fingerprint; on a change, a ``dropped`` batch (a new
generation) comes first and every file in the folder is read again (keep the full-load files).

Limits: each file is read whole into memory: keep DMS's ``MaxFileSize`` (full load) and
``CdcMaxBatchInterval``/``CdcMinFileSize`` (CDC) well under the function's memory (e.g. 64 MB).
A reload that rewrites ``LOAD`` files under the same names is not detected: use ``reset``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq

from lambda_functions.cdc_capture.batches import (
    BatchRows,
    Malformed,
    document_json,
    publish_with_ledger,
    read_ledger,
)
from lambda_functions.cdc_capture.edge_masking import EdgeMasking, masking_of_request
from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.cdc_capture.positions import commit_position, millis
from lambda_functions.contracts import DmsIngestRequest
from lambda_functions.lake.extended_json import decode_document
from lambda_functions.lake.raw_zone import Checkpoint, RawZone
from lambda_functions.lake.record_key import KEY_CANDIDATES, bare_key_candidates, record_key
from lambda_functions.lake.store import ObjectStore, open_store
from lambda_functions.pipes import typed

RECENT_CDC_FILES = 1_000
MASKING_BOOKMARK_KEY = "masking_fingerprint"  # the rules the bookmarked files were read under
MAX_CSV_FIELD_CHARS = 1 << 30  # a _doc field: MongoDB documents reach 16 MB of BSON
MAX_PUBLISH_ATTEMPTS = 5  # rebuilds on top of a concurrent ingest that published first
DEADLINE_RESERVE_S = 10.0  # stop taking new files with less time than this left
OPS = {"I": "insert", "U": "update", "D": "delete"}
_LOAD = re.compile(r"^LOAD[0-9A-F_]*\.(csv|csv\.gz|parquet)$")
_CDC = re.compile(r"^(\d{8})-(\d{6})(\d*)\.(csv|csv\.gz|parquet)$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?$")


@dataclass(frozen=True)
class DmsFile:
    key: str  # relative to the DMS store
    kind: str  # "load" | "cdc"
    name: str  # the base name (CDC: its time order)


@dataclass
class DmsIngestResult:
    namespace: str
    batches: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # files finished by this run
    rows_by_op: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    reloaded: bool = False
    masking_rules_changed: bool = False  # a new generation: every file is read again
    pending_files: int = 0  # new files left for the next run (budget or deadline)
    max_event_time: datetime | None = None
    duration_seconds: float = 0.0

    def metadata(self) -> dict[str, dict[str, Any]]:
        lag = (
            max(0.0, time.time() - self.max_event_time.timestamp())
            if self.max_event_time and self.pending_files
            else 0.0
        )
        return {
            "dagster/row_count": typed(sum(self.rows_by_op.values()), "int"),
            "batches": typed(self.batches, "json"),
            "files": typed(self.files, "json"),
            "rows_by_op": typed(dict(self.rows_by_op), "json"),
            "quarantined": typed(self.quarantined, "int"),
            "reloaded": typed(self.reloaded, "bool"),
            "masking_rules_changed": typed(self.masking_rules_changed, "bool"),
            "pending_files": typed(self.pending_files, "int"),
            "cdc_lag_seconds": typed(round(lag, 3), "float"),
            "duration_seconds": typed(round(self.duration_seconds, 3), "float"),
        }


def classify(key: str) -> DmsFile | None:
    """A DMS data file, or ``None`` for anything else under the prefix."""
    name = key.rsplit("/", 1)[-1]
    if _LOAD.match(name):
        return DmsFile(key, "load", name)
    if _CDC.match(name):
        return DmsFile(key, "cdc", name)
    return None


def ingest_dms_files(
    request: DmsIngestRequest,
    *,
    store: ObjectStore | None = None,
    dms_store: ObjectStore | None = None,
    deadline: Callable[[], float] | None = None,
    on_progress: Callable[[str], None] | None = None,
    masking: EdgeMasking | None = None,
) -> DmsIngestResult:
    """Publish the rows of DMS files not ingested yet, in order; see the module docstring.

    Reads what AWS DMS wrote with an S3 target endpoint in document mode (AWS DMS User Guide,
    "Using Amazon S3 as a target for AWS Database Migration Service" and "Using Amazon
    DocumentDB as a source for AWS DMS": ``_id``/``_doc`` columns, ``Op``, ``TimestampColumnName``).

    Safe to run concurrently for one collection (a sensor and a manual run): when another
    ingest publishes the next batch number first, this one drops what it had not published
    and starts again on top of that batch (whose bookmark already covers the other ingest's
    files), up to ``MAX_PUBLISH_ATTEMPTS`` times. Every file's rows land in exactly one batch.

    Args:
        request: the collection (``database``, ``collection``, ``lake_uri``), the DMS folder
            (``dms_uri``), ``csv_delimiter`` and the per-batch limits.
        store: the lake's object store (default: opened from ``request.lake_uri``).
        dms_store: the store DMS writes to (default: opened from ``request.dms_uri``).
        deadline: returns the seconds the caller has left (a Lambda's remaining time); no new
            file is started when little time remains, the rest waits for the next run.
        on_progress: told one line per published batch and at the end.
        masking: the collection's masking (default: from ``request.masking`` and
            ``request.masking_key_secret_arn`` / ``LAKEHOUSE_MASKING_KEY``).

    Returns:
        A ``DmsIngestResult``: files ingested, batches published (ascending), rows by op, dead
        letters, whether DMS reloaded the table, files still pending, lag and duration (seconds).

    Guarantees:
        Atomic, resumable batches: data and the bookmark first, the manifest last (an exclusive
        create), the checkpoint after it; a crash republishes nothing twice and skips no file
        (full-load files first, then CDC files in name order).

    Raises:
        ConcurrentCaptureError: another ingest won the race ``MAX_PUBLISH_ATTEMPTS`` times
            (transient: retry).
        LakeBucketMissingError: the lake's (or the DMS) bucket does not exist (terminal).
        MaskingRulesError, MaskingKeyError: the masking rules are malformed, or they hash
            fields and the key is missing or unreadable (terminal; nothing is read).
    """
    started = time.monotonic()
    say = on_progress or (lambda _message: None)
    zone = RawZone.for_request(request, store)
    if masking is None:
        masking = masking_of_request(
            zone.namespace, request.masking, key_secret_arn=request.masking_key_secret_arn
        )
    source = dms_store or open_store(request.dms_uri)
    result = DmsIngestResult(zone.namespace)
    for attempt in range(1, MAX_PUBLISH_ATTEMPTS + 1):
        try:
            _ingest_pending(request, zone, source, result, deadline, say, masking)
            break
        except ConcurrentCaptureError:
            if attempt == MAX_PUBLISH_ATTEMPTS:
                raise
            say(f"{zone.namespace}: another ingest published first; continuing on top of it")
    result.duration_seconds = time.monotonic() - started
    say(f"{zone.namespace}: {len(result.files)} DMS files ingested in batches {result.batches}")
    return result


def _ingest_pending(
    request: DmsIngestRequest,
    zone: RawZone,
    source: ObjectStore,
    result: DmsIngestResult,
    deadline: Callable[[], float] | None,
    say: Callable[[str], None],
    masking: EdgeMasking,
) -> None:
    """One attempt: from the newest batch's bookmark, publish the pending files. Only what
    was published reaches ``result`` (files when the batch finishing them is published)."""
    checkpoint = zone.read_checkpoint(on_repair=say)
    bookmark = _read_bookmark(zone, checkpoint)
    progress = {k: v for k, v in bookmark.items() if k != MASKING_BOOKMARK_KEY}
    read_before = progress != _empty_bookmark()
    if bookmark.get(MASKING_BOOKMARK_KEY) != masking.fingerprint and read_before:
        say(f"{zone.namespace}: the masking rules changed: a new generation reads every file again")
        bookmark = _with_fingerprint(_empty_bookmark(), masking)
        extra = {"dropped": True, "reason": "masking_rules_changed"}
        checkpoint = _publish(zone, BatchRows(), checkpoint, bookmark, extra, result)
        result.masking_rules_changed = True
    files = _pending(source, bookmark)
    new_loads = [f for f in files if f.kind == "load"]
    if new_loads and bookmark["cdc_started"]:
        say(f"{zone.namespace}: new full-load files after CDC began: DMS reloaded the table")
        bookmark = _with_fingerprint(_empty_bookmark(), masking)
        checkpoint = _publish(zone, BatchRows(), checkpoint, bookmark, {"dropped": True}, result)
        result.reloaded = True
    bookmark = _with_fingerprint(bookmark, masking)
    rows = BatchRows(masking)
    files_in_batch: list[str] = []
    result.pending_files = 0

    def full() -> bool:
        return rows.seen >= request.max_rows or rows.bytes >= request.max_bytes

    def flush() -> None:
        nonlocal checkpoint, rows, files_in_batch
        checkpoint = _publish(zone, rows, checkpoint, bookmark, {}, result)
        result.files.extend(files_in_batch)
        rows, files_in_batch = BatchRows(masking), []

    for position, dms_file in enumerate(files):
        if deadline is not None and deadline() < DEADLINE_RESERVE_S:
            result.pending_files = len(files) - position
            break
        current = bookmark["current"]
        offset = current["rows_done"] if current["key"] == dms_file.key else 0
        try:
            file_rows = list(_file_rows(source, dms_file, request.csv_delimiter))
        except Exception as error:  # unreadable file: a dead letter, never skipped silently
            rows.quarantine(f"{dms_file.key} cannot be read: {error}", {"key": dms_file.key})
            file_rows = []
        for index in range(offset, len(file_rows)):
            _add_row(rows, dms_file, index, file_rows[index])
            if full() and index + 1 < len(file_rows):
                _advance(bookmark, dms_file, index + 1, done=False)
                flush()
        _advance(bookmark, dms_file, len(file_rows), done=True)
        files_in_batch.append(dms_file.key)
        if full():
            flush()
    if files_in_batch:
        flush()


# -- files ----------------------------------------------------------------------------------------
def _pending(source: ObjectStore, bookmark: dict[str, Any]) -> list[DmsFile]:
    """New files in processing order: full-load files by key, then CDC files by name."""
    loads, cdc = [], []
    done_loads, recent = set(bookmark["loads_done"]), set(bookmark["cdc_recent"])
    floor = bookmark["cdc_floor"]
    for key in source.list(""):
        dms_file = classify(key)
        if dms_file is None:
            continue
        if dms_file.kind == "load" and key not in done_loads:
            loads.append(dms_file)
        elif (
            dms_file.kind == "cdc"
            and key not in recent
            and (floor is None or dms_file.name > floor)
        ):
            cdc.append(dms_file)
    return sorted(loads, key=lambda f: f.key) + sorted(cdc, key=lambda f: (f.name, f.key))


def _file_rows(
    source: ObjectStore, dms_file: DmsFile, delimiter: str = ","
) -> Iterator[dict[str, Any]]:
    """The rows of one file as dicts with ``Op``, ``_ts``, ``_id``, ``_doc`` (``None`` if absent),
    and ``_problem`` when a CSV row does not split into ``_id`` and a JSON ``_doc`` at
    ``delimiter``."""
    data = source.get(dms_file.key)
    if dms_file.name.endswith(".gz"):
        data = gzip.decompress(data)
    if dms_file.name.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        names = table.column_names
        stamp = next((n for n in names if n not in ("Op", "_id", "_doc")), None)
        for record in table.to_pylist():
            value = record.get(stamp) if stamp else None
            yield {
                "Op": record.get("Op"),
                "_ts": value.isoformat(sep=" ") if isinstance(value, datetime) else value,
                "_id": record.get("_id"),
                "_doc": record.get("_doc"),
            }
        return
    # A _doc holds a whole document (up to 16 MB of BSON, more as JSON): past the csv module's
    # default field limit (128 KB), which would fail the whole file. Bytes that are not UTF-8
    # are kept as surrogate escapes, so only the row holding them is quarantined.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_FIELD_CHARS))
    text = data.decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    for line in reader:
        if not line:
            continue
        if header is None and "_id" in line and "_doc" in line:
            header = line  # AddColumnName=true
            continue
        row = _csv_row(line, header)
        doc = row.get("_doc")
        if len(line) < 2 or (doc and not doc.lstrip().startswith("{")):
            row["_problem"] = _delimiter_problem(line, delimiter)
        yield row


def _delimiter_problem(line: list[str], delimiter: str) -> str:
    """Why a CSV row did not split into ``_id`` and ``_doc``: the delimiter, most likely."""
    text = delimiter.join(line)
    before_document = text[: text.find("{")] if "{" in text else text
    found = [c for c in (",", ";", "|", "\t", "^") if c != delimiter and c in before_document]
    seen = f" (found {found[0]!r} between its leading fields)" if found else ""
    return (
        f"the row does not parse with CsvDelimiter {delimiter!r}{seen}: it gave {len(line)} "
        "field(s) and no JSON _doc, where document mode writes [Op,] [timestamp,] _id, _doc; "
        "set LAKEHOUSE_DMS_CSV_DELIMITER (DmsIngestRequest.csv_delimiter) to the DMS S3 "
        "endpoint's CsvDelimiter"
    )


def _csv_row(line: list[str], header: list[str] | None) -> dict[str, Any]:
    if header is not None:
        named = dict(zip(header, line, strict=False))
        stamp = next((n for n in header if n not in ("Op", "_id", "_doc")), None)
        return {
            "Op": named.get("Op"),
            "_ts": named.get(stamp) if stamp else None,
            "_id": named.get("_id"),
            "_doc": named.get("_doc"),
        }
    *leading, _id, doc = line if len(line) >= 2 else ["", "", ""]
    op = leading[0].strip() if leading and leading[0].strip() in OPS else None
    stamps = [v for v in leading if _TIMESTAMP.match(v)]
    return {"Op": op, "_ts": stamps[0] if stamps else None, "_id": _id, "_doc": doc}


def _add_row(rows: BatchRows, dms_file: DmsFile, index: int, row: dict[str, Any]) -> None:
    where = f"{dms_file.key} row {index + 1}"
    try:
        if row.get("_problem"):
            raise Malformed(row["_problem"])
        moment = _moment(row.get("_ts"), dms_file)
        if dms_file.kind == "load":
            op, pos = "snapshot", 0
        else:
            op = OPS.get(str(row.get("Op") or "").strip())
            if op is None:
                raise Malformed(f"Op {row.get('Op')!r} is not I, U or D")
            try:
                pos = commit_position(moment)
            except ValueError as error:
                raise Malformed(f"its commit time cannot order it: {error}") from None
        time_ms = millis(moment)
        if op == "delete":
            key, candidates = _delete_key(row)
            rows.add(key, op, pos, time_ms, candidates)
            return
        text = row.get("_doc")
        if not text:
            raise Malformed("_doc is empty (document mode writes the whole document)")
        try:
            document = decode_document(text)
        except Exception as error:
            raise Malformed(f"_doc is not extended JSON: {error}") from error
        key, doc = document_json(rows.mask_document(document))  # masked before it is a row
        rows.add(key, op, pos, time_ms, doc)
    except Malformed as problem:
        kept = {k: v for k, v in row.items() if v is not None and k != "_problem"}
        rows.quarantine(f"{where}: {problem}", kept)


def _delete_key(row: dict[str, Any]) -> tuple[str, str | None]:
    """The key of a delete row, and the ``doc`` to store with it: ``None``, or for a key-only
    row whose ``_id`` is a bare value (its type is not written) ``{"$keyCandidates": [...]}``
    with every key it may be (``record_key.bare_key_candidates``), which the merge resolves
    against the keys the table holds."""
    text = row.get("_doc")
    if text:
        try:
            document = decode_document(text)
            if isinstance(document, dict) and "_id" in document:
                return record_key(document["_id"]), None
        except Exception:
            pass
    raw = row.get("_id")
    if raw is None or raw == "":
        raise Malformed("delete without _id")
    raw = str(raw)
    candidates = bare_key_candidates(raw)
    if raw.startswith("{"):  # extended JSON of the _id, or a string _id that starts with "{"
        try:
            typed_key = record_key(decode_document(raw))
        except Exception:
            typed_key = None
        if typed_key is not None:
            candidates = [typed_key, *(c for c in candidates if c != typed_key)]
    if not candidates:
        raise Malformed(f"_id {raw!r} cannot be a record key (e.g. it is not valid UTF-8)")
    if len(candidates) == 1:
        return candidates[0], None
    return candidates[0], json.dumps({KEY_CANDIDATES: candidates}, ensure_ascii=False)


def _moment(stamp: Any, dms_file: DmsFile) -> datetime:
    """The row's commit time: the timestamp column, else the CDC file name's time, else now."""
    if isinstance(stamp, str) and stamp:
        try:
            return datetime.fromisoformat(stamp).replace(tzinfo=UTC)
        except ValueError as error:
            raise Malformed(f"timestamp {stamp!r} is not yyyy-MM-dd HH:mm:ss.SSSSSS") from error
    match = _CDC.match(dms_file.name)
    if match:
        day, clock, fraction = match.group(1), match.group(2), (match.group(3) + "000000")[:6]
        return datetime.strptime(f"{day}{clock}{fraction}", "%Y%m%d%H%M%S%f").replace(tzinfo=UTC)
    return datetime.now(UTC)


# -- bookmark ---------------------------------------------------------------------------------------
def _empty_bookmark() -> dict[str, Any]:
    return {
        "loads_done": [],
        "cdc_recent": [],
        "cdc_floor": None,
        "cdc_started": False,
        "current": {"key": None, "rows_done": 0},
    }


def _with_fingerprint(bookmark: dict[str, Any], masking: EdgeMasking) -> dict[str, Any]:
    """The bookmark naming the masking its files are read under (no key: no rules)."""
    bookmark = {k: v for k, v in bookmark.items() if k != MASKING_BOOKMARK_KEY}
    if masking.fingerprint is not None:
        bookmark[MASKING_BOOKMARK_KEY] = masking.fingerprint
    return bookmark


def _read_bookmark(zone: RawZone, checkpoint: Checkpoint) -> dict[str, Any]:
    bookmark = read_ledger(zone, checkpoint, input_name="dms", ledger="bookmark")
    return bookmark if bookmark is not None else _empty_bookmark()


def _advance(bookmark: dict[str, Any], dms_file: DmsFile, rows_done: int, done: bool) -> None:
    if not done:
        bookmark["current"] = {"key": dms_file.key, "rows_done": rows_done}
        return
    bookmark["current"] = {"key": None, "rows_done": 0}
    if dms_file.kind == "load":
        bookmark["loads_done"].append(dms_file.key)
        return
    bookmark["cdc_started"] = True
    recent = sorted(
        [*bookmark["cdc_recent"], dms_file.key], key=lambda k: (k.rsplit("/", 1)[-1], k)
    )
    if len(recent) > RECENT_CDC_FILES:
        dropped, recent = recent[:-RECENT_CDC_FILES], recent[-RECENT_CDC_FILES:]
        bookmark["cdc_floor"] = max(
            [bookmark["cdc_floor"] or "", *(k.rsplit("/", 1)[-1] for k in dropped)]
        )
    bookmark["cdc_recent"] = recent


def _publish(
    zone: RawZone,
    rows: BatchRows,
    checkpoint: Checkpoint,
    bookmark: dict[str, Any],
    extra: dict[str, Any],
    result: DmsIngestResult,
) -> Checkpoint:
    manifest = publish_with_ledger(
        zone, rows, checkpoint, extra, input_name="dms", ledger="bookmark", value=bookmark
    )
    result.batches.append(manifest.batch)
    result.rows_by_op.update(manifest.ops)
    result.quarantined += manifest.quarantined
    if manifest.max_event_time:
        moment = datetime.fromisoformat(manifest.max_event_time)
        result.max_event_time = max(filter(None, (result.max_event_time, moment)))
    return Checkpoint(manifest.batch, manifest.state)
