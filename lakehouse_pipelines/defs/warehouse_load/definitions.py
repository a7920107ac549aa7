"""Warehouse load: the lake table's changes into Redshift (DuckDB locally), transactionally."""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    Definitions,
    Failure,
    MaterializeResult,
    ResourceParam,
    define_asset_job,
)

from lakehouse_pipelines.defs.collections import (
    collection_asset,
    collections_schedule,
    invoke_per_collection,
    registered_collections,
    request_fields,
)
from lakehouse_pipelines.defs.merge.definitions import LAKE_TABLE_KEY
from lakehouse_pipelines.defs.policies import with_freshness
from lakehouse_pipelines.resources import LambdaPipes
from lakehouse_pipelines.settings import LakehouseSettings
from lakehouse_pipelines.warehouse_names import WarehouseTables, assign_warehouse_tables
from lambda_functions.contracts import InvalidRequestError, LoadRequest
from lambda_functions.registry import WAREHOUSE_LOAD

WAREHOUSE_TABLE_KEY = "warehouse_table"


@collection_asset(
    name=WAREHOUSE_TABLE_KEY,
    deps=[LAKE_TABLE_KEY],
    group_name="lakehouse",
    kinds={"redshift", "lambda"},
    check_specs=[
        AssetCheckSpec(
            "matches_lake_table",
            asset=WAREHOUSE_TABLE_KEY,
            description=(
                "The warehouse table holds exactly the lake table's rows at the loaded version: "
                "same count, no duplicate keys, and per hashed key bucket the same keys at the "
                "same change position; failing buckets and sample keys are in the metadata."
            ),
        )
    ],
    description=(
        "The warehouse copy: changes since the last loaded lake version staged, changed keys "
        "deleted, upserts inserted and the loaded version recorded, in one transaction."
    ),
)
def warehouse_table(
    context: AssetExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    lambda_pipes: ResourceParam[LambdaPipes],
) -> MaterializeResult:
    # Tables are handed out in registration order, as at registration: a collection registered
    # before names were compared folded, whose table another one already has, fails alone.
    registered = registered_collections(context.instance)
    tables = assign_warehouse_tables(
        lakehouse, [*registered, *(k for k in context.partition_keys if k not in registered)]
    )
    return invoke_per_collection(
        context,
        lambda_pipes,
        lakehouse,
        WAREHOUSE_LOAD,
        lambda key: load_request(lakehouse, key, tables),
    )


def load_request(
    lakehouse: LakehouseSettings, namespace: str, tables: WarehouseTables | None = None
) -> LoadRequest:
    """The load request from the settings, checked here so a misconfigured Redshift connection or
    projection, or a warehouse table the collection cannot have (see
    ``lakehouse_pipelines.warehouse_names``), fails in Dagster with the fix, before a Lambda
    is invoked. ``tables`` is the assignment over every registered collection (default: this
    collection alone)."""
    tables = tables or assign_warehouse_tables(lakehouse, [namespace])
    if namespace not in tables.tables:
        raise Failure(
            description=f"warehouse load of {namespace} refused: {tables.refused[namespace]}"
        )
    request = LoadRequest(
        **request_fields(lakehouse, namespace),
        warehouse_kind=lakehouse.warehouse_kind,
        warehouse_location=lakehouse.duckdb_path,
        target_schema=lakehouse.warehouse_schema,
        target_table=tables.tables[namespace],
        projection=dict(lakehouse.warehouse_projection),
        redshift_database=lakehouse.redshift_database,
        redshift_workgroup=lakehouse.redshift_workgroup,
        redshift_cluster=lakehouse.redshift_cluster,
        redshift_db_user=lakehouse.redshift_db_user,
        redshift_secret_arn=lakehouse.redshift_secret_arn,
        redshift_iam_role=lakehouse.redshift_iam_role,
        redshift_timeout_s=lakehouse.redshift_timeout_seconds,
        history=lakehouse.keeps_history(namespace),
    )
    try:
        request.validate()
    except InvalidRequestError as error:
        raise Failure(description=f"warehouse load is misconfigured: {error}") from None
    return request


load_job = define_asset_job("warehouse_load_job", selection=[WAREHOUSE_TABLE_KEY])


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(
        assets=[with_freshness(warehouse_table, settings)],
        jobs=[load_job],
        schedules=collections_schedule(
            "warehouse_load_schedule",
            load_job,
            settings.load_cron,
            "Loads every registered collection's changes in one run.",
        ),
    )
