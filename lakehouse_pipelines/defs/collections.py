"""Collections as dynamic partitions: the "hopper" fan-out over many collections.

Every stage asset that runs in Lambda is partitioned by collection (``database.collection``).
Partitions are registered, never guessed: ``collections_sensor`` (running by default) adds every
collection it discovers, and ``register_collections`` does the same once, for a first run without
the daemon (the README's quick start). Discovery unions three sources:

- the configured names in ``LAKEHOUSE_COLLECTIONS``;
- ``database.*`` patterns there, expanded by listing the source's collections;
- the raw zone: every collection that already has batches (DMS or MQ ingestion writes them
  without a capture asset ever running).

Work over many collections runs as *one* run whose step fans out one Lambda invocation per
collection with at most ``LAKEHOUSE_FANOUT_CONCURRENCY`` at once (``BackfillPolicy.single_run``
plus ``LambdaPipes.run_partitions``), and every step that invokes Lambda holds a slot of the
``lakehouse_lambda`` pool: pool slots x fan-out stays below the functions' reserved concurrency.
"""

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    Config,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    ResourceParam,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    job,
    op,
    schedule,
    sensor,
)

from lakehouse_pipelines.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from lakehouse_pipelines.defs.policies import LAMBDA_RETRY_POLICY
from lakehouse_pipelines.resources import LambdaPipes, build_resources
from lakehouse_pipelines.resources.lambda_failures import (
    REFUSED_INVOKE_HINTS,
    FunctionCallError,
)
from lakehouse_pipelines.settings import LakehouseSettings, split_namespace
from lakehouse_pipelines.warehouse_names import assign_warehouse_tables
from lambda_functions.contracts import (
    CollectionRequest,
    DiscoveryRequest,
    closest_names,
    name_problem,
)
from lambda_functions.errors import TerminalError
from lambda_functions.lake import list_namespaces, open_store
from lambda_functions.registry import COLLECTION_DISCOVERY, FunctionSpec

COLLECTIONS = DynamicPartitionsDefinition(name="collections")
# One run covers many collections (its step fans out), instead of one run per collection.
FAN_OUT = BackfillPolicy.single_run()
# Steps that invoke Lambda hold a slot of this pool (limit in deploy/dagster.yaml).
LAMBDA_POOL = "lakehouse_lambda"


def single_run_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], AssetsDefinition]:
    """``@asset`` that joins a single run over many collections.

    ``backfill_policy`` is marked beta in Dagster 1.13; its warning is silenced here (the policy
    is what makes a backfill one fanned-out run) so loading the code location stays quiet."""

    def decorate(fn: Callable[..., Any]) -> AssetsDefinition:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BetaWarning)
            return asset(backfill_policy=FAN_OUT, **kwargs)(fn)

    return decorate


def collection_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], AssetsDefinition]:
    """``@asset`` for a stage that runs in Lambda: one partition per collection, a single run
    over many collections, a slot of the Lambda pool per step, and ``LAMBDA_RETRY_POLICY``
    (transient failures retried with backoff, terminal ones never)."""
    return single_run_asset(
        partitions_def=COLLECTIONS, pool=LAMBDA_POOL, retry_policy=LAMBDA_RETRY_POLICY, **kwargs
    )


def request_fields(settings: LakehouseSettings, namespace: str) -> dict[str, str]:
    """The fields every collection request starts with: the lake, the database, the collection."""
    database, collection = split_namespace(namespace)
    return {"lake_uri": settings.lake_uri, "database": database, "collection": collection}


def invoke_per_collection(
    context: AssetExecutionContext,
    lambda_pipes: LambdaPipes,
    settings: LakehouseSettings,
    spec: FunctionSpec,
    request_for: Callable[[str], CollectionRequest],
) -> MaterializeResult:
    """Invoke ``spec`` once per collection the step covers (fanned out, bounded).

    Each request is built and validated on its own: a collection whose request cannot be built
    (a bad partition key, a refused warehouse table, a misconfiguration that only it hits) is
    a failed partition named with its reason, and the other collections are still invoked."""
    requests: dict[str, CollectionRequest] = {}
    unbuilt: dict[str, Exception] = {}
    for key in context.partition_keys:
        try:
            request = request_for(key)
            request.validate()
        except Exception as error:
            unbuilt[key] = error
            continue
        requests[key] = request
    return lambda_pipes.run_partitions(
        context, spec, requests, max_concurrency=settings.fanout_concurrency, unbuilt=unbuilt
    )


class NoStageConfig(Config):
    """The run config of a stage that takes none."""


