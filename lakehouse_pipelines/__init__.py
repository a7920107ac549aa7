"""lakehouse_pipelines: the Dagster code location (orchestration side)."""
