"""The field rules of the invoke contract's requests: names, warehouse names, the Redshift connection.

Each rule is a function the requests of ``lambda_functions.contracts`` apply in ``validate``, and
that the Dagster side may call to check its configuration the same way (one rule, one place).
A rule that fails raises ``InvalidRequestError`` naming the field or setting to fix.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from lambda_functions.errors import TerminalError
from lambda_functions.lake.masking import MaskingRules, MaskingRulesError
from lambda_functions.warehouse_sql import LOAD_TABLES, MAX_IDENTIFIER_BYTES, fold_identifier

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


class InvalidRequestError(TerminalError, ValueError):
    """The event does not describe a valid request; the message says which field and why.

    Terminal: the same event fails the same way however often it is retried."""


def name_problem(value: Any) -> str | None:
    """What keeps ``value`` from being a database/collection name here (``None`` when it is
    one), in words: MongoDB allows names this product cannot turn into lake paths and SQL
    identifiers (dots, as in GridFS's ``fs.files``; ``$``; spaces; more than 63 characters)."""
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a string"
    if _NAME.match(value):
        return None
    problems = []
    if len(value) > 63:
        problems.append(f"it is {len(value)} characters long (at most 63)")
    if not value:
        problems.append("it is empty")
    elif not (value[0].isascii() and (value[0].isalpha() or value[0] == "_")):
        problems.append(f"it starts with {value[0]!r} (a letter or '_' is needed)")
    odd = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "_-"))})
    named = {".": "dots", "$": "'$'", " ": "spaces"}
    if odd:
        problems.append(
            "it contains "
            + ", ".join(named.get(c, repr(c)) for c in odd)
            + (" (e.g. GridFS's fs.files and fs.chunks)" if "." in odd else "")
        )
    return "; ".join(problems)


