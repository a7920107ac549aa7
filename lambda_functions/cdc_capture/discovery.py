"""List a source database's collections (collection discovery, run inside Lambda).

The Dagster code location registers one partition per collection. For a ``database.*`` pattern it
needs the names the source has; asking here, in the data plane, keeps the source credentials
(Secrets Manager, the VPC) on the Lambda side, as for capture.
"""

from __future__ import annotations

from contextlib import closing

from lambda_functions.cdc_capture.change_source import demo_collection_names, open_source
from lambda_functions.contracts import DiscoveryRequest, InvalidRequestError, validate_name


def list_collections(request: DiscoveryRequest) -> list[str]:
    """The collections the source has in ``request.database``.

    Args:
        request: the database and how to reach its source (embedded store file, or DocumentDB
            through ``secret_arn`` / the URI variable named by ``source_location``).

    Returns:
        Collection names without the database, sorted, each once. Embedded: the collections
        the store has, plus the demo collections of that database (the demo workload creates
        them on their first capture). DocumentDB: ``listCollections`` (MongoDB manual,
        "listCollections"; pymongo ``Database.list_collection_names``) without ``system.*``
        collections and without names that cannot be a path and an SQL identifier (name such a
        collection explicitly to get the error explaining the rule). Read-only: nothing is
        written to the source.

    Raises:
        InvalidRequestError: the request cannot reach a source (terminal).
        pymongo.errors.PyMongoError: the DocumentDB server could not be reached or refused the
            listing (connection, authentication, TLS).
    """
    with closing(open_source(request)) as source:
        if request.source_kind == "embedded":
            names = set(source.list_collection_names(request.database))  # type: ignore[attr-defined]
            return sorted(names | set(demo_collection_names(request.database)))
        listed = source.client[request.database].list_collection_names()  # type: ignore[attr-defined]
    return sorted({name for name in listed if not name.startswith("system.") and plain(name)})


def plain(name: str) -> bool:
    """Whether ``name`` can be a path and an SQL identifier (``contracts.validate_name``)."""
    try:
        validate_name(name, "collection")
    except InvalidRequestError:
        return False
    return True
