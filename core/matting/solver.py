"""Classical alpha solvers (pymatting) on a trimap, cropped to the unknown band and size-capped.

pymatting is imported inside the methods: its numba kernels compile (or load from numba's cache)
on first import, which must not happen when reelmask merely imports this module.
"""

from __future__ import annotations

import threading

import numpy as np

from core.matting.trimap import (BACKGROUND, COLOUR_OVERLAP, FOREGROUND, UNKNOWN, colour_trimap, disk, frame_border,
                                 trimap_from_mask)

METHODS = {
    "cf": "estimate_alpha_cf",    # closed form (Levin et al. 2008)
    "knn": "estimate_alpha_knn",  # KNN matting (Chen et al. 2013)
    "lkm": "estimate_alpha_lkm",  # large kernel matting (He et al. 2010)
    "rw": "estimate_alpha_rw",    # random walk (Grady et al. 2005)
    "sm": "estimate_alpha_sm",    # shared matting (Gastal and Oliveira 2010)
}
TRIMAPS = ("band", "colour")  # matting.trimap: a fixed band around the mask edge, or opened up where colours disagree
MARGIN = 8  # known pixels kept around the unknown band's bounding box, at solving scale
CF_EPSILON = 1e-6  # closed-form Laplacian regulariser; pymatting's 1e-7 was slightly worse in bench/matting_quality.py
# A second solve around the first alpha's own edge when the mask edge is off by more than this share
# of the band (a dilated, eroded or blocky mask); a mask on the true edge is solved once.
RECENTRE_SHARE = 0.25
RECENTRE_MIN_PX = 2.5  # a mask thresholded from a soft edge is off by ~1.3-1.8 px on average: no second solve
# The band of a mask found on the edge (see matting.on_edge), in pixels at any frame size: such a mask
# is within about a pixel of the true edge, and an edge's own blur is a pixel or two whatever the
# resolution (a fifth of the band, as before, is the same pixel at 480x270 but 2 px at 960x540,
# where it smeared thin parts: bench/matting_quality.py --suite --cross --scale 2)
NARROW_PX = 1
THIN_SHARE = 0.25      # parts of a mask thinner than about twice this share of the band count as thin (see thin_haze)


