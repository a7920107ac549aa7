"""Lambda ``lakehouse-collection-discovery``: list the collections of one source database.

Thin by design: parse the ``DiscoveryRequest``, call ``list_collections``, return the names. The
Dagster sensor invokes it synchronously (RequestResponse) and reads the returned JSON; there is
no Pipes session, since no asset is materialized. It lives beside capture because it needs the same
network reach and credentials as capture (the cluster's VPC, the DocumentDB secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambda_functions.cdc_capture.discovery import list_collections
from lambda_functions.contracts import DiscoveryRequest


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Args: event: a ``collection_discovery`` request (``DiscoveryRequest.to_event()``);
    context: the Lambda context (unused).

    Returns: ``{"database": str, "collections": [str, ...]}``, the names sorted.

    Raises: ``InvalidRequestError`` for a bad event; the source's errors when it cannot be
    listed (Lambda reports them as the function error ``errorType``/``errorMessage``).
    """
    request = DiscoveryRequest.from_event(event)
    return {"database": request.database, "collections": list_collections(request)}
