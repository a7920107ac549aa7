"""The ECS route: ``EcsPipes`` through ``PipesECSClient`` against the ECS and CloudWatch Logs APIs
under botocore's Stubber, the task run locally through ``python -m lambda_functions.ecs_task``."""

import shutil
from pathlib import Path

import pytest
from botocore.stub import ANY
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    DagsterInstance,
    MaterializeResult,
    ResourceParam,
)

from lakehouse_pipelines.defs.cdc_capture.definitions import CAPTURE_KEY, cdc_raw_batches
from lakehouse_pipelines.defs.collections import collection_asset, request_fields
from lakehouse_pipelines.defs.merge.definitions import LAKE_TABLE_KEY, lake_table
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.resources.ecs_pipes import (
    EcsPipes,
    EcsRouteSettings,
    EcsSettingsError,
    TaskMessagesReader,
)
from lakehouse_pipelines.resources.routes import RoutedRunner
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import MergeRequest
from lambda_functions.registry import MERGE
from tests.lakehouse_pipelines.collection_runs import materialize_collections, metadata_by_asset
from tests.lakehouse_pipelines.ecs_task_runs import (
    CLUSTER,
    LOG_GROUP,
    StubbedEcsRoute,
    route_settings,
)

ORDERS = "shop.orders"
# Figures that differ between any two runs, whatever the route: wall time.
TIMINGS = {"duration_seconds"}


@collection_asset(
    name=LAKE_TABLE_KEY,
    deps=[CAPTURE_KEY],
    group_name="lakehouse",
    check_specs=[AssetCheckSpec("no_duplicate_keys", asset=LAKE_TABLE_KEY)],
)
def lake_table_routed(
    context: AssetExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    routes: ResourceParam[RoutedRunner],
) -> MaterializeResult:
    """``lake_table``'s merge on the route ``RoutedRunner`` chooses per collection."""
    (key,) = context.partition_keys
    return routes(context, MERGE, MergeRequest(**request_fields(lakehouse, key)))


def routed(settings: LakehouseSettings, route: StubbedEcsRoute) -> dict:
    """Resources for ``lake_table_routed``: the local Lambda runtime and the Stubbed ECS route."""
    lambda_pipes = build_resources(settings)["lambda_pipes"]
    return {"lakehouse": settings, "routes": RoutedRunner(lambda_pipes, route.pipes)}


def lake_settings(root: Path) -> LakehouseSettings:
    return LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(root), "LAKEHOUSE_DEMO_CHANGES": "60"})


