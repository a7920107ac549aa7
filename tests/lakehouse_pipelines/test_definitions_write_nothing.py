"""Loading the code location writes nothing: ``dg``/``dagster`` import the definitions module in
whatever directory they run from (the webserver, the daemon, every run worker), so files made at
import time would land there. The local Lambda runtime creates its log directory at its first log
write instead."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

LOAD_LIKE_DAGSTER = textwrap.dedent(
    """
    import lakehouse_pipelines.definitions as module

    # as dagster's module loader does: the module's Definitions, then the repository and every
    # definition in it (assets, checks, jobs, sensors, schedules, resources)
    repository = module.defs.get_repository_def()
    repository.load_all_definitions()
    print(len(list(repository.asset_graph.get_all_asset_keys())))
    """
)


def test_importing_and_loading_the_definitions_writes_nothing_to_the_working_directory(
    tmp_path: Path,
) -> None:
    project = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(project), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", LOAD_LIKE_DAGSTER],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 0  # the definitions were really built
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []
