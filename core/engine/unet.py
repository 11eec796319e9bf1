"""`unet` mode: a U-Net trained with `reelmask train unet` segments every frame on its own.

No SAM2 and no prompts: frames go through the network in batches at the checkpoint's img_size, the
probability is resized back to the frame and thresholded (models.unet_threshold), and the object
gets id 1. Chunks only mark resume points (a checkpoint after each one).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from core.engine.chunks import Chunk, Resumable
from core.engine.events import ChunkFinished, ChunkStarted, FrameResult
from core.errors import Cancelled
from core.frames import FrameFolder, FrameReader
from core.models.unet import UnetSegmenter

BATCH = 8  # frames per forward pass
OBJECT_ID = 1


class UnetEngine(Resumable):
    """Runs unet mode over a frame folder; iterate `run()` for events."""

    def __init__(self, segmenter: UnetSegmenter, folder: FrameFolder, reader: FrameReader, chunks: list[Chunk],
                 *, threshold: float, batch_size: int = BATCH, should_stop: Callable[[], bool] = lambda: False):
        self.segmenter, self.folder, self.reader, self.chunks = segmenter, folder, reader, chunks
        self.threshold, self.batch_size, self.should_stop = threshold, batch_size, should_stop

    def run(self) -> Iterator[object]:
        import torch

        h, w = self.folder.height, self.folder.width
        for chunk in self.chunks:
            if self.finished(chunk):
                continue
            began = time.perf_counter()
            yield ChunkStarted(chunk.index, chunk.start, chunk.end, "forward")
            first = chunk.start if chunk.index == 0 else max(chunk.start, self.chunks[chunk.index - 1].end)
            emitted = 0
            for lo in range(first, chunk.end, self.batch_size):
                frames = range(lo, min(lo + self.batch_size, chunk.end))
                if self.should_stop():
                    raise Cancelled("cancelled")
                batch = torch.stack([self.reader.get(f, chunk.start, chunk.end) for f in frames])
                for f, mask in zip(frames, self.segmenter.masks(batch, h, w, self.threshold)):
                    if self.should_stop():
                        raise Cancelled("cancelled")
                    emitted += 1
                    yield FrameResult(f, mask * OBJECT_ID, chunk.index)
            yield ChunkFinished(chunk.index, chunk.start, chunk.end, "forward", time.perf_counter() - began, emitted)
