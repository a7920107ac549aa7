"""A lake bucket that does not exist is named with the setting and the command that creates it
(S3 answers NoSuchBucket, 404, for any object request on a missing bucket)."""

import pytest

from lambda_functions.lake import LakeBucketMissingError, open_store


@pytest.mark.parametrize(
    "operation",
    [
        lambda store: store.put("raw/x.json", b"{}"),
        lambda store: store.put_if_absent("raw/x.json", b"{}"),
        lambda store: store.get("raw/x.json"),
        lambda store: list(store.list("raw/")),
        lambda store: store.list_folders("raw/"),
    ],
    ids=["put", "put_if_absent", "get", "list", "list_folders"],
)
def test_missing_lake_bucket_names_the_setting_and_the_fix(aws_env, operation):
    store = open_store("s3://no-such-lake-bucket/lake")
    with pytest.raises(LakeBucketMissingError) as missing:
        operation(store)
    message = str(missing.value)
    assert "LAKEHOUSE_LAKE_URI" in message
    assert "aws s3 mb s3://no-such-lake-bucket --region us-east-1" in message
