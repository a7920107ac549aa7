"""The Lambda image ships ``lambda_functions`` only: every module imports without the local
stand-ins (``lakehouse_local``), and asking for the embedded source there fails with an error that
names the fix. ``change_source.open_source`` is the one place that imports ``lakehouse_local``."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import lambda_functions

IMAGE_WITHOUT_STAND_INS = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class Blocker:  # what the Lambda image lacks
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "lakehouse_local":
                raise ImportError(f"No module named {name!r}")

    sys.meta_path.insert(0, Blocker())
    import lambda_functions
    names = [m.name for m in pkgutil.walk_packages(lambda_functions.__path__, "lambda_functions.")]
    for name in names:
        importlib.import_module(name)

    from lambda_functions.cdc_capture.change_source import (
        EmbeddedSourceUnavailableError, open_source,
    )
    from lambda_functions.contracts import CaptureRequest
    from lambda_functions.errors import error_kind

    request = CaptureRequest(
        lake_uri=sys.argv[1], database="shop", collection="orders", source_location=sys.argv[2]
    )
    try:
        open_source(request)
    except EmbeddedSourceUnavailableError as e:
        assert isinstance(e, ImportError)
        assert error_kind(type(e).__name__) == "terminal"
        print(e)
    else:
        raise SystemExit("open_source opened the embedded source without lakehouse_local")
    """
)


def test_lambda_functions_imports_without_the_local_stand_ins_and_embedded_names_the_fix(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            IMAGE_WITHOUT_STAND_INS,
            str(tmp_path / "lake"),
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "source_kind 'documentdb'" in done.stdout
    assert not (tmp_path / "s").exists()  # nothing was opened


def test_only_change_source_imports_the_local_stand_ins() -> None:
    root = Path(lambda_functions.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            if any(m.split(".")[0] == "lakehouse_local" for m in modules):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"cdc_capture/change_source.py"}


def test_the_lambda_image_copies_the_data_plane_and_not_the_stand_ins() -> None:
    dockerfile = Path(lambda_functions.__file__).parents[1] / "deploy" / "Dockerfile"
    copied = [
        line.split()[1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith(("COPY ", "ADD "))
    ]
    assert "lambda_functions" in copied
    assert not [source for source in copied if source in (".", "lakehouse_local")]
