"""Temporal stability for the classical matte: carry the previous frame's alpha where the image did
not change.

Frames are matted independently (and in parallel), so a still strand of hair can flicker as the
mask around it moves by a pixel from frame to frame. Where a pixel and its neighbourhood look the
same as in the frame before (every channel within `still_levels` grey levels, after a small box
blur that ignores sensor noise), its alpha becomes  weight * previous + (1 - weight) * this
frame's  (an exponential average over the run of frames in which it stayed still); where the
image changed, this frame's alpha is kept as solved. Only neighbouring frames are linked (a frame
after a gap, a new chunk or a resumed job starts afresh), so a resumed job gives exactly the
alpha of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

STILL_LEVELS = 4.0   # largest change (0-255, per channel, box-blurred over 5x5) still counted as "did not change"
BLUR = 5


class TemporalCarry:
    def __init__(self, weight: float, still_levels: float = STILL_LEVELS):
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"matting.temporal must be in [0, 1), got {weight}")
        self.weight, self.still_levels = float(weight), float(still_levels)
        self._prev: tuple[int, np.ndarray, np.ndarray] | None = None   # frame, rgb (float32), carried alpha

    def reset(self) -> None:
        self._prev = None

    def still(self, rgb: np.ndarray, prev_rgb: np.ndarray) -> np.ndarray:
        """Pixels whose neighbourhood did not change between the two frames."""
        import cv2

        change = np.abs(rgb - prev_rgb).max(axis=2)
        return cv2.blur(change, (BLUR, BLUR)) <= self.still_levels

    def __call__(self, frame: int, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """This frame's alpha with the previous one carried where the image stayed still."""
        image = np.asarray(rgb, np.float32)
        alpha = np.asarray(alpha, np.float32)
        out = alpha
        prev = self._prev
        if self.weight > 0 and prev is not None and abs(prev[0] - frame) == 1 and prev[1].shape == image.shape:
            still = self.still(image, prev[1])
            if still.any():
                out = alpha.copy()
                out[still] = self.weight * prev[2][still] + (1.0 - self.weight) * alpha[still]
        self._prev = (frame, image, out)
        return out
