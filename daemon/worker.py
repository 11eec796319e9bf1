"""A worker runs one job at a time on one device, keeping its models loaded between jobs.

Lifecycle of an inbox folder: claimed -> moved to work/<job id>/ -> validated (before any model
loads) -> run with a checkpoint after every chunk -> moved to done/ or failed/ (with error.txt).
A job interrupted by shutdown or a crash keeps its work folder and resumes on the next start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.errors import Cancelled, FrameFolderError, ReelmaskError
from core.outputs.folder import MANIFEST, fit_name, staging_path
from core.outputs.manifest import record_final_input
from core.pipeline import (ChunkFinished, ChunkStarted, DeviceMemory, EngineWarning, FrameResult, JobFinished,
                           JobStarted, ModelPool, Phase, prepare_job, run_job)
from core.store import Job, JobState, Store
from core.video import is_video_name
from daemon.folders import MoveError, file_failure, move_folder, record_error_file, unique_path
from daemon.watcher import file_markers
from daemon.progress import JobProgress, finish_cancel_commands

log = logging.getLogger(__name__)

MAX_WORKERS_LOST = 3  # a job whose worker died this many times under it fails instead of being queued again


class WorkerLost(Exception):
    """The worker running a job went away (a Ray actor or its node died): the job is not at fault and
    goes back to the queue, to resume from its last finished chunk."""


@dataclass(frozen=True)
class JobRequest:
    """Everything running one segmentation job needs: paths and settings, small enough to send to a
    Ray actor (never frames)."""

    job_id: str
    input_dir: Path
    out: Path
    cfg: Config
    mode: str | None
    inbox_mode: str | None
    trusted: bool


@dataclass(frozen=True)
class JobPrepared:
    """The first event of a job: its folder passed every check and this is the mode it runs in."""

    mode: str
    reason: str
    frames: int


def job_events(request: JobRequest, models: ModelPool, should_stop: Callable[[], bool],
               helpers: Callable | None = None) -> Iterator[object]:
    """One segmentation job through the pipeline, as events: the one code path of every executor (a
    worker thread calls it in the daemon, a Ray actor calls it on its node, with `helpers` that run
    independent work on idle actors)."""
    prepared = prepare_job(request.input_dir, request.cfg, mode=request.mode, inbox_mode=request.inbox_mode,
                           job_id=request.job_id, trusted=request.trusted, confined=True)
    yield JobPrepared(prepared.choice.mode.value, prepared.choice.reason, len(prepared.folder))
    yield from run_job(prepared, request.out, models=models, should_stop=should_stop, keep_partial=True, resume=True,
                       helpers=helpers)


def finished_manifest(out: Path, job_id: str) -> dict | None:
    """The manifest of `out` when this very job already published it (a run whose end was never
    reported, e.g. a Ray actor that died after its last write), else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("job_id") == job_id else None


