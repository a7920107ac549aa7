"""CDC capture: DocumentDB changes into the raw zone, one atomic batch per run."""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    Definitions,
    MaterializeResult,
    ResourceParam,
    ScheduleDefinition,
    asset,
    define_asset_job,
)

from lakehouse_pipelines.resources import LambdaPipes
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import CaptureRequest
from lambda_functions.registry import CDC_CAPTURE

CAPTURE_KEY = "cdc_raw_batches"


@asset(
    name=CAPTURE_KEY,
    group_name="lakehouse",
    kinds={"documentdb", "lambda", "s3"},
    check_specs=[
        AssetCheckSpec(
            "batch_verified",
            asset=CAPTURE_KEY,
            description="The batch just published re-reads with matching checksums and row count.",
        )
    ],
    description=(
        "Changes captured from the DocumentDB change stream (initial snapshot first) into the "
        "raw zone as numbered batches: data files, then a manifest. Runs in Lambda."
    ),
)
def cdc_raw_batches(
    context: AssetExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    lambda_pipes: ResourceParam[LambdaPipes],
) -> MaterializeResult:
    request = CaptureRequest(
        lake_uri=lakehouse.lake_uri,
        database=lakehouse.database,
        collection=lakehouse.collection,
        source_kind=lakehouse.source_kind,
        source_location=lakehouse.source_location,
        demo_changes=lakehouse.demo_changes,
    )
    return lambda_pipes.run(context, CDC_CAPTURE, request)


capture_job = define_asset_job("cdc_capture_job", selection=[CAPTURE_KEY])


def capture_schedule(cron: str) -> ScheduleDefinition:
    return ScheduleDefinition(name="cdc_capture_schedule", job=capture_job, cron_schedule=cron)


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(
        assets=[cdc_raw_batches],
        jobs=[capture_job],
        schedules=[capture_schedule(settings.capture_cron)],
    )
