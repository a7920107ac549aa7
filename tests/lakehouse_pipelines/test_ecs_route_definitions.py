"""The ECS route through the real code location: ``lakehouse_pipelines.definitions`` built with
``LAKEHOUSE_ECS_*`` set, its ``lake_table`` asset run over two collections in one run, one of them
routed to ECS (botocore's Stubber for ECS and CloudWatch Logs, the task run locally as a
subprocess) and the other on Lambda; and the route chosen by the size estimates."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from lakehouse_pipelines.definitions import build_definitions
from lakehouse_pipelines.defs import routing
from lakehouse_pipelines.defs.cdc_capture.definitions import cdc_raw_batches
from lakehouse_pipelines.defs.merge.definitions import LAKE_TABLE_KEY, lake_table
from lakehouse_pipelines.resources.ecs_pipes import EcsPipes
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import CaptureRequest, MergeRequest
from lambda_functions.lake import open_store
from lambda_functions.lake.raw_zone import RawZone
from lambda_functions.registry import CDC_CAPTURE, MERGE
from tests.lakehouse_pipelines.collection_runs import (
    materialize_collections,
    metadata_by_asset,
    register,
)
from tests.lakehouse_pipelines.ecs_task_runs import (
    CLUSTER,
    LOG_GROUP,
    REGION,
    SECURITY_GROUPS,
    SUBNETS,
    TASK_DEFINITION,
    StubbedEcsRoute,
)

ORDERS = "shop.orders"
CUSTOMERS = "shop.customers"
BOTH = [CUSTOMERS, ORDERS]  # registration (and range) order
TIMINGS = {"duration_seconds"}
ECS_ENVIRONMENT = {
    "LAKEHOUSE_ECS_CLUSTER": CLUSTER,
    "LAKEHOUSE_ECS_TASK_DEFINITION": TASK_DEFINITION,
    "LAKEHOUSE_ECS_SUBNETS": ",".join(SUBNETS),
    "LAKEHOUSE_ECS_SECURITY_GROUPS": ",".join(SECURITY_GROUPS),
    "LAKEHOUSE_ECS_LOG_GROUP": LOG_GROUP,
    "LAKEHOUSE_ECS_COLLECTIONS": ORDERS,
    "AWS_REGION": REGION,
}


def lake_settings(root: Path, **variables: str) -> LakehouseSettings:
    return LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(root), "LAKEHOUSE_DEMO_CHANGES": "60", **variables}
    )


@pytest.fixture(scope="module")
def captured_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake with one captured, unmerged batch of each collection (Lambda, local runtime)."""
    root = tmp_path_factory.mktemp("captured")
    result = materialize_collections(
        [cdc_raw_batches], lake_settings(root), DagsterInstance.ephemeral(), BOTH
    )
    assert result.success
    return root


