"""The masking key: the secret of the HMAC that ``lake.masking`` replaces personal data with.

On AWS, ``LAKEHOUSE_MASKING_KEY_SECRET_ARN`` names a Secrets Manager secret (AWS Secrets Manager API
Reference, "GetSecretValue"): its SecretString, or the ``"key"`` of a JSON object stored there, or
its SecretBinary. Locally, ``LAKEHOUSE_MASKING_KEY`` holds the key as text. A key has at least 32
bytes (RFC 2104 section 3: not shorter than the HMAC-SHA256 output). ``MaskingKey.key_id`` (first
8 hex of the key's SHA-256) names the key in manifests without revealing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lambda_functions.errors import TerminalError, TransientError

KEY_VARIABLE = "LAKEHOUSE_MASKING_KEY"
KEY_SECRET_ARN_VARIABLE = "LAKEHOUSE_MASKING_KEY_SECRET_ARN"
MIN_KEY_BYTES = 32
_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "InternalServiceError", "RequestLimitExceeded"}
)
_CACHED_KEYS: dict[str, MaskingKey] = {}  # secret ARN -> key, for the life of the process
GENERATE_KEY_HINT = "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"


class MaskingKeyError(TerminalError, RuntimeError):
    """The masking key is missing, too short or unreadable (permissions, a wrong ARN)."""


class MaskingKeyUnavailableError(TransientError, RuntimeError):
    """Secrets Manager throttled or failed the key read; the same read may succeed later."""


@dataclass(frozen=True)
class MaskingKey:
    """The HMAC key; ``key_id`` (first 8 hex of its SHA-256) names it without revealing it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise MaskingKeyError(
                f"the masking key has {len(self.secret)} bytes; RFC 2104 wants at least "
                f"{MIN_KEY_BYTES} for HMAC-SHA256: {GENERATE_KEY_HINT}"
            )

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()[:8]


def load_masking_key(
    environ: Mapping[str, str] | None = None, *, client: Any = None
) -> MaskingKey | None:
    """The masking key of this deployment, or ``None`` when none is configured.

    The secret named by ``LAKEHOUSE_MASKING_KEY_SECRET_ARN`` is read once per process (AWS
    Secrets Manager API Reference, "GetSecretValue": SecretString or SecretBinary) and cached
    by ARN; a rotated key applies to new execution environments, and changes ``key_id``.

    Args:
        environ: the settings (default ``os.environ``).
        client: a boto3 ``secretsmanager`` client (default: a new one).

    Returns:
        The key from the secret, else from ``LAKEHOUSE_MASKING_KEY``, else ``None``.

    Raises:
        MaskingKeyError: the secret cannot be read (access denied, not found) or is empty, or
            the key is shorter than 32 bytes.
        MaskingKeyUnavailableError: Secrets Manager throttled or failed the request.
    """
    environ = os.environ if environ is None else environ
    arn = environ.get(KEY_SECRET_ARN_VARIABLE)
    if arn:
        if arn not in _CACHED_KEYS:
            _CACHED_KEYS[arn] = MaskingKey(_read_secret(arn, client))
        return _CACHED_KEYS[arn]
    text = environ.get(KEY_VARIABLE)
    return MaskingKey(text.encode("utf-8")) if text else None


def _read_secret(arn: str, client: Any) -> bytes:
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    try:
        value = client.get_secret_value(SecretId=arn)
    except Exception as error:  # botocore ClientError, no credentials, no network
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        reason = f"cannot read the masking key secret {arn}: {type(error).__name__}: {error}"
        if code in _THROTTLING_CODES:
            raise MaskingKeyUnavailableError(f"{reason}; a later attempt may succeed") from None
        raise MaskingKeyError(
            f"{reason}; check the ARN and grant the function secretsmanager:GetSecretValue on "
            "it (and kms:Decrypt for a customer managed key)"
        ) from None
    if value.get("SecretBinary"):
        return bytes(value["SecretBinary"])
    text = value.get("SecretString") or ""
    try:
        stored = json.loads(text)
    except json.JSONDecodeError:
        stored = None
    if isinstance(stored, dict):
        text = stored.get("key") if isinstance(stored.get("key"), str) else ""
    if not text:
        raise MaskingKeyError(
            f"the masking key secret {arn} holds no key: store the key as its SecretString, or "
            f'as {{"key": "..."}}; {GENERATE_KEY_HINT}'
        )
    return text.encode("utf-8")
