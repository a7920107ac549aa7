"""``lakehouse-run``: the quick start as one command.

Registers the collections (``register_collections``), then materializes every asset for every
registered collection in one run (``dg launch`` over the collections' partition range, so each step
fans out to one Lambda invocation per collection), and prints a line as each step starts, the
steps' durations and outcomes, and a table of what each collection got: raw batch, rows by
operation, lake table version, warehouse load reason. The runs' full output (Dagster's event log, the Lambda START/END/REPORT and EMF lines) goes
to ``<LAKEHOUSE_ROOT>/runs/<time>.log``; the same is in the Dagster UI (``dg dev``) and, per function,
in ``<LAKEHOUSE_ROOT>/lambda-logs/<fn>.log``.

``DAGSTER_HOME``: used when set; otherwise ``./.dagster_home`` is created with the instance settings
of ``deploy/dagster.yaml`` and the command says so (export the same value for ``dg dev`` to see
these runs and keep the sensors' cursors).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PARTITIONS = "collections"  # DynamicPartitionsDefinition name (defs/collections.py)
REGISTER_JOB = "register_collections"
# Every asset of the code location, in pipeline order; unpartitioned ones run once in the same run.
ASSETS = (
    "cdc_raw_batches",
    "lake_table",
    "lake_table_maintenance",
    "source_audit",
    "warehouse_table",
    "pipeline_metrics",
)
# Echoed live. A step's last lines (STEP_SUCCESS) can miss the terminal: dagster mirrors a step's
# captured output with `tail -F` and stops it when the step ends; the outcomes come from the
# instance at the end instead.
_SHOWN_EVENTS = ("STEP_START", "STEP_FAILURE", "RUN_FAILURE")
_INSTANCE_YAML = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"


def dagster_home(environ: Mapping[str, str], cwd: Path) -> tuple[Path, str | None]:
    """The instance directory, and a note for the user when this command chose it."""
    if environ.get("DAGSTER_HOME"):
        return Path(environ["DAGSTER_HOME"]).expanduser().resolve(), None
    home = (cwd / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    note = f"DAGSTER_HOME is not set: using {home}"
    if not (home / "dagster.yaml").exists() and _INSTANCE_YAML.exists():
        shutil.copyfile(_INSTANCE_YAML, home / "dagster.yaml")
        note += " (instance settings copied from deploy/dagster.yaml)"
    return home, note + f'.\n  For `dg dev` on the same runs: export DAGSTER_HOME="{home}"'


def launch_args(partitions: Sequence[str]) -> list[str]:
    """``dg launch`` arguments for every asset over ``partitions`` (registration order)."""
    args = ["launch", "--assets", ",".join(ASSETS)]
    if len(partitions) == 1:
        return [*args, "--partition", partitions[0]]
    return [*args, "--partition-range", f"{partitions[0]}...{partitions[-1]}"]


def _dg() -> str:
    local = Path(sys.executable).with_name("dg")
    return str(local) if local.exists() else (shutil.which("dg") or "dg")


_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(?:\w+Error|\w+Exception|Failure): \S")
_RUN_START = re.compile(r" - (?P<run_id>[0-9a-f]{8}-[0-9a-f-]{27}) - \d+ - RUN_START - ")


@dataclass(frozen=True)
class Launched:
    """A finished ``dg launch``: its exit code and the id of the run it started ("" if none).
    The id comes from the launch's own output: a sensor's run may start meanwhile."""

    exit_code: int
    run_id: str
    # The last "SomeError: message" line of the output: the cause, which names the fix.
    last_error: str = ""


def _run(args: list[str], env: Mapping[str, str], log: Any, *, echo: bool) -> Launched:
    """Run ``dg`` with its output appended to ``log``; echo the steps' starts in short."""
    log.write(f"\n$ dg {' '.join(args)}\n")
    log.flush()
    process = subprocess.Popen(
        [_dg(), *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert process.stdout is not None
    run_id, last_error = "", ""
    for line in process.stdout:
        log.write(line)
        if _ERROR_LINE.match(line.strip()):
            last_error = line.strip()
        started = None if run_id else _RUN_START.search(line)
        if started:
            run_id = started["run_id"]
        if echo and any(f" - {event} - " in line for event in _SHOWN_EVENTS):
            print("  " + _short(line), flush=True)
    return Launched(process.wait(), run_id, last_error)


def _step_failures(instance: Any, run_id: str) -> list[str]:
    """Each failed step's error message (its first line, which names the fix), in order."""
    if not run_id:
        return []
    from dagster import DagsterEventType

    causes = []
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        error = event.step_failure_data.error if event and event.step_failure_data else None
        if error is not None:
            causes.append(f"{event.step_key}: {error.message.strip().splitlines()[0]}")
    return causes


def _short(line: str) -> str:
    """``... - <run id> - <pid> - lake_table - STEP_SUCCESS - Finished ... in 1.6s.`` ->
    ``lake_table: Finished ... in 1.6s.``"""
    parts = line.rstrip().split(" - ")
    for i, part in enumerate(parts):
        if part in _SHOWN_EVENTS:
            step = parts[i - 1] if i and not parts[i - 1].isdigit() else "run"
            return f"{step}: {' - '.join(parts[i + 1 :])}"[:200]
    return line.strip()[:200]


@dataclass(frozen=True)
class CollectionFigures:
    """One row of the summary: what one run did for one collection ("-" where the run recorded
    no materialization of that stage for it)."""

    collection: str
    batch: str
    rows: str  # rows of the raw batch by operation, e.g. "delete=3 insert=5"
    lake_version: str
    warehouse_rows: str
    load_reason: str  # "first load", "incremental", ...


def collection_figures(
    instance: Any, run_id: str, partitions: Sequence[str]
) -> list[CollectionFigures]:
    """Per collection, the figures run ``run_id``'s materializations recorded (from their
    metadata: cdc_raw_batches ``batch``/``rows_by_op``, lake_table ``table_version``,
    warehouse_table ``dagster/row_count``/``load_reason``). Read from the run's own events, not
    from the latest materialization: a sensor's run may have materialized a stage since."""
    from dagster import DagsterEventType

    recorded: dict[tuple[str, str], Mapping[str, Any]] = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.asset_materialization
        if materialization is not None and materialization.partition is not None:
            key = (materialization.asset_key.to_user_string(), materialization.partition)
            recorded[key] = {k: v.value for k, v in materialization.metadata.items()}

    def latest(asset: str, partition: str) -> Mapping[str, Any]:
        return recorded.get((asset, partition), {})

    rows = []
    for partition in partitions:
        raw, lake, warehouse = (
            latest(a, partition) for a in ("cdc_raw_batches", "lake_table", "warehouse_table")
        )
        ops = raw.get("rows_by_op") or {}
        rows.append(
            CollectionFigures(
                collection=partition,
                batch=str(raw.get("batch", "-")),
                rows=" ".join(f"{op}={n}" for op, n in sorted(ops.items())) or "-",
                lake_version=str(lake.get("table_version", "-")),
                warehouse_rows=str(warehouse.get("dagster/row_count", "-")),
                load_reason=str(warehouse.get("load_reason", "-")),
            )
        )
    return rows


def format_table(rows: Sequence[CollectionFigures]) -> str:
    """A plain-text table, one line per collection, columns aligned."""
    if not rows:
        return ""
    headers = [f.name for f in fields(CollectionFigures)]
    cells = [headers, *([str(value) for value in astuple(row)] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lakehouse-run`` command.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``): ``--collection DB.COLL``, repeatable.

    Returns:
        The exit code: 0 when the run succeeded, 1 when registration or the run failed (the
        message names the log file), 2 for a ``--collection`` that is not registered.
    """
    parser = argparse.ArgumentParser(
        prog="lakehouse-run",
        description="Register the collections and run every stage for all of them (or --collection).",
    )
    parser.add_argument(
        "--collection",
        action="append",
        metavar="DB.COLL",
        help="run only this registered collection (repeatable); default: every one",
    )
    options = parser.parse_args(argv)
    started = time.monotonic()
    cwd = Path.cwd()
    home, note = dagster_home(os.environ, cwd)
    if note:
        print(note)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    os.environ["DAGSTER_HOME"] = str(home)
    root = Path(os.environ.get("LAKEHOUSE_ROOT", ".lakehouse")).expanduser().resolve()
    log_path = root / "runs" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    from dagster import DagsterInstance, DagsterRunStatus

    with open(log_path, "a", encoding="utf-8") as log, DagsterInstance.get() as instance:
        print(f"Registering collections ... (full output: {log_path})", flush=True)
        registered_launch = _run(["launch", "--job", REGISTER_JOB], env, log, echo=True)
        if registered_launch.exit_code != 0:
            print(f"register_collections failed; see {log_path}", file=sys.stderr)
            if registered_launch.last_error:
                print(f"  cause: {registered_launch.last_error}", file=sys.stderr)
            return 1
        registered = list(instance.get_dynamic_partitions(PARTITIONS))
        partitions = registered
        if options.collection:
            unknown = sorted(set(options.collection) - set(registered))
            if unknown:
                print(
                    f"not registered: {', '.join(unknown)} (registered: {', '.join(registered)})",
                    file=sys.stderr,
                )
                return 2
            partitions = [p for p in registered if p in options.collection]
        if not partitions:
            print("No collection is registered (LAKEHOUSE_COLLECTIONS?).", file=sys.stderr)
            return 1
        # A range runs as one run that fans out; it must be contiguous in registration order.
        first, last = registered.index(partitions[0]), registered.index(partitions[-1])
        partitions = registered[first : last + 1]
        print(f"Running every stage for {', '.join(partitions)} ...", flush=True)
        launched = _run(launch_args(partitions), env, log, echo=True)
        run = instance.get_run_by_id(launched.run_id) if launched.run_id else None
        if launched.exit_code != 0 or run is None or run.status != DagsterRunStatus.SUCCESS:
            print(f"The run failed; see {log_path} or the run in `dg dev`.", file=sys.stderr)
            for cause in _step_failures(instance, launched.run_id) or [launched.last_error]:
                if cause:
                    print(f"  cause: {cause}", file=sys.stderr)
            return 1
        steps = sorted(instance.get_run_step_stats(run.run_id), key=lambda s: s.start_time or 0)
        print(
            "steps: "
            + ", ".join(
                f"{s.step_key} {(s.end_time or 0) - (s.start_time or 0):.1f}s {s.status.value.lower()}"
                for s in steps
            )
        )
        print()
        print(format_table(collection_figures(instance, run.run_id, partitions)))
        print(
            f"\nrun {run.run_id} succeeded in {time.monotonic() - started:.0f} s. "
            "Run again for an incremental batch; `dg dev` shows the metadata and plots."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
