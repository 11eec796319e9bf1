"""`reelmask train yolo`: an Ultralytics detector from masks or a YOLO dataset, usable as `models.yolo`.

`check` validates a dataset without torch or ultralytics (the dashboard calls it). `train` runs the same
Ultralytics fine-tuning as detect mode's self-training (core.models.yolo_train.train_detector), starting
from `models.yolo`, in a worker thread whose callbacks become the events yielded here: TrainStarted, a
TrainStep per batch, an EpochEnd per epoch and TrainFinished. Into `out` it writes dataset/ (the generated
YOLO dataset; never anything inside the user's data), ultralytics/ (Ultralytics' run folder),
metrics.jsonl (one line per epoch), last.pt and best.pt (copied from the run folder).
Dataset layouts: see core/training/yolo_data.py.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from core.config import Config
from core.errors import Cancelled, ModelError, TrainingError
from core.training.registry import with_kind_defaults
from core.training.events import EpochEnd, TrainFinished, TrainStarted, TrainStep
from core.training.runs import BEST, LAST, METRICS, read_lines, refuse_existing, write_lines, data_workers
from core.training.yolo_data import YoloYaml, build_from_masks, find_source, write_yaml

log = logging.getLogger(__name__)

KIND = "yolo"
RUN = "ultralytics"                 # Ultralytics' run folder inside out
_DONE = object()


def check(data: Path) -> str:
    """Validate the dataset (data.yaml or frames with masks); a one-line summary of what was found."""
    return find_source(Path(data)).summary()


def train(data: Path, out: Path, cfg: Config, *, should_stop: Callable[[], bool] = lambda: False,
          resume: bool = False) -> Iterator[object]:
    """Fine-tune `models.yolo` on `data` into `out`; yields training events. Raises Cancelled when should_stop().

    Keys: train.epochs, train.img_size (imgsz; config checks it is a multiple of 32), train.batch_size, train.workers,
    train.seed, train.val_fraction (mask datasets without test/), detect.train_patience, models.device;
    train.lr only when set (then AdamW at that rate; 0, the default, keeps Ultralytics' own optimizer choice)."""
    cfg = with_kind_defaults(cfg, "yolo")
    t = cfg.train
    data, out = Path(data), Path(out)
    source = find_source(data)
    run_last = out / RUN / "weights" / LAST
    continuing = _previous_run(out, resume, run_last)
    if isinstance(source, YoloYaml):
        data_yaml = write_yaml(source, out / "dataset")
    else:
        data_yaml, _, _ = build_from_masks(source, out / "dataset", t.val_fraction, t.seed)

    from core.models.devices import pick_device
    from core.models.yolo import resolve_yolo_path
    from core.models.yolo_train import TrainSettings

    device = pick_device(cfg.models.device)
    settings = TrainSettings(t.epochs, cfg.detect.train_patience, t.img_size, t.batch_size,
                             "cpu" if device.type == "cpu" else str(device.index or 0), data_workers(t.workers), t.seed,
                             t.lr or None)
    if continuing and _finished(run_last):
        yield from _already_finished(out)
        return
    base = run_last if continuing else resolve_yolo_path(cfg)
    run = _Run(out, continuing)
    yield from run.events(lambda: _fit(base, data_yaml, out, settings, run, continuing), should_stop)


class _Run:
    """What the Ultralytics callbacks (training thread) hand to the generator (caller's thread)."""

    def __init__(self, out: Path, continuing: bool):
        self.out, self.continuing = out, continuing
        self.queue: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.began = time.perf_counter()
        self.step = self.total = 0
        self.epoch_began = self.began
        self.epoch_done = False     # on_fit_epoch_end also fires for the final validation: report only after an epoch
        self.history: list[dict] = []
        self.best: dict = {}

    def events(self, work: Callable[[], None], should_stop: Callable[[], bool]) -> Iterator[object]:
        """Run `work` in a thread and yield what its callbacks queue; should_stop() is asked here (its
        state may belong to this thread, e.g. a SQLite connection) and passed on through an Event."""
        def target() -> None:
            try:
                work()
                self.queue.put(_DONE)
            except BaseException as e:  # handed to the caller's thread, raised there
                self.queue.put(e)

        worker = threading.Thread(target=target, name="yolo-train", daemon=True)
        worker.start()
        try:
            while True:
                if should_stop():
                    self.stop.set()
                try:
                    item = self.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop.set()  # the caller went away (Ctrl-C, closed generator): stop at the next batch
            worker.join()

    # ---- Ultralytics callbacks (training thread)

    def on_train_start(self, trainer) -> None:
        steps = len(trainer.train_loader)
        self.total = steps * max(0, trainer.epochs - trainer.start_epoch)
        if self.continuing:
            self.history = [m for m in read_lines(self.out / METRICS) if m["epoch"] <= trainer.start_epoch]
            write_lines(self.out / METRICS, self.history)
            kept = [m for m in self.history if m.get("best")]
            self.best = kept[-1] if kept else {}
        self.items = (len(trainer.train_loader.dataset), len(trainer.test_loader.dataset))
        self.queue.put(TrainStarted(KIND, trainer.epochs, steps, *self.items, str(trainer.device),
                                    trainer.start_epoch + 1))

    def on_train_epoch_start(self, trainer) -> None:
        self.epoch_began = time.perf_counter()

    def on_train_batch_end(self, trainer) -> None:
        if self.stop.is_set():
            raise Cancelled("training cancelled; last.pt holds the last finished epoch (--resume continues)")
        self.step += 1
        loss = sum(float(v) for v in trainer.loss_items.values()) if trainer.loss_items is not None else float("nan")
        self.queue.put(TrainStep(trainer.epoch + 1, self.step, self.total, loss))

    def on_train_epoch_end(self, trainer) -> None:
        self.epoch_done = True

    def on_model_save(self, trainer) -> None:
        _copy(trainer.last, self.out / LAST)
        if trainer.best_fitness == trainer.fitness and trainer.best.is_file():
            _copy(trainer.best, self.out / BEST)

    def on_fit_epoch_end(self, trainer) -> None:
        if not self.epoch_done:
            return
        self.epoch_done = False
        seconds = time.perf_counter() - self.epoch_began
        m = trainer.metrics or {}
        losses = {f"train_{k}" if k.endswith("_loss") else f"train_{k}_loss": round(float(v), 6)
                  for k, v in (trainer.tloss or {}).items()}
        fitness = float(trainer.fitness) if trainer.fitness is not None else None
        is_best = fitness is not None and trainer.best_fitness == trainer.fitness
        metrics = {"epoch": trainer.epoch + 1, **losses,
                   **{name: _rounded(m.get(f"metrics/{name}(B)")) for name in ("precision", "recall", "mAP50", "mAP50-95")},
                   "fitness": _rounded(fitness), "lr": _rounded((trainer.lr or {}).get("lr/pg0")),
                   "seconds": round(seconds, 3), "train_items": self.items[0], "val_items": self.items[1],
                   "best": is_best}
        self.history.append(metrics)
        if is_best:
            self.best = metrics
        write_lines(self.out / METRICS, self.history)
        try:
            _val_preview(self.out, trainer)
        except Exception as e:  # a picture for the dashboard is never worth a failed training
            log.debug("no validation picture this epoch: %s", e)
        self.queue.put(EpochEnd(metrics["epoch"], metrics, is_best, seconds))

    def on_train_end(self, trainer) -> None:
        self.stopped_early = trainer.epoch + 1 < trainer.epochs

    def finished(self, best: Path) -> TrainFinished:
        _copy(best.parent / LAST, self.out / LAST)  # stripped of the optimizer by Ultralytics: smaller
        _copy(best, self.out / BEST)
        return TrainFinished(self.out, self.out / BEST, self.out / LAST, self.best,
                             time.perf_counter() - self.began, getattr(self, "stopped_early", False))


def _val_preview(out: Path, trainer) -> None:
    """The first validation image with the boxes the epoch's model finds (red, at confidence 0.25) and
    the true boxes (green), as val_preview.png: the dashboard's picture of the run. The model is the
    EMA copy Ultralytics validates with, run here on one letterboxed image; nothing is loaded from disk."""
    import cv2
    import numpy as np
    import torch
    from ultralytics.utils.nms import non_max_suppression

    from core.training.runs import VAL_PREVIEW

    dataset = trainer.test_loader.dataset
    if not len(dataset.im_files):
        return
    bgr = cv2.imread(dataset.im_files[0], cv2.IMREAD_COLOR)
    if bgr is None:
        return
    h, w = bgr.shape[:2]
    size = int(trainer.args.imgsz)
    r = min(size / h, size / w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    board = np.full((size, size, 3), 114, np.uint8)
    board[:nh, :nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    model = trainer.ema.ema if getattr(trainer, "ema", None) is not None else trainer.model
    p = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(board[..., ::-1].transpose(2, 0, 1)))[None].to(p.device, p.dtype) / 255
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            found = non_max_suppression(model(x), conf_thres=0.25, iou_thres=0.7)[0][:, :4].float().cpu().numpy() / r
    finally:
        model.train(was_training)
    picture = bgr.copy()
    label = dataset.labels[0]
    for cx, cy, bw, bh in np.asarray(label.get("bboxes", np.zeros((0, 4))), np.float64).reshape(-1, 4):
        if label.get("normalized", True):
            cx, cy, bw, bh = cx * w, cy * h, bw * w, bh * h
        cv2.rectangle(picture, (int(cx - bw / 2), int(cy - bh / 2)), (int(cx + bw / 2), int(cy + bh / 2)), (40, 230, 40), 1)
    for x0, y0, x1, y1 in found:
        cv2.rectangle(picture, (int(x0), int(y0)), (int(x1), int(y1)), (40, 40, 230), 2)
    tmp = out / f".{VAL_PREVIEW}.tmp.png"
    if cv2.imwrite(str(tmp), picture):
        os.replace(tmp, out / VAL_PREVIEW)


def _fit(base: Path, data_yaml: Path, out: Path, settings, run: _Run, continuing: bool) -> None:
    from core.models.yolo_train import train_detector

    names = ("on_train_start", "on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end",
             "on_model_save", "on_fit_epoch_end", "on_train_end")
    best = train_detector(base, data_yaml, out, settings, name=RUN, resume=continuing,
                          callbacks={n: getattr(run, n) for n in names})
    run.queue.put(run.finished(best))


def _previous_run(out: Path, resume: bool, run_last: Path) -> bool:
    """True when an earlier run in `out` continues; refuses to overwrite a run otherwise."""
    if not resume:
        refuse_existing(out, (RUN,))
        return False
    return run_last.is_file()


def _finished(run_last: Path) -> bool:
    """Ultralytics strips the optimizer from last.pt when a run ends (epoch -1): nothing left to resume."""
    from core.models.safe_load import load_checkpoint

    try:
        ckpt = load_checkpoint(run_last)
    except ModelError as e:
        raise TrainingError(f"cannot resume from {run_last} ({e}); choose another --out to start over") from e
    return ckpt.get("epoch", -1) == -1 or ckpt.get("optimizer") is None


def _already_finished(out: Path) -> Iterator[object]:
    history = read_lines(out / METRICS)
    if not (out / BEST).is_file():
        _copy(out / RUN / "weights" / BEST, out / BEST)
    if not (out / LAST).is_file():
        _copy(out / RUN / "weights" / LAST, out / LAST)
    best = [m for m in history if m.get("best")]
    yield TrainFinished(out, out / BEST, out / LAST, best[-1] if best else {}, 0.0)


def _rounded(value) -> float | None:
    return None if value is None else round(float(value), 6)


def _copy(src: Path, dst: Path) -> None:
    """Atomic copy: a reader never sees half a .pt file."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
