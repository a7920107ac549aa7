"""Long waits made visible: a line at a steady interval saying what is awaited and for how long.

A load waiting for the DuckDB file lock, a Data API statement being polled or a big snapshot
being read can take minutes; with nothing in the log they look like a hang. Stages pass their
``on_progress`` callback (a handler's ``pipes.log.info``, so the lines reach Dagster while the
function still runs) to a ``WaitReport`` and call ``still()`` on every turn of their loop; a line
is written at most every ``every_s`` seconds, and a closing line when the wait was long enough
to have been reported. Shared ground: no stage imports another to use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# How often a long wait says it is still waiting (seconds).
REPORT_EVERY_S = 10.0


class WaitReport:
    """Reports one wait through ``say``: at most one line per ``every_s`` seconds.

    Args:
        what: what is awaited, as a phrase: ``"the DuckDB file lock on /x/warehouse.duckdb"``.
        say: where lines go (``None``: nowhere; the wait is still timed).
        every_s: the interval between lines, in seconds.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        what: str,
        say: Callable[[str], None] | None,
        *,
        every_s: float = REPORT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what = what
        self.say = say or (lambda _message: None)
        self.every_s = every_s
        self.clock = clock
        self.started = clock()
        self._last = self.started
        self.reports = 0

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def still(self, detail: str = "") -> bool:
        """Called on every turn of the waiting loop; writes ``waiting for <what>: <n> s so far
        (<detail>)`` once ``every_s`` has passed since the last line. Returns whether it did."""
        now = self.clock()
        if now - self._last < self.every_s:
            return False
        self._last = now
        self.reports += 1
        suffix = f" ({detail})" if detail else ""
        self.say(f"waiting for {self.what}: {now - self.started:.0f} s so far{suffix}")
        return True

    def done(self, outcome: str = "done") -> None:
        """Closes a wait that was reported at least once: ``<what>: <outcome> after <n> s``."""
        if self.reports:
            self.say(f"{self.what}: {outcome} after {self.elapsed_s:.1f} s")


__all__ = ["REPORT_EVERY_S", "WaitReport"]
