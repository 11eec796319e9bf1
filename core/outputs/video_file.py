"""One video stream written frame by frame with PyAV (its own FFmpeg: no system FFmpeg needed): the mask
video, the ProRes matte and preview.mp4 all go through it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from core.video import VideoInfo


class VideoFile:
    """Frames encoded in order; with `source` (a video input) each frame carries its picture's own
    timestamp, so a variable frame rate survives, else they follow at `fps`."""

    def __init__(self, path: Path, size: tuple[int, int], codec: str, pix_fmt: str, fps: float,
                 source: "VideoInfo | None" = None, options: dict[str, str] | None = None,
                 container_options: dict[str, str] | None = None):
        import av

        self.av = av
        self.container = av.open(str(path), mode="w", options=container_options or {})
        rate = source.rate if source is not None and source.rate else Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = pix_fmt
        self.stream.options = options or {}
        self.pts = None
        if source is not None:
            self.stream.codec_context.time_base = source.time_base
            self.pts = [p - source.pts[0] for p in source.pts]
        self.index = 0
        self.made = [path.name]

    def encode(self, array: np.ndarray, fmt: str = "rgb24") -> None:
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=fmt)
        if self.pts is not None:
            frame.pts, frame.time_base = self.pts[self.index], self.stream.codec_context.time_base
        self.index += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
