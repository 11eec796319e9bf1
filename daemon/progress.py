"""What a running job reports back, shared by segmentation and training jobs.

JobProgress holds the stop check (shutdown or a pending cancel command, the database polled at most
every 0.2 s), throttled progress rows with the rate (units done per second) over the last 10 s, and
the state of the chunk (or epoch) being run. finish_cancel_commands closes the cancel commands a job
obeyed. What the units and chunks are is the caller's business: frames and chunks for segmentation,
optimisation steps and epochs for training.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core.store import Store

CANCEL_POLL_SECONDS = 0.2
RATE_WINDOW_SECONDS = 10.0


class JobProgress:
    """Progress and stop state of one running job. `done` and `total` are the caller's counts; `chunk` is
    (sweep, idx, start, end) of the chunk running now, or None; `on_write` runs just before each progress
    row is written (training adds its mean step loss there)."""

    def __init__(self, store: Store, job_id: str, every: float, stop: threading.Event, *,
                 on_write: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.store, self.job_id, self.every, self.stop = store, job_id, every, stop
        self.on_write = on_write
        self.clock = clock
        self.done = 0
        self.total: int | None = None
        self.chunk: tuple[str, int, int, int] | None = None
        self._last_write = 0.0
        self._times: list[tuple[float, int]] = []
        self._last_cancel_check = 0.0
        self._cancelled = False

    def should_stop(self) -> bool:
        """True once the daemon shuts down or a cancel command for this job is pending."""
        if self.stop.is_set() or self._cancelled:
            return True
        now = self.clock()
        if now - self._last_cancel_check >= CANCEL_POLL_SECONDS:
            self._last_cancel_check = now
            self._cancelled = self.store.has_pending_cancel(self.job_id)
        return self._cancelled

    def flush(self, force: bool = False) -> None:
        """Write the progress row, at most once every `every` seconds unless forced."""
        now = self.clock()
        self._times.append((now, self.done))
        self._times = [t for t in self._times if now - t[0] <= RATE_WINDOW_SECONDS]
        if not force and now - self._last_write < self.every:
            return
        self._last_write = now
        if self.on_write is not None:
            self.on_write()
        first = self._times[0]
        rate = (self.done - first[1]) / (now - first[0]) if now > first[0] else None
        idx = self.chunk[1] if self.chunk else None
        self.store.set_progress(self.job_id, self.done, self.total, round(rate, 3) if rate else None, idx)

    def start_chunk(self, sweep: str, idx: int, start: int, end: int) -> None:
        self.chunk = (sweep, idx, start, end)
        self.store.set_chunk(self.job_id, sweep, idx, start, end, "running")

    def end_chunk(self, sweep: str, idx: int, start: int, end: int, seconds: float) -> None:
        """The chunk is done: its row says so with its time, and no chunk is running."""
        self.store.set_chunk(self.job_id, sweep, idx, start, end, "done", round(seconds, 3))
        self.chunk = None

    def mark_chunk(self, state: str, span: tuple[int, int] | None = None) -> None:
        """Give the running chunk's row `state` (a job that stopped: pending, cancelled, failed); `span`
        replaces the chunk's own (start, end) in the write."""
        if self.chunk is not None:
            sweep, idx, start, end = self.chunk
            if span is not None:
                start, end = span
            self.store.set_chunk(self.job_id, sweep, idx, start, end, state)


def finish_cancel_commands(store: Store, job_id: str) -> None:
    """Close the pending cancel commands of a job that was cancelled while it ran."""
    for cmd in store.pending_commands():
        if cmd.kind == "cancel" and cmd.job_id == job_id:
            store.finish_command(cmd.id, "done", "cancelled while running")
