from lakehouse_pipelines.defs.metrics.definitions import build_defs

__all__ = ["build_defs"]
