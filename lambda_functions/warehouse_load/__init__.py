"""Incremental, transactional load of the lake table into the warehouse."""

from lambda_functions.warehouse_load.load import LoadResult, load_changes

__all__ = ["LoadResult", "load_changes"]
