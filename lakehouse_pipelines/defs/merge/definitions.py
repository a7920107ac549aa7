"""Merge: raw batches upserted into the Delta lake table, started by new batches (sensor), and the
table's maintenance (compaction of cold partitions, vacuum) on its own schedule."""

import json

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    DefaultSensorStatus,
    Definitions,
    MaterializeResult,
    ResourceParam,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)
from pydantic import Field

from lakehouse_pipelines.defs.cdc_capture.definitions import CAPTURE_KEY
from lakehouse_pipelines.defs.collections import (
    collection_asset,
    collections_schedule,
    invoke_per_collection,
    registered_collections,
    request_fields,
)
from lakehouse_pipelines.defs.policies import with_freshness
from lakehouse_pipelines.resources import LambdaPipes
from lakehouse_pipelines.settings import LakehouseSettings, split_namespace
from lambda_functions.contracts import CompactRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.registry import LAKE_MAINTENANCE, MERGE

LAKE_TABLE_KEY = "lake_table"
MAINTENANCE_KEY = "lake_table_maintenance"


@collection_asset(
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
def lake_table(
    context: AssetExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    lambda_pipes: ResourceParam[LambdaPipes],
) -> MaterializeResult:
    return invoke_per_collection(
        context,
        lambda_pipes,
        lakehouse,
        MERGE,
        lambda key: MergeRequest(**request_fields(lakehouse, key)),
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


@collection_asset(
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
def lake_table_maintenance(
    context: AssetExecutionContext,
    config: MaintenanceConfig,
    lakehouse: ResourceParam[LakehouseSettings],
    lambda_pipes: ResourceParam[LambdaPipes],
) -> MaterializeResult:
    return invoke_per_collection(
        context,
        lambda_pipes,
        lakehouse,
        LAKE_MAINTENANCE,
        lambda key: CompactRequest(
            **request_fields(lakehouse, key),
            cold_after_hours=config.cold_after_hours,
            z_order=config.z_order,
            vacuum=config.vacuum,
            vacuum_retention_hours=lakehouse.vacuum_retention_hours,
            tombstone_retention_hours=lakehouse.tombstone_retention_hours,
            dry_run=config.dry_run,
        ),
    )


merge_job = define_asset_job(
    "merge_and_load_job",
    selection=[LAKE_TABLE_KEY, "warehouse_table"],
    description="Merges a collection's pending raw batches, then loads the changes.",
)
maintenance_job = define_asset_job("lake_maintenance_job", selection=[MAINTENANCE_KEY])


@sensor(
    job=merge_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts a merge (and load) run for each collection with new raw batches.",
)
def raw_batches_sensor(
    context: SensorEvaluationContext, lakehouse: ResourceParam[LakehouseSettings]
) -> SensorResult | SkipReason:
    """The cursor holds, per collection, the newest batch already handed to a run: a batch is
    never handed twice, and none is skipped (a merge applies *every* batch newer than the
    table's last one, so a run that fails is caught up by the next)."""
    cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    store = open_store(lakehouse.lake_uri)
    requests = []
    problems = []
    for namespace in registered_collections(context.instance):
        last_seen = cursor.get(namespace, 0)
        try:  # one collection that cannot be read (a bad key, a listing error) skips only itself
            new = RawZone(store, *split_namespace(namespace)).batch_numbers(after=last_seen)
        except Exception as error:
            problems.append(f"{namespace}: its raw batches could not be listed: {error}")
            context.log.warning(f"raw_batches_sensor skipped {problems[-1]}")
            continue
        if not new:
            continue
        requests.append(
            RunRequest(
                run_key=f"{namespace}:{new[0]}-{new[-1]}",
                partition_key=namespace,
                tags={"lakehouse/batches": f"{new[0]}-{new[-1]}"},
            )
        )
        cursor[namespace] = new[-1]
    if not requests:
        return SkipReason(
            "; ".join(problems) if problems else "no new raw batch in any registered collection"
        )
    return SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


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
