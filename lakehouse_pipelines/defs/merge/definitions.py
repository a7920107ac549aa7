"""Merge: raw batches upserted into the Delta lake table, started by new batches (sensor), and the
table's maintenance (compaction of cold partitions, vacuum) on its own schedule."""

import json
from dataclasses import asdict, dataclass, replace

from dagster import (
    AssetCheckSpec,
    AssetKey,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    ResourceParam,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)
from pydantic import Field

from lakehouse_pipelines.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from lakehouse_pipelines.defs.cdc_capture.definitions import CAPTURE_KEY
from lakehouse_pipelines.defs.collections import (
    collections_schedule,
    lambda_collection_asset,
    registered_collections,
    request_fields,
)
from lakehouse_pipelines.defs.policies import with_freshness
from lakehouse_pipelines.settings import LakehouseSettings, split_namespace
from lambda_functions.contracts import CompactRequest, MergeRequest
from lambda_functions.lake import open_store
from lambda_functions.lake.progress import LakeProgress, read_lake_progress
from lambda_functions.registry import LAKE_MAINTENANCE, MERGE

LAKE_TABLE_KEY = "lake_table"
MAINTENANCE_KEY = "lake_table_maintenance"


lake_table = lambda_collection_asset(
    MERGE,
    lambda lakehouse, key, _config: MergeRequest(**request_fields(lakehouse, key)),
    name=LAKE_TABLE_KEY,
    deps=[CAPTURE_KEY],
    group_name="lakehouse",
    kinds={"deltalake", "lambda", "s3"},
    check_specs=[
        AssetCheckSpec(
            "no_duplicate_keys",
            asset=LAKE_TABLE_KEY,
            description="No _id is stored twice (live row or tombstone) in the partitions the "
            "merge touched.",
        )
    ],
    description=(
        "The Delta Lake table of each collection: every pending raw batch upserted by _id in one "
        "atomic commit, latest change wins (deletes too: they leave tombstones, which readers "
        "filter with _op <> 'delete'); replayed batches are skipped. Runs in Lambda."
    ),
)


class MaintenanceConfig(Config):
    """Run config of ``lake_table_maintenance``."""

    cold_after_hours: int = Field(
        default=72,
        description="Compact only partitions with no file written for this long (merges own "
        "the hot ones; compacting them would only conflict with the next merge).",
    )
    z_order: bool = Field(
        default=True, description="Sort cold partitions by _id (restores file pruning)."
    )
    vacuum: bool = Field(default=True, description="Delete files no version needs any more.")
    dry_run: bool = Field(
        default=False, description="Report what would be compacted and deleted; change nothing."
    )


def compact_request(
    lakehouse: LakehouseSettings, namespace: str, config: MaintenanceConfig
) -> CompactRequest:
    """The compaction and vacuum of one collection's lake table: the run's choices (``config``)
    and the configured retentions."""
    return CompactRequest(
        **request_fields(lakehouse, namespace),
        cold_after_hours=config.cold_after_hours,
        z_order=config.z_order,
        vacuum=config.vacuum,
        vacuum_retention_hours=lakehouse.vacuum_retention_hours,
        tombstone_retention_hours=lakehouse.tombstone_retention_hours,
        dry_run=config.dry_run,
    )


lake_table_maintenance = lambda_collection_asset(
    LAKE_MAINTENANCE,
    compact_request,
    MaintenanceConfig,
    name=MAINTENANCE_KEY,
    deps=[LAKE_TABLE_KEY],
    group_name="maintenance",
    kinds={"deltalake", "lambda"},
    description=(
        "Keeps each lake table fast and small: tombstones older than "
        "LAKEHOUSE_TOMBSTONE_RETENTION_HOURS expired, cold partitions compacted (z-ordered by "
        "_id) in atomic commits, then files older than LAKEHOUSE_VACUUM_RETENTION_HOURS "
        "vacuumed. Runs in Lambda on its own schedule."
    ),
)


merge_job = define_asset_job(
    "merge_and_load_job",
    selection=[LAKE_TABLE_KEY, "warehouse_table"],
    description="Merges a collection's pending raw batches, then loads the changes.",
)
maintenance_job = define_asset_job("lake_maintenance_job", selection=[MAINTENANCE_KEY])


# Runs that may still apply a collection's batches: the sensor waits for them instead of
# requesting a run that would find nothing left to apply.
_UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def collections_being_merged(instance: DagsterInstance, registered: list[str]) -> set[str]:
    """Collections an unfinished run will merge (its selection holds ``lake_table``): a UI
    "Materialize all", a schedule, or a run this sensor requested earlier. A range run covers
    the registered collections from its first to its last partition."""
    covered: set[str] = set()
    for run in instance.get_runs(filters=RunsFilter(statuses=_UNFINISHED)):
        if run.asset_selection is not None and AssetKey(LAKE_TABLE_KEY) not in run.asset_selection:
            continue
        if run.asset_selection is None and run.job_name != merge_job.name:
            continue
        tags = run.tags
        if PARTITION_NAME_TAG in tags:
            covered.add(tags[PARTITION_NAME_TAG])
        elif ASSET_PARTITION_RANGE_START_TAG in tags and ASSET_PARTITION_RANGE_END_TAG in tags:
            first, last = tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG]
            if first in registered and last in registered:
                covered.update(registered[registered.index(first) : registered.index(last) + 1])
    return covered


