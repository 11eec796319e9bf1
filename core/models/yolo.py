"""Ultralytics YOLO as a box detector for detect mode: real weights, named classes, a stride."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from core.config import Config
from core.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    frame: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    confidence: float
    class_id: int
    class_name: str


def resolve_yolo_path(cfg: Config) -> Path:
    """models.yolo as a file: as given (relative to the config), else in the model cache."""
    from core.models.weights import cache_dir

    name = cfg.models.yolo
    for candidate in (cfg.path(name), cache_dir(cfg) / "yolo" / Path(name).name):
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"YOLO weights '{name}' not found (looked at {cfg.path(name)} and {cache_dir(cfg) / 'yolo'}); "
        "set models.yolo to the path of an Ultralytics .pt file, or copy the file into that cache folder"
    )


class Detector:
    """Finds boxes of the wanted classes above a confidence threshold."""

    def __init__(self, path: Path, device: str = "cpu", imgsz: int = 640):
        from core.models.safe_load import verified_copy

        # Ultralytics unpickles without restriction: it only ever sees a private copy of checked bytes
        with torch_threads_kept(), verified_copy(path) as checked:
            from ultralytics import YOLO

            try:
                self.model = YOLO(str(checked), task="detect")
            except Exception as e:
                raise ModelError(f"cannot load YOLO weights {path}: {e}") from e
        self.path = path
        self.device = device
        self.imgsz = imgsz
        self.names: dict[int, str] = {int(k): v for k, v in self.model.names.items()}
        # Ultralytics sets up its predictor on the first call, which also changes torch's thread count; do it
        # now, before SAM2 runs beside it, and undo that
        self.detect([(0, np.zeros((32, 32, 3), np.uint8))], None, 1.0)

    def class_ids(self, classes: Sequence[str]) -> list[int] | None:
        """COCO-style names or numeric ids -> ids; empty means every class."""
        if not classes:
            return None
        by_name = {v.lower(): k for k, v in self.names.items()}
        ids = []
        for c in classes:
            key = str(c).strip().lower()
            if key.isdigit() and int(key) in self.names:
                ids.append(int(key))
            elif key in by_name:
                ids.append(by_name[key])
            else:
                import difflib

                close = difflib.get_close_matches(key, list(by_name), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ModelError(f"detector {self.path.name} has no class '{c}'{hint} "
                                 f"(it knows {len(self.names)} classes, e.g. {', '.join(list(by_name)[:6])})")
        return ids

    def detect(self, frames: Sequence[tuple[int, np.ndarray]], classes: list[int] | None,
               min_confidence: float, batch: int = 8) -> list[Detection]:
        """Detections on (frame index, RGB image) pairs, every match above the threshold."""
        out: list[Detection] = []
        with torch_threads_kept():
            for i in range(0, len(frames), batch):
                out += self._detect(frames[i:i + batch], classes, min_confidence)
        return out

    def _detect(self, part: Sequence[tuple[int, np.ndarray]], classes: list[int] | None,
                min_confidence: float) -> list[Detection]:
        images = [np.ascontiguousarray(rgb[..., ::-1]) for _, rgb in part]  # Ultralytics takes BGR arrays
        results = self.model.predict(source=images, conf=min_confidence, classes=classes, imgsz=self.imgsz,
                                     device=self.device, verbose=False)
        out: list[Detection] = []
        for (index, _), r in zip(part, results):
            boxes = r.boxes
            for xyxy, conf, cls in zip(boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy()):
                cid = int(cls)
                out.append(Detection(index, tuple(float(v) for v in xyxy), float(conf), cid, self.names[cid]))
        return out


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Undo what Ultralytics does to the whole process: on a CPU it sets torch's thread count (to at most 8,
    one less than the cores) and, when first imported, OMP_NUM_THREADS=1. SAM2 keeps running with the
    threads it had, and gives the same masks whether or not a detector ran before it in this process."""
    import torch

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
