"""Run one DuckDB load and kill the process (``os._exit(137)``, no cleanup, no ROLLBACK) just before
the statement with the given label. Used by the load tests to prove a real crash commits nothing.

    python -m tests.lambda_functions.warehouse_load.killed_load '<LoadRequest event JSON>' <label>
"""

from __future__ import annotations

import json
import os
import sys

from lambda_functions.contracts import LoadRequest
from lambda_functions.warehouse_load import load_changes
from lambda_functions.warehouse_load.duckdb_warehouse import DuckDBWarehouse


def main(event_json: str, label: str) -> None:
    real_execute = DuckDBWarehouse._execute

    def dying(self: DuckDBWarehouse, statement):  # type: ignore[no-untyped-def]
        if statement.label == label:
            os._exit(137)
        return real_execute(self, statement)

    DuckDBWarehouse._execute = dying  # type: ignore[method-assign]
    load_changes(LoadRequest.from_event(json.loads(event_json)))
    sys.exit(f"the load finished without reaching a statement labelled {label!r}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