def test_definitions_route_one_collection_to_ecs_and_the_other_to_lambda_in_one_run(
    captured_lake, tmp_path
):
    # Reference: both collections merged on Lambda, no ECS route configured.
    shutil.copytree(captured_lake, tmp_path / "lambda")
    by_lambda = materialize_collections(
        [lake_table],
        lake_settings(tmp_path / "lambda"),
        DagsterInstance.ephemeral(),
        BOTH,
    )
    assert by_lambda.success
    # The same lake through the code location's Definitions, shop.orders configured for ECS.
    shutil.copytree(captured_lake, tmp_path / "ecs")
    settings = lake_settings(tmp_path / "ecs", **ECS_ENVIRONMENT)
    defs = build_definitions(settings)
    assert isinstance(defs.resources["ecs_pipes"], EcsPipes)  # built from LAKEHOUSE_ECS_*
    route = StubbedEcsRoute(settings=replace(settings.ecs, poll_seconds=1, max_wait_seconds=60))
    route.expect_task("4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90")
    resources = {**defs.resources, "ecs_pipes": route.pipes}  # the stubbed ECS clients
    instance = DagsterInstance.ephemeral()
    register(instance, BOTH)
    lake_table_def = defs.get_assets_def(LAKE_TABLE_KEY)
    try:
        by_routes = materialize(
            [lake_table_def],
            resources=resources,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": BOTH[0],
                "dagster/asset_partition_range_end": BOTH[-1],
            },
            raise_on_error=False,
        )
    finally:
        resources["lambda_pipes"].lambda_client.close()
    assert by_routes.success
    assert len(instance.get_runs()) == 1
    route.assert_all_calls_made()
    (task,) = route.runs  # only shop.orders ran as a task
    assert task.exit_code == 0, task.stderr

    reference = metadata_by_asset(by_lambda)
    routed = metadata_by_asset(by_routes)
    orders = routed[f"{LAKE_TABLE_KEY}[{ORDERS}]"]
    customers = routed[f"{LAKE_TABLE_KEY}[{CUSTOMERS}]"]
    assert orders["route"] == "ecs" and "LAKEHOUSE_ECS_COLLECTIONS" in orders["route_reason"]
    assert orders["ecs/task_arn"].endswith("/4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90")
    assert "lambda/request_id" not in orders
    assert customers["route"] == "lambda" and "fits lakehouse-merge" in customers["route_reason"]
    assert "lambda/request_id" in customers and "ecs/task_arn" not in customers
    for namespace, metadata in ((ORDERS, orders), (CUSTOMERS, customers)):
        expected = reference[f"{LAKE_TABLE_KEY}[{namespace}]"]
        reported = {k for k in expected if not k.startswith("lambda/")}
        assert reported - TIMINGS, "the Lambda route reported no metadata"
        extra = {k for k in metadata if k.startswith(("lambda/", "ecs/", "route", "AWS ECS"))}
        assert set(metadata) - extra == reported, namespace
        for key in reported - TIMINGS:
            value = expected[key]
            if isinstance(value, str):
                value = value.replace(str(tmp_path / "lambda"), str(tmp_path / "ecs"))
            assert metadata[key] == value, (namespace, key)
    checks = {(c.check_name, c.passed) for c in by_routes.get_asset_check_evaluations()}
    assert checks == {("no_duplicate_keys", True)}


def test_merge_estimate_reads_the_pending_manifests_and_routes_by_it(
    captured_lake, tmp_path, monkeypatch
):
    shutil.copytree(captured_lake, tmp_path / "lake")
    settings = lake_settings(tmp_path / "lake", **ECS_ENVIRONMENT)
    request = MergeRequest(lake_uri=settings.lake_uri, database="shop", collection="customers")
    zone = RawZone(open_store(settings.lake_uri), "shop", "customers")
    raw_bytes = sum(manifest.bytes for manifest in zone.manifests())
    assert raw_bytes > 0

    memory, seconds = routing.estimate_request(settings, MERGE, request)
    assert memory == routing.PROCESS_BASE_BYTES + raw_bytes * routing.RAW_EXPANSION  # no table
    assert seconds == raw_bytes / routing.MERGE_BYTES_PER_SECOND
    runner = routing.routed_runner(settings, None, StubbedEcsRoute(settings=settings.ecs).pipes)
    route, reason = runner.choose(MERGE, request)
    assert route == "lambda" and f"estimated {memory / 2**20:,.0f} MB, 0 s" in reason
    # The same batches at a merge rate 10^6 times slower do not fit the 900 s timeout.
    monkeypatch.setattr(routing, "MERGE_BYTES_PER_SECOND", routing.MERGE_BYTES_PER_SECOND / 1e6)
    route, reason = runner.choose(MERGE, request)
    assert route == "ecs" and "estimated duration" in reason and "900 s timeout" in reason
    # Without the ECS route deployed, the asset does not route at all.
    assert routing.routed_runner(settings, None, None) is None
    # Once merged, nothing is pending; the table's partitions are read from its Delta log.
    merged = materialize_collections(
        [lake_table], lake_settings(tmp_path / "lake"), DagsterInstance.ephemeral(), CUSTOMERS
    )
    assert merged.success
    assert routing.estimate_request(settings, MERGE, request) == (None, None)
    partitions = routing.partition_bytes(open_store(settings.lake_uri), "shop", "customers")
    files = list((tmp_path / "lake" / "lake" / "tables" / "shop" / "customers").rglob("*.parquet"))
    assert partitions and all(name.startswith("_bucket=") is False for name in partitions)
    assert {f.parent.name.removeprefix("_bucket=") for f in files} == set(partitions)
    assert sum(partitions.values()) == sum(f.stat().st_size for f in files)
    # A new batch on top of the table: its bytes plus the largest partition it could touch.
    captured = materialize_collections(
        [cdc_raw_batches], lake_settings(tmp_path / "lake"), DagsterInstance.ephemeral(), CUSTOMERS
    )
    assert captured.success
    (pending,) = list(zone.manifests(after=1))
    memory, seconds = routing.estimate_request(settings, MERGE, request)
    largest = max(partitions.values())
    assert memory == (
        routing.PROCESS_BASE_BYTES
        + pending.bytes * routing.RAW_EXPANSION
        + largest * routing.TABLE_EXPANSION
    )
    assert seconds == (pending.bytes + largest) / routing.MERGE_BYTES_PER_SECOND


