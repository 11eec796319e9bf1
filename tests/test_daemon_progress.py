"""The daemon's shared progress helper: throttled progress rows, the rate, the cancel poll, chunk states."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.store import Store
from daemon.progress import JobProgress, finish_cancel_commands


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def _progress_row(store: Store, job_id: str) -> tuple | None:
    return store.conn.execute("SELECT frames_done, frames_total, fps, chunk FROM progress WHERE job_id = ?",
                              (job_id,)).fetchone()


def _make(store: Store, tmp_path: Path, every: float = 1.0, **kw) -> tuple[JobProgress, Clock, str]:
    job = store.add_job("clip", tmp_path / "clip")
    clock = Clock()
    return JobProgress(store, job, every, threading.Event(), clock=clock, **kw), clock, job


def test_progress_writes_are_throttled_unless_forced(store: Store, tmp_path: Path):
    progress, clock, job = _make(store, tmp_path, every=1.0)
    progress.total = 50
    progress.flush(force=True)
    assert _progress_row(store, job) == (0, 50, None, None)
    progress.done = 3
    clock.now += 0.5
    progress.flush()  # within `every` of the last write: nothing written
    assert _progress_row(store, job)[0] == 0
    progress.flush(force=True)
    assert _progress_row(store, job)[0] == 3
    progress.done = 4
    clock.now = 101.49
    progress.flush()
    assert _progress_row(store, job)[0] == 3
    clock.now = 101.5  # `every` since the last (forced) write
    progress.flush()
    assert _progress_row(store, job)[0] == 4


def test_rate_is_units_per_second_over_the_last_ten_seconds(store: Store, tmp_path: Path):
    progress, clock, job = _make(store, tmp_path, every=1.0)
    progress.total = 1000
    progress.flush(force=True)  # t=100, done 0: no time passed, no rate
    assert _progress_row(store, job)[2] is None
    for _ in range(8):  # 5 units a second for 8 s
        clock.now += 1.0
        progress.done += 5
        progress.flush()
    assert _progress_row(store, job) == (40, 1000, 5.0, None)
    for _ in range(4):  # then 2 a second: the window keeps only the samples of the last 10 s
        clock.now += 1.0
        progress.done += 2
        progress.flush()
    # now t=112, done 48; the oldest sample within 10 s is t=102, done 10
    assert _progress_row(store, job)[2] == round((48 - 10) / 10, 3)
    clock.now += 3.0  # t=115: the oldest sample kept is t=105, done 25
    progress.done += 1
    progress.flush()
    assert _progress_row(store, job)[2] == 2.4
    clock.now += 11.0  # alone in its window: no rate
    progress.flush()
    assert _progress_row(store, job) == (49, 1000, None, None)
    clock.now += 1.0  # nothing done over the window: a rate of 0 is written as None
    progress.flush()
    assert _progress_row(store, job) == (49, 1000, None, None)


def test_rate_rounding_and_the_chunk_index(store: Store, tmp_path: Path):
    progress, clock, job = _make(store, tmp_path, every=0.0)
    progress.flush()
    progress.start_chunk("forward", 2, 0, 9)
    clock.now += 3.0
    progress.done = 1
    progress.flush()
    assert _progress_row(store, job) == (1, None, 0.333, 2)


def test_on_write_runs_before_each_write_only(store: Store, tmp_path: Path):
    calls = []
    progress, clock, job = _make(store, tmp_path, every=5.0, on_write=lambda: calls.append(_progress_row(store, job)))
    progress.flush(force=True)
    progress.done = 1
    clock.now += 1.0
    progress.flush()
    assert calls == [None]  # once, and before the first row was written
    progress.flush(force=True)
    assert len(calls) == 2 and calls[1] == (0, None, None, None)


def test_the_cancel_poll_sees_a_cancel_command_at_most_every_fifth_of_a_second(store: Store, tmp_path: Path):
    progress, clock, job = _make(store, tmp_path)
    queries = []
    has_pending_cancel = store.has_pending_cancel

    def counted(job_id: str) -> bool:
        queries.append(job_id)
        return has_pending_cancel(job_id)

    store.has_pending_cancel = counted
    assert progress.should_stop() is False and queries == [job]
    other = store.add_job("other", tmp_path / "other")
    store.add_command("cancel", other)  # someone else's cancel does not stop this job
    store.add_command("cancel", job)
    clock.now = 100.19
    assert progress.should_stop() is False and len(queries) == 1  # not polled again yet
    clock.now = 100.25
    assert progress.should_stop() is True and len(queries) == 2
    clock.now += 1.0
    assert progress.should_stop() is True and len(queries) == 2  # once seen, no more queries


def test_shutdown_stops_without_asking_the_database(store: Store, tmp_path: Path):
    progress, _, _ = _make(store, tmp_path)
    store.has_pending_cancel = lambda job_id: pytest.fail("polled")
    progress.stop.set()
    assert progress.should_stop() is True


def test_chunk_rows_follow_the_running_chunk(store: Store, tmp_path: Path):
    progress, _, job = _make(store, tmp_path)
    progress.mark_chunk("failed")  # no chunk running: nothing to mark
    assert store.chunks(job) == []
    progress.start_chunk("forward", 0, 0, 9)
    assert store.chunks(job) == [{"sweep": "forward", "idx": 0, "start": 0, "end": 9, "state": "running",
                                  "seconds": None}]
    assert progress.chunk == ("forward", 0, 0, 9)
    progress.end_chunk("forward", 0, 0, 9, 1.23456)
    assert progress.chunk is None
    progress.start_chunk("forward", 1, 10, 19)
    progress.mark_chunk("cancelled")
    assert [(c["sweep"], c["idx"], c["start"], c["end"], c["state"], c["seconds"]) for c in store.chunks(job)] == [
        ("forward", 0, 0, 9, "done", 1.235), ("forward", 1, 10, 19, "cancelled", None)]


def test_mark_chunk_writes_the_span_it_is_given(store: Store, tmp_path: Path):
    progress, _, job = _make(store, tmp_path)
    calls = []
    set_chunk = store.set_chunk

    def recorded(*args):
        calls.append(args)
        set_chunk(*args)

    store.set_chunk = recorded
    progress.start_chunk("epoch", 3, 7, 7)
    progress.mark_chunk("pending", span=(12, 12))  # training writes the step count at the time
    assert calls == [(job, "epoch", 3, 7, 7, "running"), (job, "epoch", 3, 12, 12, "pending")]
    assert progress.chunk == ("epoch", 3, 7, 7)


def test_finish_cancel_commands_closes_only_this_jobs_cancels(store: Store, tmp_path: Path):
    job = store.add_job("clip", tmp_path / "clip")
    other = store.add_job("other", tmp_path / "other")
    mine = [store.add_command("cancel", job), store.add_command("cancel", job)]
    theirs = store.add_command("cancel", other)
    retry = store.add_command("retry", job)
    finish_cancel_commands(store, job)
    assert not store.has_pending_cancel(job) and store.has_pending_cancel(other)
    assert {c.id for c in store.pending_commands()} == {theirs, retry}
    rows = store.conn.execute(f"SELECT state, result FROM commands WHERE id IN ({mine[0]}, {mine[1]})").fetchall()
    assert rows == [("done", "cancelled while running")] * 2
