"""DAVIS region similarity J and boundary accuracy F, per frame and per object.

Definitions follow the DAVIS 2017 evaluation code (davis2017-evaluation, ``metrics.py`` and
``utils.py``): J is the IoU of two binary masks (1 when both are empty); F is the boundary
F-measure of ``db_eval_boundary``, boundaries taken as in ``_seg2bmap`` and matched within a
disk of radius ceil(0.008 * image diagonal). Statistics over frames are ``db_statistics``:
mean, recall (fraction of frames above 0.5) and decay (first quarter minus last quarter).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (DAVIS default)


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: intersection over union of two binary masks; 1.0 when both are empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & g)) / union


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """DAVIS ``_seg2bmap``: a pixel is boundary when it differs from its right, bottom or
    bottom-right neighbour; neighbours beyond the image are not compared (so the last row only
    looks right, the last column only down, and the bottom-right pixel is never boundary)."""
    seg = np.asarray(seg, bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def tolerance_radius(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Boundary match radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(shape[:2])))


@lru_cache(maxsize=8)
def _disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: offsets with dx^2 + dy^2 <= radius^2."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def boundary_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F: boundary F-measure of ``db_eval_boundary`` (precision and recall of boundary pixels
    matched within the tolerance disk; an empty boundary on both sides scores 1)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    pb, gb = boundary_map(p), boundary_map(g)
    n_fg, n_gt = int(np.count_nonzero(pb)), int(np.count_nonzero(gb))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        disk = _disk(tolerance_radius(p.shape, bound_th))
        pb_dil = cv2.dilate(pb.astype(np.uint8), disk).astype(bool)
        gb_dil = cv2.dilate(gb.astype(np.uint8), disk).astype(bool)
        precision = np.count_nonzero(pb & gb_dil) / n_fg
        recall = np.count_nonzero(gb & pb_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


@dataclass(frozen=True)
class Statistics:
    """``db_statistics`` of one object's per-frame values."""

    mean: float
    recall: float
    decay: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "recall": self.recall, "decay": self.decay}


def statistics(values: np.ndarray | list[float], bins: int = 4) -> Statistics:
    """Mean, recall (fraction of values > 0.5) and decay (mean of the first of ``bins`` bins
    minus mean of the last; bin edges as in DAVIS, neighbouring bins share their edge frame)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Statistics(float("nan"), float("nan"), float("nan"))
    # DAVIS casts these indices to uint8, which wraps past 255 frames; plain ints here
    ids = (np.round(np.linspace(1, len(v), bins + 1) + 1e-10) - 1).astype(int)
    first = v[ids[0]:ids[1] + 1]
    last = v[ids[bins - 1]:ids[bins] + 1]
    return Statistics(float(v.mean()), float(np.mean(v > 0.5)), float(first.mean() - last.mean()))


def mean_statistics(stats: list[Statistics]) -> Statistics:
    """Mean of each field over objects (how DAVIS summarises a sequence or a whole set)."""
    if not stats:
        return Statistics(float("nan"), float("nan"), float("nan"))
    return Statistics(*(float(np.mean([getattr(s, f) for s in stats])) for f in ("mean", "recall", "decay")))


@dataclass
class ObjectScores:
    """Per-frame J and F of one object id through a sequence."""

    obj: int
    j: list[float]
    f: list[float]

    def summary(self) -> dict[str, dict[str, float]]:
        return {"J": statistics(self.j).to_dict(), "F": statistics(self.f).to_dict()}


def score_frame(pred_ids: np.ndarray, gt_ids: np.ndarray, objects: list[int],
                bound_th: float = BOUND_TH, void: np.ndarray | None = None) -> dict[int, tuple[float, float]]:
    """(J, F) of each object id on one frame of id maps (pixel value = object id). `void` pixels (DAVIS
    palette index 255: not annotated) are left out of both masks, as the DAVIS evaluation does."""
    if pred_ids.shape != gt_ids.shape:
        raise ValueError(f"prediction shape {pred_ids.shape} differs from ground truth shape {gt_ids.shape}")
    keep = None if void is None or not void.any() else ~void
    out = {}
    for obj in objects:
        p, g = pred_ids == obj, gt_ids == obj
        if keep is not None:
            p, g = p & keep, g & keep
        out[obj] = (region_similarity(p, g), boundary_measure(p, g, bound_th))
    return out