@pytest.fixture(scope="module")
def captured_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake with one captured, unmerged batch of shop.orders (Lambda route, local runtime)."""
    root = tmp_path_factory.mktemp("captured")
    result = materialize_collections(
        [cdc_raw_batches], lake_settings(root), DagsterInstance.ephemeral(), ORDERS
    )
    assert result.success
    return root


def copy_of(lake: Path, to: Path) -> LakehouseSettings:
    shutil.copytree(lake, to)
    return lake_settings(to)


def test_merge_on_ecs_reports_the_same_metadata_as_on_lambda(captured_lake, tmp_path):
    on_lambda = copy_of(captured_lake, tmp_path / "lambda")
    on_ecs = copy_of(captured_lake, tmp_path / "ecs")
    by_lambda = materialize_collections(
        [lake_table], on_lambda, DagsterInstance.ephemeral(), ORDERS
    )
    route = StubbedEcsRoute()
    route.expect_task("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    resources = routed(on_ecs, route)
    try:
        by_ecs = materialize_collections(
            [lake_table_routed], on_ecs, DagsterInstance.ephemeral(), ORDERS, resources=resources
        )
    finally:
        resources["routes"].lambda_pipes.lambda_client.close()
    assert by_lambda.success and by_ecs.success
    route.assert_all_calls_made()
    (run,) = route.runs
    assert run.exit_code == 0, run.stderr

    lambda_meta = metadata_by_asset(by_lambda)[LAKE_TABLE_KEY]
    ecs_meta = metadata_by_asset(by_ecs)[LAKE_TABLE_KEY]
    reported = {k for k in lambda_meta if not k.startswith("lambda/")}
    assert reported - TIMINGS, "the Lambda route reported no metadata"
    assert set(ecs_meta) == reported | {
        "route",
        "route_reason",
        "ecs/task_arn",
        "AWS ECS Task URL",
    }
    for key in reported - TIMINGS:
        expected = lambda_meta[key]
        if isinstance(expected, str):
            expected = expected.replace(str(tmp_path / "lambda"), str(tmp_path / "ecs"))
        assert ecs_meta[key] == expected, key
    assert ecs_meta["route"] == "ecs"
    assert "LAKEHOUSE_ECS_COLLECTIONS" in ecs_meta["route_reason"]
    assert ecs_meta["ecs/task_arn"].endswith("/0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert (
        "ecs/v2/clusters/lakehouse/tasks/0f1e2d3c4b5a69788796a5b4c3d2e1f0"
        in (ecs_meta["AWS ECS Task URL"])
    )
    lambda_checks = {c.check_name: c for c in by_lambda.get_asset_check_evaluations()}
    ecs_checks = {c.check_name: c for c in by_ecs.get_asset_check_evaluations()}
    assert set(ecs_checks) == set(lambda_checks) == {"no_duplicate_keys"}
    for name, check in ecs_checks.items():
        assert check.passed and lambda_checks[name].passed
        for key, value in check.metadata.items():
            if key != "AWS ECS Task URL":  # PipesECSClient adds it to every reported result
                assert lambda_checks[name].metadata[key] == value


def test_task_gets_the_pipes_bootstrap_and_request_in_its_container_overrides(
    captured_lake, tmp_path
):
    settings = copy_of(captured_lake, tmp_path / "ecs")
    route = StubbedEcsRoute()
    route.expect_task("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d")
    instance = DagsterInstance.ephemeral()
    result = materialize_collections(
        [lake_table_routed],
        settings,
        instance,
        ORDERS,
        resources={"lakehouse": settings, "routes": RoutedRunner(None, route.pipes)},
    )
    assert result.success
    (overrides,) = route.overrides
    (container,) = overrides["containerOverrides"]
    assert {v["name"] for v in container["environment"]} == {
        "DAGSTER_PIPES_CONTEXT",
        "DAGSTER_PIPES_MESSAGES",
    }
    # the handler's Pipes log messages reached the step through the task's log stream
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("-> version" in message for message in logs), logs
    route.assert_all_calls_made()


def test_interrupted_step_stops_the_task(captured_lake, tmp_path):
    settings = copy_of(captured_lake, tmp_path / "ecs")
    route = StubbedEcsRoute()
    route.expect_task("2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e", interrupt_wait=True)
    result = materialize_collections(
        [lake_table_routed],
        settings,
        DagsterInstance.ephemeral(),
        ORDERS,
        resources={"lakehouse": settings, "routes": RoutedRunner(None, route.pipes)},
    )
    assert not result.success
    route.assert_all_calls_made()  # StopTask was called, with the cluster and the task ARN


def test_task_that_exits_non_zero_fails_the_step_naming_its_log(tmp_path):
    settings = lake_settings(tmp_path)  # no captured batch and no lake: the merge still runs
    route = StubbedEcsRoute()
    route.expect_task("3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f")
    # built without validation, so the handler is the one that refuses it
    bad = MergeRequest(lake_uri=str(tmp_path / "lake"), database="shop", collection="orders$")

    @collection_asset(name="bad_merge", group_name="lakehouse")
    def bad_merge(context: AssetExecutionContext) -> MaterializeResult:
        return route.pipes.run(context, MERGE.name, bad, route_reason="test")

    result = materialize_collections(
        [bad_merge], settings, DagsterInstance.ephemeral(), ORDERS, resources={}
    )
    assert not result.success
    (run,) = route.runs
    # a terminal error exits with EX_DATAERR (65), and the step is not retried
    assert run.exit_code == 65 and "InvalidRequestError" in "\n".join(run.stderr)
    (failure,) = result.get_step_failure_events()
    description = failure.step_failure_data.error.message
    assert "exit code 65" in description and LOG_GROUP in description
    route.assert_all_calls_made()


def test_route_refuses_to_run_unconfigured():
    pipes = EcsPipes(settings=EcsRouteSettings(), ecs_client=None, logs_client=None)
    request = MergeRequest(lake_uri="/tmp/lake", database="shop", collection="orders")
    with pytest.raises(EcsSettingsError, match="LAKEHOUSE_ECS_CLUSTER"):
        pipes.run(None, MERGE.name, request)


def test_settings_from_env():
    settings = EcsRouteSettings.from_env(
        {
            "LAKEHOUSE_ECS_CLUSTER": CLUSTER,
            "LAKEHOUSE_ECS_TASK_DEFINITION": "lakehouse-data-plane-task:3",
            "LAKEHOUSE_ECS_SUBNETS": "subnet-1, subnet-2",
            "LAKEHOUSE_ECS_SECURITY_GROUPS": "sg-1",
            "LAKEHOUSE_ECS_LOG_GROUP": LOG_GROUP,
            "LAKEHOUSE_ECS_COLLECTIONS": "shop.orders,stats.games",
        }
    )
    assert settings == route_settings(
        task_definition="lakehouse-data-plane-task:3",
        subnets=("subnet-1", "subnet-2"),
        security_groups=("sg-1",),
        collections=frozenset({"shop.orders", "stats.games"}),
        poll_seconds=6,
        max_wait_seconds=24 * 3600,
    )
    assert settings.missing() == []
    assert EcsRouteSettings.from_env({}).missing() == [
        "LAKEHOUSE_ECS_CLUSTER",
        "LAKEHOUSE_ECS_TASK_DEFINITION",
        "LAKEHOUSE_ECS_SUBNETS",
    ]


def test_reader_pages_through_the_task_log_and_adds_no_log_tailer():
    route = StubbedEcsRoute()
    reader = TaskMessagesReader(route.logs, interval=1)
    reader.on_launched({"extras": {"log_group": LOG_GROUP, "log_stream": "ecs/lakehouse-task/t1"}})
    where = {"logGroupName": LOG_GROUP, "logStreamName": "ecs/lakehouse-task/t1", "startTime": ANY}
    route.logs_stub.add_response(
        "get_log_events",
        {
            "events": [{"timestamp": 1, "message": '{"__dagster_pipes_version": "0.1"}'}],
            "nextForwardToken": "f/1",
        },
        where,
    )
    route.logs_stub.add_response(
        "get_log_events", {"events": [], "nextForwardToken": "f/1"}, {**where, "nextToken": "f/1"}
    )
    assert reader.download_messages(None, {}) == ("f/1", '{"__dagster_pipes_version": "0.1"}')
    assert reader.download_messages("f/1", {}) is None  # nothing new yet
    reader.add_log_reader(object())
    assert reader.log_readers == {}
    route.assert_all_calls_made()


def test_collection_not_configured_for_ecs_stays_on_lambda_and_says_so(captured_lake, tmp_path):
    settings = copy_of(captured_lake, tmp_path / "lambda")
    route = StubbedEcsRoute(settings=route_settings(collections=frozenset({"shop.customers"})))
    resources = routed(settings, route)
    try:
        result = materialize_collections(
            [lake_table_routed], settings, DagsterInstance.ephemeral(), ORDERS, resources=resources
        )
    finally:
        resources["routes"].lambda_pipes.lambda_client.close()
    assert result.success
    metadata = metadata_by_asset(result)[LAKE_TABLE_KEY]
    assert metadata["route"] == "lambda" and "lakehouse-merge" in metadata["route_reason"]
    assert "lambda/request_id" in metadata and "ecs/task_arn" not in metadata
    route.assert_all_calls_made()  # ECS was not called


def test_estimate_beyond_the_function_sends_the_request_to_ecs_only_if_configured():
    request = MergeRequest(lake_uri="/tmp/lake", database="shop", collection="orders")
    huge = RoutedRunner(
        None, StubbedEcsRoute(settings=route_settings(collections=frozenset())).pipes
    )
    huge.estimate = lambda spec, request: (20 * 2**30, None)
    assert huge.choose(MERGE, request).route == "ecs"
    huge.ecs_pipes = None
    route, reason = huge.choose(MERGE, request)
    assert route == "lambda" and "no ECS route is configured" in reason