class Worker:
    def __init__(self, cfg: Config, name: str, device: str, stop: threading.Event,
                 inbox_lock: threading.Lock | None = None):
        self.cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, device=device)) \
            if device != "auto" else cfg
        self.name = name
        self.node = socket.gethostname()
        self.stop = stop
        self.store = Store(cfg.path(cfg.paths.db))
        self.models = ModelPool()
        self.current: str | None = None
        self.inbox_lock = inbox_lock or threading.Lock()
        self._space_warned = float("-inf")

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
        if self.store.setting("paused") == "1" or not self._room_to_work():
            return False
        job = self.store.claim(self.name, self.node)
        if job is None:
            return False
        log.info("%s: claimed job %s by %s (attempt %d)%s", job.name, job.id[:8], self.name, job.attempts,
                 self._where())
        self.current = job.id
        try:
            if job.kind == "train":
                from daemon.training import TrainingRun

                TrainingRun(self.store, self.cfg, job, self.stop, self._train_events).execute()
            else:
                self._execute(job)
        except WorkerLost as e:
            self._lost(job, e)
        except Exception as e:  # failing the job failed too: it must not stay "running" with no worker
            log.exception("worker %s: job %s could not be ended cleanly", self.name, job.id)
            self.store.finish_job(job.id, JobState.FAILED, error=f"reelmask could not finish this job "
                                  f"({type(e).__name__}: {e}); see the daemon's log")
        finally:
            self.current = None
        return True

    def _lost(self, job: Job, error: WorkerLost) -> None:
        """The job's worker died under it: queue it again to resume, unless workers keep dying on this
        job (it may be what kills them, e.g. by running out of memory)."""
        current = self.store.job(job.id)
        lost = int(current.option_values.get("workers_lost", 0)) + 1
        self.store.update_job(job.id, options=json.dumps({**current.option_values, "workers_lost": lost}))
        if lost >= MAX_WORKERS_LOST:
            reason = (f"{error}. A worker died under this job {lost} times, so it may be what kills them (too "
                      f"little memory for its frames or settings?); it was given up. Check the node's log, then "
                      f"`reelmask retry {job.id[:8]}`.")
            detail = "".join(traceback.format_exception(error))
            if job.kind == "train":  # a dataset is never moved; last.pt keeps the last finished epoch
                self.store.finish_job(job.id, JobState.FAILED, error=reason, detail=detail)
                self.store.log("error", f"{job.name}: {reason}", job.id)
            else:
                self._give_up(current, Path(current.output_path) if current.output_path else None, JobState.FAILED,
                              reason, detail)
            return
        msg = f"{job.name}: {error}; queued again, it resumes from its last finished chunk"
        self.store.log("warning", msg, job.id)
        log.warning(msg)
        self.store.requeue(job.id)

    # ------------------------------------------------------------------ where jobs run

    def _events(self, request: JobRequest, should_stop: Callable[[], bool]) -> Iterator[object]:
        """A segmentation job's events; here in this thread (the Ray executor runs it on an actor)."""
        return job_events(request, self.models, should_stop)

    def _train_events(self, kind: str, data: Path, out: Path, cfg: Config,
                      should_stop: Callable[[], bool]) -> Iterator[object]:
        """A training job's events; here in this thread (the Ray executor runs it on an actor)."""
        from daemon.training import train_events

        return train_events(kind, data, out, cfg, should_stop)

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
            if current.is_symlink():
                raise FrameFolderError(f"{current} is a symbolic link; the daemon does not follow links out of its "
                                       "inboxes: copy or move the real folder in instead")
            if current.is_file() and is_video_name(current.name):
                # a bare video file becomes a folder holding it: it moves through work/, done/ and failed/ as one
                holder = work / job.id / fit_name(job.name)
                holder.mkdir(parents=True, exist_ok=True)
                move_folder(current, holder, current.name)
                for marker in file_markers(current):
                    marker.unlink(missing_ok=True)
                moved = holder
            elif not current.is_dir():
                raise ReelmaskError(f"the folder {current} disappeared before the job started")
            else:
                moved = move_folder(current, work / job.id, job.name)
            self.store.update_job(job.id, input_path=str(moved))
        return moved

    def _room_to_work(self) -> bool:
        """limits.min_free_mb free under work/, outbox and failed/; otherwise no job is claimed (said once a minute)."""
        need = self.cfg.limits.min_free_mb
        if need <= 0:
            return True
        work, outbox, _, failed = self._paths()
        for path in (work, outbox, failed):
            try:
                free = shutil.disk_usage(path).free / 2**20
            except OSError:
                continue  # a missing folder is created when used; its disk is checked then
            if free < need:
                if time.monotonic() - self._space_warned >= 60:
                    self._space_warned = time.monotonic()
                    msg = (f"not starting jobs: only {free:.0f} MiB free under {path} (limits.min_free_mb = {need}); "
                           "free some space, the queue goes on by itself")
                    log.warning(msg)
                    self.store.log("warning", msg)
                return False
        return True

    def _trusted(self, job: Job) -> bool:
        """A folder's job.toml may set any key only when the owner says so: its inbox is marked
        trusted (looked up in today's config, not when it was queued) or `submit --trust-folder`."""
        if job.source == "inbox":
            spec = self.cfg.inbox_of(job.origin_path)
            return spec is not None and spec.trusted
        return bool(job.option_values.get("trusted"))

    def _execute(self, job: Job) -> None:
        store = self.store
        work, outbox, done, failed = self._paths()
        out: Path | None = Path(job.output_path) if job.output_path else None
        state = JobProgress(store, job.id, self.cfg.daemon.progress_seconds, self.stop)
        said = _LogLines(job.name)
        try:
            input_dir = self._take_input(job)
            if out is None:
                out = unique_path(outbox, job.name)
                store.update_job(job.id, output_path=str(out))
            cfg = self.cfg
            sets = job.option_values.get("sets")
            if sets:
                from core.config import parse_sets, with_overrides
                cfg = with_overrides(cfg, parse_sets(sets), "--set recorded on the job (submit or retry)")
            opts = job.option_values  # the row's mode is the one chosen last time; the request is kept apart
            requested = opts["requested_mode"] if "requested_mode" in opts else (job.mode if job.attempts <= 1 else None)
            request = JobRequest(job.id, input_dir, out, cfg, requested, job.inbox_mode, self._trusted(job))
            manifest = finished_manifest(out, job.id)
            if manifest is not None:
                store.log("info", f"{job.name}: its output was already complete (an earlier attempt finished)", job.id)
            for event in self._events(request, state.should_stop) if manifest is None else ():
                if isinstance(event, JobPrepared):
                    store.update_job(job.id, mode=event.mode, frames_total=event.frames)
                    store.log("info", f"{job.name}: {event.mode} ({event.reason}), {event.frames} frames, "
                                      f"attempt {job.attempts}{self._where()}", job.id)
                _report(state, event)
                said.event(event)
                if isinstance(event, JobFinished):
                    manifest = event.manifest
            if manifest and manifest.get("resumed_from_frame") is not None:
                store.update_job(job.id, resumed_from_frame=manifest["resumed_from_frame"])
            final_input = input_dir
            if job.source == "inbox":
                try:
                    final_input = move_folder(input_dir, done, job.name)
                except MoveError as e:
                    raise MoveError(f"the masks are complete in {out}, but the input could not be moved to "
                                    f"done/: {e}") from e
                try:
                    record_final_input(out, final_input)
                except (OSError, ValueError) as e:  # the masks are fine; only the record of the input is stale
                    log.warning("%s: could not record the input's new place in the manifest: %s", job.name, e)
                shutil.rmtree(work / job.id, ignore_errors=True)
            store.finish_job(job.id, JobState.DONE, input_path=str(final_input))
            state.flush(force=True)
            fps = (manifest.get("timings") or {}).get("frames_per_second") if manifest else None
            log.info("%s: done, %s frames at %s frames/s -> %s", job.name, manifest.get("frames", "?") if manifest else "?",
                     fps if fps is not None else "?", out)
            store.log("info", f"{job.name}: done, {manifest['frames'] if manifest else '?'} frames -> {out}", job.id)
        except Cancelled:
            if self.stop.is_set():
                store.finish_job(job.id, JobState.INTERRUPTED)
                store.log("warning", f"{job.name}: interrupted by shutdown; resumes from its last finished chunk", job.id)
                state.mark_chunk("pending")
            else:
                self._give_up(job, out, JobState.CANCELLED, "The job was cancelled before it finished.", "")
                state.mark_chunk("cancelled")
                finish_cancel_commands(store, job.id)
        except WorkerLost:
            state.mark_chunk("pending")
            raise
        except ReelmaskError as e:
            self._give_up(job, out, JobState.FAILED, str(e), traceback.format_exc())
            state.mark_chunk("failed")
        except OSError as e:  # the disk, not the folder: a full disk, lost permissions, a vanished mount
            where = f" ({e.filename})" if e.filename else ""
            reason = (f"A file could not be read or written: {e.strerror or e}{where}. Free some space or fix the "
                      f"permissions, then run `reelmask retry {job.id[:8]}`.")
            self._give_up(job, out, JobState.FAILED, reason, traceback.format_exc())
            state.mark_chunk("failed")
        except Exception as e:
            reason = f"reelmask hit an internal error while running this folder ({type(e).__name__}: {e})."
            self._give_up(job, out, JobState.FAILED, reason, traceback.format_exc())
            state.mark_chunk("failed")

    def _where(self) -> str:
        """Where the job runs, for its log line (the local executor's workers all run here)."""
        return ""

    def _give_up(self, job: Job, out: Path | None, state: JobState, reason: str, detail: str) -> None:
        """Fail or cancel a job: no partial output stays, the input goes to failed/ with error.txt. Each
        step may fail (a full disk, a read-only inbox); the job still ends with its reason in the database."""
        work, _, _, failed = self._paths()
        if out is not None:
            shutil.rmtree(staging_path(out), ignore_errors=True)
        current = Path(self.store.job(job.id).input_path)
        # messages name the folder the user dropped, not our work copy of it
        reason = reason.replace(str(current), job.origin_path)
        # submitted folders stay where they are; their error goes to failed/<name>/
        owned = job.source == "inbox" and (current.exists() or current.is_symlink())
        filed = file_failure(failed, job.name, reason, f"job {job.id}, input {job.origin_path}\n\n{detail}",
                             current if owned else None)
        record_error_file(self.store, job.id, filed)
        reason, current = filed.reason, filed.moved_to or current
        if not current.is_relative_to(work / job.id):
            shutil.rmtree(work / job.id, ignore_errors=True)
        self.store.finish_job(job.id, state, error=reason, detail=filed.detail, input_path=str(current))
        self.store.log("error" if state is JobState.FAILED else "warning", f"{job.name}: {reason}", job.id)
        first = reason.strip().splitlines()[0] if reason.strip() else reason
        log.log(logging.ERROR if state is JobState.FAILED else logging.WARNING, "%s: %s %s", job.name,
                "failed:" if state is JobState.FAILED else "cancelled:", first)


