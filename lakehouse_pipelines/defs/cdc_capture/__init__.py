from lakehouse_pipelines.defs.cdc_capture.definitions import build_defs

__all__ = ["build_defs"]
