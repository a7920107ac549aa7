"""Lake storage shared by every stage: an object store (a directory or S3) and the raw-zone format."""

from lambda_functions.lake.raw_zone import BatchManifest, Checkpoint, RawZone, list_namespaces
from lambda_functions.lake.store import (
    LakeBucketMissingError,
    LocalObjectStore,
    ObjectExistsError,
    ObjectStore,
    S3ObjectStore,
    open_store,
)

__all__ = [
    "BatchManifest",
    "Checkpoint",
    "LakeBucketMissingError",
    "LocalObjectStore",
    "ObjectExistsError",
    "ObjectStore",
    "RawZone",
    "S3ObjectStore",
    "list_namespaces",
    "open_store",
]
