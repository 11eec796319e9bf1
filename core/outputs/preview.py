"""preview.mp4: the masks over the frames, with object ids and the prompts given, as H.264.

H.264 in an mp4 with its index at the front plays in browsers and every common player; PyAV brings
the encoder (libx264), so no system FFmpeg is needed. Each object's id sits at the point deepest
inside its mask; the prompts of a frame are drawn where they were given, with one mark per source:

- user (prompts.json) and mask prompts: filled dots (green object, red background) and a solid box;
- detector boxes: corner brackets in yellow, with the confidence;
- hand-overs between chunks: a cyan diamond at the handed-over mask's centre;
- automatic masks (promptless): a small white square at the region's centre.

A job on random SAM2 weights carries a red banner on every frame, so nobody mistakes it for a result.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.outputs.masks import davis_palette
from core.outputs.video_file import VideoFile

RANDOM_BANNER = "RANDOM SAM2 WEIGHTS - these masks are meaningless"


def preview_video(path: Path, size: tuple[int, int], fps: float, source=None) -> VideoFile:
    """preview.mp4: H.264 in yuv420p with its index first, so it plays while it downloads."""
    return VideoFile(path, size, "libx264", "yuv420p", fps, source, {"crf": "23", "preset": "veryfast"},
                     {"movflags": "+faststart"})


def annotate(frame: np.ndarray, id_map: np.ndarray, prompts: list[dict], scale: float,
             banner: str | None = None) -> np.ndarray:
    """Object ids, prompt marks (coordinates in frame pixels, drawn at `scale`) and the banner, on `frame`."""
    out = frame.copy()
    h, w = out.shape[:2]
    unit = max(1, round(min(h, w) / 240))  # line and text size grow with the picture
    palette = davis_palette()
    for p in prompts:
        _mark(out, p, scale, unit, tuple(int(c) for c in palette[int(p.get("object_id", 0)) % len(palette)]))
    for obj in np.unique(id_map):
        if obj == 0:
            continue
        mask = (id_map == obj).astype(np.uint8)
        depth = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        _label(out, str(int(obj)), (int(x), int(y)), unit, tuple(int(c) for c in palette[int(obj) % len(palette)]))
    if banner:
        band = 14 * unit
        out[:band] = (out[:band].astype(np.float32) * 0.3 + np.array([200, 0, 0]) * 0.7).astype(np.uint8)
        cv2.putText(out, banner, (4 * unit, band - 4 * unit), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * unit,
                    (255, 255, 255), max(1, unit), cv2.LINE_AA)
    return out


def _label(img: np.ndarray, text: str, centre: tuple[int, int], unit: int, colour: tuple[int, int, int]) -> None:
    font, size, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.4 * unit, max(1, unit)
    (tw, th), base = cv2.getTextSize(text, font, size, thick)
    h, w = img.shape[:2]
    x = min(max(centre[0] - tw // 2, 3 * unit), max(3 * unit, w - tw - 3 * unit))  # whole, also at an edge
    y = min(max(centre[1] + th // 2, th + 3 * unit), max(th + 3 * unit, h - base - 2 * unit))
    cv2.rectangle(img, (x - 2 * unit, y - th - 2 * unit), (x + tw + 2 * unit, y + base + unit), (0, 0, 0), -1)
    cv2.rectangle(img, (x - 2 * unit, y - th - 2 * unit), (x + tw + 2 * unit, y + base + unit), colour, max(1, unit))
    cv2.putText(img, text, (x, y), font, size, (255, 255, 255), thick, cv2.LINE_AA)


def _mark(img: np.ndarray, p: dict, scale: float, unit: int, colour: tuple[int, int, int]) -> None:
    source = p.get("source")
    box = [v * scale for v in p["box"]] if p.get("box") else None
    pts = [(x * scale, y * scale) for x, y in p["points"]] if p.get("points") else []
    labels = p.get("labels") or [1] * len(pts)
    if source == "detector" and box:
        _brackets(img, box, unit, (255, 220, 0))
        if p.get("confidence") is not None:
            cv2.putText(img, f"{p.get('class') or 'det'} {p['confidence']:.2f}", (int(box[0]), max(10, int(box[1]) - 3)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35 * unit, (255, 220, 0), max(1, unit), cv2.LINE_AA)
    elif source == "handover" and box:
        cx, cy, r = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2), 5 * unit
        diamond = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]], np.int32)
        cv2.polylines(img, [diamond], True, (0, 255, 255), max(1, unit), cv2.LINE_AA)
    elif source == "auto" and box:
        cx, cy, r = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2), 3 * unit
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), (255, 255, 255), max(1, unit))
    else:  # user and mask prompts: what a person gave
        if box and not pts:
            cv2.rectangle(img, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colour, max(1, unit) + 1)
        elif box and source == "user":
            cv2.rectangle(img, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colour, max(1, unit) + 1)
        for (x, y), label in zip(pts, labels):
            cv2.circle(img, (int(x), int(y)), 4 * unit, (0, 200, 0) if label else (220, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(img, (int(x), int(y)), 4 * unit, (255, 255, 255), max(1, unit // 2), cv2.LINE_AA)


def _brackets(img: np.ndarray, box: list[float], unit: int, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = (int(v) for v in box)
    arm = max(4, int(min(x1 - x0, y1 - y0) * 0.2))
    t = max(1, unit) + 1
    for (x, y, dx, dy) in ((x0, y0, 1, 1), (x1, y0, -1, 1), (x0, y1, 1, -1), (x1, y1, -1, -1)):
        cv2.line(img, (x, y), (x + dx * arm, y), colour, t)
        cv2.line(img, (x, y), (x, y + dy * arm), colour, t)
