"""One bad collection fails only itself: a request that cannot be built is a failed partition
of the run (the others are invoked), and a bad partition key or raw-zone folder is a warning of
the sensor tick or the register job (the others are registered or handed to runs)."""

from __future__ import annotations

import json

from dagster import (
    BackfillPolicy,
    DagsterInstance,
    ResourceParam,
    SkipReason,
    StaticPartitionsDefinition,
    asset,
    build_sensor_context,
    materialize,
)

from lakehouse_local.lambda_runtime import LocalLambdaRuntime
from lakehouse_pipelines.defs.collections import (
    collections_sensor,
    discover,
    invoke_per_collection,
    registered_collections,
    request_fields,
)
from lakehouse_pipelines.defs.merge.definitions import raw_batches_sensor
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.resources.lambda_pipes import LambdaPipes
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import RawZone, open_store
from tests.lakehouse_pipelines.collection_runs import register
from tests.lakehouse_pipelines.test_lambda_fan_out import SPEC, CountingClient
from tests.lambda_functions.raw_batches import JAN, key, publish

KEYS = ["db.a", "db.b", "bad key.c", "db.d"]


@asset(
    name="probe",
    partitions_def=StaticPartitionsDefinition(KEYS),
    backfill_policy=BackfillPolicy.single_run(),
)
def probe(
    context, lambda_pipes: ResourceParam[LambdaPipes], lakehouse: ResourceParam[LakehouseSettings]
):
    def request_for(namespace: str) -> MergeRequest:
        return MergeRequest(**request_fields(lakehouse, namespace))  # raises for "bad key.c"

    return invoke_per_collection(context, lambda_pipes, lakehouse, SPEC, request_for)


def test_a_request_that_cannot_be_built_fails_its_partition_and_the_others_are_invoked(tmp_path):
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    with LocalLambdaRuntime({SPEC.name: SPEC}) as runtime:
        client = CountingClient(runtime)
        result = materialize(
            [probe],
            resources={"lambda_pipes": LambdaPipes.local(client), "lakehouse": settings},
            instance=DagsterInstance.ephemeral(),
            tags={
                "dagster/asset_partition_range_start": KEYS[0],
                "dagster/asset_partition_range_end": KEYS[-1],
            },
            raise_on_error=False,
        )
    assert not result.success
    assert client.calls == 3  # db.a, db.b, db.d
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "1 of 4 partitions failed: bad key.c: collection: database 'bad key' is not a valid" in (
        message
    )
    assert failure.event_specific_data.user_failure_data.metadata["failed_partitions"].value == [
        "bad key.c"
    ]


def test_a_bad_raw_zone_folder_is_reported_and_the_other_collections_are_registered(tmp_path):
    settings = LakehouseSettings.from_env(
        {"LAKEHOUSE_ROOT": str(tmp_path), "LAKEHOUSE_COLLECTIONS": "shop.orders"}
    )
    store = open_store(settings.lake_uri)
    publish(RawZone(store, "has space", "orders"), [(key(JAN, 1), "insert", 1, "{}")])
    publish(RawZone(store, "dms", "invoices"), [(key(JAN, 2), "insert", 1, "{}")])

    discovery = discover(settings)
    assert discovery.collections == ["dms.invoices", "shop.orders"]
    (problem,) = discovery.problems
    assert problem.startswith("raw-zone folder raw/has space/orders/ is not registered")
    assert "database name 'has space'" in problem and "spaces" in problem

    instance = DagsterInstance.ephemeral()
    context = build_sensor_context(instance=instance, resources=build_resources(settings))
    (request,) = collections_sensor(context).dynamic_partitions_requests
    assert list(request.partition_keys) == ["dms.invoices", "shop.orders"]
    instance.add_dynamic_partitions("collections", list(request.partition_keys))
    again = collections_sensor(
        build_sensor_context(instance=instance, resources=build_resources(settings))
    )
    assert isinstance(again, SkipReason) and "raw/has space/orders/" in again.skip_message


def test_a_failing_source_listing_does_not_stop_the_configured_collections(tmp_path):
    settings = LakehouseSettings.from_env(
        {
            "LAKEHOUSE_ROOT": str(tmp_path),
            "LAKEHOUSE_COLLECTIONS": "shop.orders,crm.*",
            "LAKEHOUSE_SOURCE": "documentdb",
            "LAKEHOUSE_SOURCE_LOCATION": "UNSET_DOCDB_URI_FOR_TEST",
        }
    )
    from lakehouse_pipelines.definitions import build_definitions

    instance = DagsterInstance.ephemeral()
    result = (
        build_definitions(settings)
        .resolve_job_def("register_collections")
        .execute_in_process(instance=instance)
    )
    assert result.success
    assert registered_collections(instance) == ["shop.orders"]
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    (withheld,) = event.event_specific_data.metadata["withheld"].value
    assert "'crm.*' failed" in withheld


def test_a_bad_registered_key_does_not_stop_the_raw_batches_sensor(tmp_path):
    settings = LakehouseSettings.from_env({"LAKEHOUSE_ROOT": str(tmp_path)})
    instance = DagsterInstance.ephemeral()
    register(instance, ["no-dot-key", "shop.orders"])
    publish(
        RawZone(open_store(settings.lake_uri), "shop", "orders"), [(key(JAN, 1), "insert", 1, "{}")]
    )

    def tick(cursor):
        context = build_sensor_context(
            cursor=cursor, resources={"lakehouse": settings}, instance=instance
        )
        return raw_batches_sensor(context)

    result = tick(None)
    assert [(r.run_key, r.partition_key) for r in result.run_requests] == [
        ("shop.orders:1-1", "shop.orders")
    ]
    assert json.loads(result.cursor)["shop.orders"]["batch"] == 1
    skipped = tick(result.cursor)
    assert not skipped.run_requests and isinstance(skipped.skip_reason, SkipReason)
    assert "no-dot-key: its raw batches could not be listed" in skipped.skip_reason.skip_message
    assert "must be 'database.collection'" in skipped.skip_reason.skip_message
