"""One folder per stage: each exposes ``defs`` with its assets, checks, sensors and schedules."""
