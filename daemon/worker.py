"""A worker runs one job at a time on one device, keeping its models loaded between jobs.

Lifecycle of an inbox folder: claimed -> moved to work/<job id>/ -> validated (before any model
loads) -> run with a checkpoint after every chunk -> moved to done/ or failed/ (with error.txt).
A job interrupted by shutdown or a crash keeps its work folder and resumes on the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
import traceback
from pathlib import Path

from core.config import Config
from core.engine.build import self_train_requested
from core.engine.chunks import plan_chunks
from core.engine.events import ChunkFinished, ChunkStarted, EngineWarning, FrameResult, Phase
from core.errors import Cancelled, ReelmaskError
from core.outputs.folder import staging_path
from core.pipeline import JobFinished, JobStarted, ModelPool, prepare_job, run_job
from core.store import Job, JobState, Store

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"


def unique_path(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-2, name-3 ... whichever does not exist yet (never overwrite)."""
    candidate, n = parent / name, 2
    while candidate.exists() or candidate.is_symlink():
        candidate, n = parent / f"{name}-{n}", n + 1
    return candidate


def move_folder(src: Path, parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    dest = unique_path(parent, name)
    try:
        os.rename(src, dest)
    except OSError:  # another file system
        shutil.move(str(src), str(dest))
    return dest


def write_error(folder: Path, reason: str, detail: str = "") -> None:
    """error.txt: the reason in plain words first, the details after."""
    folder.mkdir(parents=True, exist_ok=True)
    text = reason.strip() + "\n"
    if detail.strip():
        text += "\n--- details ---\n" + detail.strip() + "\n"
    (folder / ERROR_FILE).write_text(text, encoding="utf-8")


class Worker:
    def __init__(self, cfg: Config, name: str, device: str, stop: threading.Event,
                 inbox_lock: threading.Lock | None = None):
        self.cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, device=device)) \
            if device != "auto" else cfg
        self.name = name
        self.stop = stop
        self.store = Store(cfg.path(cfg.paths.db))
        self.models = ModelPool()
        self.current: str | None = None
        self.inbox_lock = inbox_lock or threading.Lock()

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Claim and run jobs until told to stop."""
        while not self.stop.is_set():
            try:
                worked = self.step()
            except Exception:  # never let one job take the worker down
                log.exception("worker %s: unexpected error", self.name)
                worked = False
            if not worked:
                self.stop.wait(self.cfg.daemon.tick_seconds)

    def step(self) -> bool:
        """Run one queued job if there is one (and the queue is not paused)."""
        if self.store.setting("paused") == "1":
            return False
        job = self.store.claim(self.name)
        if job is None:
            return False
        self.current = job.id
        try:
            if job.kind == "train":
                from daemon.training import TrainingRun

                TrainingRun(self.store, self.cfg, job, self.stop).execute()
            else:
                self._execute(job)
        finally:
            self.current = None
        return True

    # ------------------------------------------------------------------ one job

    def _paths(self) -> tuple[Path, Path, Path, Path]:
        c = self.cfg
        return c.path(c.paths.work), c.path(c.paths.outbox), c.path(c.paths.done), c.path(c.paths.failed)

    def _take_input(self, job: Job) -> Path:
        """Move an inbox folder into the job's work folder (once; a resumed job finds it there)."""
        work, *_ = self._paths()
        current = Path(job.input_path)
        if job.source != "inbox" or current.parent.parent == work:
            return current
        with self.inbox_lock:
            if not current.is_dir():
                raise ReelmaskError(f"the folder {current} disappeared before the job started")
            moved = move_folder(current, work / job.id, job.name)
            self.store.update_job(job.id, input_path=str(moved))
        return moved

    def _execute(self, job: Job) -> None:
        store = self.store
        work, outbox, done, failed = self._paths()
        out: Path | None = Path(job.output_path) if job.output_path else None
        state = _Progress(store, job.id, self.cfg.daemon.progress_seconds)
        try:
            input_dir = self._take_input(job)
            if out is None:
                out = unique_path(outbox, job.name)
                store.update_job(job.id, output_path=str(out))
            cfg = self.cfg
            sets = job.option_values.get("sets")
            if sets:
                from core.config import parse_sets, with_overrides
                cfg = with_overrides(cfg, parse_sets(sets), "reelmask submit --set")
            prepared = prepare_job(input_dir, cfg, mode=job.mode, inbox_mode=job.inbox_mode, job_id=job.id,
                                   inbox_root=input_dir)
            store.update_job(job.id, mode=prepared.choice.mode.value, frames_total=len(prepared.folder))
            c = prepared.config.chunking
            if not self_train_requested(prepared.prompts, prepared.config):  # its chunks are planned after training
                store.plan_chunk_rows(job.id, "forward", [(k.index, k.start, k.end - 1) for k in
                                                          plan_chunks(len(prepared.folder), c.chunk_size, c.overlap)])
            store.log("info", f"{job.name}: {prepared.choice.mode.value} ({prepared.choice.reason}), "
                              f"{len(prepared.folder)} frames, attempt {job.attempts}", job.id)
            manifest = None
            for event in run_job(prepared, out, models=self.models, should_stop=state.should_stop(self.stop),
                                 keep_partial=True, resume=True):
                state.on_event(event)
                if isinstance(event, JobFinished):
                    manifest = event.manifest
            if manifest and manifest.get("resumed_from_frame") is not None:
                store.update_job(job.id, resumed_from_frame=manifest["resumed_from_frame"])
            final_input = input_dir
            if job.source == "inbox":
                final_input = move_folder(input_dir, done, job.name)
                shutil.rmtree(work / job.id, ignore_errors=True)
            store.finish_job(job.id, JobState.DONE, input_path=str(final_input))
            state.flush(force=True)
            store.log("info", f"{job.name}: done, {manifest['frames'] if manifest else '?'} frames -> {out}", job.id)
        except Cancelled:
            if self.stop.is_set():
                store.finish_job(job.id, JobState.INTERRUPTED)
                store.log("warning", f"{job.name}: interrupted by shutdown; resumes from its last finished chunk", job.id)
                state.fail_chunk("pending")
            else:
                self._give_up(job, out, JobState.CANCELLED, "The job was cancelled before it finished.", "")
                state.fail_chunk("cancelled")
                for cmd in store.pending_commands():
                    if cmd.kind == "cancel" and cmd.job_id == job.id:
                        store.finish_command(cmd.id, "done", "cancelled while running")
        except ReelmaskError as e:
            self._give_up(job, out, JobState.FAILED, str(e), traceback.format_exc())
            state.fail_chunk("failed")
        except Exception as e:
            reason = f"reelmask hit an internal error while running this folder ({type(e).__name__}: {e})."
            self._give_up(job, out, JobState.FAILED, reason, traceback.format_exc())
            state.fail_chunk("failed")

    def _give_up(self, job: Job, out: Path | None, state: JobState, reason: str, detail: str) -> None:
        """Fail or cancel a job: no partial output stays, the input goes to failed/ with error.txt."""
        work, _, _, failed = self._paths()
        if out is not None:
            shutil.rmtree(staging_path(out), ignore_errors=True)
        current = Path(self.store.job(job.id).input_path)
        # messages name the folder the user dropped, not our work copy of it
        reason = reason.replace(str(current), job.origin_path)
        detail = f"job {job.id}, input {job.origin_path}\n\n{detail}"
        if job.source == "inbox" and current.exists():
            target = move_folder(current, failed, job.name)
            shutil.rmtree(work / job.id, ignore_errors=True)
        else:  # submitted folders stay where they are; the error goes to failed/<name>/
            target = unique_path(failed, job.name)
        write_error(target, reason, detail)
        self.store.finish_job(job.id, state, error=reason, detail=detail, input_path=str(
            target if job.source == "inbox" and target.exists() else current))
        self.store.log("error" if state is JobState.FAILED else "warning", f"{job.name}: {reason}", job.id)
        log.log(logging.ERROR if state is JobState.FAILED else logging.WARNING, "%s: %s", job.name, reason)


