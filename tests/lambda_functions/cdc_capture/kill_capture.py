"""Run one capture in this process and SIGKILL it at a chosen write (a Lambda killed mid-run).

    python -m tests.lambda_functions.cdc_capture.kill_capture SOURCE LAKE MAX_ROWS KIND N

kills the process just before its ``N``-th write of ``KIND`` (``data``: a Parquet data file,
``manifest``, ``checkpoint``): no ``finally`` block, no cleanup, as when Lambda's sandbox is
killed. ``KIND`` ``none`` runs to the end.
"""

from __future__ import annotations

import os
import signal
import sys

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture import capture_changes
from lambda_functions.contracts import CaptureRequest
from tests.lambda_functions.cdc_capture.conftest import HookedStore


def kind_of(key: str) -> str:
    if key.endswith("_checkpoint.json"):
        return "checkpoint"
    if "/manifests/" in key:
        return "manifest"
    return "data" if key.endswith(".parquet") else "other"


class KillingStore(HookedStore):
    def __init__(self, root: str, kind: str, occurrence: int):
        super().__init__(root)
        self.kind, self.occurrence, self.seen = kind, occurrence, 0

    def before_write(self, key: str) -> None:
        if kind_of(key) == self.kind:
            self.seen += 1
            if self.seen == self.occurrence:
                os.kill(os.getpid(), signal.SIGKILL)


def main(source_path: str, lake: str, max_rows: str, kind: str, occurrence: str) -> None:
    request = CaptureRequest(
        lake_uri=lake, database="shop", collection="orders", max_rows=int(max_rows)
    )
    with EmbeddedChangeStreamSource(source_path) as source:
        capture_changes(request, source=source, store=KillingStore(lake, kind, int(occurrence)))


if __name__ == "__main__":
    main(*sys.argv[1:])
