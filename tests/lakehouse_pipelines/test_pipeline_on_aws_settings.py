"""The pipeline with the AWS settings: lake, Pipes messages and CloudWatch on moto (its server in
its own process, as Delta on S3 needs), the local Lambda runtime standing in for Lambda."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import boto3
from dagster import DagsterInstance

from lakehouse_local.lambda_runtime import LocalLambdaRuntime
from lakehouse_pipelines.defs.cdc_capture.definitions import cdc_raw_batches
from lakehouse_pipelines.defs.merge.definitions import lake_table
from lakehouse_pipelines.defs.warehouse_load.definitions import warehouse_table
from lakehouse_pipelines.resources import build_resources, local_function_values
from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lakehouse_pipelines.resources.pipes_messages import PIPES_MESSAGE_PREFIX
from lakehouse_pipelines.settings import LakehouseSettings
from tests.lakehouse_pipelines.collection_runs import materialize_collections
from tests.lakehouse_pipelines.test_pipeline_end_to_end import (
    ORDERS,
    source_documents,
    warehouse_documents,
)

ASSETS = [cdc_raw_batches, lake_table, warehouse_table]


def aws_settings(env: dict[str, str], root: Path, **overrides: str) -> LakehouseSettings:
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return LakehouseSettings.from_env(
        {
            **env,
            "LAKEHOUSE_ENV": "aws",
            "LAKEHOUSE_ROOT": str(root),
            "LAKEHOUSE_LAKE_URI": f"s3://{bucket}/lake",
            "LAKEHOUSE_COLLECTIONS": ORDERS,
            "LAKEHOUSE_SOURCE": "embedded",  # the source and warehouse stay local stand-ins
            "LAKEHOUSE_SOURCE_LOCATION": str(root / "source.sqlite"),
            "LAKEHOUSE_DEMO_CHANGES": "60",
            "LAKEHOUSE_WAREHOUSE": "duckdb",
            "LAKEHOUSE_DUCKDB_PATH": str(root / "warehouse.duckdb"),
            **overrides,
        }
    )


def run_on_aws_settings(settings: LakehouseSettings, env: dict[str, str]):
    resources = build_resources(settings)
    with LocalLambdaRuntime(
        environment=env, variables=local_function_values(settings)
    ) as aws_like_lambda:
        resources["lambda_pipes"] = LambdaPipes.aws(
            pipes_bucket=settings.pipes_bucket,
            lambda_client=aws_like_lambda,
            s3_client=boto3.client("s3"),
            function_prefix=settings.function_prefix,
        )
        instance = DagsterInstance.ephemeral()
        result = materialize_collections(ASSETS, settings, instance, ORDERS, resources=resources)
        return result, instance.all_logs(result.run_id)


def message_objects(bucket: str) -> int:
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{PIPES_MESSAGE_PREFIX}/")
    return listed["KeyCount"]


def test_a_run_on_aws_settings_loads_the_source_and_leaves_no_message_behind(
    aws_process_env, tmp_path
):
    settings = aws_settings(aws_process_env, tmp_path)
    for _ in range(2):  # the second run loads incrementally, through the feed on S3
        result, _ = run_on_aws_settings(settings, aws_process_env)
        assert result.success
    assert warehouse_documents(settings) == source_documents(settings)
    give_up = time.monotonic() + 30  # messages are deleted just after each step, off its path
    while message_objects(settings.pipes_bucket) and time.monotonic() < give_up:
        time.sleep(0.1)
    assert message_objects(settings.pipes_bucket) == 0


def test_a_missing_function_on_aws_settings_fails_the_step_with_the_fix(aws_process_env, tmp_path):
    settings = aws_settings(aws_process_env, tmp_path, LAKEHOUSE_FUNCTION_PREFIX="staging-")
    result, logs = run_on_aws_settings(settings, aws_process_env)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert "'staging-lakehouse-cdc-capture' does not exist" in message
    assert "LAKEHOUSE_FUNCTION_PREFIX" in message
    warnings = [e.user_message for e in logs if e.level == logging.WARNING]
    assert not [w for w in warnings if "[pipes]" in w]
