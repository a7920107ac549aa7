"""Hudi-style merge of raw batches into a Delta Lake table (delta-rs), and its maintenance."""

from lambda_functions.lake.lake_table import lake_table_location
from lambda_functions.merge.history import changes_between, read_version
from lambda_functions.merge.maintenance import MaintenanceResult, compact_table
from lambda_functions.merge.merge import MergeResult, merge_batches

__all__ = [
    "MaintenanceResult",
    "MergeResult",
    "changes_between",
    "compact_table",
    "lake_table_location",
    "merge_batches",
    "read_version",
]
