"""The layers of the product, checked on the source (every import, including function-level ones).

- The Dagster side (``lakehouse_pipelines``) reaches the data plane only through the invoke
  contract (``lambda_functions.contracts``, ``.registry``, ``.errors``, ``.pipes``' helpers, the
  pure SQL plan ``.warehouse_sql``), the lake's read helpers (``lambda_functions.lake``) and the
  metrics helpers (``.emf``); never a stage package (``cdc_capture``, ``merge``,
  ``warehouse_load``).
- The contract (``contracts``, ``registry``, ``errors``) imports no stage.
- No stage imports another stage.
- The data plane imports the local stand-ins (``lakehouse_local``) only from
  ``lambda_functions/cdc_capture/change_source.py``, and only inside a function (lazily: the
  deployed image does not ship them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("cdc_capture", "merge", "warehouse_load")
# warehouse_sql: the load's pure SQL plan, under the contract (no stage): the settings check a
# projection against Redshift's limits with it.
# The contract: requests and their field rules, the function registry, the error kinds, the route
# choice (Lambda or ECS); ``warehouse_sql`` (the load's pure SQL plan) sits under it.
CONTRACT = ("contracts", "request_base", "request_fields", "registry", "errors", "routing")
DATA_PLANE_FOR_DAGSTER = (*CONTRACT, "warehouse_sql", "pipes", "lake", "emf")
STANDINS_GATE = "lambda_functions/cdc_capture/change_source.py"

# Violations other engineers are removing in parallel: being removed by the issue-14 refactor.
# (file, imported module) pairs; the integrator empties this list after merging. Empty since main
# gained i14-wh (settings/contracts -> warehouse_sql) and i14-merge (layout and location in lake/);
# ``test_every_allowed_violation_still_exists`` keeps it from going stale.
KNOWN_PENDING: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    path: str  # relative to the project root
    module: str  # absolute module name imported
    lazy: bool  # inside a function
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    rel = str(path.relative_to(ROOT))

    def walk(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(rel, alias.name, lazy, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                yield Import(rel, module, lazy, child.lineno)
                # ``from lambda_functions import merge`` imports the submodule merge
                for alias in child.names:
                    if _is_module(f"{module}.{alias.name}"):
                        yield Import(rel, f"{module}.{alias.name}", lazy, child.lineno)
            yield from walk(child, inner)

    yield from walk(tree, False)


def _all_imports(package: str) -> list[Import]:
    return [imp for path in sorted((ROOT / package).rglob("*.py")) for imp in _imports(path)]


def _data_plane_part(module: str) -> str | None:
    """``merge`` for ``lambda_functions.merge.x``; None outside ``lambda_functions``."""
    parts = module.split(".")
    if parts[0] != "lambda_functions":
        return None
    return parts[1] if len(parts) > 1 else ""


def _is_module(module: str) -> bool:
    """Whether ``module`` names a module or package (not a name imported from one)."""
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _report(violations: list[Import]) -> str:
    return "\n".join(f"{v.path}:{v.line} imports {v.module}" for v in violations)


def _new(violations: list[Import]) -> list[Import]:
    return [v for v in violations if (v.path, v.module) not in KNOWN_PENDING]


def test_the_dagster_side_imports_only_the_contract_the_lake_and_the_metrics_helpers():
    violations = [
        imp
        for imp in _all_imports("lakehouse_pipelines")
        if _data_plane_part(imp.module) not in (None, "", *DATA_PLANE_FOR_DAGSTER)
    ]
    assert not _new(violations), _report(_new(violations))


def test_the_contract_imports_no_stage():
    violations = [
        imp
        for path in [
            *(ROOT / "lambda_functions" / f"{name}.py" for name in CONTRACT),
            *sorted((ROOT / "lambda_functions" / "warehouse_sql").glob("*.py")),
        ]
        for imp in _imports(path)
        if _data_plane_part(imp.module) in STAGES
    ]
    assert not _new(violations), _report(_new(violations))


def test_no_stage_imports_another_stage():
    violations = [
        imp
        for stage in STAGES
        for imp in _all_imports(f"lambda_functions/{stage}")
        if _data_plane_part(imp.module) in STAGES and _data_plane_part(imp.module) != stage
    ]
    assert not _new(violations), _report(_new(violations))


def test_the_data_plane_imports_the_local_stand_ins_only_lazily_from_change_source():
    violations = [
        imp
        for imp in _all_imports("lambda_functions")
        if imp.module.split(".")[0] == "lakehouse_local"
        and not (imp.path == STANDINS_GATE and imp.lazy)
    ]
    assert not _new(violations), _report(_new(violations))


def test_every_allowed_violation_still_exists():
    """An entry of ``KNOWN_PENDING`` that no file has any more is removed from the list."""
    found = {
        (imp.path, imp.module)
        for package in ("lakehouse_pipelines", "lambda_functions")
        for imp in _all_imports(package)
    }
    assert not KNOWN_PENDING - found, sorted(KNOWN_PENDING - found)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checks above would pass vacuously if the parser missed imports."""
    package = tmp_path / "lambda_functions" / "merge"
    package.mkdir(parents=True)
    (tmp_path / "lambda_functions" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text(
        "from lambda_functions import contracts\n"
        "from .. import warehouse_load\n"
        "def later():\n"
        "    import lakehouse_local.embedded_source\n"
    )
    (tmp_path / "lambda_functions" / "warehouse_load.py").write_text("")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    found = {(imp.module, imp.lazy) for imp in _imports(package / "probe.py")}
    assert ("lambda_functions", False) in found
    assert ("lambda_functions.warehouse_load", False) in found
    assert ("lakehouse_local.embedded_source", True) in found
    assert ("lambda_functions.contracts", False) not in found  # not a module under tmp_path