def lambda_collection_asset(
    spec: FunctionSpec,
    request_for: Callable[[LakehouseSettings, str, Any], CollectionRequest],
    config_type: type[Config] = NoStageConfig,
    *,
    runner_for: Callable[[LakehouseSettings, LambdaPipes], Any] | None = None,
    **asset_kwargs: Any,
) -> AssetsDefinition:
    """A ``collection_asset`` whose step only invokes ``spec`` once per collection it covers
    (``invoke_per_collection``).

    Args:
        spec: the Lambda function to invoke.
        request_for: ``(settings, namespace, config) -> request`` for one collection; ``config``
            is the run's ``config_type`` value.
        config_type: the asset's run config (launchpad: ``ops: {<name>: {config: ...}}``).
        runner_for: ``(settings, lambda_pipes) -> runner`` when the step fans out through
            something else with ``LambdaPipes.run_partitions``'s signature (the range snapshot's
            runner); ``None`` runs through ``lambda_pipes`` itself.
        **asset_kwargs: as for ``collection_asset``; ``name`` is required (the asset's key and
            its function's name).

    Returns:
        The asset, needing the resources ``lakehouse`` and ``lambda_pipes``.
    """

    def invoke(
        context: AssetExecutionContext,
        config: config_type,  # type: ignore[valid-type]
        lakehouse: ResourceParam[LakehouseSettings],
        lambda_pipes: ResourceParam[LambdaPipes],
    ) -> MaterializeResult:
        runner = runner_for(lakehouse, lambda_pipes) if runner_for else lambda_pipes
        return invoke_per_collection(
            context, runner, lakehouse, spec, lambda key: request_for(lakehouse, key, config)
        )

    invoke.__name__ = invoke.__qualname__ = asset_kwargs["name"]
    return collection_asset(**asset_kwargs)(invoke)


class DiscoveryError(TerminalError, RuntimeError):
    """A source listing failed; the message names the pattern, the cause and the fix."""


def list_source_collections(
    settings: LakehouseSettings, database: str, lambda_pipes: LambdaPipes
) -> list[str]:
    """The collections the source has in ``database`` (for ``database.*`` patterns, and to
    catch a misspelt name), listed by the ``lakehouse-collection-discovery`` function.

    The listing runs in the data plane (a RequestResponse invoke through ``lambda_pipes``'s
    Lambda client: the local runtime locally, boto3 in AWS), so the code location never holds
    the source's credentials. The embedded source also counts the demo collections, which its
    demo workload creates on their first capture.

    Args:
        settings: the source to list (kind, location, secret ARN, TLS settings) and the lake.
        database: the database whose collections are listed.
        lambda_pipes: the Lambda client the assets use.

    Returns:
        Collection names without the database, sorted (``DiscoveryRequest``'s reply).

    Raises:
        DiscoveryError: the function failed (the source is unreachable or refused the listing,
            the function is not deployed, the request is invalid), naming the cause and the fix.
    """
    request = DiscoveryRequest(
        lake_uri=settings.lake_uri,
        database=database,
        source_kind=settings.source_kind,
        source_location=settings.source_location,
        secret_arn=settings.documentdb_secret_arn,
        tls=settings.documentdb_tls,
        tls_ca_file=settings.documentdb_ca_file,
    )
    try:
        reply = lambda_pipes.call(COLLECTION_DISCOVERY, request.to_event())
    except FunctionCallError as error:
        fix = (
            "the function did not run (see the fix above)"
            if error.error_type in REFUSED_INVOKE_HINTS
            else "the function could not list the source: check LAKEHOUSE_SOURCE, "
            "LAKEHOUSE_DOCUMENTDB_SECRET_ARN, or the URI variable LAKEHOUSE_SOURCE_LOCATION "
            "names (configured on the function, not on the code location)"
        )
        raise DiscoveryError(f"{error} ({fix})") from None
    collections = reply.get("collections") if isinstance(reply, dict) else None
    if not isinstance(collections, list):
        raise DiscoveryError(
            f"{COLLECTION_DISCOVERY.name} replied {reply!r}, not {{'collections': [...]}}: "
            "deploy matching versions of the code location and the Lambda functions"
        )
    return sorted(str(name) for name in collections)


@dataclass(frozen=True)
class Discovery:
    """What discovery found, and what it could not use (each with its reason and fix)."""

    collections: list[str] = field(default_factory=list)  # sorted
    problems: list[str] = field(default_factory=list)
    # Configured names the source does not have (registered all the same: capture then fails
    # for them naming the closest names), each with the closest existing names.
    unknown: list[str] = field(default_factory=list)


