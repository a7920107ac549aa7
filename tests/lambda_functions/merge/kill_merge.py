"""Run one merge in this process and SIGKILL it at a chosen step (a Lambda killed mid-run).

    python -m tests.lambda_functions.merge.kill_merge LAKE_URI STEP [PATH]

``STEP``:
- ``read``: after the batches were read, before anything is written;
- ``commit``: just before the commit is made (nothing written yet);
- ``data_files``: after the data files were written, before the log entry (the rewrite path:
  it writes its files, then its log entry);
- ``after_commit``: after the log entry, before the merge returns;
- ``none``: run to the end (the caller may kill it from outside).

``PATH`` ``merge`` forces the delta-rs MERGE path. No ``finally`` block runs, no cleanup: as when
Lambda's sandbox is killed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import lambda_functions.merge.apply as apply_module
import lambda_functions.merge.copy_on_write as copy_on_write
import lambda_functions.merge.plan as plan_module
from lambda_functions.contracts import MergeRequest
from lambda_functions.lake import open_store
from lambda_functions.merge import lake_table_location, merge_batches


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def data_files(root: str) -> set[Path]:
    return {p for p in Path(root).rglob("*.parquet") if "_delta_log" not in p.parts}


def main(lake_uri: str, step: str, path: str = "") -> None:
    table_root = lake_table_location(open_store(lake_uri), "shop", "orders")[0]
    existing = data_files(table_root) if step == "data_files" else set()
    if path == "merge":  # the delta-rs MERGE path instead of the Arrow rewrite
        copy_on_write.supports = lambda _table: False
    read, apply = plan_module.read_changes, apply_module.apply_plan

    def read_then_die(*args: Any, **kwargs: Any) -> Any:
        read(*args, **kwargs)
        die()

    def die_before(*_args: Any, **_kwargs: Any) -> Any:
        die()

    def apply_then_die(*args: Any, **kwargs: Any) -> Any:
        apply(*args, **kwargs)
        die()

    def die_before_the_log_entry(*_args: Any, **_kwargs: Any) -> Any:
        """Every data and change file of the rewrite is written; its log entry is next."""
        assert data_files(table_root) - existing, "the rewrite wrote no data file"
        die()

    if step == "read":
        plan_module.read_changes = read_then_die
    elif step == "commit":
        apply_module.apply_plan = die_before
    elif step == "after_commit":
        apply_module.apply_plan = apply_then_die
    elif step == "data_files":
        copy_on_write.commit_entry = die_before_the_log_entry
    elif step != "none":
        raise SystemExit(f"unknown step {step!r}")
    merge_batches(MergeRequest(lake_uri=lake_uri, database="shop", collection="orders"))


if __name__ == "__main__":
    main(*sys.argv[1:])
