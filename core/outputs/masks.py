"""Palette masks in the DAVIS format: 8-bit indexed PNG, pixel value = object id."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


@lru_cache(maxsize=1)
def davis_palette() -> np.ndarray:
    """The 256-colour palette DAVIS and PASCAL VOC use (bits of the index spread over R, G, B)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def write_palette_png(path: Path, id_map: np.ndarray) -> None:
    img = Image.fromarray(np.ascontiguousarray(id_map, dtype=np.uint8), mode="P")
    img.putpalette(davis_palette().tobytes())
    img.save(path, format="PNG", optimize=False, compress_level=1)


def read_mask(path: Path) -> np.ndarray:
    """Object ids of a palette PNG (or values of a grayscale one) as HxW uint8."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8)


def fill_small_holes(id_map: np.ndarray, max_area: int) -> np.ndarray:
    """Give each object the background holes inside it of at most `max_area` pixels.

    The same post-processing sam2 applies with its CUDA extension, done on the final masks so
    it also happens on machines without that extension. Each object is looked at inside its own
    bounding box grown by one pixel (the same components as on the whole frame: a hole inside an
    object lies inside its box, and the box's rim is one outside component), which keeps the cost
    per object small on a frame with many objects.
    """
    if max_area <= 0:
        return id_map
    h, w = id_map.shape
    out = id_map
    for obj in np.flatnonzero(np.bincount(id_map.ravel(), minlength=1)):
        if obj == 0:
            continue
        x, y, bw, bh = cv2.boundingRect((id_map == obj).astype(np.uint8))
        y0, y1, x0, x1 = y - 1, y + bh + 1, x - 1, x + bw + 1
        # the rim's component reaches everything outside the box; only a tiny frame could make it a hole
        boxed = y0 >= 0 and x0 >= 0 and y1 <= h and x1 <= w and h * w - (y1 - y0) * (x1 - x0) > max_area
        region = id_map[y0:y1, x0:x1] if boxed else id_map
        n, labels, stats, _ = cv2.connectedComponentsWithStats((region != obj).astype(np.uint8), connectivity=8)
        small = np.nonzero(stats[1:, cv2.CC_STAT_AREA] <= max_area)[0] + 1
        if boxed:
            small = small[small != labels[0, 0]]
        if small.size == 0:
            continue
        hole = np.isin(labels, small) & (region == 0)
        if hole.any():
            if out is id_map:
                out = id_map.copy()
            (out[y0:y1, x0:x1] if boxed else out)[hole] = obj
    return out


def overlay(rgb: np.ndarray, id_map: np.ndarray, opacity: float) -> np.ndarray:
    """Frame with each object's palette colour blended in, for previews."""
    colours = davis_palette()[id_map]
    mixed = rgb.astype(np.float32)
    where = id_map > 0
    mixed[where] = (1 - opacity) * mixed[where] + opacity * colours[where]
    return mixed.astype(np.uint8)
