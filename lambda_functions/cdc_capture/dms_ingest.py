"""AWS DMS output in S3 (DocumentDB source, document mode) into raw-zone batches.

``ingest_dms_files`` publishes the rows of the files DMS wrote (``dms_files`` reads them)
that are not ingested yet, in order, with a bookmark of what is done written with each batch;
``DmsIngestResult`` is what one run did.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lambda_functions.cdc_capture.batches import BatchRows, publish_with_ledger, read_ledger
from lambda_functions.cdc_capture.dms_files import DmsFile, add_row, pending_files, read_rows
from lambda_functions.cdc_capture.edge_masking import EdgeMasking, masking_of_request
from lambda_functions.cdc_capture.errors import ConcurrentCaptureError
from lambda_functions.contracts import DmsIngestRequest
from lambda_functions.lake.raw_zone import Checkpoint, RawZone
from lambda_functions.lake.store import ObjectStore, open_store
from lambda_functions.pipes import typed_metadata

RECENT_CDC_FILES = 1_000
MASKING_BOOKMARK_KEY = "masking_fingerprint"  # the rules the bookmarked files were read under
MAX_PUBLISH_ATTEMPTS = 5  # rebuilds on top of a concurrent ingest that published first
DEADLINE_RESERVE_S = 10.0  # stop taking new files with less time than this left


@dataclass
class DmsIngestResult:
    """What one ``ingest_dms_files`` run published (only batches whose manifest is written)."""

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
        """The run as typed Pipes metadata (``pipes.typed_metadata``).

        Returns:
            name -> ``{"raw_value", "type"}``: ``dagster/row_count``, ``batches``, ``files``,
            ``rows_by_op``, ``quarantined``, ``reloaded``, ``masking_rules_changed``,
            ``pending_files``, ``cdc_lag_seconds`` (seconds behind the newest published commit
            time while files are pending, else 0) and ``duration_seconds``.
        """
        lag = (
            max(0.0, time.time() - self.max_event_time.timestamp())
            if self.max_event_time and self.pending_files
            else 0.0
        )
        return typed_metadata(
            {
                "dagster/row_count": sum(self.rows_by_op.values()),
                "batches": self.batches,
                "files": self.files,
                "rows_by_op": dict(self.rows_by_op),
                "quarantined": self.quarantined,
                "reloaded": self.reloaded,
                "masking_rules_changed": self.masking_rules_changed,
                "pending_files": self.pending_files,
                "cdc_lag_seconds": round(lag, 3),
                "duration_seconds": round(self.duration_seconds, 3),
            }
        )


def ingest_dms_files(
    request: DmsIngestRequest,
    *,
    store: ObjectStore | None = None,
    dms_store: ObjectStore | None = None,
    deadline: Callable[[], float] | None = None,
    on_progress: Callable[[str], None] | None = None,
    masking: EdgeMasking | None = None,
) -> DmsIngestResult:
    """Publish the rows of DMS files not ingested yet, in order (``dms_files`` reads them).

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
        (full-load files first, then CDC files in name (= time) order; rows of one file keep
        their order through ``seq``). The bookmark (``_dms/bookmark-<batch>-<uuid>.json``, a
        name unique to the attempt; the manifest's state points to it, so a concurrent ingest
        can never overwrite it) holds the full-load files done, the most recent
        ``RECENT_CDC_FILES`` CDC files done plus the name below which all are done, and the
        file in progress with its row offset (a file larger than a batch spans batches). A
        crash before the manifest publishes nothing and the next run does the same files again.
        A late CDC file (older name than files already ingested) is still picked up while it is
        newer than the oldest remembered one. New full-load files after CDC has begun mean DMS
        reloaded the table: a batch marked ``dropped`` (a new table generation) comes first.
        Each ``_doc`` is masked once decoded, dead letters too; the bookmark keeps the rules'
        fingerprint, and on a change a ``dropped`` batch (a new generation) comes first and
        every file in the folder is read again (keep the full-load files).

    Limits:
        Each file is read whole into memory: keep DMS's ``MaxFileSize`` (full load) and
        ``CdcMaxBatchInterval``/``CdcMinFileSize`` (CDC) well under the function's memory (e.g.
        64 MB). A reload that rewrites ``LOAD`` files under the same names is not detected: use
        ``reset``.

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
    files = pending_files(
        source,
        loads_done=bookmark["loads_done"],
        cdc_recent=bookmark["cdc_recent"],
        cdc_floor=bookmark["cdc_floor"],
    )
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
            file_rows = list(read_rows(source, dms_file, request.csv_delimiter))
        except Exception as error:  # unreadable file: a dead letter, never skipped silently
            rows.quarantine(f"{dms_file.key} cannot be read: {error}", {"key": dms_file.key})
            file_rows = []
        for index in range(offset, len(file_rows)):
            add_row(rows, dms_file, index, file_rows[index])
            if full() and index + 1 < len(file_rows):
                _advance(bookmark, dms_file, index + 1, done=False)
                flush()
        _advance(bookmark, dms_file, len(file_rows), done=True)
        files_in_batch.append(dms_file.key)
        if full():
            flush()
    if files_in_batch:
        flush()


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
