"""Reading a Delta table's change data feed: a vacuumed feed told apart from a failed read.

delta-rs raises one generic error type for every failure of ``load_cdf``. The two that matter
call for opposite actions:

- the feed for the versions asked for is gone (its ``_change_data`` files or log entries were
  vacuumed / cleaned up): the reader must read the whole table instead (a full reload);
- the read failed (a network error, a stalled store that timed out, access denied, a corrupt
  file): the feed may well be there. Reloading everything would hide the fault and cost a full
  read; the caller fails with the cause and is retried.

``feed_is_gone`` decides from delta-rs's message: only "object not found" style messages
(S3 ``NoSuchKey``/404, a missing local file, a gap in the log) mean gone.
"""

from __future__ import annotations

# How delta-rs (object_store) reports data or log files that are no longer there: S3 and local
# "Object at location ... not found", "No such file or directory", "NoSuchKey", a log with a
# missing version ("found gap", "does not exist"). Anything else is a failed read.
_GONE_SIGNS = ("not found", "no such file", "nosuchkey", "does not exist", "found gap")


class ChangeFeedReadError(OSError):
    """The change feed could not be read, for a reason other than its being vacuumed."""


def feed_is_gone(error: BaseException) -> bool:
    """True when ``error`` (raised by ``DeltaTable.load_cdf`` or reading its stream) says the
    feed's files are no longer there; False for any other failure (network, timeout, access)."""
    text = str(error).lower()
    return any(sign in text for sign in _GONE_SIGNS)


def read_failure(uri: str, first: int, last: int, error: BaseException) -> ChangeFeedReadError:
    """The error to raise when reading versions ``first..last`` of ``uri``'s feed failed."""
    return ChangeFeedReadError(
        f"reading the change feed of {uri} (versions {first}..{last}) failed: {error}. The feed "
        "was not found missing, so nothing is reloaded in full: check that the lake "
        "(LAKEHOUSE_LAKE_URI) is reachable from the function (network, VPC endpoint, "
        "s3:GetObject on the table prefix) and re-run; the load resumes from the same version."
    )
