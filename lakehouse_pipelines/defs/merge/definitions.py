"""Merge: raw batches upserted into the Delta lake table, started by new batches (sensor)."""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    DefaultSensorStatus,
    Definitions,
    MaterializeResult,
    ResourceParam,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)

from lakehouse_pipelines.defs.cdc_capture.definitions import CAPTURE_KEY
from lakehouse_pipelines.resources import LambdaPipes
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.registry import MERGE

LAKE_TABLE_KEY = "lake_table"


@asset(
    name=LAKE_TABLE_KEY,
    deps=[CAPTURE_KEY],
    group_name="lakehouse",
    kinds={"deltalake", "lambda", "s3"},
    check_specs=[
        AssetCheckSpec(
            "no_duplicate_keys",
            asset=LAKE_TABLE_KEY,
            description="No _id is stored twice in the partitions the merge touched.",
        )
    ],
    description=(
        "The Delta Lake table: every pending raw batch upserted by _id in one atomic commit, "
        "latest change wins, deletes applied; replayed batches are skipped. Runs in Lambda."
    ),
)
def lake_table(
    context: AssetExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    lambda_pipes: ResourceParam[LambdaPipes],
) -> MaterializeResult:
    request = MergeRequest(
        lake_uri=lakehouse.lake_uri, database=lakehouse.database, collection=lakehouse.collection
    )
    return lambda_pipes.run(context, MERGE, request)


merge_job = define_asset_job("merge_and_load_job", selection=[LAKE_TABLE_KEY, "warehouse_table"])


@sensor(
    job=merge_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Starts a merge (and load) run when new raw batches are published.",
)
def raw_batches_sensor(
    context: SensorEvaluationContext, lakehouse: ResourceParam[LakehouseSettings]
) -> SensorResult | SkipReason:
    """The cursor is the newest batch already handed to a run: a batch is never handed twice,
    and none is skipped (the merge applies *every* batch newer than the table's last one)."""
    last_seen = int(context.cursor or 0)
    zone = RawZone(open_store(lakehouse.lake_uri), lakehouse.database, lakehouse.collection)
    new = zone.batch_numbers(after=last_seen)
    if not new:
        return SkipReason(f"no raw batch after {last_seen} for {lakehouse.namespace}")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{lakehouse.namespace}:{new[0]}-{new[-1]}",
                tags={
                    "lakehouse/namespace": lakehouse.namespace,
                    "lakehouse/batches": f"{new[0]}-{new[-1]}",
                },
            )
        ],
        cursor=str(new[-1]),
    )


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(assets=[lake_table], jobs=[merge_job], sensors=[raw_batches_sensor])
