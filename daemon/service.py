"""The daemon: watches inboxes, queues folders, runs workers, applies commands, samples memory.

Signal handlers (installed by `reelmask daemon` before anything heavy is imported) only set a flag;
the main loop notices it, stops claiming, lets the running job
reach a checkpoint (it is marked interrupted and resumes on the next start) and exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from core.config import Config
from core.errors import ReelmaskError
from core.state_lock import DaemonLock
from core.store import RETRY_MARK, CommandKind, JobState, Store
from daemon.metrics import Sampler
from daemon.watcher import Inbox, InboxWatcher, entry_signature
from daemon.adopt import adopt_strays
from daemon.folders import MoveError, file_failure, move_folder, record_error_file, remove_error_file, safe_name
from daemon.worker import Worker

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: Config, stopping: threading.Event | None = None):
        self.cfg = cfg
        db = cfg.path(cfg.paths.db)
        self.lock = DaemonLock(db)
        self.lock.acquire()  # before the database is even read: a second daemon stops here
        try:
            Store.check_integrity(db)
            self.store = Store(db, config_source=cfg.source)
        except BaseException:
            self.lock.release()
            raise
        self.inboxes = [Inbox(cfg.path(i.path), i.mode or None) for i in cfg.inbox_specs()]
        self.watcher = InboxWatcher(self.inboxes, cfg.watch.settle_seconds, cfg.watch.polling,
                                    cfg.watch.poll_interval, cfg.limits.max_files)
        self.stopping = stopping or threading.Event()  # set by signal handlers: stop the main loop
        self.workers_stop = threading.Event()  # set when workers must checkpoint and return
        self.workers: list[tuple[Worker, threading.Thread]] = []
        self.ray = None  # the RayPool when daemon.executor = "ray"
        self._submitted: dict[Path, object] = {}
        self.inbox_lock = threading.Lock()
        self.sampler = Sampler()
        for d in ("work", "outbox", "done", "failed"):
            cfg.path(getattr(cfg.paths, d)).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        try:  # safe only because this process holds the lock: no other daemon is running these jobs
            for job_id in self.store.requeue_orphans():
                self.store.log("info", "requeued after a restart; resumes from its last finished chunk", job_id)
                log.info("job %s requeued to resume", job_id)
            adopt_strays(self.store, self.cfg)  # work/ folders a lost or replaced database forgot
        except sqlite3.OperationalError as e:
            raise self.store.explain(e) from e
        for worker in self._make_workers():
            thread = threading.Thread(target=worker.run, name=worker.name, daemon=True)
            thread.start()
            self.workers.append((worker, thread))
        self.watcher.start()
        inboxes = ", ".join(str(i.path) for i in self.inboxes)
        where = "" if self.ray is None else (" on a private Ray instance" if self.ray.private
                                             else f" on the Ray cluster at {self.cfg.ray.address}")
        self.store.log("info", f"daemon started: inboxes {inboxes}, {len(self.workers)} worker(s){where}")
        log.info("watching %s with %d worker(s)%s", inboxes, len(self.workers), where)

    def _make_workers(self) -> list[Worker]:
        """One worker thread per daemon.devices entry, or (executor "ray") one per planned Ray actor."""
        if self.cfg.daemon.executor != "ray":
            return [Worker(self.cfg, f"worker-{i}-{device}", device, self.workers_stop, self.inbox_lock)
                    for i, device in enumerate(self.cfg.daemon.devices)]
        from daemon.ray_executor import RayPool, RayWorker

        self.ray = RayPool(self.cfg)
        plans = self.ray.start()
        return [RayWorker(self.cfg, self.ray, plan, self.workers_stop, self.inbox_lock) for plan in plans]

    def run(self) -> int:
        self.start()
        last_sample = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    self.tick()
                except sqlite3.OperationalError as e:  # e.g. a lock held past the busy timeout
                    log.warning("a tick failed on the state database (%s); trying again on the next one", e)
                if time.monotonic() - last_sample >= self.cfg.daemon.sample_seconds:
                    last_sample = time.monotonic()
                    self._sample()
                self.stopping.wait(self.cfg.daemon.tick_seconds)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.watcher.stop()
        self.workers_stop.set()
        deadline = time.monotonic() + self.cfg.daemon.stop_seconds
        for worker, thread in self.workers:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not reach a checkpoint in time; its job resumes on the next start", worker.name)
        if self.ray is not None:
            self.ray.shutdown([w.actor for w, _ in self.workers if w.actor is not None])  # RayWorkers all
        try:
            self.store.log("info", "daemon stopped")
        except sqlite3.OperationalError as e:
            log.warning("could not record the stop in the state database: %s", e)
        if not any(thread.is_alive() for _, thread in self.workers):
            self.lock.release()  # otherwise the lock goes when the process ends, after the worker
        log.info("stopped")

    # ------------------------------------------------------------------ one round

    def tick(self) -> None:
        self.handle_commands()
        self.submit_ready()

    def submit_ready(self) -> list[str]:
        """Queue every complete inbox folder that has no job yet; each folder becomes one job."""
        queued = []
        for folder, inbox in self.watcher.ready():
            with self.inbox_lock:  # workers move claimed folders out under the same lock
                if not (folder.is_dir() or folder.is_symlink() or folder.is_file()):
                    continue  # claimed and moved away since the inbox was listed
                sig = None if folder.is_symlink() else entry_signature(folder, self.cfg.limits.max_files)
                if folder in self._submitted and self._submitted[folder] == sig:
                    continue  # already queued in this state (e.g. a job that could not move it)
                self._submitted[folder] = sig
                problem = _intake_problem(folder)
                if problem:
                    self._refuse(folder, inbox, problem)
                    continue
                if self._failed_here_unchanged(folder, sig):
                    continue
                name = folder.name if folder.is_dir() or folder.is_symlink() else folder.stem  # a bare video: its stem
                job_id = self.store.add_job_once(name, folder, source="inbox", inbox_mode=inbox.mode,
                                                 options={"signature": list(dataclasses.astuple(sig))})
            if job_id:
                queued.append(job_id)
                self.store.log("info", f"queued {folder.name} from {inbox.path}", job_id)
                log.info("queued %s as job %s", folder, job_id)
        return queued

    def _failed_here_unchanged(self, folder: Path, sig) -> bool:
        """A folder whose job failed without moving it (a read-only inbox) is not queued again on every
        start, only once it changes or on `reelmask retry`."""
        last = self.store.last_job_for(folder)
        return (last is not None and last.state in (JobState.FAILED.value, JobState.CANCELLED.value)
                and Path(last.input_path) == folder
                and last.option_values.get("signature") == list(dataclasses.astuple(sig)))

    def _refuse(self, entry: Path, inbox: Inbox, reason: str) -> None:
        """An inbox entry that must not be opened (a link, an unprintable name) becomes a failed job at
        once: it is moved into failed/ as it is (a link stays a link) with error.txt beside it."""
        name = safe_name(entry.name)
        job_id = self.store.add_job(name, inbox.path / name, source="inbox", inbox_mode=inbox.mode, refused=reason)
        filed = file_failure(self.cfg.path(self.cfg.paths.failed), name, reason,
                             f"job {job_id}, input {inbox.path / name}", entry)
        reason = safe_name(filed.reason)  # a failed move names the entry: keep the text printable (and storable)
        self.store.finish_job(job_id, JobState.FAILED, error=reason, input_path=str(filed.moved_to or inbox.path / name))
        self.store.log("error", f"{name}: {reason}", job_id)
        log.error("%s: %s", name, reason)

    def _sample(self) -> None:
        try:
            if self.ray is None:
                self.sampler.sample(self.store)
            else:  # each actor samples the devices of its own node
                from daemon.ray_executor import sample_workers

                sample_workers(self.store, [w for w, _ in self.workers])
        except Exception:
            log.debug("sampling failed", exc_info=True)

    # ------------------------------------------------------------------ commands

    def handle_commands(self) -> None:
        for cmd in self.store.pending_commands():
            job = self.store.job(cmd.job_id) if cmd.job_id else None
            kind = cmd.kind
            if kind in (CommandKind.CANCEL.value, CommandKind.RETRY.value) and job is None:
                self.store.finish_command(cmd.id, "rejected", f"no job {cmd.job_id}")
            elif kind == CommandKind.CANCEL.value:
                self._cancel(cmd.id, job)
            elif kind == CommandKind.RETRY.value:
                self._retry(cmd.id, job, cmd.payload)
            elif kind == CommandKind.TRAIN.value:
                self._train(cmd)
            elif kind in (CommandKind.PAUSE.value, CommandKind.RESUME.value):
                self.store.set_setting("paused", "1" if kind == CommandKind.PAUSE.value else "0")
                self.store.log("info", "queue paused" if kind == CommandKind.PAUSE.value else "queue resumed")
                self.store.finish_command(cmd.id, "done")
            else:
                self.store.finish_command(cmd.id, "rejected", f"'{kind}' is not available in this version")

    def _cancel(self, cmd_id: int, job) -> None:
        reason = "The job was cancelled before it started."
        if not self.store.cancel_queued(job.id, reason):
            if self.store.job(job.id).state != JobState.RUNNING.value:
                self.store.finish_command(cmd_id, "rejected", f"job {job.id} is already {job.state}")
            return  # running: the worker sees the pending command within a frame and finishes it
        if job.kind == "train":  # a dataset is never moved; the reason is in the job row and the log
            self.store.log("warning", f"{job.name}: cancelled", job.id)
            self.store.finish_command(cmd_id, "done")
            return
        current = Path(job.input_path)
        owned = job.source == "inbox" and (current.is_dir() or current.is_file()) and not current.is_symlink()
        with self.inbox_lock:  # workers claim inbox folders under the same lock
            filed = file_failure(self.cfg.path(self.cfg.paths.failed), job.name, reason,
                                 f"job {job.id}, input {job.origin_path}", current if owned else None)
        self.store.update_job(job.id, error=filed.reason, input_path=str(filed.moved_to or current))
        record_error_file(self.store, job.id, filed)
        self.store.log("warning", f"{job.name}: cancelled", job.id)
        self.store.finish_command(cmd_id, "done")

    def _train(self, cmd) -> None:
        """A training request (from the dashboard's form): check it, then queue it as a job."""
        from core.training.registry import queue_training

        p = cmd.payload
        try:
            if not p.get("kind") or not p.get("data"):
                raise ReelmaskError("a train command needs a kind and a dataset folder")
            job_id = queue_training(self.store, self.cfg, p["kind"], p["data"], p.get("out") or None, p.get("sets") or ())
        except ReelmaskError as e:
            self.store.finish_command(cmd.id, "rejected", str(e))
            self.store.log("error", f"training request refused: {e}")
            return
        self.store.finish_command(cmd.id, "done", job_id)

    def _retry(self, cmd_id: int, job, cmd_payload: dict | None = None) -> None:
        if job.state not in (JobState.FAILED.value, JobState.CANCELLED.value):
            self.store.finish_command(cmd_id, "rejected", f"job {job.id} is {job.state}; only failed or cancelled jobs retry")
            return
        current = Path(job.input_path)
        if job.source == "inbox":
            if not current.is_dir():
                self.store.finish_command(cmd_id, "rejected", f"the input {current} is gone")
                return
            work = self.cfg.path(self.cfg.paths.work)
            try:
                current = move_folder(current, work / job.id, job.name)
            except MoveError as e:
                self.store.finish_command(cmd_id, "rejected", str(e))
                self.store.log("error", f"{job.name}: not retried: {e}", job.id)
                return
            (current / "error.txt").unlink(missing_ok=True)
        self.store.clear_job_details(job.id)
        # a retry starts the count of workers lost under it again, and its earlier error.txt goes
        options = {k: v for k, v in job.option_values.items() if k not in ("workers_lost", "error_file")}
        remove_error_file(job.option_values.get("error_file"), self.cfg.path(self.cfg.paths.failed))
        sets = (cmd_payload or {}).get("sets") or []
        if sets:  # other settings from now on, after the ones it had (later wins)
            options["sets"] = [*options.get("sets", []), *[str(x) for x in sets]]
        if options != job.option_values:
            self.store.update_job(job.id, options=json.dumps(options) if options else None)
        # a training run keeps its folder: the retry continues from its last.pt
        self.store.update_job(job.id, input_path=str(current),
                              output_path=job.output_path if job.kind == "train" else None)
        self.store.requeue(job.id)
        self.store.log("info", f"{job.name}: " + (f"with {' '.join(sets)}: " if sets else "") + RETRY_MARK, job.id)
        self.store.finish_command(cmd_id, "done")


def _intake_problem(entry: Path) -> str | None:
    """Why an inbox entry is refused before anything in it is read, or None."""
    if entry.is_symlink():
        return (f"{safe_name(entry.name)} in the inbox is a symbolic link; the daemon never follows links out of "
                "its inboxes. Copy or move the real folder in instead (the link was moved here unchanged).")
    if safe_name(entry.name) != entry.name:
        return (f"the folder name {safe_name(entry.name)!r} holds bytes that are not printable UTF-8 (shown as ?); "
                "rename the folder with letters, digits, spaces, - and _ and drop it in again.")
    return None
