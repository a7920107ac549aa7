from lakehouse_pipelines.defs.warehouse_load.definitions import build_defs

__all__ = ["build_defs"]
