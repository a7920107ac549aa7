"""The code location: every stage's definitions, with resources built from the environment."""

from __future__ import annotations

from dagster import Definitions

from lakehouse_pipelines.defs import cdc_capture, collections, merge, metrics, warehouse_load
from lakehouse_pipelines.resources import build_resources
from lakehouse_pipelines.settings import LakehouseSettings


def build_definitions(settings: LakehouseSettings | None = None) -> Definitions:
    settings = settings or LakehouseSettings.from_env()
    return Definitions.merge(
        *(
            stage.build_defs(settings)
            for stage in (collections, cdc_capture, merge, warehouse_load, metrics)
        ),
        Definitions(resources=build_resources(settings)),
    )


defs = build_definitions()
