"""The one list of Lambda functions: name, handler, timeout, memory and configured variables.

The AWS deployment (template in ``deploy/``) and the local Lambda runtime both read these
specs, so a function is called by the same name everywhere and its handler sees the same
configured environment variables (``function_environment``) in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from lambda_functions.errors import TerminalError

V = TypeVar("V")

# Configured on every deployed function (the handlers' EMF metrics read it).
COMMON_ENVIRONMENT: tuple[str, ...] = ("LAKEHOUSE_METRICS_NAMESPACE",)
# PII masking (cdc_capture.edge_masking): where the HMAC key of hashed fields lives, a Secrets
# Manager secret (AWS) or the key itself (local only). The rules travel in the requests, except
# for the MQ function, which an event source invokes: it reads LAKEHOUSE_MASKING too.
MASKING_KEY_ENVIRONMENT: tuple[str, ...] = (
    "LAKEHOUSE_MASKING_KEY",
    "LAKEHOUSE_MASKING_KEY_SECRET_ARN",
)


class FunctionConfigurationError(TerminalError, ValueError):
    """A function is configured with a variable the deployment supplies no value for."""


@dataclass(frozen=True)
class FunctionSpec:
    """How a function is deployed: the same fields a Lambda function configuration has
    (AWS Lambda API Reference, "CreateFunction": FunctionName, Handler, Timeout, MemorySize,
    Description, Environment).

    Attributes:
        name: the function's name, the same in AWS and in the local Lambda runtime.
        handler: ``"package.module.attribute"``, as in Lambda's Handler setting.
        timeout_s: seconds an invocation may run (Lambda allows 1 to 900).
        memory_mb: memory in MB (Lambda allows 128 to 10,240; CPU grows with it).
        description: one line shown in the console and the deploy template.
        environment: the names of the function's configured environment variables (its
            ``Environment.Variables``); each deployment supplies their values
            (``function_environment``).
    """

    name: str
    handler: str
    timeout_s: int = 900
    memory_mb: int = 1024
    description: str = ""
    environment: tuple[str, ...] = ()


def function_environment(spec: FunctionSpec, values: Mapping[str, V]) -> dict[str, V]:
    """The function's ``Environment.Variables``: each variable ``spec.environment`` names, with
    its value from ``values``.

    Args:
        spec: the function.
        values: variable name -> value the deployment supplies (a CloudFormation expression in
            the deploy template, the local settings' value in the local runtime); extra names
            are ignored.

    Returns:
        ``{name: value}`` for exactly the variables ``spec.environment`` names, in its order.

    Raises:
        FunctionConfigurationError: (a ``ValueError``) a variable the deployment cannot supply
            (never silently left out); the message lists the missing and the supplied names.
    """
    missing = [name for name in spec.environment if name not in values]
    if missing:
        raise FunctionConfigurationError(
            f"function {spec.name} is configured with {missing}, but this deployment supplies "
            f"no value for them (it supplies {sorted(values)})"
        )
    return {name: values[name] for name in spec.environment}


CDC_CAPTURE = FunctionSpec(
    name="lakehouse-cdc-capture",
    handler="lambda_functions.cdc_capture.handler.handler",
    timeout_s=900,
    memory_mb=1024,
    environment=(*COMMON_ENVIRONMENT, *MASKING_KEY_ENVIRONMENT),
    description="Captures DocumentDB changes into the S3 raw zone as atomic batches.",
)
MERGE = FunctionSpec(
    name="lakehouse-merge",
    handler="lambda_functions.merge.handler.handler",
    timeout_s=900,
    memory_mb=3008,
    environment=(*COMMON_ENVIRONMENT, "LAKEHOUSE_MERGE_SEGMENT_BYTES"),
    description="Upserts pending raw batches into the Delta lake table (latest change wins).",
)
LAKE_MAINTENANCE = FunctionSpec(
    name="lakehouse-lake-maintenance",
    handler="lambda_functions.merge.maintenance_handler.handler",
    timeout_s=900,
    memory_mb=3008,
    environment=COMMON_ENVIRONMENT,
    description="Compacts the lake table's cold partitions (z-order by _id) and vacuums "
    "unreferenced files.",
)
WAREHOUSE_LOAD = FunctionSpec(
    name="lakehouse-warehouse-load",
    handler="lambda_functions.warehouse_load.handler.handler",
    timeout_s=900,
    memory_mb=2048,
    environment=COMMON_ENVIRONMENT,
    description="Loads the lake table's changes into the warehouse in one transaction.",
)

DMS_INGEST = FunctionSpec(
    name="lakehouse-dms-ingest",
    handler="lambda_functions.cdc_capture.dms_handler.handler",
    timeout_s=900,
    memory_mb=2048,
    environment=(*COMMON_ENVIRONMENT, *MASKING_KEY_ENVIRONMENT),
    description="Ingests AWS DMS output files (full load + CDC) into the S3 raw zone as batches.",
)
MQ_INGEST = FunctionSpec(
    name="lakehouse-mq-ingest",
    handler="lambda_functions.cdc_capture.mq_handler.handler",
    timeout_s=300,
    memory_mb=1024,
    # an event-source mapping invokes it with the broker's messages: its lake comes from here
    environment=(
        *COMMON_ENVIRONMENT,
        "LAKEHOUSE_LAKE_URI",
        "LAKEHOUSE_MASKING",
        *MASKING_KEY_ENVIRONMENT,
    ),
    description="Amazon MQ / SQS event source: change-event messages into the raw zone.",
)
SOURCE_AUDIT = FunctionSpec(
    name="lakehouse-source-audit",
    handler="lambda_functions.cdc_capture.audit_handler.handler",
    timeout_s=900,
    memory_mb=2048,
    environment=(*COMMON_ENVIRONMENT, *MASKING_KEY_ENVIRONMENT),
    description="Audits a collection: the source (read from a secondary) against its lake "
    "table, by key-hash bucket.",
)
COLLECTION_DISCOVERY = FunctionSpec(
    name="lakehouse-collection-discovery",
    handler="lambda_functions.cdc_capture.discovery_handler.handler",
    timeout_s=60,
    memory_mb=512,
    environment=COMMON_ENVIRONMENT,
    description="Lists a source database's collections for the code location's discovery "
    "(the source credentials stay on the Lambda side).",
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
        COLLECTION_DISCOVERY,
    )
}