class _LogLines:
    """The daemon log's lines about a running job: started (mode, frames, chunks), each chunk or, for a
    job of one chunk, every 10% of its frames."""

    def __init__(self, name: str):
        self.name, self.total, self.done, self.chunks, self.next_tenth = name, 0, 0, 0, 1

    def event(self, event: object) -> None:
        if isinstance(event, JobPrepared):
            self.mode, self.reason = event.mode, event.reason
        elif isinstance(event, JobStarted):
            self.total, self.done, self.chunks = event.frames_total, event.frames_done, event.chunks
            resumed = f", resuming after {event.frames_done} frames" if event.frames_done else ""
            log.info("%s: started %s (%s), %d frames in %d chunk(s)%s", self.name, event.mode.value,
                     getattr(self, "reason", "?"), event.frames_total, event.chunks, resumed)
        elif isinstance(event, ChunkStarted) and self.chunks > 1:
            log.info("%s: chunk %d %s, frames %d-%d", self.name, event.chunk, event.sweep, event.start, event.end - 1)
        elif isinstance(event, FrameResult) and self.total:
            self.done += 1
            if self.chunks <= 1 and self.done * 10 >= self.next_tenth * self.total:
                while self.done * 10 >= self.next_tenth * self.total:
                    self.next_tenth += 1
                log.info("%s: %d/%d frames (%d%%)", self.name, self.done, self.total, 100 * self.done // self.total)


def _report(progress: JobProgress, event: object) -> None:
    """An engine event becomes chunk rows, throttled progress and log lines."""
    store, job_id = progress.store, progress.job_id
    if isinstance(event, JobStarted):
        store.plan_chunk_rows(job_id, "forward", [(k.index, k.start, k.end - 1) for k in event.plan])
        progress.total, progress.done = event.frames_total, event.frames_done
        progress.flush(force=True)
    elif isinstance(event, FrameResult):
        progress.done += 1
        progress.flush()
    elif isinstance(event, ChunkStarted):
        progress.start_chunk(event.sweep, event.chunk, event.start, event.end - 1)
    elif isinstance(event, DeviceMemory):
        store.set_device_memory(job_id, event.device, event.job_mb, event.peak_mb)
    elif isinstance(event, Phase):
        store.log("info", event.name, job_id)
    elif isinstance(event, EngineWarning):
        store.log("warning", event.message, job_id)
    elif isinstance(event, ChunkFinished):
        progress.end_chunk(event.sweep, event.chunk, event.start, event.end - 1, event.seconds)