def test_snapshot_estimate_uses_the_configured_collection_size(tmp_path):
    settings = lake_settings(
        tmp_path,
        **ECS_ENVIRONMENT,
        LAKEHOUSE_COLLECTION_BYTES='{"shop.reviews": 100000000000, "shop.tags": 1000000}',
    )
    runner = routing.routed_runner(settings, None, StubbedEcsRoute(settings=settings.ecs).pipes)

    def capture(collection: str, **fields) -> CaptureRequest:
        return CaptureRequest(
            lake_uri=settings.lake_uri,
            database="shop",
            collection=collection,
            source_kind="embedded",
            source_location=settings.source_location,
            **fields,
        )

    # 100 GB at SNAPSHOT_BYTES_PER_SECOND is hours: an initial snapshot beyond one Lambda.
    route, reason = runner.choose(CDC_CAPTURE, capture("reviews"))
    assert route == "ecs" and "lakehouse-cdc-capture's 900 s timeout" in reason
    assert runner.choose(CDC_CAPTURE, capture("tags")).route == "lambda"
    # Unknown size (no figure, nothing captured yet): only the setting routes it.
    assert routing.estimate_request(settings, CDC_CAPTURE, capture("notes"))[1] is None
    assert runner.choose(CDC_CAPTURE, capture("notes")).route == "lambda"
    # A batch size whose peak memory does not fit the function's 1024 MB goes to ECS.
    route, reason = runner.choose(CDC_CAPTURE, capture("tags", max_bytes=512 * 2**20))
    assert route == "ecs" and "estimated memory" in reason


def test_settings_keep_the_ecs_route_and_refuse_half_of_it(tmp_path):
    settings = lake_settings(tmp_path, **ECS_ENVIRONMENT)
    assert settings.ecs.configured and settings.ecs.collections == frozenset({ORDERS})
    assert lake_settings(tmp_path).ecs.configured is False
    with pytest.raises(ValueError, match="LAKEHOUSE_ECS_TASK_DEFINITION"):
        lake_settings(tmp_path, LAKEHOUSE_ECS_CLUSTER=CLUSTER, LAKEHOUSE_ECS_SUBNETS="subnet-1")
    with pytest.raises(ValueError, match="LAKEHOUSE_COLLECTION_BYTES"):
        lake_settings(tmp_path, LAKEHOUSE_COLLECTION_BYTES='{"shop.orders": -1}')


def test_range_snapshot_runner_routes_each_of_its_invocations(tmp_path):
    from lakehouse_pipelines.defs.cdc_capture.range_snapshot import RangeSnapshotRunner

    settings = lake_settings(tmp_path, **ECS_ENVIRONMENT, LAKEHOUSE_SNAPSHOT_RANGES="8")
    ecs = StubbedEcsRoute(settings=settings.ecs).pipes
    lambda_pipes = object()
    runner, run = routing.step_runner(
        settings,
        lambda_pipes,
        ecs,
        lambda s, pipes, routed: RangeSnapshotRunner(pipes, s.fanout_concurrency, routed),
    )
    assert isinstance(runner, RangeSnapshotRunner) and run is None  # the runner routes itself
    assert runner._run.ecs_pipes is ecs
    assert routing.step_runner(settings, lambda_pipes, ecs)[0] is lambda_pipes
    assert routing.step_runner(settings, lambda_pipes, None) == (lambda_pipes, None)
    # A range invocation is estimated as one range of the collection.
    sized = lake_settings(
        tmp_path,
        **ECS_ENVIRONMENT,
        LAKEHOUSE_COLLECTION_BYTES='{"shop.reviews": 80000000000}',
    )
    request = CaptureRequest(
        lake_uri=sized.lake_uri, database="shop", collection="reviews", snapshot_ranges=8
    )
    seconds = routing.estimate_request(sized, CDC_CAPTURE, request)[1]
    assert seconds == 80_000_000_000 / 8 / routing.SNAPSHOT_BYTES_PER_SECOND
