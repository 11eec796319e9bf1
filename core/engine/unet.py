"""`unet` mode: a U-Net trained with `reelmask train unet` segments every frame on its own.

No SAM2 and no prompts: frames go through the network in batches at the checkpoint's img_size, the
probability is resized back to the frame and thresholded (models.unet_threshold), and the object
gets id 1. Chunks only mark resume points (a checkpoint after each one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core.engine.chunks import Chunk, Resumable
from core.engine.events import ChunkFinished, ChunkStarted, FrameResult
from core.errors import Cancelled, ModelError
from core.frames import FrameFolder, FrameReader

BATCH = 8  # frames per forward pass
OBJECT_ID = 1


class UnetSegmenter:
    """A U-Net checkpoint loaded for inference on `device` (a models.device value)."""

    def __init__(self, path: Path, device: str):
        import torch

        from core.models.sam2_model import pick_device
        from core.training.unet_checkpoint import load_checkpoint
        from core.training.unet_model import build_unet

        ckpt = load_checkpoint(path)
        self.path = Path(path)
        self.arch = dict(ckpt["arch"])
        self.image_size = int(ckpt["img_size"])
        self.epoch = int(ckpt["epoch"])
        self.metrics = dict(ckpt.get("metrics") or {})
        self.device = pick_device(device)
        self.dtype = "float16" if self.device.type == "cuda" else "float32"
        try:
            model = build_unet(self.arch)
            model.load_state_dict(ckpt["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ModelError(f"the U-Net weights in {path} do not fit their architecture {self.arch} ({e}); "
                             "give a best.pt written by `reelmask train unet`") from e
        self.model = model.to(self.device).eval()
        self._torch = torch
        self.seconds = 0.0  # time spent in the network (per job)

    def masks(self, batch, height: int, width: int, threshold: float) -> np.ndarray:
        """N x height x width uint8 masks (1 = object) of a batch of model inputs (N x 3 x S x S)."""
        torch = self._torch
        began = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.dtype == "float16"):
            logits = self.model(batch)
        prob = torch.sigmoid(logits.float())
        prob = torch.nn.functional.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)
        out = (prob[:, 0] > threshold).to(torch.uint8).cpu().numpy()
        self.seconds += time.perf_counter() - began
        return out


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
