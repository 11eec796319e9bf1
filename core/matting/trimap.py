"""Trimaps from binary masks: definite background (0), unknown band (128), definite foreground (255)."""

from __future__ import annotations

import numpy as np

BACKGROUND, UNKNOWN, FOREGROUND = 0, 128, 255


def band_pixels(band: float, height: int, width: int) -> int:
    """Half-width in pixels of the unknown band for a frame of this size: ``band`` is a share of
    the shorter side (``matting.band``); at least 1 pixel unless ``band`` is 0."""
    if band < 0:
        raise ValueError(f"matting.band must be >= 0, got {band}")
    if band == 0:
        return 0
    return max(1, int(round(band * min(height, width))))


def _ellipse(radius: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


CORE_MIN_PX = 2.5  # parts at most ~5 px thick (fragments of strands) stay unknown: no core for them


def _keep_cores(mask: np.ndarray, fg: np.ndarray) -> None:
    """Add to ``fg`` the core of every connected part of ``mask`` that erosion removed entirely
    and that is thicker than 2 * CORE_MIN_PX (all parts, thin ones too, when nothing else would be
    foreground): its pixels at least half its largest distance from its own edge."""
    import cv2

    n, labels = cv2.connectedComponents(mask, connectivity=8)
    if n <= 1:
        return
    kept = np.zeros(n, bool)
    kept[labels[fg]] = True
    kept[0] = True
    if kept.all():
        return
    inside = mask > 0
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    peak = np.zeros(n, np.float32)
    np.maximum.at(peak, labels[inside], dist[inside])
    lost = ~kept
    if fg.any() or (peak[lost] >= CORE_MIN_PX).any():
        lost &= peak >= CORE_MIN_PX
    fg |= lost[labels] & (dist >= 0.5 * peak[labels])


def trimap_from_mask(mask: np.ndarray, band_px: int) -> np.ndarray:
    """Trimap (uint8 H x W) of a boolean mask: foreground is the mask eroded by ``band_px``,
    background what the mask dilated by ``band_px`` does not reach, the rest unknown. Thin parts
    of the mask that vanish under erosion therefore become unknown, never background. A part
    that vanishes whole keeps its core as foreground so the solver has colours to start from if
    it is a small object (over 2 * CORE_MIN_PX thick), not a fragment of a strand; thin parts
    get cores only when the mask has nothing else. An empty mask gives all background, a full
    one all foreground (the frame border does not erode)."""
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    m = (mask > 0).astype(np.uint8)
    if band_px <= 0:
        return m * FOREGROUND
    kernel = _ellipse(int(band_px))
    fg = cv2.erode(m, kernel) > 0
    _keep_cores(m, fg)
    reach = cv2.dilate(m, kernel) > 0
    trimap = np.full(m.shape, UNKNOWN, np.uint8)
    trimap[fg] = FOREGROUND
    trimap[~reach] = BACKGROUND
    # The band must not run off the frame without a background constraint: frame-edge pixels
    # outside the mask are background (an object that leaves the frame is in the mask there).
    edge = np.zeros(m.shape, bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    trimap[edge & (m == 0)] = BACKGROUND
    return trimap
