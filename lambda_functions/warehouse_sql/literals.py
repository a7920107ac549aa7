"""Values rendered into SQL text, each checked against a strict pattern first.

The transaction renders its few values as literals (see the package doc for why): integers,
the Delta table id (a UUID), the S3 staging URI and the IAM role ARN. ``sql_string`` is the last
line: it doubles quotes and refuses what DuckDB and Redshift read differently.
"""

from __future__ import annotations

import re

from lambda_functions.warehouse_sql.errors import UnsafeSqlValueError

_TABLE_ID = re.compile(
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
)
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_.=+/-]+)?$")
_IAM_ROLE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=.@_/-]{1,512}$")


def sql_string(value: str) -> str:
    """A single-quoted literal that reads the same in DuckDB and Redshift, or an error.

    Quotes are doubled. Backslashes are refused (Redshift treats them as escapes, DuckDB does not,
    so no one rendering is right for both), as are NUL and other control characters. Callers pass
    only values that already matched a strict pattern; this is the last line, not the first.
    """
    if not isinstance(value, str):
        raise UnsafeSqlValueError(f"expected a string literal, got {type(value).__name__}")
    bad = [c for c in value if c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise UnsafeSqlValueError(
            f"refusing to render {value[:40]!r} as SQL text: it contains {bad[0]!r} "
            "(backslashes and control characters are not allowed in generated literals)"
        )
    return "'" + value.replace("'", "''") + "'"


def sql_integer(value: int) -> str:
    """An integer literal; ``UnsafeSqlValueError`` for anything else (``bool`` included)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsafeSqlValueError(f"expected an integer, got {value!r}")
    return str(value)


def checked_table_id(value: str) -> str:
    """``value`` if it is a UUID (a Delta table id), else ``UnsafeSqlValueError``."""
    if not _TABLE_ID.match(value or ""):
        raise UnsafeSqlValueError(f"lake table id {value!r} is not a UUID")
    return value


def checked_s3_uri(value: str) -> str:
    """``value`` if it is a plain ``s3://bucket/key``, else ``UnsafeSqlValueError``."""
    if not _S3_URI.match(value or ""):
        raise UnsafeSqlValueError(
            f"staging URI {value!r} is not a plain s3://bucket/key (letters, digits, '_.=+/-')"
        )
    return value


def checked_iam_role(value: str) -> str:
    """``value`` if it is one IAM role ARN, or a comma-separated chain of them (Redshift role
    chaining, "Authorization parameters" of COPY), else ``UnsafeSqlValueError`` naming the
    setting (``LAKEHOUSE_REDSHIFT_IAM_ROLE``)."""
    parts = (value or "").split(",")
    if not all(_IAM_ROLE.match(part) for part in parts):
        raise UnsafeSqlValueError(
            "the Redshift IAM role must be an ARN like arn:aws:iam::123456789012:role/name "
            "(set LAKEHOUSE_REDSHIFT_IAM_ROLE to the role attached to the workgroup or cluster)"
        )
    return value
