"""Training an Ultralytics detector from masks: the YOLO dataset and the training run.

Used by detect mode's self-training (SAM2 masks of the first frames become the dataset) and by
`reelmask train yolo`. The dataset always lives in a work folder of ours, never in the input.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from core.errors import ModelError, ReelmaskError
from core.models.yolo import torch_threads_kept

log = logging.getLogger(__name__)


def mask_boxes(id_map: np.ndarray, min_area: int = 16) -> list[tuple[int, float, float, float, float]]:
    """(object id, x centre, y centre, width, height), normalised, for each object in an id map."""
    h, w = id_map.shape
    out = []
    for obj in np.unique(id_map):
        if obj == 0:
            continue
        ys, xs = np.nonzero(id_map == obj)
        if xs.size < min_area:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        out.append((int(obj), (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
    return out


class YoloDataset:
    """A YOLO-format dataset built frame by frame: images are links to the frames, labels ours."""

    def __init__(self, root: Path, class_name: str = "object", val_every: int = 5):
        self.root, self.class_name, self.val_every = root, class_name, val_every
        for split in ("train", "val"):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        self.counts = {"train": 0, "val": 0}

    def add(self, index: int, image: Path | np.ndarray, id_map: np.ndarray, split: str | None = None) -> None:
        """Link the frame's file (or write a decoded video frame, RGB, as a PNG) and write its boxes; `split`
        ("train"/"val") or every `val_every`-th frame validates."""
        if split is None:
            split = "val" if index % self.val_every == self.val_every - 1 else "train"
        if isinstance(image, np.ndarray):
            target = self.root / "images" / split / f"{index:06d}.png"
            if not target.exists() and not cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {target}")
        else:
            link = self.root / "images" / split / f"{index:06d}{image.suffix.lower()}"
            if not link.exists():
                os.symlink(image.resolve(), link)
        lines = [f"0 {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}" for _, x, y, bw, bh in mask_boxes(id_map)]
        (self.root / "labels" / split / f"{index:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        self.counts[split] += 1

    def write_yaml(self) -> Path:
        if self.counts["val"] == 0:  # tiny sets: validate on the training images
            val = "images/train"
        else:
            val = "images/val"
        path = self.root / "data.yaml"
        path.write_text(f"path: {self.root}\ntrain: images/train\nval: {val}\nnames:\n  0: {self.class_name}\n")
        return path


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    patience: int
    imgsz: int
    batch: int
    device: str
    workers: int = 2
    seed: int = 0
    lr0: float | None = None    # None: Ultralytics' own choice (optimizer "auto"); else AdamW at this rate


def train_detector(base: Path, data_yaml: Path, out_dir: Path, s: TrainSettings, *, name: str = "yolo",
                   callbacks: dict[str, Callable] | None = None, resume: bool = False) -> Path:
    """Fine-tune `base` on the dataset into out_dir/name; returns the best weights. `callbacks` are
    Ultralytics callbacks (event name -> fn(trainer)); a ReelmaskError raised by one passes through.
    With `resume`, `base` is the run's own weights/last.pt and training continues from it."""
    from core.models.safe_load import verified_copy

    # Ultralytics' trainer loads the weights again by itself, unrestricted (a resume reloads the checkpoint and
    # its optimizer from `checked`); `checked` is our private copy of bytes that passed the restricted load, so
    # that is all it can unpickle of ours. The files it writes during the run (last.pt, best.pt) it reloads itself.
    with torch_threads_kept(), verified_copy(base) as checked:
        from ultralytics import YOLO

        model = YOLO(str(checked), task="detect")
        for event, fn in (callbacks or {}).items():
            model.add_callback(event, fn)
        options = {"optimizer": "AdamW", "lr0": s.lr0} if s.lr0 is not None else {}
        try:
            with _quiet_ultralytics():
                _fit(model, data_yaml, out_dir, s, name, resume, options)
        except ReelmaskError:
            raise
        except Exception as e:
            raise ModelError(f"YOLO training on {data_yaml.parent} failed: {e}") from e
    weights = out_dir / name / "weights"
    for name in ("best.pt", "last.pt"):
        if (weights / name).is_file():
            return weights / name
    raise ModelError(f"YOLO training wrote no weights into {weights}")


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    """Ultralytics logs every epoch and draws its own progress bars (its bars follow its logger's level);
    reelmask reports progress itself, so only Ultralytics' warnings and errors get through meanwhile."""
    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _fit(model, data_yaml: Path, out_dir: Path, s: TrainSettings, name: str, resume: bool, options: dict) -> None:
    if resume:
        model.train(resume=True, device=s.device, workers=s.workers, patience=s.patience)
    else:
        model.train(data=str(data_yaml), epochs=s.epochs, patience=s.patience, imgsz=s.imgsz, batch=s.batch,
                    device=s.device, workers=s.workers, project=str(out_dir), name=name, exist_ok=True,
                    plots=False, verbose=False, amp=s.device != "cpu", seed=s.seed, **options)
