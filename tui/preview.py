"""The dashboard's preview pane: the selected job's latest finished frame with its masks and object ids,
drawn with half-block characters (two pixels a character cell, so it works in any colour terminal,
over SSH included), or with the terminal's own graphics (Kitty's graphics protocol or Sixel, through
textual-image) where the terminal answers that it has them. No torch here: frames are read with
OpenCV, video pictures with PyAV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.text import Text

from core.outputs.folder import staging_path

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class PreviewImage:
    rgb: np.ndarray      # already at the pane's size: width x (2 x rows) pixels, times `detail` for graphics
    caption: str


GRAPHICS = ("auto", "halfblock", "kitty", "sixel")


def pick_graphics(choice: str = "auto"):
    """The textual-image widget class that draws the preview in terminal graphics, or None for half
    blocks. "auto" asks the terminal (once, before the dashboard takes it over) whether it speaks Sixel
    or Kitty's graphics protocol; only a terminal on stdout is asked. Returns (class or None, what was
    chosen and why, short enough for the pane's border; a failure's detail follows on a second line)."""
    import sys

    if choice == "halfblock":
        return None, "half blocks"
    if choice == "auto" and not (sys.__stdout__ and sys.__stdout__.isatty()):
        return None, "half blocks: no terminal"
    try:
        if choice == "auto":
            from textual_image.renderable import Image as best
            from textual_image.renderable.sixel import Image as sixel_renderable
            from textual_image.renderable.tgp import Image as tgp_renderable

            if best is sixel_renderable:
                choice = "sixel"
            elif best is tgp_renderable:
                choice = "kitty"
            else:
                return None, "half blocks: no graphics"
        if choice == "sixel":
            from textual_image.widget import SixelImage as widget
        else:
            from textual_image.widget import TGPImage as widget
    except Exception as e:  # not installed, or the terminal did not answer sensibly
        return None, f"half blocks: {choice} failed\n{type(e).__name__}: {e}"
    return widget, f"{choice} graphics"


def latest_mask(job) -> Path | None:
    """The newest mask the job has written (its staging folder while it runs, then its output folder)."""
    if not job.output_path:
        return None
    out = Path(job.output_path)
    for masks in (staging_path(out) / "masks", out / "masks"):
        newest, when = None, -1
        try:
            with os.scandir(masks) as it:
                for e in it:
                    if e.name.endswith(".png"):
                        t = e.stat().st_mtime_ns
                        if t > when:
                            newest, when = e.path, t
        except OSError:
            continue
        if newest is not None:
            return Path(newest)
    return None


class PreviewReader:
    """Builds the pane's picture for a job, reading only what changed since the last call."""

    def __init__(self):
        self._key: tuple | None = None
        self._image: PreviewImage | None = None
        self._videos: dict[str, object] = {}  # input path -> FrameFolder of its video (probed once)

    def read(self, job, width: int, rows: int, detail: int = 1) -> PreviewImage | str:
        """The picture, or a sentence saying why there is none. `detail`: pixels per half-block pixel
        (terminal graphics draw more than two pixels a cell; never more than the frame has)."""
        if job is None:
            return "select a job to see its latest frame"
        if detail > 1:
            width, rows = width * detail, rows * detail
        if job.kind == "train":
            return self._validation(job, width, rows)
        mask = latest_mask(job)
        if mask is None:
            return "no masks written yet" if job.state in ("queued", "running", "interrupted") else "no masks to show"
        try:
            st = mask.stat()
        except OSError:
            return "the newest mask moved on; next refresh"
        key = (str(mask), st.st_mtime_ns, st.st_size, width, rows)
        if key == self._key and self._image is not None:
            return self._image
        from core.outputs.masks import read_mask

        try:
            ids = read_mask(mask)  # palette PNG: the indices are the object ids
        except Exception:  # being written right now
            return "the newest mask cannot be read yet; next refresh"
        frame = self._frame(job, mask.stem, ids.shape)
        from core.outputs.masks import overlay
        from core.outputs.preview import annotate

        h, w = ids.shape[:2]
        scale = min(width / w, (2 * rows) / h, 1.0 if detail > 1 else float("inf"))
        size = (max(1, int(w * scale)), max(2, int(h * scale) // 2 * 2))
        picture = overlay(frame, ids, 0.5) if frame is not None else _ids_only(ids)
        big = annotate(picture, ids, [], 1.0)  # ids drawn at full size, then scaled down with the frame
        small = cv2.resize(big, size, interpolation=cv2.INTER_AREA)
        objects = sorted(int(o) for o in np.unique(ids) if o)
        caption = f"frame {mask.stem} · objects {', '.join(map(str, objects)) or 'none'}"
        self._key, self._image = key, PreviewImage(small, caption)
        return self._image

    def _validation(self, job, width: int, rows: int) -> PreviewImage | str:
        """A training run's latest validation picture (written by trainers that make one, e.g. unet)."""
        from core.training.runs import VAL_PREVIEW

        path = Path(job.output_path) / VAL_PREVIEW if job.output_path else None
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        if st is None:
            return "no validation picture yet (the unet and matting trainers write one after each epoch)"
        key = (str(path), st.st_mtime_ns, st.st_size, width, rows)
        if key == self._key and self._image is not None:
            return self._image
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            return "the validation picture is being written; next refresh"
        h, w = bgr.shape[:2]
        scale = min(width / w, (2 * rows) / h)
        size = (max(1, int(w * scale)), max(2, int(h * scale) // 2 * 2))
        small = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA)
        self._key, self._image = key, PreviewImage(small, "validation: prediction red, truth outlined green")
        return self._image

    def _frame(self, job, stem: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The input frame under that mask name: the image of that stem, or the video picture of that index."""
        src = Path(job.input_path)
        for suffix in _IMAGE_SUFFIXES:
            candidate = src / f"{stem}{suffix}"
            if candidate.is_file():
                bgr = cv2.imread(str(candidate), cv2.IMREAD_COLOR)
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr is not None and bgr.shape[:2] == shape[:2] else None
        if not stem.isdigit():
            return None
        try:
            video = self._video(src)
            if video is None or int(stem) >= len(video):
                return None
            rgb = video.read_rgb(int(stem))
            return rgb if rgb.shape[:2] == shape[:2] else None
        except Exception:  # a video moved or damaged: the masks alone still show
            return None

    def _video(self, src: Path):
        from core.frames import FrameFolder
        from core.video import is_video_name

        key = str(src)
        if key not in self._videos:
            self._videos.clear()  # one job's video at a time
            file = src if src.is_file() else next((p for p in sorted(src.iterdir()) if is_video_name(p.name)
                                                   and p.is_file()), None) if src.is_dir() else None
            self._videos[key] = FrameFolder.open_video(file) if file is not None else None
        return self._videos[key]


def _ids_only(ids: np.ndarray) -> np.ndarray:
    from core.outputs.masks import davis_palette

    return davis_palette()[ids].astype(np.uint8)


def half_blocks(rgb: np.ndarray) -> Text:
    """Two pixel rows per text row: the upper half block in the top pixel's colour over the bottom's."""
    text = Text()
    h = rgb.shape[0] - rgb.shape[0] % 2
    for y in range(0, h, 2):
        top, bottom = rgb[y], rgb[y + 1]
        for (r, g, b), (r2, g2, b2) in zip(top.tolist(), bottom.tolist()):
            text.append("\u2580", style=f"rgb({r},{g},{b}) on rgb({r2},{g2},{b2})")
        if y + 2 < h:
            text.append("\n")
    return text
