"""Source audit: the source collection against its lake table, key-hash bucket by bucket.

The warehouse check (``matches_lake_table``) compares the warehouse with the lake, so a document
lost before the lake passes it. This audit compares the lake with the *source*: per bucket a count
and an order-independent hash of (record key, canonical document), and, where they disagree, the
keys that are missing (in the source, not in the lake), extra (in the lake, not in the source) or
different (same key, another document). It only reads: the source through ``ChangeSource`` (from a
secondary in DocumentDB, ``secondaryPreferred``), the lake table at one pinned version.

**Same encoding on both sides.** The key of a source document is ``record_key(_id)``
(``lake/record_key.py``, its raw-BSON twin for documents whose ``_id`` leads them), the function
capture writes the lake's ``_id`` with; the document is its canonical extended JSON
(``encode_document``, raw BSON without decoding), the text capture stores in the lake's ``doc``.
Lake rows with ``_op = 'delete'`` (tombstones) are not documents and are left out.

**Buckets.** A key's audit bucket is ``blake2b(key) mod 64`` (``SOURCE_AUDIT_BUCKETS``), computed
the same way from the source's key and the lake's ``_id``. Hash buckets rather than the lake's
``_bucket`` partitions: those are ObjectId months or 16 hash buckets depending on the key's type,
so their sizes vary by orders of magnitude and a string-keyed collection has only 16 of them. A
bucket's digest is the count and the sum (mod 2^64) of 64-bit row hashes: independent of order,
and unlike XOR a duplicated row does not cancel out.

**Bounded cost (sampling).** A run audits ``buckets_per_run`` consecutive buckets, starting where
the previous run of this collection stopped (a cursor in the lake's object store,
``audit/<db>/<coll>/_cursor.json``), so ``64 / buckets_per_run`` runs cover every key; the
sampled rate (``buckets_per_run / 64``) is reported. What a run costs:

- source: every document is read once in ``_id`` order, ``page_rows`` at a time (an ``_id`` index
  scan, raw BSON, on a secondary), but only documents in the sampled buckets are encoded, hashed
  and held: network and server work follow the collection, CPU and memory follow the sample. A
  collection whose full scan does not fit the function's time belongs on Fargate (DESIGN.md,
  "Beyond one Lambda"); the run stops with ``over_budget`` rather than report half a bucket.
- lake: one ``_bucket`` partition at a time, columns ``_id``, ``doc``, ``_op`` only; the sampled
  rows are kept (memory follows the sample, capped by ``max_rows`` on each side).
- change stream: the events after the lake's position (see below): the lake's lag, at most
  ``max_in_flight`` events.

**The race: compare as of the lake's position.** The source keeps changing while the lake lags, so
a plain comparison reports every key changed since the last merge. The lake table is pinned at
version V; the merge records in V the last raw batch it applied, and that batch's manifest holds
the change-stream position capture had reached (its resume token T). Every change up to T is in
V; so a key with *no* change event after T must be the same in V and in the source. The audit
therefore:

1. scans the source, then reads the change stream from T until it is drained (after the scan, so
   it covers every change the scan could have seen): the keys it names are *in flight* and are
   left out on both sides (counted in ``in_flight``);
2. re-checks what still differs: after ``recheck_delay_s`` it drains the stream again (events
   that became visible meanwhile) and re-reads just those keys from the source by ``_id``; only a
   difference that persists is reported. This covers a stream that shows an event late and a
   secondary that lags behind the primary the lake was captured from.

A real loss (a key the lake lacks although nothing changed it since T) persists through both
steps; a key in flight is excluded from one run, and the next run audits it. When the lake has no
stream position to compare at (no table yet, a snapshot still loading, batches from DMS or MQ) or
the stream no longer reaches back to it (lake lag beyond the retention or ``max_in_flight``), the
run reports *not audited* with the reason instead of guessing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow.compute as pc
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument
from deltalake import DeltaTable
from pymongo.errors import OperationFailure

from lambda_functions.cdc_capture.audit_buckets import (
    AUDITED,
    NOT_AUDITED_REASONS,
    AuditCursor,
    SampledSide,
    SourceAuditResult,
    audit_bucket,
    bucket_figures,
    bucket_ranges,
    differences,
    row_hash,
)
from lambda_functions.cdc_capture.batches import END_OPS
from lambda_functions.cdc_capture.capture_state import loaded_token
from lambda_functions.cdc_capture.change_source import ChangeSource
from lambda_functions.cdc_capture.edge_masking import masking_of_request
from lambda_functions.cdc_capture.stream import EXPIRED_CODES
from lambda_functions.contracts import SOURCE_AUDIT_BUCKETS, SourceAuditRequest
from lambda_functions.lake import ObjectStore, RawZone, open_store
from lambda_functions.lake.extended_json import encode_document
from lambda_functions.lake.lake_table import app_id, lake_table_location, open_table
from lambda_functions.lake.record_key import (
    InvalidRecordKeyError,
    key_value,
    raw_record_key,
    record_key,
)
from lambda_functions.lake.table_layout import live_rows

__all__ = ["READ_PREFERENCE", "SourceAuditResult", "audit_bucket", "audit_source", "row_hash"]

READ_PREFERENCE = "secondaryPreferred"  # the audit reads from a replica when there is one
STREAM_BATCH_SIZE = 1_000


class _NotAudited(Exception):
    def __init__(self, status: str, detail: str = ""):
        super().__init__(status)
        self.status = status
        self.detail = detail


def audit_source(
    request: SourceAuditRequest,
    *,
    source: ChangeSource,
    store: ObjectStore | None = None,
    deadline: Callable[[], float] | None = None,
    on_progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SourceAuditResult:
    """Audit the next ``request.buckets_per_run`` buckets of the collection; see the module
    docstring for the buckets, the cost and the rule that makes a lagging lake compare cleanly.

    Args:
        request: the collection, the source, the sample size and the budgets.
        source: the source to read (``open_source(request, read_preference=READ_PREFERENCE)``);
            the audit never writes to it.
        store: the lake's object store (default: ``open_store(request.lake_uri)``).
        deadline: seconds the caller has left (a Lambda's remaining time); the source scan stops
            with ``over_budget`` while 10% of the time at the start (at least 5 s) remains.
        on_progress: receives one line per step.
        sleep: how to wait ``recheck_delay_s`` (tests pass a no-op).

    Returns:
        A ``SourceAuditResult``: ``passed`` when the sampled buckets match; the missing, extra and
        different keys otherwise; ``status`` says why a run could not audit. Only an audited run
        advances the bucket cursor (``audit/<db>/<coll>/_cursor.json``); nothing else is
        written, so a run that fails is simply repeated.

    Raises:
        SourceConnectionError: the source cannot be reached (``SourceUnreachableError``,
            transient) or is configured wrongly (``SourceConfigurationError``, terminal).
        pymongo.errors.OperationFailure: the source refused a read or the change stream for
            another reason than a purged history (which is reported as ``lake_lagging``; MongoDB
            manual, "Change Streams"; Amazon DocumentDB Developer Guide, "Using change streams
            with Amazon DocumentDB").
        MaskingRulesError, MaskingKeyError: ``request.masking`` is malformed, or hashes fields
            and the masking key is missing (terminal).
    """
    started = time.monotonic()
    store = store or open_store(request.lake_uri)
    cursor = AuditCursor(store, request.database, request.collection)
    start = cursor.read()
    buckets = tuple((start + i) % SOURCE_AUDIT_BUCKETS for i in range(request.buckets_per_run))
    base = {
        "namespace": request.namespace,
        "buckets": buckets,
        "sampled_rate": request.buckets_per_run / SOURCE_AUDIT_BUCKETS,
        "next_bucket": start,
    }
    run = _AuditRun(request, source, store, set(buckets), deadline, on_progress or (lambda m: None))
    try:
        result = run.execute(base, sleep)
    except _NotAudited as stopped:
        reason = NOT_AUDITED_REASONS[stopped.status] + (
            f" ({stopped.detail})" if stopped.detail else ""
        )
        run.log(f"{request.namespace}: not audited: {reason}")
        return SourceAuditResult(
            **base,
            status=stopped.status,
            reason=reason,
            lake_version=run.lake_version,
            lake_batch=run.lake_batch,
            source_scanned=run.scanned,
            duration_s=time.monotonic() - started,
        )
    finally:
        run.close()
    next_bucket = (start + request.buckets_per_run) % SOURCE_AUDIT_BUCKETS
    cursor.write(next_bucket)
    return SourceAuditResult(
        **{**base, "next_bucket": next_bucket},
        **result,
        pass_complete=start + request.buckets_per_run >= SOURCE_AUDIT_BUCKETS,
        duration_s=time.monotonic() - started,
    )


class _AuditRun:
    def __init__(
        self,
        request: SourceAuditRequest,
        source: ChangeSource,
        store: ObjectStore,
        buckets: set[int],
        deadline: Callable[[], float] | None,
        log: Callable[[str], None],
    ):
        self.request = request
        self.source = source
        self.store = store
        self.buckets = buckets
        self.masking = masking_of_request(
            request.namespace, request.masking, key_secret_arn=request.masking_key_secret_arn
        )
        self.deadline = deadline
        self.reserve = max(5.0, 0.1 * deadline()) if deadline else 0.0
        self.log = log
        self.lake_version: int | None = None
        self.lake_batch: int | None = None
        self.scanned = 0
        self.unencodable = 0
        self.source_ids: dict[str, Any] = {}  # sampled key -> the source's _id value
        self.in_flight: set[str] = set()
        self.stream: Any = None

    # -- the run ---------------------------------------------------------------------------------
    def execute(self, base: Mapping[str, Any], sleep: Callable[[float], None]) -> dict[str, Any]:
        request, ns = self.request, self.request.namespace
        table, token = self._pinned_lake()
        self.log(
            f"{ns}: auditing buckets {bucket_ranges(self.buckets)} ({base['sampled_rate']:.1%} of "
            "keys) "
            f"against lake version {self.lake_version} (raw batch {self.lake_batch})"
        )
        source = self._scan_source()
        lake = self._read_lake(table)
        self.stream = self._open_stream(token)
        self._drain()
        suspects = differences(source, lake, self.in_flight)
        resolved = 0
        if any(suspects.values()):
            count = sum(map(len, suspects.values()))
            self.log(f"{ns}: {count} keys differ; re-checking them in {request.recheck_delay_s} s")
            sleep(request.recheck_delay_s)
            self._drain()
            self._recheck(source, [k for keys in suspects.values() for k in keys])
            after = differences(source, lake, self.in_flight)
            resolved = count - sum(map(len, after.values()))
            suspects = after
        figures = tuple(bucket_figures(sorted(self.buckets), source, lake, self.in_flight))
        sampled_in_flight = self.in_flight & (set(source.hashes) | set(lake.hashes))
        self.log(
            f"{ns}: {len(source.hashes)} source / {len(lake.hashes)} lake documents compared, "
            f"{len(sampled_in_flight)} in flight; missing {len(suspects['missing'])}, extra "
            f"{len(suspects['extra'])}, different {len(suspects['different'])}"
        )
        return {
            "status": AUDITED,
            "lake_version": self.lake_version,
            "lake_batch": self.lake_batch,
            "source_count": len(source.hashes),
            "lake_count": len(lake.hashes),
            "source_scanned": self.scanned,
            "in_flight": len(sampled_in_flight),
            "resolved_on_recheck": resolved,
            "unencodable": self.unencodable,
            "missing": tuple(sorted(suspects["missing"])),
            "extra": tuple(sorted(suspects["extra"])),
            "different": tuple(sorted(suspects["different"])),
            "bucket_figures": figures,
        }

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    # -- the lake --------------------------------------------------------------------------------
    def _pinned_lake(self) -> tuple[DeltaTable, dict[str, Any]]:
        """The lake table at its current version and the stream position that version holds."""
        request = self.request
        uri, options = lake_table_location(self.store, request.database, request.collection)
        table = open_table(uri, options)
        if table is None:
            raise _NotAudited("no_lake_table")
        self.lake_version = table.version()
        self.lake_batch = table.transaction_version(app_id(request.namespace))
        if not self.lake_batch:
            raise _NotAudited("no_lake_table", "the table records no applied batch")
        zone = RawZone(self.store, request.database, request.collection)
        state = zone.read_manifest(self.lake_batch).state
        phase = state.get("phase")
        if phase == "snapshot":
            raise _NotAudited("snapshot_in_progress", f"{state.get('rows', 0)} documents so far")
        if phase != "stream" or not isinstance(state.get("resume_token"), Mapping):
            raise _NotAudited("no_stream_position", f"phase {phase!r}")
        return table, loaded_token(state["resume_token"])

    def _read_lake(self, table: DeltaTable) -> SampledSide:
        """The sampled lake rows, one ``_bucket`` partition at a time (tombstones left out)."""
        lake = SampledSide()
        for partition in sorted(p["_bucket"] for p in table.partitions()):
            dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("_bucket", "=", partition)])
            rows = live_rows(
                dataset.to_table(
                    columns=["_id", "doc", "_op"], filter=pc.field("_bucket") == partition
                )
            )
            keys = rows.column("_id").cast("string").to_pylist()
            docs = rows.column("doc").cast("string").to_pylist()
            for key, doc in zip(keys, docs, strict=True):
                bucket = audit_bucket(key)
                if bucket not in self.buckets:
                    continue
                if key in lake.hashes:  # a key stored twice: never equal to the source's one
                    lake.hashes[key] = -1
                    continue
                lake.hashes[key] = row_hash(key, doc or "")
                lake.buckets[key] = bucket
            if len(lake.hashes) > self.request.max_rows:
                raise _NotAudited("over_budget", f"more than {self.request.max_rows} lake rows")
        return lake

    # -- the source ------------------------------------------------------------------------------
    def _scan_source(self) -> SampledSide:
        """Every source document in ``_id`` order; the sampled ones encoded and hashed."""
        request, side = self.request, SampledSide()
        after: Any = None
        while True:
            if self.deadline is not None and self.deadline() <= self.reserve:
                raise _NotAudited("over_budget", f"out of time after {self.scanned} documents")
            page = list(
                self.source.documents(
                    request.database, request.collection, after_id=after, limit=request.page_rows
                )
            )
            for document in page:
                self._admit(side, document)
            self.scanned += len(page)
            if len(side.hashes) > request.max_rows:
                raise _NotAudited("over_budget", f"more than {request.max_rows} source documents")
            if len(page) < request.page_rows:
                return side
            after = page[-1]["_id"]

    def _admit(self, side: SampledSide, document: Mapping[str, Any]) -> None:
        """Hash a sampled document; any other is only counted (a raw document whose ``_id``
        leads it is not even decoded: its key is read from the bytes)."""
        key = raw_record_key(document.raw) if isinstance(document, RawBSONDocument) else None
        try:
            key = key if key is not None else record_key(document["_id"])
        except InvalidRecordKeyError:
            self.unencodable += 1  # capture dead-letters it too: not comparable
            return
        bucket = audit_bucket(key)
        if bucket not in self.buckets:
            return
        try:
            doc = encode_document(self.masking.document(document))  # as capture stored it
        except InvalidDocument:
            self.unencodable += 1
            return
        side.hashes[key] = row_hash(key, doc)
        side.buckets[key] = bucket
        self.source_ids[key] = document["_id"]

    def _recheck(self, source: SampledSide, keys: Iterable[str]) -> None:
        """Re-read ``keys`` from the source by ``_id`` and replace their source view."""
        ids = {}
        for key in keys:
            if key in self.in_flight:
                continue
            if key in self.source_ids:
                ids[key] = self.source_ids[key]
            else:  # only in the lake: its key text gives the _id back
                try:
                    ids[key] = key_value(key)
                except InvalidRecordKeyError:
                    continue  # not a record key at all: stays extra
        if not ids:
            return
        for key in ids:
            source.hashes.pop(key, None)
            source.buckets.pop(key, None)
        request = self.request
        fresh = self.source.documents_by_id(
            request.database, request.collection, list(ids.values())
        )
        for document in fresh:
            self._admit(source, document)

    # -- the change stream after the lake's position ---------------------------------------------
    def _open_stream(self, token: Mapping[str, Any]) -> Any:
        request = self.request
        try:
            return self.source.watch(
                request.database,
                request.collection,
                resume_after=token,
                batch_size=STREAM_BATCH_SIZE,
            )
        except OperationFailure as error:
            raise self._stream_error(error) from error

    def _drain(self) -> None:
        """Add the keys of every change event pending on the stream to ``in_flight``."""
        try:
            while (event := self.stream.try_next()) is not None:
                op = event.get("operationType")
                if op in END_OPS:
                    raise _NotAudited("collection_dropped", f"a {op} event")
                key = event.get("documentKey")
                if isinstance(key, Mapping) and "_id" in key:
                    self.in_flight.add(record_key(key["_id"]))
                if len(self.in_flight) > self.request.max_in_flight:
                    raise _NotAudited("lake_lagging", f"over {self.request.max_in_flight} keys")
        except OperationFailure as error:
            raise self._stream_error(error) from error

    def _stream_error(self, error: OperationFailure) -> Exception:
        code_name = (error.details or {}).get("codeName")
        if error.code in EXPIRED_CODES or code_name in ("CappedPositionLost",):
            return _NotAudited("lake_lagging", f"the stream's history was purged: {error}")
        return error
