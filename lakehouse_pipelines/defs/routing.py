"""The route of each collection's request, Lambda or ECS: a setting plus a size estimate.

``routed_runner`` gives ``lambda_collection_asset``'s fan-out (``LambdaPipes.run_partitions``)
its ``run=``: a ``RoutedRunner`` when the ECS route is deployed (``LAKEHOUSE_ECS_CLUSTER``), so each
collection runs where it fits and the materialization says where and why (``route``,
``route_reason``, on both routes). Without the ECS route every request runs in Lambda as before.

What is estimated, and from what (read by the orchestrator from the lake only: the code location
never touches the source):

- **Merge** (``lakehouse-merge``): the pending raw batches, from their manifests (one small read
  per pending batch: ``lake.progress`` says which are pending, each manifest lists its files'
  bytes), and the largest partition of the lake table, from its Delta log (file sizes per
  ``_bucket``; the copy-on-write rewrite holds one touched partition at a time, and which
  partitions a batch touches is only known from its keys, so the largest one bounds it). Peak
  memory = a process base + raw bytes x ``RAW_EXPANSION`` + partition bytes x
  ``TABLE_EXPANSION``; duration = (raw + partition bytes) / ``MERGE_BYTES_PER_SECOND``.
- **Capture** (``lakehouse-cdc-capture``) when it takes a snapshot (no batch yet, a snapshot in
  progress, or ``reset``): the collection's size from ``LAKEHOUSE_COLLECTION_BYTES`` (e.g. the
  source's ``collStats`` ``size``, MongoDB manual "collStats"), else for a re-snapshot the lake
  table's bytes (what the last snapshot and its changes became, one Delta log read) times
  ``LAKE_TO_SOURCE_BYTES``; duration = bytes / ``SNAPSHOT_BYTES_PER_SECOND``, divided by
  ``LAKEHOUSE_SNAPSHOT_RANGES`` for a range snapshot (an invocation captures one range). Memory is
  bounded by the batch size (``CaptureRequest.max_bytes``, ~4x in memory), not by the
  collection. Streaming capture is not estimated (each run is bounded by its batch limits).
- Anything else: not estimated; only ``LAKEHOUSE_ECS_COLLECTIONS`` sends it to ECS.

The rates are this project's measurements (``benchmarks/README.md``: capture ~9-31 MB/s of BSON,
merge full rewrite of 134 MB in ~3.8 s, ~400 MB process base, on 2 cores), rounded down for a
Lambda's share of a vCPU; ``choose_route`` adds its safety factor on top. An estimate that cannot
be read (a damaged manifest, an unreadable log) is unknown, never an error: the step's own
function reports the damage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lakehouse_pipelines.resources.ecs_pipes import EcsPipes
from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lakehouse_pipelines.resources.routes import Estimate, RoutedRunner
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import CaptureRequest, CollectionRequest
from lambda_functions.lake import open_store
from lambda_functions.lake.progress import lake_table_key, read_lake_progress
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.lake.store import ObjectStore
from lambda_functions.registry import CDC_CAPTURE, MERGE, FunctionSpec

# A merge process before it reads anything (Python, pyarrow, deltalake), bytes.
PROCESS_BASE_BYTES = 400 * 2**20
# zstd Parquet of extended-JSON documents decompressed into Arrow, times its file bytes.
RAW_EXPANSION = 6.0
TABLE_EXPANSION = 4.0
# Raw and table Parquet bytes a merge reads, rewrites and commits per second.
MERGE_BYTES_PER_SECOND = 20 * 2**20
# Source bytes a snapshot reads, encodes and publishes per second (one worker).
SNAPSHOT_BYTES_PER_SECOND = 8 * 2**20
# Lake table (zstd Parquet) bytes -> source (BSON) bytes of the same documents.
LAKE_TO_SOURCE_BYTES = 6.0
# A capture batch's peak memory, times its ``max_bytes`` (CaptureRequest's docstring).
CAPTURE_BATCH_EXPANSION = 4.0


def estimate_request(
    settings: LakehouseSettings, spec: FunctionSpec, request: CollectionRequest
) -> Estimate:
    """Peak memory and duration of one request, from the lake (see the module docstring).

    Args:
        settings: the lake (``lake_uri``) and ``LAKEHOUSE_COLLECTION_BYTES`` (``settings.ecs``).
        spec: the function that would run the request.
        request: the request; its ``database`` and ``collection`` name what is read.

    Returns:
        ``(bytes, seconds)``: estimated peak memory in bytes and duration in seconds, each
        ``None`` when unknown (a function not estimated, nothing to read, a read that failed).
        Read-only: nothing in the lake is created or changed.
    """
    try:
        store = open_store(settings.lake_uri)
        if spec.name == MERGE.name:
            return _merge_estimate(store, request)
        if spec.name == CDC_CAPTURE.name and isinstance(request, CaptureRequest):
            return _snapshot_estimate(store, request, settings.ecs.collection_bytes)
    except Exception:  # unknown, never an error: the function names what is wrong
        return None, None
    return None, None


def _merge_estimate(store: ObjectStore, request: CollectionRequest) -> Estimate:
    progress = read_lake_progress(store, request.database, request.collection)
    if progress.pending is None:
        return None, None
    first, last = progress.pending
    zone = RawZone(store, request.database, request.collection)
    raw_bytes = sum(zone.read_manifest(n).bytes for n in zone.batch_numbers(first - 1) if n <= last)
    partitions = partition_bytes(store, request.database, request.collection)
    largest = max(partitions.values(), default=0)
    memory = PROCESS_BASE_BYTES + raw_bytes * RAW_EXPANSION + largest * TABLE_EXPANSION
    return memory, (raw_bytes + largest) / MERGE_BYTES_PER_SECOND


def _snapshot_estimate(
    store: ObjectStore, request: CaptureRequest, collection_bytes: dict[str, int] | Any
) -> Estimate:
    zone = RawZone(store, request.database, request.collection)
    numbers = zone.batch_numbers()
    snapshotting = (
        request.reset
        or not numbers
        or zone.read_manifest(numbers[-1]).state.get("phase") == "snapshot"
    )
    if not snapshotting:
        return None, None
    namespace = f"{request.database}.{request.collection}"
    size = collection_bytes.get(namespace)
    if size is None and request.reset:
        table = sum(partition_bytes(store, request.database, request.collection).values())
        size = table * LAKE_TO_SOURCE_BYTES if table else None
    if size is not None and request.snapshot_ranges > 1:
        size /= request.snapshot_ranges  # an invocation captures one range at most
    memory = PROCESS_BASE_BYTES + request.max_bytes * CAPTURE_BATCH_EXPANSION
    return memory, (size / SNAPSHOT_BYTES_PER_SECOND if size is not None else None)


def partition_bytes(store: ObjectStore, database: str, collection: str) -> dict[str, int]:
    """Bytes of the lake table's live files per ``_bucket`` partition, from its Delta log.

    Args:
        store: the lake.
        database: the collection's database.
        collection: the collection.

    Returns:
        ``_bucket`` value -> bytes of the files the current version holds (Delta ``add``
        actions' ``size``); ``{}`` when there is no table (and nothing is created).
    """
    key = lake_table_key(database, collection)
    if not any(True for _ in store.list(f"{key}/_delta_log/")):
        return {}  # no table: do not let delta_location create its folder
    import pyarrow as pa
    from deltalake import DeltaTable

    uri, options = store.delta_location(key)
    table = DeltaTable(uri, storage_options=options)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    sizes: dict[str, int] = {}
    for action in actions:
        bucket = str(action.get("partition._bucket", ""))
        sizes[bucket] = sizes.get(bucket, 0) + int(action.get("size_bytes") or 0)
    return sizes


def routed_runner(
    settings: LakehouseSettings, lambda_pipes: LambdaPipes, ecs_pipes: EcsPipes | None
) -> RoutedRunner | None:
    """The ``run=`` of a collection fan-out: a ``RoutedRunner`` when the ECS route is deployed.

    Args:
        settings: the lake and the ECS settings the estimates read.
        lambda_pipes: the ``lambda_pipes`` resource.
        ecs_pipes: the ``ecs_pipes`` resource; ``None`` where no ECS route is configured.

    Returns:
        ``RoutedRunner(lambda_pipes, ecs_pipes, estimate)`` choosing per request with
        ``estimate_request``, or ``None`` (``LambdaPipes.run`` for every request, no ``route``
        metadata) when ``ecs_pipes`` is ``None``.
    """
    if ecs_pipes is None:
        return None
    return RoutedRunner(
        lambda_pipes,
        ecs_pipes,
        lambda spec, request: estimate_request(settings, spec, request),
    )


def step_runner(
    settings: LakehouseSettings,
    lambda_pipes: LambdaPipes,
    ecs_pipes: EcsPipes | None,
    runner_for: Callable[[LakehouseSettings, LambdaPipes, Any], Any] | None = None,
) -> tuple[Any, RoutedRunner | None]:
    """What a collection step fans out through, and the ``run=`` it gives the fan-out.

    Args:
        settings: the code location's settings.
        lambda_pipes: the ``lambda_pipes`` resource.
        ecs_pipes: the ``ecs_pipes`` resource (``None``: no ECS route).
        runner_for: ``(settings, lambda_pipes, run) -> runner``, a fan-out of its own (the
            range snapshot's) that sends each invocation through ``run``; ``None``: none.

    Returns:
        ``(runner, run)``: ``(lambda_pipes, routed_runner(...))`` without ``runner_for`` (or when
        it returns ``lambda_pipes``); else ``(its runner, None)``, the runner routing each of
        its invocations itself.
    """
    run = routed_runner(settings, lambda_pipes, ecs_pipes)
    runner = runner_for(settings, lambda_pipes, run) if runner_for else lambda_pipes
    return runner, (run if runner is lambda_pipes else None)
