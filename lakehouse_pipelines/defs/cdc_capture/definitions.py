"""CDC capture: DocumentDB changes into the raw zone, one atomic batch per run; and the source
audit, the check that compares the source collection with its lake table (it reads the source, so
its function lives with capture's)."""

from typing import Any

from dagster import (
    AssetCheckSpec,
    Config,
    Definitions,
    define_asset_job,
)
from pydantic import Field

from lakehouse_pipelines.defs.cdc_capture.range_snapshot import RangeSnapshotRunner
from lakehouse_pipelines.defs.collections import (
    collections_schedule,
    lambda_collection_asset,
    request_fields,
)
from lakehouse_pipelines.settings import LakehouseSettings
from lambda_functions.contracts import CaptureRequest, DmsIngestRequest, SourceAuditRequest
from lambda_functions.registry import CDC_CAPTURE, SOURCE_AUDIT

CAPTURE_KEY = "cdc_raw_batches"
LAKE_TABLE_KEY = "lake_table"  # the merge stage's asset, which the source audit checks
SOURCE_AUDIT_KEY = "source_audit"
LAKE_MATCHES_SOURCE = "lake_matches_source"


class CaptureConfig(Config):
    """Run config of ``cdc_raw_batches`` (launchpad: ``ops: {cdc_raw_batches: {config: ...}}``)."""

    reset: bool = Field(
        default=False,
        description=(
            "Re-snapshot the collection: publish a batch marked dropped (the merge starts a new "
            "table generation), then load the whole collection again. The fix for an expired "
            "resume token; nothing is lost or duplicated."
        ),
    )


cdc_raw_batches = lambda_collection_asset(
    CDC_CAPTURE,
    lambda lakehouse, key, config: capture_request(lakehouse, key, reset=config.reset),
    CaptureConfig,
    runner_for=lambda lakehouse, lambda_pipes: (
        RangeSnapshotRunner(lambda_pipes, lakehouse.fanout_concurrency)
        if lakehouse.snapshot_ranges > 1
        else lambda_pipes
    ),
    name=CAPTURE_KEY,
    group_name="lakehouse",
    kinds={"documentdb", "lambda", "s3"},
    check_specs=[
        AssetCheckSpec(
            "batch_verified",
            asset=CAPTURE_KEY,
            description="The batch just published re-reads with matching checksums and row count.",
        ),
        AssetCheckSpec(
            "cdc_lag",
            asset=CAPTURE_KEY,
            description=(
                "The capture position is no more than LAKEHOUSE_MAX_CDC_LAG_SECONDS behind the "
                "source when the run ends (0 when the change stream was drained)."
            ),
        ),
    ],
    description=(
        "Changes captured from the DocumentDB change stream (initial snapshot first) into the "
        "raw zone as numbered batches: data files, then a manifest. One partition per "
        "collection; runs in Lambda. Materialize with run config reset: true to re-snapshot."
    ),
)


def capture_request(lakehouse: LakehouseSettings, namespace: str, *, reset: bool) -> CaptureRequest:
    return CaptureRequest(
        **request_fields(lakehouse, namespace),
        **source_fields(lakehouse),
        demo_changes=lakehouse.demo_changes,
        reset=reset,
        auto_resnapshot=lakehouse.auto_resnapshot,
        max_cdc_lag_seconds=lakehouse.max_cdc_lag_seconds,
        stream_retention_seconds=lakehouse.change_stream_retention_seconds,
        masking=lakehouse.masking_of(namespace),
        masking_key_secret_arn=lakehouse.masking_key_secret_arn,
        full_document="updateLookup" if lakehouse.update_lookup else "default",
        snapshot_ranges=lakehouse.snapshot_ranges,
    )


def dms_request(lakehouse: LakehouseSettings, namespace: str, dms_uri: str) -> DmsIngestRequest:
    """The ``lakehouse-dms-ingest`` request for one collection's DMS folder, with the DMS S3
    endpoint's ``CsvDelimiter`` from ``LAKEHOUSE_DMS_CSV_DELIMITER``."""
    return DmsIngestRequest(
        **request_fields(lakehouse, namespace),
        dms_uri=dms_uri,
        csv_delimiter=lakehouse.dms_csv_delimiter,
        masking=lakehouse.masking_of(namespace),
        masking_key_secret_arn=lakehouse.masking_key_secret_arn,
    )


source_audit = lambda_collection_asset(
    SOURCE_AUDIT,
    lambda lakehouse, key, _config: audit_request(lakehouse, key),
    name=SOURCE_AUDIT_KEY,
    deps=[LAKE_TABLE_KEY],
    group_name="verification",
    kinds={"documentdb", "deltalake", "lambda"},
    check_specs=[
        AssetCheckSpec(
            LAKE_MATCHES_SOURCE,
            asset=SOURCE_AUDIT_KEY,
            description=(
                "The lake table holds what the source collection holds: per key-hash bucket the "
                "same count and hash of (record key, document), compared as of the change-stream "
                "position the lake has reached (keys changed since are in flight; differences "
                "are re-read before they are reported). Fails (ERROR) naming missing, extra and "
                "different keys; warns when it could not audit, with the reason."
            ),
        )
    ],
    description=(
        "The source audit of each collection's lake table, run in Lambda (reading the source "
        "from a secondary): figures of the last audit (buckets compared, counts, in-flight "
        "keys, differences, sampled rate). Samples LAKEHOUSE_AUDIT_BUCKETS_PER_RUN of 64 key "
        "buckets per run, continuing where the last run stopped. Changes no data."
    ),
)


def audit_request(lakehouse: LakehouseSettings, namespace: str) -> SourceAuditRequest:
    """The audit of one collection: capture's source settings, never the demo workload."""
    return SourceAuditRequest(
        **request_fields(lakehouse, namespace),
        **source_fields(lakehouse),
        buckets_per_run=lakehouse.audit_buckets_per_run,
        masking=lakehouse.masking_of(namespace),
        masking_key_secret_arn=lakehouse.masking_key_secret_arn,
    )


def source_fields(lakehouse: LakehouseSettings) -> dict[str, Any]:
    """Where the source is and how to reach it (``SourceRequest``'s fields): capture and the
    audit read the same source."""
    return {
        "source_kind": lakehouse.source_kind,
        "source_location": lakehouse.source_location,
        "secret_arn": lakehouse.documentdb_secret_arn,
        "tls": lakehouse.documentdb_tls,
        "tls_ca_file": lakehouse.documentdb_ca_file,
    }


capture_job = define_asset_job("cdc_capture_job", selection=[CAPTURE_KEY])
source_audit_job = define_asset_job(
    "source_audit_job",
    selection=[SOURCE_AUDIT_KEY],
    description="Audits the registered collections' lake tables against their sources.",
)


def build_defs(settings: LakehouseSettings) -> Definitions:
    return Definitions(
        assets=[cdc_raw_batches, source_audit],
        jobs=[capture_job, source_audit_job],
        schedules=[
            *collections_schedule(
                "cdc_capture_schedule",
                capture_job,
                settings.capture_cron,
                "Captures every registered collection in one run (fanned out across Lambdas).",
            ),
            *collections_schedule(
                "source_audit_schedule",
                source_audit_job,
                settings.audit_cron,
                "Audits every registered collection against its source in one run.",
            ),
        ],
    )
