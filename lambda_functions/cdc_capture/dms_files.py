"""The files AWS DMS writes to S3 for one DocumentDB collection (document mode), read as rows.

Which keys are DMS data files (``classify``), which of them are new, in processing order
(``pending_files``), the rows of one file (``read_rows``: CSV with or without a header,
``.csv.gz``, Parquet) and how each row becomes a raw-zone row or a dead letter (``add_row``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq

from lambda_functions.cdc_capture.batches import BatchRows, Malformed, document_json
from lambda_functions.cdc_capture.positions import commit_position, millis
from lambda_functions.lake.extended_json import decode_document
from lambda_functions.lake.record_key import KEY_CANDIDATES, bare_key_candidates, record_key
from lambda_functions.lake.store import ObjectStore

MAX_CSV_FIELD_CHARS = 1 << 30  # a _doc field: MongoDB documents reach 16 MB of BSON
OPS = {"I": "insert", "U": "update", "D": "delete"}
_LOAD = re.compile(r"^LOAD[0-9A-F_]*\.(csv|csv\.gz|parquet)$")
_CDC = re.compile(r"^(\d{8})-(\d{6})(\d*)\.(csv|csv\.gz|parquet)$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?$")


@dataclass(frozen=True)
class DmsFile:
    """One DMS data file: its key, whether it is a full-load or a CDC file, its base name."""

    key: str  # relative to the DMS store
    kind: str  # "load" | "cdc"
    name: str  # the base name (CDC: its time order)


def classify(key: str) -> DmsFile | None:
    """The DMS data file at ``key``, or ``None`` for anything else under the prefix.

    DMS writes full-load files ``LOAD00000001.csv`` (hex counter; ``.parquet`` with
    ``DataFormat=parquet``; ``LOAD_<segment>_<n>`` with parallel load) and CDC files named by
    time (``20240105-101500123.csv``), possibly in date folders; ``.csv.gz`` is read too.

    Args:
        key: an object key relative to the DMS folder (``request.dms_uri``).

    Returns:
        A ``DmsFile`` (``kind`` ``"load"`` or ``"cdc"``, ``name`` the key's base name), or
        ``None`` when the base name matches neither pattern. Never raises.
    """
    name = key.rsplit("/", 1)[-1]
    if _LOAD.match(name):
        return DmsFile(key, "load", name)
    if _CDC.match(name):
        return DmsFile(key, "cdc", name)
    return None


def pending_files(
    source: ObjectStore,
    *,
    loads_done: Iterable[str],
    cdc_recent: Iterable[str],
    cdc_floor: str | None,
) -> list[DmsFile]:
    """The DMS files not ingested yet, in processing order.

    Args:
        source: the store DMS writes to, rooted at the collection's folder.
        loads_done: keys of the full-load files already ingested.
        cdc_recent: keys of the most recent CDC files already ingested.
        cdc_floor: the CDC base name at or below which every file is ingested (``None``: none).

    Returns:
        Full-load files not done, sorted by key, then CDC files neither in ``cdc_recent`` nor
        at or below ``cdc_floor``, sorted by (name, key), i.e. by time. A late CDC file (older
        name than files already done) is included while it is above ``cdc_floor``.

    Raises:
        Whatever ``source.list`` raises (e.g. ``LakeBucketMissingError``, terminal).
    """
    loads, cdc = [], []
    done_loads, recent = set(loads_done), set(cdc_recent)
    for key in source.list(""):
        dms_file = classify(key)
        if dms_file is None:
            continue
        if dms_file.kind == "load" and key not in done_loads:
            loads.append(dms_file)
        elif (
            dms_file.kind == "cdc"
            and key not in recent
            and (cdc_floor is None or dms_file.name > cdc_floor)
        ):
            cdc.append(dms_file)
    return sorted(loads, key=lambda f: f.key) + sorted(cdc, key=lambda f: (f.name, f.key))


def read_rows(
    source: ObjectStore, dms_file: DmsFile, delimiter: str = ","
) -> Iterator[dict[str, Any]]:
    """The rows of one DMS file, read whole into memory.

    Document mode gives two data columns, ``_id`` and ``_doc`` (the document as JSON). CDC rows
    start with ``Op`` (I/U/D); full-load rows have no ``Op`` unless ``IncludeOpForFullLoad``;
    ``TimestampColumnName`` adds a ``yyyy-MM-dd HH:mm:ss.SSSSSS`` column (the commit time for
    CDC). A CSV file may have a header (``AddColumnName``) or not: without one the layout is
    read from the field count and values (``[Op,] [timestamp,] _id, _doc``). Rows end at ``\\n``
    (DMS's default ``CsvRowDelimiter``; ``\\r\\n`` is read too). See the AWS DMS User Guide,
    "Using Amazon S3 as a target for AWS Database Migration Service".

    Args:
        source: the store DMS writes to.
        dms_file: the file to read (``.csv``, ``.csv.gz`` or ``.parquet``).
        delimiter: the S3 endpoint's ``CsvDelimiter`` (``request.csv_delimiter``; DMS's default
            ``,``); unused for Parquet.

    Returns:
        An iterator of dicts with ``Op``, ``_ts``, ``_id``, ``_doc`` (``None`` when absent), in
        file order, plus ``_problem`` (a message naming the delimiter the row seems to use and
        ``LAKEHOUSE_DMS_CSV_DELIMITER``) when a CSV row does not split into ``_id`` and a JSON
        ``_doc`` at ``delimiter``. Bytes that are not UTF-8 are kept as surrogate escapes.

    Raises:
        Whatever reading or decoding the file raises (missing object, bad gzip or Parquet): the
        caller turns it into a dead letter for the whole file.
    """
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


def add_row(rows: BatchRows, dms_file: DmsFile, index: int, row: dict[str, Any]) -> None:
    """Add one row of a DMS file to ``rows``, or quarantine it with its file, line and reason.

    Full-load rows are ``snapshot`` rows at ``pos`` 0, so every CDC change (DMS applies the
    changes cached during the load after it) orders after them. CDC rows are ``insert`` /
    ``update`` / ``delete`` at the commit time's ``pos`` (``positions.commit_position``:
    ``(seconds << 32) | (microseconds << 12)``), or, without a timestamp column, the file name's
    time. ``_doc`` (MongoDB extended JSON) is masked once decoded and re-encoded as canonical
    extended JSON like every input.

    Args:
        rows: the batch being built (with the collection's masking).
        dms_file: the file the row comes from.
        index: the row's 0-based index in the file (dead letters name ``index + 1``).
        row: a dict from ``read_rows``.

    Returns:
        None; ``rows`` holds the row or one more dead letter (masked as well).

    Raises:
        MaskingKeyError: the rules hash fields and no key is configured (terminal); any other
            bad row becomes a dead letter instead of raising.
    """
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
