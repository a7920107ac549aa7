"""Resources: the only place where the local and AWS environments differ."""

from __future__ import annotations

import json
from typing import Any

from lakehouse_pipelines.resources.ecs_pipes import EcsPipes
from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lakehouse_pipelines.resources.metrics_sink import (
    CloudWatchMetrics,
    LakeMetricsTable,
    Metric,
    MetricsSink,
)
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.lake import open_store


def local_function_values(settings: LakehouseSettings) -> dict[str, str]:
    """The local deployment's value of every variable a ``FunctionSpec`` may list in its
    ``environment`` (the deploy template's ``VARIABLE_VALUES`` give the AWS ones): the local
    runtime hands each function exactly the variables its spec lists, with these values."""
    return {
        "LAKEHOUSE_METRICS_NAMESPACE": settings.metrics_namespace,
        "LAKEHOUSE_LAKE_URI": settings.lake_uri,
        "LAKEHOUSE_MASKING": json.dumps(settings.masking),
        "LAKEHOUSE_MASKING_KEY": settings.masking_key,
        "LAKEHOUSE_MASKING_KEY_SECRET_ARN": settings.masking_key_secret_arn,
        "LAKEHOUSE_MERGE_SEGMENT_BYTES": settings.merge_segment_bytes,
    }


def build_resources(settings: LakehouseSettings) -> dict[str, Any]:
    """Resources for ``settings``: the same keys in both environments, different implementations.

    Args:
        settings: the code location's settings (``LakehouseSettings.from_env()``).

    Returns:
        ``{"lakehouse": settings, "lambda_pipes": LambdaPipes, "metrics_sink": MetricsSink,
        "ecs_pipes": EcsPipes | None}``: ``ecs_pipes`` is ``None`` unless
        ``LAKEHOUSE_ECS_CLUSTER`` is set (then ECS and CloudWatch Logs clients of ``AWS_REGION``,
        in either environment). Nothing is contacted here.

    Raises:
        MissingAwsSettingError: an AWS client is needed and no region is configured.
    """
    if settings.is_aws:
        lambda_pipes = LambdaPipes.aws(
            pipes_bucket=settings.pipes_bucket,
            region=settings.aws_region,
            function_prefix=settings.function_prefix,
            price_per_gb_second=settings.lambda_price_per_gb_second,
        )
        metrics: MetricsSink = CloudWatchMetrics(
            settings.metrics_namespace, region=settings.aws_region
        )
    else:
        from lakehouse_local.lambda_runtime import LocalLambdaRuntime

        runtime = LocalLambdaRuntime(
            log_dir=settings.root / "lambda-logs",
            variables=local_function_values(settings),
            region=settings.aws_region or None,  # as functions deployed in that region see it
        )
        lambda_pipes = LambdaPipes.local(
            runtime, price_per_gb_second=settings.lambda_price_per_gb_second
        )  # local functions keep their registry names, no prefix
        metrics = LakeMetricsTable(open_store(settings.lake_uri))
    ecs_pipes = EcsPipes.aws(settings.ecs, settings.aws_region) if settings.ecs.configured else None
    return {
        "lakehouse": settings,
        "lambda_pipes": lambda_pipes,
        "metrics_sink": metrics,
        "ecs_pipes": ecs_pipes,
    }


__all__ = [
    "CloudWatchMetrics",
    "EcsPipes",
    "LakeMetricsTable",
    "LambdaPipes",
    "Metric",
    "MetricsSink",
    "build_resources",
    "local_function_values",
]
