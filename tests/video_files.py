"""Writing test videos with PyAV: real clips from ../shared/data (or synthetic frames) in real containers."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def read_rgb_frames(paths: list[Path]) -> list[np.ndarray]:
    """Frames decoded the way reelmask decodes a frame folder (OpenCV, then RGB)."""
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def encode(path: Path, frames: list[np.ndarray], *, codec: str = "libx264", pix_fmt: str = "yuv420p",
           rate: int = 25, options: dict | None = None, pts: list[int] | None = None,
           time_base: Fraction | None = None, rotation: float | None = None, faststart: bool = False) -> Path:
    """Encode RGB `frames` into `path`; `pts` (in `time_base`) gives a variable frame rate."""
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as out:
        stream = out.add_stream(codec, rate=rate)
        h, w = frames[0].shape[:2]
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = {"g": "8", "bf": "2", **(options or {})} if codec == "libx264" else (options or {})
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    """Every picture of `path` in order, decoded straight through (the reference for random access)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
