"""``changes_between`` on S3 (moto's server in its own process): the feed is read, a vacuumed
feed says to read the whole table, and a stalled read says the read failed (not "vacuumed")."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from lambda_functions.lake import open_store
from lambda_functions.lake.change_feed import ChangeFeedReadError
from lambda_functions.merge import changes_between, lake_table_location
from lambda_functions.merge.history import VersionNotAvailableError
from tests.lambda_functions.warehouse_load.test_duckdb_load import A, B, C, doc
from tests.lambda_functions.warehouse_load.test_load_on_s3 import SHORT_TIMEOUTS, S3Pipeline


@pytest.fixture
def s3_lake(aws_process_env, tmp_path):
    lake = S3Pipeline(tmp_path)
    first = lake.change((A, "insert", 1, doc(v=0)), (B, "insert", 1, doc(v=0)))
    lake.change((A, "update", 2, doc(v=1)), (C, "insert", 2, doc(v=2)), (B, "delete", 2, None))
    uri, options = lake_table_location(open_store(lake.lake), "shop", "orders")
    return lake, first, uri, options


def test_changes_between_reads_the_feed_on_s3(s3_lake):
    _, first, uri, options = s3_lake
    changes = changes_between(uri, options, first)
    deleted = dict(
        zip(changes.column("_id").to_pylist(), changes.column("_deleted").to_pylist(), strict=True)
    )
    assert deleted == {A: False, B: True, C: False}


def test_a_vacuumed_feed_on_s3_says_read_the_whole_table(s3_lake):
    lake, first, uri, options = s3_lake
    assert lake.delete_change_data_files() > 0
    with pytest.raises(VersionNotAvailableError, match="read the whole table"):
        changes_between(uri, options, first)


def test_a_stalled_feed_read_on_s3_is_not_taken_for_a_vacuumed_feed(
    s3_lake, moto_process, monkeypatch
):
    _, first, uri, options = s3_lake
    load_cdf = DeltaTable.load_cdf

    def load_cdf_while_s3_stalls(self, *args, **kwargs):
        with moto_process.frozen():  # S3 stops answering while the feed is read
            return load_cdf(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "load_cdf", load_cdf_while_s3_stalls)
    with pytest.raises(ChangeFeedReadError) as failed:
        changes_between(uri, {**options, **SHORT_TIMEOUTS}, first)
    assert not isinstance(failed.value, VersionNotAvailableError)
    assert "error sending request" in str(failed.value) or "timed out" in str(failed.value)
