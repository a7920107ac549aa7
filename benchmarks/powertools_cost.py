"""Benchmark: what adopting aws-lambda-powertools would cost each Lambda (issue 14, item 8).

Weighs Powertools for AWS Lambda (Python) v3 against the code we hand-write for the same jobs:
``lambda_functions.emf`` (CloudWatch Embedded Metric Format lines) and the SQS partial-batch
response of ``lambda_functions.cdc_capture.mq_handler``. Two figures:

- **cold import time**: each import runs in a fresh interpreter (``python -c``), timed inside the
  process with ``time.perf_counter`` around the ``import`` alone (interpreter start excluded),
  ``--runs`` times, the imports taken round-robin; the median is reported. Bytecode caches are
  used (as in a built image). Powertools is timed twice: alone, and on top of the
  handler modules already imported (the figure a handler would actually pay: modules both share,
  e.g. ``json``, ``jmespath`` or ``typing_extensions``, are then free).
- **installed size**: bytes of every file under the ``site-packages`` entries a throwaway venv's
  ``pip install aws-lambda-powertools`` added (the package and its dependencies), and the same
  with the ``[all]`` extras, if such a venv is given.

Powertools lives in throwaway venvs, never in the project's: make them first.

    python3 -m venv /tmp/pt-venv && /tmp/pt-venv/bin/pip install 'aws-lambda-powertools==3.*'
    python3 -m venv /tmp/pt-venv-all && /tmp/pt-venv-all/bin/pip install \
        'aws-lambda-powertools[all]==3.*'
    PYTHONPATH=. .venv/bin/python benchmarks/powertools_cost.py \
        --powertools-venv /tmp/pt-venv --powertools-all-venv /tmp/pt-venv-all

Prints a human table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {
    "lambda_functions.emf": "import lambda_functions.emf",
    "mq_handler": "import lambda_functions.cdc_capture.mq_handler",
    "dms_handler": "import lambda_functions.cdc_capture.dms_handler",
}
THEIRS = {
    "powertools.metrics": "import aws_lambda_powertools.metrics",
    "powertools.utilities.batch": "import aws_lambda_powertools.utilities.batch",
    "powertools metrics+batch": (
        "import aws_lambda_powertools.metrics, aws_lambda_powertools.utilities.batch"
    ),
}
HANDLERS = (
    "import lambda_functions.cdc_capture.mq_handler, lambda_functions.cdc_capture.dms_handler"
)
# Packages the base venv has before any install (pip and setuptools come with ``venv``).
VENV_BASELINE = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth", "__pycache__")


def import_sample_ms(statement: str, *, python: str, path: list[str], before: str = "") -> float:
    """Milliseconds ``statement`` takes in a fresh interpreter (after ``before``)."""
    program = (
        f"{before}\nimport time\nt=time.perf_counter()\n{statement}\n"
        "print((time.perf_counter()-t)*1000)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    out = subprocess.run(
        [python, "-c", program], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python*/site-packages")
    return found


def added_bytes(venv: Path) -> int:
    """Bytes of every file a venv holds beyond what ``python -m venv`` put there."""
    total = 0
    for entry in site_packages(venv).iterdir():
        if entry.name.startswith(VENV_BASELINE):
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--powertools-venv", type=Path, required=True)
    parser.add_argument("--powertools-all-venv", type=Path)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()

    ours_path = [str(ROOT)]
    # Powertools on the project's interpreter, after the project's own site-packages: what a
    # Lambda image with both would import.
    both_path = [
        str(ROOT),
        sysconfig.get_paths()["purelib"],
        str(site_packages(args.powertools_venv)),
    ]
    jobs: dict[str, dict] = {}
    for name, statement in OURS.items():
        jobs[f"{name}_import_ms"] = {
            "statement": statement,
            "python": sys.executable,
            "path": ours_path,
        }
    for name, statement in THEIRS.items():
        key = name.replace(" ", "_").replace("+", "_and_").replace(".", "_")
        jobs[f"{key}_import_ms"] = {
            "statement": statement,
            "python": str(args.powertools_venv / "bin" / "python"),
            "path": [],
        }
        jobs[f"{key}_after_handlers_import_ms"] = {
            "statement": statement,
            "python": sys.executable,
            "path": both_path,
            "before": HANDLERS,
        }
    # Round-robin, so that load from other work on the shared machine slows every figure alike.
    samples: dict[str, list[float]] = {key: [] for key in jobs}
    for _ in range(args.runs):
        for key, job in jobs.items():
            samples[key].append(import_sample_ms(**job))
    figures: dict[str, float] = {key: statistics.median(runs) for key, runs in samples.items()}
    # The share a handler's cold start would grow by: load on the machine scales both alike.
    figures["metrics_and_batch_over_mq_handler_import_percent"] = (
        100
        * figures["powertools_metrics_and_batch_after_handlers_import_ms"]
        / figures["mq_handler_import_ms"]
    )
    figures["powertools_installed_bytes"] = added_bytes(args.powertools_venv)
    if args.powertools_all_venv is not None:
        figures["powertools_all_extras_installed_bytes"] = added_bytes(args.powertools_all_venv)

    width = max(len(k) for k in figures)
    print(f"{'figure':<{width}}  value")
    for key, value in figures.items():
        unit = "MB" if key.endswith("_bytes") else "%" if key.endswith("_percent") else "ms"
        shown = f"{value / 1e6:.1f} MB" if unit == "MB" else f"{value:.1f} {unit}"
        print(f"{key:<{width}}  {shown}")
    version = subprocess.run(
        [
            str(args.powertools_venv / "bin" / "python"),
            "-c",
            "from aws_lambda_powertools.shared.version import VERSION; print(VERSION)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(
        json.dumps(
            {
                "benchmark": "powertools_cost",
                "runs": args.runs,
                "powertools": version,
                "cpus": os.cpu_count(),
                **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