def alpha_to_u8(alpha: np.ndarray) -> np.ndarray:
    """Float alpha in [0, 1] -> uint8 0-255 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(alpha, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _bbox(unknown: np.ndarray, margin: int) -> tuple[slice, slice]:
    ys = np.flatnonzero(unknown.any(axis=1))
    xs = np.flatnonzero(unknown.any(axis=0))
    h, w = unknown.shape
    return (slice(max(0, ys[0] - margin), min(h, ys[-1] + 1 + margin)),
            slice(max(0, xs[0] - margin), min(w, xs[-1] + 1 + margin)))


def _shifted_ichol(matrix):
    """pymatting's incomplete Cholesky preconditioner, first tried with a small diagonal shift:
    its unshifted first try often fails on band Laplacians and then prints a warning to stdout
    (redirecting stdout is not an option: frames are matted in threads). The solution is the
    same; only the preconditioner differs."""
    from pymatting import ichol

    return ichol(matrix, shifts=[1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5])


def _closed_form_with_samples(image: np.ndarray, trimap: np.ndarray, weight: float) -> np.ndarray:
    """Closed-form matting (Levin et al. 2008) on the unknown pixels with a data term of this
    weight pulling them towards shared matting's sampled alpha (Gastal and Oliveira 2010): the
    sampling-plus-Laplacian idea of Robust Matting (Wang and Cohen 2007) without its confidences.
    Sampling recovers thin strands the smooth closed-form solution misses; a small weight keeps
    the Laplacian in charge elsewhere. ``image`` float64 in [0, 1], ``trimap`` 0 / 0.5 / 1."""
    import scipy.sparse
    from pymatting import cf_laplacian, cg, estimate_alpha_sm

    sampled = estimate_alpha_sm(image, trimap).ravel()
    known = (trimap != 0.5).ravel()
    unknown = ~known
    lap = cf_laplacian(image, epsilon=CF_EPSILON, is_known=known.reshape(trimap.shape))
    system = (lap[unknown][:, unknown] + weight * scipy.sparse.identity(int(unknown.sum()))).tocsr()
    rhs = weight * sampled[unknown] - lap[unknown][:, known].dot((trimap.ravel()[known] == 1.0).astype(np.float64))
    alpha = trimap.astype(np.float64).ravel()
    alpha[unknown] = cg(system, rhs, M=_shifted_ichol(system))
    return np.clip(alpha, 0.0, 1.0).reshape(trimap.shape).astype(np.float32)


def edge_shift(mask: np.ndarray, alpha: np.ndarray) -> float:
    """Mean distance in pixels between a mask's edge and an alpha's: sum |alpha - mask| per
    edge pixel of the mask (0.0 for a mask without edge)."""
    import cv2

    m = (np.asarray(mask) > 0).astype(np.uint8)
    edge = int((m - cv2.erode(m, np.ones((3, 3), np.uint8))).sum())
    if edge == 0 or m.all():
        return 0.0
    return float(np.abs(np.asarray(alpha, np.float64) - m).sum() / edge)


def thin_haze(mask: np.ndarray, band_px: int) -> np.ndarray:
    """Where a wide band's solve around thin parts of a mask (a pole, a rope, a wire, a strand: parts
    an opening by THIN_SHARE of the band removes) is haze rather than edge: the pixels outside the
    mask, beyond the narrow band (NARROW_PX), whose nearest mask pixel is thin (and not within the
    opening's reach of a thick part: a body's corners are not thin). Around a thin part a band
    many times its width holds no definite foreground, and background coloured like the object
    there takes on some alpha; that haze is not the mask being off the edge, so
    :meth:`AlphaSolver.matte` leaves it out when it judges whether the mask is on the edge. All
    False when the mask has no thin part."""
    import cv2

    m = (np.asarray(mask) > 0).astype(np.uint8)
    none = np.zeros(m.shape, bool)
    if band_px <= 1 or not m.any() or m.all():
        return none
    reach = disk(max(1, int(round(THIN_SHARE * band_px))))
    thick = cv2.morphologyEx(m, cv2.MORPH_OPEN, reach)
    # what the opening took off within its own reach of what it kept is corners and steps of a
    # thick part, not a thin one
    thin = (m > 0) & (cv2.dilate(thick, reach) == 0)
    if not thin.any():
        return none
    # every pixel's nearest mask pixel (mask pixels are their own)
    dist, nearest = cv2.distanceTransformWithLabels(1 - m, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    thin_label = np.zeros(int(nearest.max()) + 1, bool)
    thin_label[nearest[m > 0]] = thin[m > 0]
    return thin_label[nearest] & (m == 0) & (dist > NARROW_PX)


def grow_band(trimap: np.ndarray, alpha: np.ndarray, band_px: int, threshold: float) -> np.ndarray | None:
    """The trimap with its unknown band widened (by band_px) where the solved alpha says the band
    was too narrow: unknown pixels next to the background that still hold more than `threshold`
    alpha (strands, smoke or a veil running on past the band), and unknown pixels next to the
    foreground that hold less than 1 - threshold (a see-through part inside the mask). None when
    nowhere needs it."""
    import cv2

    unknown = (trimap != FOREGROUND) & (trimap != BACKGROUND)
    bg, fg = trimap == BACKGROUND, trimap == FOREGROUND
    ring = np.ones((3, 3), np.uint8)
    outer = unknown & (cv2.dilate(bg.astype(np.uint8), ring) > 0) & (alpha > threshold)
    inner = unknown & (cv2.dilate(fg.astype(np.uint8), ring) > 0) & (alpha < 1.0 - threshold)
    if outer.sum() + inner.sum() < 4:
        return None
    reach = disk(band_px)
    out = trimap.copy()
    out[(cv2.dilate(outer.astype(np.uint8), reach) > 0) & bg] = UNKNOWN
    out[(cv2.dilate(inner.astype(np.uint8), reach) > 0) & fg] = UNKNOWN
    out[frame_border(trimap.shape) & bg] = BACKGROUND   # the frame's border stays background (see trimap_from_mask)
    return out


class AlphaSolver:
    """Alpha from an image and a trimap with one of pymatting's solvers (``matting.solver``).

    Only the bounding box of the unknown band (plus a margin) is solved, at most ``max_side``
    pixels on the frame's longest side (``matting.solve_max_side``); known pixels keep exactly 0 or
    1 and only the band carries solved values. ``sample_weight`` (``matting.sample_weight``) adds
    shared matting's sampled alpha as a data term to the cf solver; 0 gives plain closed form."""

    def __init__(self, method: str = "cf", max_side: int = 1024, sample_weight: float = 0.01, grow: int = 0,
                 grow_threshold: float = 0.1, trimap: str = "band", on_edge: float = 0.0,
                 colour_overlap: float = COLOUR_OVERLAP):
        if method not in METHODS:
            raise ValueError(f"unknown matting.solver {method!r}; choose one of {', '.join(METHODS)}")
        if max_side < 16:
            raise ValueError(f"matting.solve_max_side must be at least 16 pixels, got {max_side}")
        if sample_weight < 0:
            raise ValueError(f"matting.sample_weight must be >= 0, got {sample_weight}")
        self.method = method
        self.max_side = int(max_side)
        self.sample_weight = float(sample_weight)
        self.grow, self.grow_threshold = int(grow), float(grow_threshold)
        if trimap not in TRIMAPS:
            raise ValueError(f"unknown matting.trimap {trimap!r}; choose one of {', '.join(TRIMAPS)}")
        self.trimap = trimap
        if on_edge < 0:
            raise ValueError(f"matting.on_edge must be >= 0, got {on_edge}")
        self.on_edge = float(on_edge)
        if not 0 <= colour_overlap <= 1:
            raise ValueError(f"matting.colour_overlap must be between 0 and 1, got {colour_overlap}")
        self.colour_overlap = float(colour_overlap)
        # what matte() found the masks to be, frame by frame (frames are matted on several threads)
        self.mask_counts = {"frames": 0, "on_edge": 0, "recentred": 0}
        self._count_lock = threading.Lock()

    @classmethod
    def from_config(cls, m) -> "AlphaSolver":
        """The solver a `matting` config (core.config.MattingConfig) asks for."""
        return cls(m.solver, m.solve_max_side, m.sample_weight, m.grow, trimap=m.trimap, on_edge=m.on_edge,
                   colour_overlap=m.colour_overlap)

    def scale(self, height: int, width: int) -> float:
        """The scale a frame of this size is solved at (1.0, or less for frames over ``max_side``)."""
        return min(1.0, self.max_side / max(height, width))

    def solve(self, rgb: np.ndarray, trimap: np.ndarray, full_size: bool = False) -> np.ndarray:
        """Alpha (float32 H x W in [0, 1]) of an RGB uint8 image under a 0/128/255 trimap, solved at
        :meth:`scale` (``full_size``: at the frame's own size, for a band of a few pixels)."""
        rgb, trimap = np.asarray(rgb), np.asarray(trimap)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != trimap.shape:
            raise ValueError(f"need an H x W x 3 image and an H x W trimap, got {rgb.shape} and {trimap.shape}")
        alpha = (trimap == FOREGROUND).astype(np.float32)
        unknown = (trimap != FOREGROUND) & (trimap != BACKGROUND)
        if not unknown.any():
            return alpha
        import cv2

        h, w = trimap.shape
        scale = 1.0 if full_size else self.scale(h, w)
        ys, xs = _bbox(unknown, int(np.ceil(MARGIN / scale)))
        crop_rgb, crop_tri = rgb[ys, xs], trimap[ys, xs]
        ch, cw = crop_tri.shape
        if scale < 1.0:
            size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
            small_rgb = cv2.resize(crop_rgb, size, interpolation=cv2.INTER_AREA)
            fg = cv2.resize((crop_tri == FOREGROUND).astype(np.float32), size, interpolation=cv2.INTER_AREA)
            bg = cv2.resize((crop_tri == BACKGROUND).astype(np.float32), size, interpolation=cv2.INTER_AREA)
            small_tri = np.full(fg.shape, 0.5)
            small_tri[fg > 0.999] = 1.0
            small_tri[bg > 0.999] = 0.0
        else:
            small_rgb = crop_rgb
            small_tri = np.where(crop_tri == FOREGROUND, 1.0, np.where(crop_tri == BACKGROUND, 0.0, 0.5))
        if scale == 1.0 and max(ch, cw) > self.max_side:
            solved = self._solve_tiled(small_rgb, small_tri)
        else:
            solved = self._solve_small(small_rgb, small_tri)
        if solved.shape != (ch, cw):
            solved = cv2.resize(solved, (cw, ch), interpolation=cv2.INTER_LINEAR)
        region = alpha[ys, xs]
        band = unknown[ys, xs]
        region[band] = np.clip(solved[band], 0.0, 1.0)
        return alpha

    def _solve_tiled(self, rgb: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """A crop larger than max_side solved at full size (a narrow band): tile by tile, each tile
        of max_side / 2 pixels a side with MARGIN pixels of its surroundings, skipping tiles without
        unknown pixels, so memory stays that of a max_side solve (the closed-form Laplacian takes
        about 400 bytes a pixel of the crop, several GB for a large object at 4K)."""
        h, w = trimap.shape
        step = max(16, self.max_side // 2)
        out = trimap.astype(np.float32, copy=True)
        unknown = trimap == 0.5
        for y in range(0, h, step):
            for x in range(0, w, step):
                if not unknown[y:y + step, x:x + step].any():
                    continue
                ya, xa = max(0, y - MARGIN), max(0, x - MARGIN)
                yb, xb = min(h, y + step + MARGIN), min(w, x + step + MARGIN)
                tile = self._solve_small(rgb[ya:yb, xa:xb], trimap[ya:yb, xa:xb])
                out[y:y + step, x:x + step] = tile[y - ya:y - ya + step, x - xa:x - xa + step]
        return out

    def _solve_small(self, rgb: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        has_fg, has_bg = (trimap == 1.0).any(), (trimap == 0.0).any()
        if not (has_fg and has_bg):
            # one side unknown everywhere: the smooth solution is the other side's value (pymatting
            # refuses such trimaps); with neither, keep the 0.5 of the unknown pixels
            return np.where(trimap == 0.5, 1.0 if has_fg else 0.0 if has_bg else 0.5, trimap).astype(np.float32)
        import pymatting

        image = rgb.astype(np.float64) / 255.0
        if self.method == "cf" and self.sample_weight > 0:
            return _closed_form_with_samples(image, trimap, self.sample_weight)
        estimate = getattr(pymatting, METHODS[self.method])
        kwargs = {}
        if self.method == "cf":
            kwargs = {"laplacian_kwargs": {"epsilon": CF_EPSILON}, "preconditioner": _shifted_ichol}
        return np.asarray(estimate(image, trimap, **kwargs), np.float32)

    def matte(self, rgb: np.ndarray, mask: np.ndarray, band_px: int) -> np.ndarray:
        """Alpha (float32 H x W) from a binary mask: trimap with a ``band_px`` unknown band, then
        :meth:`solve`. When the solved edge lies on average more than RECENTRE_SHARE * band_px
        (and RECENTRE_MIN_PX) away from the mask's edge (a dilated, eroded or low-resolution
        mask), the band is moved onto the solved edge (alpha > 0.5) and solved once more. When it
        lies within ``on_edge`` pixels of the mask's edge (``matting.on_edge``: the mask is on the
        true edge, as a good segmenter's is; the haze around thin parts, see :func:`thin_haze`,
        not counted), the band narrows to NARROW_PX and the mask is solved once more in it, at the
        frame's own size. Distances are counted in solved pixels (see :meth:`scale`). With
        ``trimap = "colour"`` that second solve is on the colour trimap (:func:`colour_trimap`) of
        the band in use, around its centre (for a narrowed band, only opened up, nothing turned
        over); a frame whose mask needs none of this is solved once."""
        mask = np.asarray(mask) > 0
        trimap = trimap_from_mask(mask, band_px)
        alpha = self.solve(rgb, trimap)
        # A frame over max_side is solved smaller and its alpha scaled back, which blurs the edge by
        # about a solved pixel: distances from the mask's edge are judged in solved pixels.
        px = 1.0 / self.scale(*mask.shape)
        shift = edge_shift(mask, alpha) if band_px > 0 else 0.0
        moved = band_px > 0 and shift > max(RECENTRE_MIN_PX * px, RECENTRE_SHARE * band_px)
        centre = alpha > 0.5 if moved else mask
        narrowed = False
        if band_px > 1 and not moved and self.on_edge > 0:
            narrowed = shift < self.on_edge * px
            if not narrowed:   # judged again without the haze a wide band leaves around thin parts
                haze = thin_haze(mask, band_px)
                narrowed = bool(haze.any()) and edge_shift(mask, np.where(haze, 0.0, alpha)) < self.on_edge * px
        if narrowed:
            # the solve kept close to the mask: it is on the true edge, and a band as wide as for a
            # coarse mask only gives the solver room to smear a thin part or a hard edge
            band_px = NARROW_PX
        with self._count_lock:
            self.mask_counts["frames"] += 1
            self.mask_counts["on_edge"] += int(narrowed)
            self.mask_counts["recentred"] += int(moved)
        # The next trimap depends only on where the band is centred, never on the alpha solved
        # around it, so it is made first and solved once (a recentred band solve would be thrown
        # away whenever the colour trimap differs from it).
        if self.trimap == "colour" and band_px > 0:
            # a mask found on the edge is only opened up: the gaps between strands it holds are
            # partly covered (it is on the edge), and turning them over put fur on the edge at
            # 1.17 x the mask's SAD instead of 0.62 (bench/matting_quality.py --suite --cross)
            nxt = colour_trimap(rgb, centre, band_px, overlap_limit=self.colour_overlap, turn_over=not narrowed)
        elif moved or narrowed:
            nxt = trimap_from_mask(centre, band_px)
        else:
            nxt = trimap
        if narrowed or not np.array_equal(nxt, trimap):
            trimap = nxt
            # the narrowed band is a ring a few pixels wide: solved at the frame's own size, where
            # its pixel-sized detail is (cheap at any size: only its unknown pixels are solved)
            alpha = self.solve(rgb, trimap, full_size=narrowed)
        for _ in range(self.grow if band_px > 0 else 0):
            grown = grow_band(trimap, alpha, band_px, self.grow_threshold)
            if grown is None:
                break
            trimap = grown
            alpha = self.solve(rgb, trimap)
        return alpha

    def foreground(self, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Foreground colours (uint8 H x W x 3) unmixed from the background where alpha is
        fractional (pymatting's multi-level foreground estimation, Germer et al. 2020); elsewhere
        the image's own colours. Only the bounding box of the fractional pixels is estimated."""
        rgb, alpha = np.asarray(rgb), np.asarray(alpha, np.float64)
        out = rgb.astype(np.uint8, copy=True)
        fractional = (alpha > 0.0) & (alpha < 1.0)
        if not fractional.any():
            return out
        import pymatting

        ys, xs = _bbox(fractional, 4 * MARGIN)
        image = rgb[ys, xs].astype(np.float64) / 255.0
        fg = pymatting.estimate_foreground_ml(image, alpha[ys, xs])
        out[ys, xs] = np.clip(np.rint(fg * 255.0), 0, 255).astype(np.uint8)
        return out

    def rgba(self, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Cut-out (uint8 H x W x 4): estimated foreground colours with alpha as the 4th channel."""
        return np.dstack([self.foreground(rgb, alpha), alpha_to_u8(alpha)])
