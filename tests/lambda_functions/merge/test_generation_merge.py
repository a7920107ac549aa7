"""A generation batch over the byte budget is applied page by page in one commit
(``merge.generation``), with the same result as the one-shot path."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import lambda_functions.merge.generation as generation
from lambda_functions.contracts import LoadRequest, MergeRequest
from lambda_functions.lake import RawZone, open_store
from lambda_functions.lake.raw_zone import BATCH_SCHEMA
from lambda_functions.merge import lake_table_location, merge_batches
from lambda_functions.warehouse_load.load import load_changes
from tests.lambda_functions.raw_batches import JAN, JUN, key, publish

DOCS, PAGES = 200_000, 20
SMALL = 1 << 16  # bytes: every generation batch here is over it
HUGE = 1 << 40  # bytes: the one-shot path


def publish_generation(
    zone: RawZone, documents: int, pages: int, pos: int = 10, *, extra: dict | None = None
) -> int:
    """One batch of ``documents`` snapshot rows in ``pages`` page files, as a range snapshot
    publishes a generation; keys in two months (two partitions of keys, several hash buckets)."""
    now = datetime.now(UTC)
    per_page = documents // pages
    parts = []
    for page in range(pages):
        numbers = range(page * per_page, (page + 1) * per_page)
        keys = [key(JAN if n % 2 else JUN, n) for n in numbers]
        parts.append(
            pa.table(
                {
                    "_id": keys,
                    "op": ["snapshot"] * per_page,
                    "pos": [pos] * per_page,
                    "seq": list(range(per_page)),
                    "event_time": [now] * per_page,
                    "doc": [f'{{"n": {n}, "v": "{"x" * 20}"}}' for n in numbers],
                },
                schema=BATCH_SCHEMA,
            )
        )
    return zone.write_batch(parts, after=zone.read_checkpoint(), state={}, extra=extra).batch


def publish_reset(zone: RawZone, generation_pos: int) -> int:
    """A reset marker (a new generation without a drop position): no rows."""
    extra = {"dropped": True, "reason": "reset", "generation_pos": generation_pos}
    return zone.write_batch([], after=zone.read_checkpoint(), state={}, extra=extra).batch


def table_state(lake: str) -> dict:
    uri, options = lake_table_location(open_store(lake), "shop", "orders")
    table = DeltaTable(uri, storage_options=options)
    rows = table.to_pyarrow_table(columns=["_id", "doc", "_op", "_pos", "_batch"])
    return {
        "rows": sorted(
            zip(
                *(rows.column(n).cast(pa.string()).to_pylist() for n in rows.column_names),
                strict=True,
            )
        ),
        "applied": table.transaction_version("lakehouse-merge:shop.orders"),
        "floor": table.transaction_version("lakehouse-drop-floor:shop.orders"),
    }


def load(lake: str, tmp_path: Path) -> dict[str, str]:
    """Load the lake table into a DuckDB warehouse (one per lake); its ``_id`` -> document."""
    warehouse = str(tmp_path / f"{Path(lake).name}.duckdb")
    load_changes(
        LoadRequest(
            lake_uri=lake, database="shop", collection="orders", warehouse_location=warehouse
        )
    )
    with duckdb.connect(warehouse, read_only=True) as db:
        return dict(db.execute("SELECT _id, doc::VARCHAR FROM analytics.orders").fetchall())


def request(lake: str) -> MergeRequest:
    return MergeRequest(lake_uri=lake, database="shop", collection="orders")


def version(lake: str) -> int:
    uri, options = lake_table_location(open_store(lake), "shop", "orders")
    return DeltaTable(uri, storage_options=options).version()


def test_first_load_streamed_equals_one_shot(tmp_path: Path) -> None:
    lakes = {name: str(tmp_path / name) for name in ("streamed", "one_shot")}
    for lake in lakes.values():
        publish_generation(RawZone(open_store(lake), "shop", "orders"), DOCS, PAGES)
    streamed = merge_batches(request(lakes["streamed"]), max_bytes_per_commit=SMALL)
    one_shot = merge_batches(request(lakes["one_shot"]), max_bytes_per_commit=HUGE)
    assert streamed.merge_paths == ["generation"]
    assert one_shot.merge_paths == ["create"]
    assert streamed.version == one_shot.version == 0  # one commit
    assert streamed.table_rows == one_shot.table_rows == DOCS
    assert table_state(lakes["streamed"]) == table_state(lakes["one_shot"])


def test_reset_and_generation_are_one_commit(tmp_path: Path) -> None:
    lakes = {name: str(tmp_path / name) for name in ("streamed", "one_shot")}
    for lake in lakes.values():
        zone = RawZone(open_store(lake), "shop", "orders")
        publish(zone, [(key(JAN, n), "insert", 5, f'{{"old": {n}}}') for n in range(500)])
        merge_batches(request(lake))
        publish(zone, [(key(JAN, 1), "delete", 6, None)])
        publish_reset(zone, generation_pos=8)
        publish_generation(zone, 20_000, 8, pos=8)
    before = version(lakes["streamed"])
    for lake in lakes.values():  # the warehouse holds the old generation
        load(lake, tmp_path)
    streamed = merge_batches(request(lakes["streamed"]), max_bytes_per_commit=SMALL)
    merge_batches(request(lakes["one_shot"]), max_bytes_per_commit=HUGE)
    assert streamed.merge_paths == ["generation"]
    assert streamed.version == before + 1  # the reset and its snapshot: ONE commit
    assert streamed.batches_superseded == [2]
    assert table_state(lakes["streamed"]) == table_state(lakes["one_shot"])
    # the change feed of that commit: the old rows deleted, the generation inserted
    uri, options = lake_table_location(open_store(lakes["streamed"]), "shop", "orders")
    feed = DeltaTable(uri, storage_options=options).load_cdf(starting_version=before + 1)
    kinds = pa.table(feed.read_all()).column("_change_type").to_pylist()
    assert kinds.count("insert") == 20_000
    assert kinds.count("delete") == 500
    # the incremental load of that commit (keys both deleted and inserted in it: the insert is
    # their state) leaves the warehouse as the one-shot path's two commits do
    loaded = {name: load(lake, tmp_path) for name, lake in lakes.items()}
    assert loaded["streamed"] == loaded["one_shot"]
    assert len(loaded["streamed"]) == 20_000


def test_replay_is_a_no_op(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    zone = RawZone(open_store(lake), "shop", "orders")
    publish_generation(zone, 10_000, 5)
    first = merge_batches(request(lake), max_bytes_per_commit=SMALL)
    again = merge_batches(request(lake), max_bytes_per_commit=SMALL)
    assert again.version == first.version and again.batches_applied == []
    # a merge that read the table before the first commit re-checks and commits nothing
    where = generation.TableLocation.of(open_store(lake), "shop", "orders")
    uri, _options = lake_table_location(open_store(lake), "shop", "orders")
    on_disk = {p for p in Path(uri).rglob("*.parquet")}
    done, table = generation.apply_generation(
        zone, where, None, [zone.read_manifest(1)], lambda _m: None
    )
    assert done.batches_applied == [] and table.version() == first.version
    assert {p for p in Path(uri).rglob("*.parquet")} == on_disk  # its own files removed


def test_killed_before_commit_leaves_the_table_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = str(tmp_path / "lake")
    zone = RawZone(open_store(lake), "shop", "orders")
    publish(zone, [(key(JAN, n), "insert", 5, f'{{"old": {n}}}') for n in range(100)])
    merge_batches(request(lake))
    publish_reset(zone, generation_pos=8)
    publish_generation(zone, 10_000, 5, pos=8)
    before = table_state(lake)

    class Killed(BaseException):
        pass

    def killed(*_args: object, **_kwargs: object) -> None:
        raise Killed  # the sandbox dies after the data files, before the log entry

    with monkeypatch.context() as patched:
        patched.setattr(DeltaTable, "create_write_transaction", killed)
        with pytest.raises(Killed):
            merge_batches(request(lake), max_bytes_per_commit=SMALL)
    assert table_state(lake) == before  # nothing visible
    uri, options = lake_table_location(open_store(lake), "shop", "orders")
    orphans = {p for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.parts}
    done = merge_batches(request(lake), max_bytes_per_commit=SMALL)
    assert done.merge_paths == ["generation"] and done.table_rows == 10_000
    table = DeltaTable(uri, storage_options=options)
    table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
    left = {p for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.parts}
    assert orphans and not orphans & left  # the killed run's files: vacuumed
    assert {str(p.relative_to(uri)) for p in left} == set(
        DeltaTable(uri).get_add_actions(flatten=True).column("path").to_pylist()
    )
    assert table_state(lake)["applied"] == 3


def test_duplicate_keys_across_pages_keep_the_latest(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    zone = RawZone(open_store(lake), "shop", "orders")
    now = datetime.now(UTC)
    pages = [
        pa.table(
            {
                "_id": [key(JUN, 1), key(JUN, 2)],
                "op": ["snapshot"] * 2,
                "pos": [pos, 10],
                "seq": [0, page],
                "event_time": [now] * 2,
                "doc": [f'{{"page": {page}}}', f'{{"two": {page}}}'],
            },
            schema=BATCH_SCHEMA,
        )
        for page, pos in ((1, 12), (2, 11))
    ]
    zone.write_batch(pages, after=zone.read_checkpoint(), state={})
    done = merge_batches(request(lake), max_bytes_per_commit=1)
    assert done.merge_paths == ["generation"]
    rows = table_state(lake)["rows"]
    assert [r[:2] for r in rows] == [(key(JUN, 1), '{"page": 1}'), (key(JUN, 2), '{"two": 2}')]
