"""The daemon: watches inboxes, queues folders, runs workers, applies commands, samples memory.

Signal handlers only set a flag; the main loop notices it, stops claiming, lets the running job
reach a checkpoint (it is marked interrupted and resumes on the next start) and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from core.config import Config
from core.errors import ReelmaskError
from core.store import CommandKind, JobState, Store
from daemon.metrics import Sampler
from daemon.watcher import Inbox, InboxWatcher, tree_signature
from daemon.worker import Worker, move_folder, unique_path, write_error

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = Store(cfg.path(cfg.paths.db))
        self.inboxes = [Inbox(cfg.path(i.path), i.mode or None) for i in cfg.inbox_specs()]
        self.watcher = InboxWatcher(self.inboxes, cfg.watch.settle_seconds, cfg.watch.polling,
                                    cfg.watch.poll_interval)
        self.stopping = threading.Event()      # set by signals: stop the main loop
        self.workers_stop = threading.Event()  # set when workers must checkpoint and return
        self.workers: list[tuple[Worker, threading.Thread]] = []
        self._submitted: dict[Path, object] = {}
        self.inbox_lock = threading.Lock()
        self.sampler = Sampler()
        for d in ("work", "outbox", "done", "failed"):
            cfg.path(getattr(cfg.paths, d)).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ lifecycle

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def start(self) -> None:
        for job_id in self.store.requeue_orphans():
            self.store.log("info", "requeued after a restart; resumes from its last finished chunk", job_id)
            log.info("job %s requeued to resume", job_id)
        self.watcher.start()
        for i, device in enumerate(self.cfg.daemon.devices):
            worker = Worker(self.cfg, f"worker-{i}-{device}", device, self.workers_stop, self.inbox_lock)
            thread = threading.Thread(target=worker.run, name=worker.name, daemon=True)
            thread.start()
            self.workers.append((worker, thread))
        inboxes = ", ".join(str(i.path) for i in self.inboxes)
        self.store.log("info", f"daemon started: inboxes {inboxes}, {len(self.workers)} worker(s)")
        log.info("watching %s with %d worker(s)", inboxes, len(self.workers))

    def run(self) -> int:
        self.start()
        last_sample = 0.0
        try:
            while not self.stopping.is_set():
                self.tick()
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
        self.store.log("info", "daemon stopped")
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
                if not folder.is_dir():
                    continue  # claimed and moved away since the inbox was listed
                sig = tree_signature(folder)
                if self._submitted.get(folder) == sig:
                    continue  # already queued in this state (e.g. a job that could not move it)
                job_id = self.store.add_job_once(folder.name, folder, source="inbox", inbox_mode=inbox.mode)
                self._submitted[folder] = sig
            if job_id:
                queued.append(job_id)
                self.store.log("info", f"queued {folder.name} from {inbox.path}", job_id)
                log.info("queued %s as job %s", folder, job_id)
        return queued

    def _sample(self) -> None:
        try:
            self.sampler.sample(self.store)
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
                self._retry(cmd.id, job)
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
        failed = self.cfg.path(self.cfg.paths.failed)
        current = Path(job.input_path)
        with self.inbox_lock:
            target = move_folder(current, failed, job.name) if job.source == "inbox" and current.is_dir() else None
        if target is None:
            target = unique_path(failed, job.name)
        write_error(target, reason, f"job {job.id}, input {job.origin_path}")
        self.store.update_job(job.id, input_path=str(target if job.source == "inbox" else current))
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

    def _retry(self, cmd_id: int, job) -> None:
        if job.state not in (JobState.FAILED.value, JobState.CANCELLED.value):
            self.store.finish_command(cmd_id, "rejected", f"job {job.id} is {job.state}; only failed or cancelled jobs retry")
            return
        current = Path(job.input_path)
        if job.source == "inbox":
            if not current.is_dir():
                self.store.finish_command(cmd_id, "rejected", f"the input {current} is gone")
                return
            (current / "error.txt").unlink(missing_ok=True)
            work = self.cfg.path(self.cfg.paths.work)
            current = move_folder(current, work / job.id, job.name)
        self.store.clear_job_details(job.id)
        # a training run keeps its folder: the retry continues from its last.pt
        self.store.update_job(job.id, input_path=str(current),
                              output_path=job.output_path if job.kind == "train" else None)
        self.store.requeue(job.id)
        self.store.log("info", f"{job.name}: queued again (retry)", job.id)
        self.store.finish_command(cmd_id, "done")

