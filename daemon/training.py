"""Training jobs in the daemon: the trainer's events become progress rows, curves and epoch states.

A training job's progress counts optimisation steps (frames_done / frames_total hold steps done /
total), its "chunks" are epochs (sweep "epoch"), step losses and each epoch's metrics.jsonl line go
to the train_metrics table. A job stopped by shutdown is interrupted and continues from last.pt.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from core.config import Config, parse_sets, with_overrides
from core.errors import Cancelled, ReelmaskError
from core.store import Job, JobState, Store
from core.training.events import EpochEnd, TrainFinished, TrainPrepare, TrainStarted, TrainStep, format_metrics
from daemon.progress import JobProgress, finish_cancel_commands
from daemon.worker import WorkerLost

log = logging.getLogger(__name__)

EPOCH = "epoch"


class TrainingRun:
    def __init__(self, store: Store, cfg: Config, job: Job, stop: threading.Event,
                 events: Callable[..., Iterator[object]] | None = None):
        """`events(kind, data, out, cfg, should_stop)` runs the trainer and yields its events (the
        worker's own: in this thread, or on a Ray actor); by default the trainer runs here."""
        self.store, self.job, self.stop = store, job, stop
        self.events = events or train_events
        sets = job.option_values.get("sets")
        self.cfg = with_overrides(cfg, parse_sets(sets), "reelmask train --set") if sets else cfg
        # progress counts steps (total None until known), its chunk is the running epoch
        self.progress = JobProgress(store, job.id, cfg.daemon.progress_seconds, stop, on_write=self._write_losses)
        self.epochs = 0
        self._losses: list[float] = []

    @property
    def done(self) -> int:
        return self.progress.done

    @property
    def epoch(self) -> int | None:
        return self.progress.chunk[1] if self.progress.chunk else None

    def execute(self) -> None:
        job, store = self.job, self.store
        out = Path(job.output_path) if job.output_path else None
        try:
            if out is None:
                raise ReelmaskError("this training job has no output folder; queue it again with `reelmask train --queue`")
            store.log("info", f"training {job.mode} on {job.input_path} -> {out}, attempt {job.attempts}", job.id)
            finished = None
            for event in self.events(job.mode, Path(job.input_path), out, self.cfg, self.progress.should_stop):
                finished = self.on_event(event) or finished
            store.finish_job(job.id, JobState.DONE)
            if finished is not None:
                shown = format_metrics(finished.metrics)
                store.log("info", f"training done: best {finished.best} ({shown})", job.id)
        except Cancelled:
            self._mark_epoch("pending" if self.stop.is_set() else "cancelled")
            if self.stop.is_set():
                store.finish_job(job.id, JobState.INTERRUPTED)
                store.log("warning", "training interrupted by shutdown; continues from last.pt", job.id)
            else:
                store.finish_job(job.id, JobState.CANCELLED, error="The training was cancelled before it finished.")
                store.log("warning", "training cancelled; last.pt keeps the last finished epoch", job.id)
                finish_cancel_commands(store, job.id)
        except WorkerLost:
            self._mark_epoch("pending")
            raise
        except Exception as e:
            self._mark_epoch("failed")
            reason = str(e) if isinstance(e, ReelmaskError) else \
                f"reelmask hit an internal error while training ({type(e).__name__}: {e})."
            store.finish_job(job.id, JobState.FAILED, error=reason, detail=traceback.format_exc())
            store.log("error", f"training failed: {reason}", job.id)
            log.error("training job %s failed: %s", job.id, reason)

    def on_event(self, event: object) -> TrainFinished | None:
        store, job_id = self.store, self.job.id
        if isinstance(event, TrainStarted):
            self.epochs = event.epochs
            total = event.epochs * event.steps_per_epoch
            self.progress.total = total or None
            self.progress.done = (event.start_epoch - 1) * event.steps_per_epoch
            store.update_job(job_id, frames_total=total)
            for e in range(event.start_epoch, event.epochs + 1):
                store.set_chunk(job_id, EPOCH, e, self.done, self.done, "pending")
            if event.start_epoch > 1:
                self._restore_history(event.start_epoch, event.steps_per_epoch)
            store.log("info", f"{event.train_items} training / {event.val_items} validation samples, "
                              f"{event.epochs} epochs from {event.start_epoch}, {event.steps_per_epoch} steps each, "
                              f"on {event.device}", job_id)
            for warning in event.warnings:
                store.log("warning", warning, job_id)
            self.progress.flush(force=True)
        elif isinstance(event, TrainStep):
            if event.epoch != self.epoch:
                self.progress.start_chunk(EPOCH, event.epoch, self.done, self.done)
            self.progress.done += 1
            self._losses.append(event.loss)
            self.progress.flush()
        elif isinstance(event, TrainPrepare):  # until TrainStarted the progress counts this work
            store.set_progress(job_id, event.done, event.total or None, None, None)
            if event.done == 0 or event.done == event.total:
                store.log("info", f"{event.what}: {event.total} to do, {event.reused} reused from the cache"
                          if event.done == 0 else f"{event.what}: {event.total} done", job_id)
        elif isinstance(event, EpochEnd) and event.epoch == 0:  # the untrained model's scores: no epoch to mark
            store.add_train_metric(job_id, 0, self.done, None, event.metrics)
            shown = format_metrics(event.metrics)
            store.log("info", f"before training: {shown}", job_id)
        elif isinstance(event, EpochEnd):
            self.progress.flush(force=True)
            store.add_train_metric(job_id, event.epoch, self.done, None, event.metrics)
            self.progress.end_chunk(EPOCH, event.epoch, self.done, self.done, event.seconds)
            shown = format_metrics(event.metrics)
            store.log("info", f"epoch {event.epoch}/{self.epochs}: {shown}{' (best)' if event.best else ''}", job_id)
        elif isinstance(event, TrainFinished):
            if event.stopped_early:  # the epochs left will not run: say so, and the bar ends full
                last = max((c["idx"] for c in store.chunks(job_id) if c["state"] == "done"), default=0)
                for e in range(last + 1, self.epochs + 1):
                    store.set_chunk(job_id, EPOCH, e, self.done, self.done, "skipped")
                store.log("info", f"stopped early after epoch {last}: no better validation loss for "
                                  f"{self.cfg.train.patience} epochs", job_id)
                self.progress.total = self.done or None
                store.update_job(job_id, frames_total=self.done)
                self.progress.flush(force=True)
            return event
        return None

    def _restore_history(self, start_epoch: int, steps: int) -> None:
        """A run that continues from last.pt: the epochs it already did are done in the strip, and when
        the database lost their curve (a retry clears it) it comes back from the run's metrics.jsonl."""
        store, job_id = self.store, self.job.id
        done = {c["idx"] for c in store.chunks(job_id) if c["sweep"] == EPOCH and c["state"] == "done"}
        for e in range(1, start_epoch):
            if e not in done:
                store.set_chunk(job_id, EPOCH, e, (e - 1) * steps, e * steps, "done")
        if store.train_metrics(job_id, limit=1, epochs_only=True) or not self.job.output_path:
            return
        import json

        from core.training.runs import METRICS

        path = Path(self.job.output_path) / METRICS
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            epoch = m.get("epoch")
            if isinstance(epoch, int) and 0 <= epoch < start_epoch:
                loss = m.get("train_loss") if epoch > 0 else None
                store.add_train_metric(job_id, epoch, epoch * steps, loss if isinstance(loss, (int, float)) else None, m)

    def _write_losses(self) -> None:
        """Before each progress write: the mean loss since the last one, one curve point per write, not per step."""
        if self._losses:
            self.store.add_train_metric(self.job.id, self.epoch or 0, self.done, sum(self._losses) / len(self._losses))
            self._losses = []

    def _mark_epoch(self, state: str) -> None:
        self.progress.mark_chunk(state, span=(self.done, self.done))  # an epoch row's span is the step count now


def train_events(kind: str, data: Path, out: Path, cfg: Config, should_stop: Callable[[], bool]) -> Iterator[object]:
    """The trainer of `kind`, run here; continues from last.pt in `out` when there is one."""
    from core.training.registry import trainer

    return trainer(kind)(data, out, cfg, should_stop=should_stop, resume=True)
