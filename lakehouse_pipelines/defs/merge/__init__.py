from lakehouse_pipelines.defs.merge.definitions import build_defs

__all__ = ["build_defs"]
