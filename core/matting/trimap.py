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


def disk(radius: int) -> np.ndarray:
    """An elliptical structuring element 2 * radius + 1 pixels across (a digital disc)."""
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
    kernel = disk(int(band_px))
    fg = cv2.erode(m, kernel) > 0
    _keep_cores(m, fg)
    reach = cv2.dilate(m, kernel) > 0
    trimap = np.full(m.shape, UNKNOWN, np.uint8)
    trimap[fg] = FOREGROUND
    trimap[~reach] = BACKGROUND
    # The band must not run off the frame without a background constraint: frame-edge pixels
    # outside the mask are background (an object that leaves the frame is in the mask there).
    trimap[frame_border(m.shape) & (m == 0)] = BACKGROUND
    return trimap


def frame_border(shape: tuple[int, ...]) -> np.ndarray:
    """The outermost rows and columns of a frame of this shape."""
    edge = np.zeros(shape[:2], bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    return edge


def overlap(a_tree, b_tree, a_pts: np.ndarray) -> float:
    """How much sample a's colours run into sample b's: the share of a's points whose 5 nearest b
    points are, on average, within 1.5 times the distance of their own 5 nearest a points (that
    distance at least one grey level). 0 = apart; a foreground coloured like its background ~0.3+."""
    own = np.maximum(a_tree.query(a_pts, k=6)[0][:, 1:].mean(axis=1), 1.0)
    return float(np.mean(b_tree.query(a_pts, k=5)[0].mean(axis=1) < 1.5 * own))


# The colour trimap is kept only while less than this share of the core's colours lie among the
# background's (see `overlap`). Strands over a background of other colours share 0-0.06 (the suite's
# hair, fur, fast mover, swaying hair); DAVIS car-shadow's silver car beside grey road and walls
# 0.14-0.21, its dog 0.06-0.11, the lemur video 0.05-0.08: above ~0.08 the colour rules punched holes
# deep inside such solid objects (bench/matting_quality.py, README "Holes in solid objects").
COLOUR_OVERLAP = 0.08
TURN_SPREAD = 1.5   # a pixel turns over only this near the other side's samples (times their own spacing)
SPECK_AREA = 6      # a group of fewer pixels turned to background deep inside the mask is kept foreground
SPECK_DEPTH = 6.0   # "deep": more than this many band widths inside the mask edge, on average


def _without_deep_specks(candidates: np.ndarray, turned: np.ndarray, inside: np.ndarray, deep: float) -> np.ndarray:
    """`turned` (flags of the candidate pixels) less the specks turned to background deep inside the
    mask: groups of fewer than SPECK_AREA pixels whose mean depth is over `deep`. Those are an
    object's own colours that happen to match the background (the real lemur's fur), not the gaps
    between strands, which open towards the edge in bigger groups."""
    import cv2

    img = np.zeros(candidates.shape, np.uint8)
    img[candidates] = turned
    img &= (inside > 0).astype(np.uint8)      # only what was turned inside the mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(img, connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA]
    depth = np.bincount(labels.ravel(), weights=inside.ravel(), minlength=n) / np.maximum(area, 1)
    speck = (area < SPECK_AREA) & (depth > deep)
    speck[0] = False
    return turned & ~speck[labels][candidates]


def colour_trimap(rgb: np.ndarray, mask: np.ndarray, band_px: int, ratio: float = 0.7, sure: float = 0.2,
                  overlap_limit: float = COLOUR_OVERLAP, reach: int = 4, samples: int = 3000,
                  turn_over: bool = True) -> np.ndarray:
    """The band trimap, opened up (and inside the mask, where it is clear, turned over) where the
    colours say the mask is wrong.

    Two colour models are sampled from the frame: the object's core (mask pixels at least half the
    mask's greatest depth inside) and the background just outside the band (up to `reach` band
    widths beyond it). A pixel the band marked definite foreground becomes unknown when its colour
    is nearer the background model than the core's (by `ratio`: mean distance to the 5 nearest
    samples), and background outright when it is much nearer (by `sure`) and as close to the
    background model as background pixels are to each other: the gaps between strands that a mask
    swallowed (except specks deep inside, see `_without_deep_specks`); two pixels around every
    turned-over pixel become unknown, so no hard edge is made. Likewise, a pixel of that outer
    ring marked background becomes unknown when its colour is nearer the core's (strands or smoke
    the mask missed), but never foreground outright: on real footage (the lemur video, every mask
    kind) background pixels coloured like the object's core are common, and turning them over cost
    far more than the missed strands it found (see README, Matting). Where the models overlap (by
    more than `overlap_limit`, ``matting.colour_overlap``, see `overlap`: a foreground coloured
    wholly or partly like its background, as a silver car beside grey road), colour cannot tell
    them apart well enough and the band trimap is returned unchanged. With `turn_over` False
    nothing is turned over, only opened up (a mask on the true edge holds no background: its
    pixels are over half covered, and the gaps it holds between strands are partial). Sampling is
    seeded, so a frame always gets the same trimap."""
    import cv2
    from scipy.spatial import cKDTree

    trimap = trimap_from_mask(mask, band_px)
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if band_px <= 0 or not m.any() or m.all():
        return trimap
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    core = inside >= max(band_px + 1.0, 0.5 * float(inside.max()))
    ring = (outside > band_px) & (outside <= (reach + 1) * band_px)
    if core.sum() < 20 or ring.sum() < 20:
        return trimap
    image = np.asarray(rgb, np.float32)
    rng = np.random.default_rng(0)

    def pick(where: np.ndarray) -> np.ndarray:
        pts = image[where]
        return pts[rng.choice(len(pts), samples, replace=False)] if len(pts) > samples else pts

    core_pts, ring_pts = pick(core), pick(ring)
    fg_tree, bg_tree = cKDTree(core_pts), cKDTree(ring_pts)
    if overlap(fg_tree, bg_tree, core_pts[:1000]) > overlap_limit:
        return trimap
    candidates = ((trimap == FOREGROUND) & (inside > band_px)) | (ring & (trimap == BACKGROUND))
    pixels = image[candidates]
    to_fg = fg_tree.query(pixels, k=5)[0].mean(axis=1)
    to_bg = bg_tree.query(pixels, k=5)[0].mean(axis=1)
    in_mask = m[candidates] > 0

    def spread(tree, pts) -> float:   # how near a model's own samples are to each other
        return max(1.0, float(np.median(tree.query(pts[:1000], k=6)[0][:, 1:].mean(axis=1))))

    unsure = np.where(in_mask, to_bg < ratio * to_fg, to_fg < ratio * to_bg)
    if turn_over:
        turned = in_mask & (to_bg < sure * to_fg) & (to_bg <= TURN_SPREAD * spread(bg_tree, ring_pts))
        turned = _without_deep_specks(candidates, turned, inside, SPECK_DEPTH * band_px)
    else:
        turned = np.zeros(in_mask.shape, bool)
    flat = trimap[candidates]
    flat[unsure] = UNKNOWN
    flat[turned] = BACKGROUND
    out = trimap.copy()
    out[candidates] = flat
    now = np.zeros(out.shape, np.uint8)
    now[candidates] = turned
    if now.any():
        out[(cv2.dilate(now, np.ones((5, 5), np.uint8)) > 0) & (out == FOREGROUND)] = UNKNOWN
    return out
