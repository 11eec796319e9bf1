"""Alpha matte scores of a sequence, from the metrics in core.matting.metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.matting import metrics

FRAME_METRICS = {"SAD": metrics.sad, "MSE": metrics.mse, "Grad": metrics.gradient_error,
                 "Conn": metrics.connectivity_error}


@dataclass
class MatteScores:
    """Running SAD / MSE / Grad / Conn per frame and dtSSD per consecutive pair of one sequence.

    Frames are added one at a time in order, so a long sequence never sits in memory.
    """

    per_frame: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in FRAME_METRICS})
    dtssd_pairs: list[float] = field(default_factory=list)
    _prev: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Score one frame (alphas as uint8 0-255 or floats in [0, 1], whole image)."""
        for name, fn in FRAME_METRICS.items():
            self.per_frame[name].append(fn(pred, gt))
        if self._prev is not None:
            # dtSSD of the sequence = mean over consecutive pairs of the two-frame dtSSD
            self.dtssd_pairs.append(metrics.dtssd([self._prev[0], pred], [self._prev[1], gt]))
        self._prev = (pred, gt)

    @property
    def frames(self) -> int:
        return len(self.per_frame["SAD"])

    def dtssd(self) -> float:
        return float(np.mean(self.dtssd_pairs)) if self.dtssd_pairs else 0.0

    def summary(self) -> dict[str, float]:
        """Per-frame means of SAD, MSE, Grad and Conn, the sequence's dtSSD, and the frame count."""
        out = {name: float(np.mean(v)) if v else float("nan") for name, v in self.per_frame.items()}
        out["dtSSD"] = self.dtssd()
        out["frames"] = self.frames
        return out


def combine(sequences: list[MatteScores]) -> dict[str, float]:
    """Overall scores: SAD, MSE, Grad, Conn averaged over all frames, dtSSD over sequences."""
    out = {}
    for name in FRAME_METRICS:
        values = [v for s in sequences for v in s.per_frame[name]]
        out[name] = float(np.mean(values)) if values else float("nan")
    out["dtSSD"] = float(np.mean([s.dtssd() for s in sequences])) if sequences else float("nan")
    out["frames"] = sum(s.frames for s in sequences)
    return out
