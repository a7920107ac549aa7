"""The quick-start command (``lakehouse-run``) and the one code location name."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from lakehouse_pipelines import quickstart

ROOT = Path(__file__).resolve().parents[2]


def test_code_location_has_one_name_under_dg_dagster_dev_workspace_and_dagster_cloud():
    """Sensor cursors are keyed by location name: dg would otherwise name it after the
    checkout's directory."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dg = pyproject["tool"]["dg"]
    assert dg["directory_type"] == "project"
    assert dg["project"]["root_module"] == "lakehouse_pipelines"
    assert dg["project"]["code_location_target_module"] == "lakehouse_pipelines.definitions"
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    cloud = yaml.safe_load((ROOT / "dagster_cloud.yaml").read_text())
    names = {
        dg["project"]["code_location_name"],
        pyproject["tool"]["dagster"]["code_location_name"],
        *(entry["python_module"]["location_name"] for entry in workspace["load_from"]),
        *(location["location_name"] for location in cloud["locations"]),
    }
    assert names == {"lakehouse_pipelines"}
    assert any(d.startswith("dagster-dg-cli") for d in pyproject["project"]["dependencies"])
    assert pyproject["project"]["scripts"]["lakehouse-run"] == "lakehouse_pipelines.quickstart:main"


def test_dagster_home_is_created_with_the_instance_settings_when_unset(tmp_path):
    home, note = quickstart.dagster_home({}, tmp_path)
    assert home == tmp_path / ".dagster_home"
    assert (home / "dagster.yaml").read_text() == (ROOT / "deploy" / "dagster.yaml").read_text()
    assert "DAGSTER_HOME" in note and str(home) in note
    # a second run keeps the (possibly edited) settings and still names the directory
    (home / "dagster.yaml").write_text("# edited\n")
    again, note = quickstart.dagster_home({}, tmp_path)
    assert again == home and (home / "dagster.yaml").read_text() == "# edited\n"
    assert str(home) in note


def test_a_set_dagster_home_is_used_as_is(tmp_path):
    home, note = quickstart.dagster_home({"DAGSTER_HOME": str(tmp_path / "mine")}, tmp_path)
    assert home == tmp_path / "mine" and note is None
    assert not (tmp_path / ".dagster_home").exists()


def test_every_asset_over_the_registered_collections_in_one_run():
    assert quickstart.launch_args(["shop.orders"])[-2:] == ["--partition", "shop.orders"]
    args = quickstart.launch_args(["shop.customers", "shop.orders", "shop.products"])
    assert args[-2:] == ["--partition-range", "shop.customers...shop.products"]
    assets = args[args.index("--assets") + 1].split(",")
    assert "*" not in args[args.index("--assets") + 1]  # a `*` selection warns (BetaWarning)
    assert assets[:2] == ["cdc_raw_batches", "lake_table"] and "warehouse_table" in assets


def test_asset_keys_listed_are_the_code_locations_assets():
    from lakehouse_pipelines.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(quickstart.ASSETS) == keys


def test_summary_table_shows_batch_rows_version_and_load_reason():
    rows = [
        quickstart.CollectionFigures(
            "shop.customers", "2", "insert=3 update=5", "1", "505", "incremental"
        ),
        quickstart.CollectionFigures("shop.orders", "12", "-", "10", "529", "first load"),
    ]
    lines = quickstart.format_table(rows).splitlines()
    assert lines[0].split() == [
        "collection",
        "batch",
        "rows",
        "lake_version",
        "warehouse_rows",
        "load_reason",
    ]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split()[:3] == ["shop.customers", "2", "insert=3"]
    assert lines[2].split()[-1] == "incremental" and lines[3].split()[-2:] == ["first", "load"]
    # columns line up
    assert lines[2].index("incremental") == lines[3].index("first load")


def test_step_lines_are_shortened_to_step_and_message():
    line = (
        "2026-12-01 00:15:49 +0000 - dagster - DEBUG - __ASSET_JOB - 42fa - 4919 - lake_table"
        ' - STEP_START - Started execution of step "lake_table".\n'
    )
    assert quickstart._short(line) == 'lake_table: Started execution of step "lake_table".'


def test_the_run_is_found_by_the_id_its_launch_printed():
    line = (
        "2026-12-01 00:15:39 +0000 - dagster - DEBUG - __ASSET_JOB - "
        "42fabe12-f841-456a-8a16-6979e5824c4d - 3986 - RUN_START - Started execution of run\n"
    )
    assert quickstart._RUN_START.search(line)["run_id"] == "42fabe12-f841-456a-8a16-6979e5824c4d"


def test_figures_are_this_runs_own_per_collection_even_after_a_later_run():
    from dagster import (
        DagsterInstance,
        MaterializeResult,
        StaticPartitionsDefinition,
        asset,
        materialize,
    )

    collections = StaticPartitionsDefinition(["shop.customers", "shop.orders"])
    figures = {
        "cdc_raw_batches": {"batch": 2, "rows_by_op": {"update": 5, "insert": 3}},
        "lake_table": {"table_version": 1},
        "warehouse_table": {"dagster/row_count": 505, "load_reason": "incremental"},
    }

    def stage(name):
        @asset(name=name, partitions_def=collections)
        def _stage(context):
            return MaterializeResult(metadata=figures[name])

        return _stage

    instance = DagsterInstance.ephemeral()
    result = materialize(
        [stage(name) for name in figures], instance=instance, partition_key="shop.orders"
    )
    # a later run (a sensor's merge, say) materializes lake_table again with other figures
    figures["lake_table"] = {"table_version": 7}
    materialize([stage("lake_table")], instance=instance, partition_key="shop.orders")
    (orders, customers) = quickstart.collection_figures(
        instance, result.run_id, ["shop.orders", "shop.customers"]
    )
    assert orders == quickstart.CollectionFigures(
        "shop.orders", "2", "insert=3 update=5", "1", "505", "incremental"
    )
    # a collection the run did not materialize shows dashes, not an older run's figures
    assert customers == quickstart.CollectionFigures("shop.customers", *["-"] * 5)
