"""Where keyframe modes get their candidate objects.

- `AutomaticRegions` (promptless, seed 004): sam2's automatic mask generator on each keyframe.
- `MaskRegions` (refine, seed 004's promptable mode): connected components of the given masks/,
  prompted with points sampled inside each component (weighted toward high difference where a
  diffs/ image exists) or with the component itself; with diffs, components whose mean difference
  stays under the threshold are not objects (the seed's transient-object filter).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.engine.chunks import Chunk
from core.engine.keyframes import Region
from core.errors import FrameFolderError
from core.frames import IMAGE_SUFFIXES, FrameFolder, check_frame_sized


class AutomaticRegions:
    source = "auto"

    def __init__(self, predictor, folder: FrameFolder, *, every: int, min_area: int, points_per_side: int,
                 pred_iou_thresh: float, stability_thresh: float):
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        from core.models.sam2_model import fit_image_predictor, quiet_transforms

        self.folder, self.every, self.min_area = folder, every, min_area
        with quiet_transforms():
            self.generator = SAM2AutomaticMaskGenerator(
                predictor, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_thresh, min_mask_region_area=0, output_mode="binary_mask")
        fit_image_predictor(self.generator.predictor, predictor.image_size)

    def keyframes(self, chunk: Chunk) -> list[int]:
        return [f for f in range(chunk.start, chunk.end) if f % self.every == 0] or [chunk.start]

    def regions(self, frame: int) -> list[Region]:
        import torch

        with torch.inference_mode():
            found = self.generator.generate(self.folder.read_rgb(frame))
        return [Region(frame, m["segmentation"].astype(bool), float(m["predicted_iou"]))
                for m in found if m["area"] >= self.min_area]


def _find_sidecar(folder: Path, stem: str) -> Path | None:
    for suffix in (".png", ".PNG", ".jpg", ".jpeg", ".JPG"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def read_sidecar(path: Path, folder: FrameFolder, what: str) -> np.ndarray:
    """A mask or difference image of masks/ or diffs/ as HxW values (the largest channel of a colour
    file), checked to be readable and of the frames' size."""
    check_frame_sized(path, folder.width, folder.height, what)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FrameFolderError(f"{what} {path} cannot be read; re-export or remove it")
    if img.ndim == 3:
        img = img.max(axis=2)
    if img.shape != (folder.height, folder.width):
        raise FrameFolderError(f"{what} {path.name} is {img.shape[1]}x{img.shape[0]} but the frames are "
                               f"{folder.width}x{folder.height}; it must match its frame")
    return img


class MaskRegions:
    source = "mask"

    def __init__(self, folder: FrameFolder, *, every: int, min_area: int, filter_threshold: float,
                 max_points: int, prompt: str, seed: int):
        self.folder, self.every, self.min_area = folder, every, min_area
        self.filter_threshold, self.max_points, self.prompt = filter_threshold, max_points, prompt
        self.seed = seed
        self.masks_dir, self.diffs_dir = folder.root / "masks", folder.root / "diffs"
        self.has_diffs = self.diffs_dir.is_dir()
        self.mask_frames = [i for i in range(len(folder)) if _find_sidecar(self.masks_dir, folder.stem(i))]
        if not self.mask_frames:
            names = sorted(p.name for p in self.masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:3]
            raise FrameFolderError(
                f"masks/ in {folder.root} has no mask named after a frame (frames look like {folder.names[0]}, "
                f"masks like {', '.join(names) or 'nothing'}); name each mask after its frame, e.g. "
                f"masks/{folder.stem(0)}.png")
        for i in self.mask_frames:  # every file a job will read, checked before any model loads
            check_frame_sized(_find_sidecar(self.masks_dir, folder.stem(i)), folder.width, folder.height, "mask")
            diff = _find_sidecar(self.diffs_dir, folder.stem(i)) if self.has_diffs else None
            if diff is not None:
                check_frame_sized(diff, folder.width, folder.height, "difference image")
        self.dropped = 0  # components the difference filter removed

    def keyframes(self, chunk: Chunk) -> list[int]:
        inside = [f for f in self.mask_frames if chunk.start <= f < chunk.end]
        return [f for i, f in enumerate(inside) if i % self.every == 0]

    def _read(self, path: Path, what: str) -> np.ndarray:
        return read_sidecar(path, self.folder, what)

    def regions(self, frame: int) -> list[Region]:
        stem = self.folder.stem(frame)
        mask = self._read(_find_sidecar(self.masks_dir, stem), "mask") > 0
        diff = None
        if self.has_diffs:
            path = _find_sidecar(self.diffs_dir, stem)
            if path is not None:
                raw = self._read(path, "difference image").astype(np.float32)
                diff = raw / (65535.0 if raw.max() > 255 else 255.0)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        out = []
        for c in range(1, n):
            if stats[c, cv2.CC_STAT_AREA] < self.min_area:
                continue
            comp = labels == c
            score = None
            if diff is not None:
                score = float(diff[comp].mean())
                if score < self.filter_threshold:
                    self.dropped += 1
                    continue
            # a generator per frame and component: the same points whether or not the job was resumed
            rng = np.random.default_rng((self.seed, frame, c))
            points = self._points(comp, diff, rng) if self.prompt == "points" else None
            out.append(Region(frame, comp, score, points))
        return out

    def _points(self, comp: np.ndarray, diff: np.ndarray | None, rng) -> tuple[tuple[float, float], ...]:
        """max(10, 1% of the area) points inside the component (capped), drawn toward high difference."""
        ys, xs = np.nonzero(comp)
        count = min(max(10, int(0.01 * xs.size)), self.max_points, xs.size)
        weights = None
        if diff is not None:
            w = diff[ys, xs].astype(np.float64) + 1e-6
            weights = w / w.sum()
        pick = rng.choice(xs.size, size=count, replace=False, p=weights)
        return tuple((float(xs[i]), float(ys[i])) for i in pick)
