"""Read the lake table back in tests."""

from __future__ import annotations

import json
from urllib.parse import urlparse

from deltalake import DeltaTable

from lambda_functions.lake import open_store
from lambda_functions.lake.table_layout import is_tombstone, live_rows

# The app id under which the merge records the batches it applied to shop.orders's table.
APP = "lakehouse-merge:shop.orders"


def stored_docs(table_uri: str, storage_options: dict | None = None) -> dict[str, str]:
    """``_id`` -> ``doc`` of every live row of the lake table (what a reader sees)."""
    table = DeltaTable(table_uri, storage_options=storage_options)
    rows = live_rows(table.to_pyarrow_table(columns=["_id", "doc", "_op"])).to_pylist()
    return {r["_id"]: r["doc"] for r in rows}


def tombstones(table_uri: str, storage_options: dict | None = None) -> dict[str, int]:
    """``_id`` -> ``_pos`` of every tombstone (a deleted document's row, ``_op = 'delete'``)."""
    table = DeltaTable(table_uri, storage_options=storage_options)
    rows = table.to_pyarrow_table(columns=["_id", "_op", "_pos"])
    dead = rows.filter(is_tombstone(rows)).to_pylist()
    return {r["_id"]: r["_pos"] for r in dead}


def commits(table_uri: str) -> list[dict]:
    """The table's commit infos, oldest first, read from its log files.

    Not ``DeltaTable.history()``: on moto's S3 server it never returns (deltalake 1.6.6)."""
    parsed = urlparse(table_uri)
    if parsed.scheme == "s3":
        store = open_store(f"s3://{parsed.netloc}")
        prefix = parsed.path.strip("/")
    else:
        store = open_store(table_uri)
        prefix = ""
    infos = []
    for name in store.list(f"{prefix}/_delta_log/".lstrip("/")):
        if name.endswith(".json") and name.rsplit("/", 1)[-1][:20].isdigit():
            for line in store.get(name).decode().splitlines():
                action = json.loads(line)
                if "commitInfo" in action:
                    infos.append(action["commitInfo"])
    return infos