def discover(settings: LakehouseSettings, lambda_pipes: LambdaPipes | None = None) -> Discovery:
    """Every collection to keep, sorted: configured, listed from the source, found in the lake.

    A pattern whose listing fails, or a raw-zone folder that is not a valid collection name, is
    a problem of its own: the rest is still discovered (and registered). Read-only: nothing is
    registered here (``collections_sensor`` and ``register_collections`` register).

    Args:
        settings: ``LAKEHOUSE_COLLECTIONS`` (names and ``database.*`` patterns), the source and
            the lake.
        lambda_pipes: the Lambda client that runs ``lakehouse-collection-discovery`` (the
            ``lambda_pipes`` resource); ``None`` builds the environment's own for this call
            (``build_resources``) and closes it afterwards.

    Returns:
        ``Discovery``: the collections (``database.collection``, sorted, each once), the
        problems (each naming its pattern or folder and the fix), and the configured names the
        source does not have (each with the closest names it has).

    Raises:
        Nothing for a failed listing (it is a problem of the result); ``SettingsError`` or
        ``MissingAwsSettingError`` only when ``lambda_pipes`` is ``None`` and the environment's
        Lambda client cannot be built.
    """
    with _lambda_pipes_for(settings, lambda_pipes) as pipes:
        return _discover(settings, pipes)


@contextmanager
def _lambda_pipes_for(
    settings: LakehouseSettings, lambda_pipes: LambdaPipes | None
) -> Iterator[LambdaPipes]:
    if lambda_pipes is not None:
        yield lambda_pipes
        return
    built: LambdaPipes = build_resources(settings)["lambda_pipes"]
    try:
        yield built
    finally:
        built.close()


def _discover(settings: LakehouseSettings, lambda_pipes: LambdaPipes) -> Discovery:
    found: set[str] = set()
    problems: list[str] = []
    named: list[str] = []
    for pattern in settings.collections:
        database, collection = split_namespace(pattern)
        if collection != "*":
            found.add(pattern)
            named.append(pattern)
            continue
        try:
            found.update(
                f"{database}.{name}"
                for name in list_source_collections(settings, database, lambda_pipes)
            )
        except Exception as error:
            problems.append(
                f"listing the collections of {database!r} for LAKEHOUSE_COLLECTIONS pattern "
                f"{pattern!r} failed: {error}. Check the source connection settings, or list "
                "the collections by name."
            )
    raw_zone = list_namespaces(open_store(settings.lake_uri))
    for namespace in raw_zone:
        database, _, collection = namespace.partition(".")
        problem = name_problem(database) or name_problem(collection)
        if problem:
            problems.append(
                f"raw-zone folder raw/{database}/{collection}/ is not registered: "
                f"{'database' if name_problem(database) else 'collection'} name "
                f"{(database if name_problem(database) else collection)!r} is not usable "
                f"({problem}). Move its batches under a plain name (letters, digits, '_' or '-')"
            )
            continue
        found.add(namespace)
    unknown = _not_in_source(settings, lambda_pipes, [ns for ns in named if ns not in raw_zone])
    return Discovery(sorted(found), problems, unknown)


def _not_in_source(
    settings: LakehouseSettings, lambda_pipes: LambdaPipes, namespaces: list[str]
) -> list[str]:
    """A warning for each configured collection the source does not list, naming the closest
    names it has (a typo such as ``shop.ordrs``). Collections that already have raw-zone
    batches (DMS, MQ) are not asked about; a listing that fails warns nothing (the capture of
    the collection will say what is wrong)."""
    warnings = []
    listed: dict[str, list[str] | None] = {}
    for namespace in namespaces:
        database, collection = split_namespace(namespace)
        if database not in listed:
            try:
                listed[database] = list_source_collections(settings, database, lambda_pipes)
            except Exception:
                listed[database] = None
        existing = listed[database]
        if existing is None or collection in existing:
            continue
        close = [f"{database}.{name}" for name in closest_names(collection, existing)]
        warnings.append(
            f"LAKEHOUSE_COLLECTIONS names {namespace}, which the source does not have "
            + (
                f"(closest: {', '.join(close)})"
                if close
                else f"(database {database!r} has: {', '.join(existing) or 'no collection'})"
            )
            + "; its capture will fail until the name is fixed or the collection exists"
        )
    return warnings


def discover_collections(
    settings: LakehouseSettings, lambda_pipes: LambdaPipes | None = None
) -> list[str]:
    """``discover``'s collections; raises ``DiscoveryError`` with every problem if any."""
    discovery = discover(settings, lambda_pipes)
    if discovery.problems:
        raise DiscoveryError(" ".join(discovery.problems))
    return discovery.collections


