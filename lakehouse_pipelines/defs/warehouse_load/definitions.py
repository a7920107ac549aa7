"""Warehouse load: the lake table's changes into Redshift (DuckDB locally), transactionally."""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    Definitions,
    MaterializeResult,
    ResourceParam,
    asset,
)

from lakehouse_pipelines.defs.merge.definitions import LAKE_TABLE_KEY
from lakehouse_pipelines.resources import LambdaPipes
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import LoadRequest
from lambda_functions.registry import WAREHOUSE_LOAD

WAREHOUSE_TABLE_KEY = "warehouse_table"


@asset(
    name=WAREHOUSE_TABLE_KEY,
    deps=[LAKE_TABLE_KEY],
    group_name="lakehouse",
    kinds={"redshift", "lambda"},
    check_specs=[
        AssetCheckSpec(
            "matches_lake_table",
            asset=WAREHOUSE_TABLE_KEY,
            description=(
                "The warehouse table holds exactly the lake table's keys at the loaded version: "
                "same count, no duplicates, no missing or extra keys."
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
    request = LoadRequest(
        lake_uri=lakehouse.lake_uri,
        database=lakehouse.database,
        collection=lakehouse.collection,
        warehouse_kind=lakehouse.warehouse_kind,
        warehouse_location=lakehouse.duckdb_path,
        target_schema=lakehouse.warehouse_schema,
    )
    return lambda_pipes.run(context, WAREHOUSE_LOAD, request)


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(assets=[warehouse_table])