# Warehouse identifiers (schemas, tables, columns): the rule of ``warehouse_sql.names`` (at most
# MAX_IDENTIFIER_BYTES, compared folded to lower case), explained here in words.
_WAREHOUSE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def warehouse_name_problem(value: Any, what: str = "warehouse table") -> str | None:
    """What keeps ``value`` from being a warehouse schema or table name (``None`` when it is
    one): the product's plain-name pattern, Redshift's 127-byte limit, the load's own tables.
    ``what`` ("warehouse table" or "warehouse schema") names the value in the message."""
    if not isinstance(value, str):
        return f"{what} name {value!r} is a {type(value).__name__}, not a string"
    if not _WAREHOUSE_NAME.match(value):
        return (
            f"{what} name {value!r} is not a plain name: use letters, digits, '_' or '-', "
            "starting with a letter or '_'"
        )
    size = len(value.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        return (
            f"{what} name {value!r} is {size} bytes long; Redshift allows at most "
            f"{MAX_IDENTIFIER_BYTES} bytes for an identifier"
        )
    if what == "warehouse table" and fold_identifier(value) in LOAD_TABLES:
        return (
            f"{what} name {value!r} is the load's own control/staging table "
            f"({', '.join(sorted(LOAD_TABLES))})"
        )
    return None


def validate_warehouse_name(value: str, what: str) -> str:
    """A warehouse schema or table name, checked.

    Args:
        value: the name, e.g. ``"orders"``.
        what: ``"warehouse table"`` or ``"warehouse schema"`` (names the value in the message).

    Returns:
        ``value`` unchanged.

    Raises:
        InvalidRequestError: what is wrong with it (see ``warehouse_name_problem``).
    """
    problem = warehouse_name_problem(value, what)
    if problem:
        raise InvalidRequestError(problem)
    return value


def closest_names(name: str, existing: list[str] | tuple[str, ...], limit: int = 3) -> list[str]:
    """The names of ``existing`` closest to ``name`` (a likely typo's intended name), best first.

    Args:
        name: the name that was not found, e.g. ``"ordrs"``.
        existing: the names that exist.
        limit: at most this many suggestions.

    Returns:
        Up to ``limit`` names (``difflib`` ratio 0.6 or more); empty when none is close.
    """
    return difflib.get_close_matches(name, list(existing), n=limit, cutoff=0.6)


def validate_name(value: str, what: str) -> str:
    """A database or collection name, checked: such names become lake paths and SQL identifiers.

    Args:
        value: the name, e.g. ``"orders"``.
        what: what it names (``"database"``, ``"collection"``), for the message.

    Returns:
        ``value`` unchanged.

    Raises:
        InvalidRequestError: not 1 to 63 characters of letters, digits, '_' or '-' starting with
            a letter or '_' (see ``name_problem`` for the reasons in words).
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequestError(
            f"{what} {value!r} is not a valid name: use letters, digits, '_' or '-', "
            "starting with a letter or '_', at most 63 characters"
        )
    return value


def check_redshift_connection(
    *,
    database: str,
    workgroup: str = "",
    cluster: str = "",
    db_user: str = "",
    secret_arn: str = "",
) -> None:
    """The one check of where and as whom Redshift Data API statements run.

    The Data API takes a ``Database`` and either a Serverless ``WorkgroupName`` or a provisioned
    ``ClusterIdentifier``; a cluster also needs credentials: ``DbUser`` (temporary credentials
    from ``redshift:GetClusterCredentials``) or ``SecretArn`` (Secrets Manager). A workgroup
    may use either or neither (IAM identity). (Amazon Redshift Data API Reference,
    "ExecuteStatement"; Management Guide, "Authorizing access to the Amazon Redshift Data API".)
    Called by ``LoadRequest.validate`` and by ``warehouse_load.redshift.RedshiftConnection``.

    Args:
        database: the database statements run in (``LAKEHOUSE_REDSHIFT_DATABASE``).
        workgroup: a Serverless workgroup name (``LAKEHOUSE_REDSHIFT_WORKGROUP``), or "".
        cluster: a provisioned cluster identifier (``LAKEHOUSE_REDSHIFT_CLUSTER``), or "".
        db_user: a database user (``LAKEHOUSE_REDSHIFT_DB_USER``), or "".
        secret_arn: the ARN of a secret holding the credentials (the ARN names the secret, it is
            not the secret; ``LAKEHOUSE_REDSHIFT_SECRET_ARN``), or "".

    Raises:
        InvalidRequestError: no database; none or both of workgroup and cluster; a cluster with
            neither a database user nor a secret. The message names the setting to fix.
    """
    if not database:
        raise InvalidRequestError("redshift_database is required: set LAKEHOUSE_REDSHIFT_DATABASE")
    if bool(workgroup) == bool(cluster):
        raise InvalidRequestError(
            "name exactly one of redshift_workgroup (LAKEHOUSE_REDSHIFT_WORKGROUP, "
            "Serverless) or redshift_cluster (LAKEHOUSE_REDSHIFT_CLUSTER, provisioned)"
        )
    if cluster and not (db_user or secret_arn):
        raise InvalidRequestError(
            "a provisioned cluster needs LAKEHOUSE_REDSHIFT_DB_USER (temporary "
            "credentials) or LAKEHOUSE_REDSHIFT_SECRET_ARN (Secrets Manager)"
        )


def check_masking(masking: Mapping[str, Any], namespace: str) -> None:
    """Check a request's masking rules (``{"drop": [...], "hash": [...]}``, ``lake.masking``).

    Raises:
        InvalidRequestError: a key other than ``drop``/``hash``, or a path ``MaskingRules``
            refuses (the message names the fix).
    """
    unknown = sorted(set(masking) - {"drop", "hash"})
    if unknown:
        raise InvalidRequestError(
            f"masking of {namespace} has {unknown}: only 'drop' and 'hash' lists of dotted paths"
        )
    try:
        MaskingRules(*(tuple(masking.get(name, ())) for name in ("drop", "hash")))
    except MaskingRulesError as error:
        raise InvalidRequestError(f"masking of {namespace}: {error} (LAKEHOUSE_MASKING)") from None