def registered_collections(instance: DagsterInstance) -> list[str]:
    return list(COLLECTIONS.get_partition_keys(dynamic_partitions_store=instance))


def all_collections_run(instance: DagsterInstance, run_key: str | None = None) -> RunRequest | None:
    """One run over every registered collection (a range over all of them), or None if none."""
    keys = registered_collections(instance)
    if not keys:
        return None
    return RunRequest(
        run_key=run_key,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )


def collections_schedule(
    name: str, job_def: Any, cron: str, description: str
) -> list[ScheduleDefinition]:
    """A schedule whose every tick is one run over all registered collections (off until turned
    on in the UI), or none when ``cron`` is empty. ``job_def`` is what ``define_asset_job``
    returns (its class is not public Dagster API)."""
    if not cron:
        return []

    @schedule(
        name=name,
        job=job_def,
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.STOPPED,
        description=description,
    )
    def _schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        request = all_collections_run(context.instance)
        if request is None:
            return SkipReason("no collection is registered yet: see collections_sensor")
        return request

    return [_schedule]


def _new_collections(
    instance: DagsterInstance, settings: LakehouseSettings, lambda_pipes: LambdaPipes
) -> tuple[list[str], list[str], list[str]]:
    """Collections to register, what was withheld, and configured names the source does not
    have (registered, with a warning naming the closest names). Withheld, each with its reason
    and fix: a
    collection whose warehouse table is taken (names compared as the warehouses fold them) or
    is not a name the warehouse accepts, a pattern whose listing failed, a raw-zone folder that
    is not a collection name. None of them keeps the others from being registered."""
    known = registered_collections(instance)
    discovery = discover(settings, lambda_pipes)
    # Registered collections keep their tables; among new ones that would share a table, the
    # one named in lower case (as the warehouse will show the table), else the first by name.
    candidates = sorted(
        (key for key in discovery.collections if key not in known),
        key=lambda key: (key != key.lower(), key),
    )
    assigned = assign_warehouse_tables(settings, [*known, *candidates])
    new = sorted(key for key in candidates if key in assigned.tables)
    withheld = [
        f"{key} is not registered: {assigned.refused[key]}"
        for key in candidates
        if key in assigned.refused
    ]
    return new, [*discovery.problems, *withheld], discovery.unknown


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Registers a partition for every collection discovered: LAKEHOUSE_COLLECTIONS, "
        "database.* patterns listed from the source, and collections with raw-zone batches."
    ),
)
def collections_sensor(
    context: SensorEvaluationContext,
    lakehouse: ResourceParam[LakehouseSettings],
    lambda_pipes: ResourceParam[LambdaPipes],
) -> SensorResult | SkipReason:
    new, withheld, unknown = _new_collections(context.instance, lakehouse, lambda_pipes)
    for reason in [*withheld, *unknown]:
        context.log.warning(reason)
    if not new:
        return SkipReason("; ".join(withheld) or "no new collection")
    context.log.info(f"registering {len(new)} collections: {', '.join(new)}")
    return SensorResult(dynamic_partitions_requests=[COLLECTIONS.build_add_request(new)])


@op(
    description="Registers the discovered collections as partitions (what collections_sensor does)."
)
def discover_and_register(
    context: OpExecutionContext,
    lakehouse: ResourceParam[LakehouseSettings],
    lambda_pipes: ResourceParam[LambdaPipes],
) -> None:
    new, withheld, unknown = _new_collections(context.instance, lakehouse, lambda_pipes)
    for reason in [*withheld, *unknown]:
        context.log.warning(reason)
    if new:
        context.instance.add_dynamic_partitions(COLLECTIONS.name, new)
    registered = registered_collections(context.instance)
    context.log.info(f"registered {len(new)} new collections; {len(registered)} in all")
    context.add_output_metadata(
        {
            "new_collections": MetadataValue.json(new),
            "withheld": MetadataValue.json(withheld),
            "not_in_source": MetadataValue.json(unknown),
            "collections": MetadataValue.json(registered),
            "collection_count": MetadataValue.int(len(registered)),
        }
    )


@job(
    name="register_collections",
    description=(
        "Registers every discovered collection as a partition, once. The collections_sensor "
        "does this continuously when the daemon runs; use this for a first run without it."
    ),
)
def register_collections() -> None:
    discover_and_register()


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(sensors=[collections_sensor], jobs=[register_collections])
