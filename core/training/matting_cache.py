"""The SAM2 cache of a matting run (seed 001: "SAM2 outputs precomputed once").

Each sample's composite, coarse mask, ground-truth alpha (at train.img_size) and SAM2 features
(core/matting/features.py, at img_size/4) are computed once into OUT/cache/<key>.npz and reused by
every epoch and by --resume. The key hashes everything that makes them: the fgr/pha/background
files (path, size, mtime), the background frame and crop, the mask seed, img_size, the SAM2
variant/weights/image_size/seed and the feature version; a changed input gets a new entry.
cache/sam2.json records the SAM2 that made the features; cache/index.json the last fill's counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Generator, Sequence

import cv2
import numpy as np

from core.errors import Cancelled
from core.matting import features as feature_spec
from core.outputs.folder import write_json
from core.training.events import TrainPrepare
from core.training.matting_data import Sample, coarse_mask, composite

CACHE_VERSION = 1
SAM2_FILE, INDEX_FILE = "sam2.json", "index.json"
WHAT = "caching SAM2 outputs"


@dataclass(frozen=True)
class FillStats:
    samples: int
    computed: int           # SAM2 ran for these
    reused: int
    seconds: float          # composite + mask + SAM2 for the computed ones
    sam2_seconds: float     # of which inside SAM2


class FeatureCache:
    def __init__(self, root: Path, img_size: int, sam2_key: dict):
        self.root, self.img_size, self.sam2_key = Path(root), img_size, dict(sam2_key)

    def path(self, sample: Sample) -> Path:
        key = {"cache": CACHE_VERSION, "features": feature_spec.VERSION, "img_size": self.img_size,
               "sam2": self.sam2_key, **sample.key()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"{digest}.npz"

    def identity(self) -> dict | None:
        """The SAM2 identity (features.sam2_identity + seed) recorded when features were made."""
        try:
            data = json.loads((self.root / SAM2_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if {k: data.get(k) for k in self.sam2_key} == self.sam2_key else None

    def fill(self, samples: Sequence[Sample], make_tracker: Callable[[], object],
             should_stop: Callable[[], bool] = lambda: False) -> Generator[TrainPrepare, None, FillStats]:
        """Compute what is missing (building SAM2 only then), yielding TrainPrepare progress about once a
        second; returns the counts. Cancelled when should_stop()."""
        self.root.mkdir(parents=True, exist_ok=True)
        missing = [s for s in samples if not self.path(s).is_file()]
        began, extractor = time.perf_counter(), None
        yield TrainPrepare(WHAT, 0, len(missing), len(samples) - len(missing))
        shown = began
        if missing or self.identity() is None:
            from core.matting.features import Sam2Features, sam2_identity

            tracker = make_tracker()
            extractor = Sam2Features(tracker)
            write_json(self.root / SAM2_FILE, {**sam2_identity(tracker), **self.sam2_key})
        for done, sample in enumerate(missing, 1):
            if should_stop():
                raise Cancelled("training cancelled while caching SAM2 outputs; the cache keeps what is done "
                                "(--resume continues)")
            self._compute(sample, extractor)
            if time.perf_counter() - shown >= 1.0 or done == len(missing):
                shown = time.perf_counter()
                yield TrainPrepare(WHAT, done, len(missing), len(samples) - len(missing))
        stats = FillStats(len(samples), len(missing), len(samples) - len(missing),
                          round(time.perf_counter() - began, 3) if missing else 0.0,
                          round(extractor.seconds, 3) if extractor else 0.0)
        write_json(self.root / INDEX_FILE, asdict(stats))
        return stats

    def _compute(self, sample: Sample, extractor) -> None:
        from core.matting.features import frame_inputs

        rgb, alpha = composite(sample)
        mask = coarse_mask(alpha, sample.seed)
        feats = extractor(rgb, mask, self.img_size)
        inputs = frame_inputs(rgb, mask, self.img_size)
        size = self.img_size
        interp = cv2.INTER_AREA if size < max(alpha.shape) else cv2.INTER_LINEAR
        gt = np.clip(cv2.resize(alpha, (size, size), interpolation=interp) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        path = self.path(sample)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        with open(tmp, "wb") as f:
            np.savez(f, rgb=inputs.rgb, mask=inputs.mask, features=feats, alpha=gt[None])
        os.replace(tmp, path)


class CachedSamples:
    """Map-style dataset for torch's DataLoader (no torch needed): index -> (rgb uint8 3xSxS,
    mask uint8 1xSxS, features float16 CxS/4xS/4, alpha uint8 1xSxS)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with np.load(self.paths[index]) as z:
            return z["rgb"], z["mask"], z["features"], z["alpha"]
