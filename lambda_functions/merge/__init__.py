"""Hudi-style merge of raw batches into a Delta Lake table (delta-rs)."""

from lambda_functions.merge.merge import MergeResult, lake_table_location, merge_batches

__all__ = ["MergeResult", "lake_table_location", "merge_batches"]
