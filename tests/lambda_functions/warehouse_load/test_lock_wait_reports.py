"""Waiting for the DuckDB file lock is reported: what for, how long so far, who holds it."""

from __future__ import annotations

import subprocess
import sys
import time

from lambda_functions.warehouse_load.duckdb_warehouse import connect_waiting, lock_holder

HOLD = """
import sys, time, duckdb
db = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_load_waiting_for_the_file_lock_says_who_holds_it_at_a_steady_interval(tmp_path):
    """Issue 12: a load waited 113 s on the DuckDB file lock with no log line."""
    path = str(tmp_path / "warehouse.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, path, "2.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        lines: list[str] = []
        started = time.monotonic()
        connection = connect_waiting(path, wait_s=30, on_progress=lines.append, report_every_s=0.5)
        waited = time.monotonic() - started
        connection.close()
    finally:
        holder.wait(timeout=30)
    assert waited >= 1.5
    waiting = [line for line in lines if line.startswith("waiting for")]
    assert 2 <= len(waiting) <= 7  # one line per 0.5 s of a ~2 s wait
    assert waiting[0].startswith(f"waiting for the DuckDB file lock on {path}: ")
    assert f"held by PID {holder.pid} (" in waiting[0]
    assert HOLD.strip().splitlines()[0] in waiting[0] or "python" in waiting[0]
    assert lines[-1].startswith(f"the DuckDB file lock on {path}: acquired after ")


def test_an_uncontended_connection_logs_nothing(tmp_path):
    lines: list[str] = []
    connect_waiting(str(tmp_path / "w.duckdb"), on_progress=lines.append).close()
    assert lines == []


def test_the_holder_is_read_from_duckdbs_message():
    message = (
        'IO Error: Could not set lock on file "/x/w.duckdb": Conflicting lock is held in '
        "/usr/bin/python3.11 (PID 999999999). See also https://duckdb.org/docs"
    )
    assert lock_holder(message) == "held by PID 999999999 (/usr/bin/python3.11)"
    assert lock_holder("IO Error: lock busy") == "IO Error: lock busy"
