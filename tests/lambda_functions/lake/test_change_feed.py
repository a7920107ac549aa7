"""What delta-rs says when a feed is gone vs when reading it failed (messages as delta-rs 1.x
raises them for S3 and local stores)."""

import pytest

from lambda_functions.lake.change_feed import ChangeFeedReadError, feed_is_gone, read_failure

GONE = [
    "Parquet error: Failed to fetch metadata for file _change_data/_bucket=2024-01/cdc-00.parquet:"
    " Object Store error: Object at location lake/tables/shop/orders/_change_data/_bucket=2024-01/"
    "cdc-00.parquet not found: Error performing GET http://127.0.0.1:1/b/x in 1ms - Server "
    "returned non-2xx status code: 404 Not Found: <Code>NoSuchKey</Code>",
    "Object at location /tmp/lake/_change_data/cdc-00.parquet not found: No such file or "
    "directory (os error 2)",
    "Generic DeltaTable error: Invalid table version: 3 does not exist",
]
FAILED = [
    "Generic S3 error: Error performing list request: Error performing GET "
    "http://127.0.0.1:1/lake?list-type=2 in 4.1s, after 1 retries, max_retries: 1, "
    "retry_timeout: 3s  - HTTP error: error sending request",
    "Generic S3 error: Error performing GET http://s3/x in 30s - HTTP error: operation timed out",
    "Generic S3 error: Server returned non-2xx status code: 403 Forbidden: <Code>AccessDenied",
]


@pytest.mark.parametrize("message", GONE)
def test_missing_feed_files_mean_the_feed_is_gone(message):
    assert feed_is_gone(OSError(message))


@pytest.mark.parametrize("message", FAILED)
def test_network_timeout_and_access_errors_are_failed_reads(message):
    assert not feed_is_gone(OSError(message))


def test_a_failed_read_names_the_setting_and_keeps_the_cause():
    error = read_failure("s3://b/t", 3, 5, OSError(FAILED[0]))
    assert isinstance(error, ChangeFeedReadError) and isinstance(error, OSError)
    assert "versions 3..5" in str(error) and "LAKEHOUSE_LAKE_URI" in str(error)
    assert "error sending request" in str(error)
