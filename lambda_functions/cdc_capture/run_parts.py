"""What the steps of one capture run share: the run's request, source, raw zone, progress
callback and masking, and the run's own methods the steps call. ``snapshot.SnapshotSteps`` and
``stream.StreamSteps`` derive from it; ``capture._CaptureRun`` combines them and defines those
methods (the declarations below are for type checkers only).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lambda_functions.cdc_capture.batches import BatchRows
    from lambda_functions.cdc_capture.capture_state import CaptureState, SnapshotState
    from lambda_functions.cdc_capture.change_source import ChangeSource
    from lambda_functions.cdc_capture.edge_masking import EdgeMasking
    from lambda_functions.contracts import CaptureRequest
    from lambda_functions.lake.raw_zone import Checkpoint, RawZone


class CaptureRunParts:
    """The parts of ``capture._CaptureRun`` its step mixins read and call."""

    request: CaptureRequest
    source: ChangeSource
    zone: RawZone
    on_progress: Callable[[str], None]
    masking: EdgeMasking

    if TYPE_CHECKING:

        def _source_errors(self, token: Any) -> AbstractContextManager[None]: ...
        def _out_of_time(self) -> bool: ...
        def _start_snapshot(self) -> SnapshotState: ...
        def _stored_state(self, state: CaptureState) -> dict[str, Any]: ...
        def _publish(
            self,
            rows: BatchRows,
            checkpoint: Checkpoint,
            state: CaptureState,
            extra: dict[str, Any],
        ) -> Checkpoint: ...
