"""A minimal object store over a local directory or an S3 prefix.

Only what the raw zone needs: whole-object put/get, listing by prefix, and ``put_if_absent`` (an
atomic create that fails if the key exists: S3 ``If-None-Match: *``, ``os.link`` locally). Writes are
atomic for readers in both: S3 objects appear whole, local files are written aside then renamed.
Delta tables do not go through this class: delta-rs has its own store, configured by
``delta_location()``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lambda_functions.errors import TerminalError


class ObjectExistsError(FileExistsError):
    """``put_if_absent`` found the key already written (another writer, or an earlier attempt).

    A signal between the store and its callers, not a product error (no kind): the raw zone turns
    a lost claim into ``ConcurrentCaptureError`` or compares the object it found."""


class LakeURIError(TerminalError, ValueError):
    """A lake URI or object key the store cannot use (no bucket, an unsupported scheme, a key
    that escapes the lake root); the message shows the accepted form."""


class LakeBucketMissingError(TerminalError, RuntimeError):
    """The lake's S3 bucket does not exist; the message names the setting and the command.

    Not a ``FileNotFoundError``: callers that read a missing object as "nothing yet" must not
    read a missing bucket that way."""


class ObjectStore(ABC):
    uri: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create ``key`` atomically; raise ``ObjectExistsError`` if it exists."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Raise ``FileNotFoundError`` if the key does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` (relative to the store root), in lexicographic order."""

    @abstractmethod
    def list_folders(self, prefix: str) -> list[str]:
        """Names of the folders directly under ``prefix`` (which ends with ``/``), sorted:
        one listing call, however many objects they hold."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def delta_location(self, key: str) -> tuple[str, dict[str, str]]:
        """The URI and storage options delta-rs needs for a table stored at ``key``."""


class LocalObjectStore(ObjectStore):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise LakeURIError(f"key {key!r} escapes the lake root {self.root}")
        return path

    def _write_aside(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._write_aside(path, data), path)

    def put_if_absent(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_aside(path, data)
        try:
            os.link(tmp, path)  # atomic, fails if path exists
        except FileExistsError:
            raise ObjectExistsError(f"{self.uri}/{key} already exists") from None
        finally:
            os.unlink(tmp)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        top = base if base.is_dir() else base.parent
        if not top.exists():
            return
        found = []
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if name.startswith("."):
                    continue  # temporary files of in-flight writes
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        yield from sorted(found)

    def list_folders(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delta_location(self, key: str) -> tuple[str, dict[str, str]]:
        path = self._path(key)
        path.mkdir(parents=True, exist_ok=True)
        return str(path), {}


class S3ObjectStore(ObjectStore):
    def __init__(self, bucket: str, prefix: str = "", client: Any = None):
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _bucket_must_exist(self) -> Iterator[None]:
        """Turn S3's ``NoSuchBucket`` into an error that says which setting and how to fix it."""
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise
            region = self.client.meta.region_name or "<region>"
            raise LakeBucketMissingError(
                f"the lake bucket {self.bucket!r} does not exist in {region}: create it (aws s3 "
                f"mb s3://{self.bucket} --region {region}) or set LAKEHOUSE_LAKE_URI to "
                "s3://<existing-bucket>/<prefix> (and AWS_REGION to the bucket's region)"
            ) from error

    def put(self, key: str, data: bytes) -> None:
        with self._bucket_must_exist():
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            with self._bucket_must_exist():
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ObjectExistsError(f"{self.uri}/{key} already exists") from None
            raise

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            with self._bucket_must_exist():
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                return response["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{self.uri}/{key}") from None
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._bucket_must_exist():
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._bucket_must_exist():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:]

    def list_folders(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        base = self._key(prefix)
        names = []
        with self._bucket_must_exist():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(base) :].rstrip("/"))
        return sorted(names)

    def delete(self, key: str) -> None:
        with self._bucket_must_exist():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delta_location(self, key: str) -> tuple[str, dict[str, str]]:
        options: dict[str, str] = {}
        endpoint = self.client.meta.endpoint_url
        if endpoint and not endpoint.endswith("amazonaws.com"):
            options["AWS_ENDPOINT_URL"] = endpoint
            options["AWS_ALLOW_HTTP"] = "true" if endpoint.startswith("http://") else "false"
        region = self.client.meta.region_name
        if region:
            options["AWS_REGION"] = region
        return f"s3://{self.bucket}/{self._key(key)}", options


def open_store(lake_uri: str, s3_client: Any = None) -> ObjectStore:
    """``s3://bucket/prefix`` opens S3; a path or ``file://`` URI opens a directory."""
    parsed = urlparse(lake_uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise LakeURIError(f"lake URI {lake_uri!r} has no bucket: use s3://bucket/prefix")
        return S3ObjectStore(parsed.netloc, parsed.path, client=s3_client)
    if parsed.scheme == "file":
        return LocalObjectStore(parsed.path)
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # plain path (or a drive letter)
        return LocalObjectStore(lake_uri)
    raise LakeURIError(f"lake URI {lake_uri!r}: only s3:// URIs and local paths are supported")


def new_file_name(suffix: str) -> str:
    return f"{uuid.uuid4().hex}{suffix}"