class _Progress:
    """Turns engine events into throttled progress rows and chunk states."""

    def __init__(self, store: Store, job_id: str, every: float):
        self.store, self.job_id, self.every = store, job_id, every
        self.done = 0
        self.total: int | None = None
        self.chunk: tuple[str, int, int, int] | None = None
        self._last_write = 0.0
        self._times: list[tuple[float, int]] = []
        self._last_cancel_check = 0.0
        self._cancelled = False

    def should_stop(self, stop: threading.Event):
        def check() -> bool:
            if stop.is_set() or self._cancelled:
                return True
            now = time.monotonic()
            if now - self._last_cancel_check >= 0.2:
                self._last_cancel_check = now
                self._cancelled = self.store.has_pending_cancel(self.job_id)
            return self._cancelled
        return check

    def on_event(self, event: object) -> None:
        if isinstance(event, JobStarted):
            self.total, self.done = event.frames_total, event.frames_done
            self.flush(force=True)
        elif isinstance(event, FrameResult):
            self.done += 1
            self.flush()
        elif isinstance(event, ChunkStarted):
            self.chunk = (event.sweep, event.chunk, event.start, event.end - 1)
            self.store.set_chunk(self.job_id, event.sweep, event.chunk, event.start, event.end - 1, "running")
        elif isinstance(event, Phase):
            self.store.log("info", event.name, self.job_id)
        elif isinstance(event, EngineWarning):
            self.store.log("warning", event.message, self.job_id)
        elif isinstance(event, ChunkFinished):
            self.store.set_chunk(self.job_id, event.sweep, event.chunk, event.start, event.end - 1, "done",
                                 round(event.seconds, 3))
            self.chunk = None

    def fail_chunk(self, state: str) -> None:
        if self.chunk is not None:
            sweep, idx, start, end = self.chunk
            self.store.set_chunk(self.job_id, sweep, idx, start, end, state)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        self._times.append((now, self.done))
        self._times = [t for t in self._times if now - t[0] <= 10.0]
        if not force and now - self._last_write < self.every:
            return
        self._last_write = now
        first = self._times[0]
        fps = (self.done - first[1]) / (now - first[0]) if now > first[0] else None
        idx = self.chunk[1] if self.chunk else None
        self.store.set_progress(self.job_id, self.done, self.total, round(fps, 3) if fps else None, idx)
