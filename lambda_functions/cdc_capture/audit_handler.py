"""Lambda ``lakehouse-source-audit``: compare a collection's source with its lake table.

Thin by design: parse the request, open the source with ``secondaryPreferred`` reads (the audit
must not load the primary; capture's reads are unchanged), call ``audit_source``, report the
audit's figures (buckets compared, counts, missing/extra/different counts and sample keys, the
sampled rate, the duration) as the ``source_audit`` materialization and as its asset check
``lake_matches_source``: ERROR with the keys when the lake differs, WARN with the reason when the
run could not audit. It lives beside capture because it needs the
same network reach and credentials as capture (the cluster's VPC, the DocumentDB secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import closing
from typing import Any

from lambda_functions.cdc_capture.change_source import open_source
from lambda_functions.cdc_capture.source_audit import READ_PREFERENCE, audit_source
from lambda_functions.contracts import SourceAuditRequest
from lambda_functions.pipes import open_pipes, without_pipes_keys

CHECK_NAME = "lake_matches_source"


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    with open_pipes(event) as pipes:
        request = SourceAuditRequest.from_event(without_pipes_keys(event))
        with closing(open_source(request, read_preference=READ_PREFERENCE)) as source:
            result = audit_source(
                request,
                source=source,
                deadline=lambda: context.get_remaining_time_in_millis() / 1000,
                on_progress=pipes.log.info,
            )
        metadata = result.metadata(request.sample_keys)
        for line in result.findings(request.sample_keys):
            pipes.log.warning(line)
        pipes.report_asset_materialization(metadata=metadata)
        pipes.report_asset_check(
            check_name=CHECK_NAME,
            passed=result.passed,
            severity=result.severity,
            metadata=metadata,
        )
        return {
            "status": result.status,
            "passed": result.passed,
            "missing": len(result.missing),
            "extra": len(result.extra),
            "different": len(result.different),
        }
