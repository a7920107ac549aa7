"""The one list of Lambda functions: name, handler, timeout and memory.

The AWS deployment (template in ``deploy/``) and the local Lambda runtime both read these
specs, so a function is called by the same name everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionSpec:
    """How a function is deployed: the same fields a Lambda function configuration has."""

    name: str
    handler: str  # "package.module.attribute", as in Lambda's Handler setting
    timeout_s: int = 900
    memory_mb: int = 1024
    description: str = ""


CDC_CAPTURE = FunctionSpec(
    name="lakehouse-cdc-capture",
    handler="lambda_functions.cdc_capture.handler.handler",
    timeout_s=900,
    memory_mb=1024,
    description="Captures DocumentDB changes into the S3 raw zone as atomic batches.",
)
MERGE = FunctionSpec(
    name="lakehouse-merge",
    handler="lambda_functions.merge.handler.handler",
    timeout_s=900,
    memory_mb=3008,
    description="Upserts pending raw batches into the Delta lake table (latest change wins).",
)
LAKE_MAINTENANCE = FunctionSpec(
    name="lakehouse-lake-maintenance",
    handler="lambda_functions.merge.maintenance_handler.handler",
    timeout_s=900,
    memory_mb=3008,
    description="Compacts the lake table's cold partitions (z-order by _id) and vacuums "
    "unreferenced files.",
)
WAREHOUSE_LOAD = FunctionSpec(
    name="lakehouse-warehouse-load",
    handler="lambda_functions.warehouse_load.handler.handler",
    timeout_s=900,
    memory_mb=2048,
    description="Loads the lake table's changes into the warehouse in one transaction.",
)

DMS_INGEST = FunctionSpec(
    name="lakehouse-dms-ingest",
    handler="lambda_functions.cdc_capture.dms_handler.handler",
    timeout_s=900,
    memory_mb=2048,
    description="Ingests AWS DMS output files (full load + CDC) into the S3 raw zone as batches.",
)
MQ_INGEST = FunctionSpec(
    name="lakehouse-mq-ingest",
    handler="lambda_functions.cdc_capture.mq_handler.handler",
    timeout_s=300,
    memory_mb=1024,
    description="Amazon MQ / SQS event source: change-event messages into the raw zone.",
)
SOURCE_AUDIT = FunctionSpec(
    name="lakehouse-source-audit",
    handler="lambda_functions.cdc_capture.audit_handler.handler",
    timeout_s=900,
    memory_mb=2048,
    description="Audits a collection: the source (read from a secondary) against its lake "
    "table, by key-hash bucket.",
)

FUNCTIONS: dict[str, FunctionSpec] = {
    spec.name: spec
    for spec in (
        CDC_CAPTURE,
        MERGE,
        LAKE_MAINTENANCE,
        WAREHOUSE_LOAD,
        DMS_INGEST,
        MQ_INGEST,
        SOURCE_AUDIT,
    )
}