@dataclass(frozen=True)
class _Handed:
    """The sensor's cursor for one collection: the newest batch handed to a run, for which raw
    zone and which lake table, and how many times the pair was found reset (keeps run keys
    unique when the same batch numbers come back)."""

    batch: int = 0
    raw: str | None = None
    table: str | None = None
    resets: int = 0

    @classmethod
    def parse(cls, value: object) -> "_Handed":
        if isinstance(value, int):  # cursor written before raw-zone identities: no identity
            return cls(batch=value)
        if isinstance(value, dict):
            return cls(
                batch=int(value.get("batch", 0)),
                raw=value.get("raw"),
                table=value.get("table"),
                resets=int(value.get("resets", 0)),
            )
        return cls()

    def still_valid_for(self, progress: LakeProgress) -> bool:
        """The batch handed belongs to this raw zone and this lake table. A new raw zone (the
        lake removed: numbering restarts at 1) or a table removed or re-created makes the mark
        meaningless; a table created since (by the run handed the batch) does not."""
        if self.raw is not None and self.raw != progress.raw_identity:
            return False
        return self.table is None or self.table == progress.table_id


@sensor(
    job=merge_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Starts a merge (and load) run for each collection whose lake table is behind its raw "
        "zone (a batch published that the table has not applied)."
    ),
)
def raw_batches_sensor(
    context: SensorEvaluationContext, lakehouse: ResourceParam[LakehouseSettings]
) -> SensorResult:
    """Requests a run for a collection only when its lake table is behind its raw zone: the raw
    zone's newest batch is above the batch the table records as applied (its Delta app
    transaction), so batches a UI or scheduled run already merged cause no follow-up run, and a
    collection an unfinished run is merging waits for it.

    The cursor holds, per collection, the newest batch already handed to a run, with the raw
    zone's identity and the lake table's id: a batch is never handed twice to the same table,
    a run that fails is caught up by the next batch (a merge applies *every* batch newer than
    the table's last one), and a new raw zone (numbering restarted at 1 after the lake was
    removed) or a removed table makes the mark void instead of stalling the collection."""
    cursor: dict[str, object] = json.loads(context.cursor) if context.cursor else {}
    store = open_store(lakehouse.lake_uri)
    registered = registered_collections(context.instance)
    busy = collections_being_merged(context.instance, registered)
    requests = []
    notes = []
    for namespace in registered:
        if namespace in busy:
            notes.append(f"{namespace}: a run merging it is unfinished")
            continue
        try:  # one collection that cannot be read (a bad key, a listing error) skips only itself
            progress = read_lake_progress(store, *split_namespace(namespace))
        except Exception as error:
            notes.append(f"{namespace}: its raw batches could not be listed: {error}")
            context.log.warning(f"raw_batches_sensor skipped {notes[-1]}")
            continue
        handed = _Handed.parse(cursor.get(namespace))
        if not handed.still_valid_for(progress):
            context.log.info(
                f"{namespace}: the raw zone or lake table was reset (raw {handed.raw} -> "
                f"{progress.raw_identity}, table {handed.table} -> {progress.table_id}); "
                f"following the new one from batch {progress.applied + 1}"
            )
            handed = _Handed(resets=handed.resets + 1)
        if not progress.behind or progress.newest_batch <= handed.batch:
            cursor[namespace] = asdict(
                replace(handed, raw=progress.raw_identity, table=progress.table_id)
            )
            continue
        first, last = progress.pending or (0, 0)
        generation = f"r{handed.resets}:" if handed.resets else ""
        requests.append(
            RunRequest(
                run_key=f"{namespace}:{generation}{first}-{last}",
                partition_key=namespace,
                tags={"lakehouse/batches": f"{first}-{last}"},
            )
        )
        cursor[namespace] = asdict(
            replace(handed, batch=last, raw=progress.raw_identity, table=progress.table_id)
        )
    new_cursor = json.dumps(cursor, sort_keys=True)
    if not requests:
        reason = "; ".join(notes) if notes else "every lake table is up to date with its raw zone"
        return SensorResult(skip_reason=SkipReason(reason), cursor=new_cursor)
    return SensorResult(run_requests=requests, cursor=new_cursor)


def build_defs(settings: LakehouseSettings) -> Definitions:
    schedules = [
        *collections_schedule(
            "lake_maintenance_schedule",
            maintenance_job,
            settings.maintenance_cron,
            "Compacts and vacuums every registered collection's lake table in one run.",
        ),
        *collections_schedule(
            "merge_and_load_schedule",
            merge_job,
            settings.merge_cron,
            "Merges and loads every registered collection in one run (besides the sensor).",
        ),
    ]
    return Definitions(
        assets=[with_freshness(lake_table, settings), lake_table_maintenance],
        jobs=[merge_job, maintenance_job],
        sensors=[raw_batches_sensor],
        schedules=schedules,
    )
