"""`matting` mode (seed 001): a segmentation per frame, then an alpha matte per frame.

The segmentation comes from SAM2 like the other modes (the user's points/boxes, or detect with
`matting.classes`, "person" by default), or, when the folder has masks/ and matting was asked
for, from those masks with no SAM2 at all (so the matting can be judged alone). Each frame's
mask then goes to a matter: the classical default (a trimap with an unknown band around the mask
edge and pymatting's solver) or the learned refiner (`models.matting`).

Mattes are computed on worker threads while the segmentation goes on; results come out in frame
order within a chunk, an AlphaResult before the FrameResult of the same frame, and every pending
matte is finished before a chunk's ChunkFinished, so checkpoints stay exact.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core.engine.chunks import Chunk, Resumable
from core.engine.events import AlphaResult, ChunkFinished, ChunkStarted, FrameResult, Records
from core.errors import Cancelled, FrameFolderError
from core.frames import IMAGE_SUFFIXES, FrameFolder, check_frame_sized


def mask_files(folder: FrameFolder) -> list[Path]:
    """masks/<frame stem>.<png|jpg> for every frame, or a FrameFolderError naming what is missing."""
    root = folder.root / "masks"
    found = {p.stem: p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} if root.is_dir() else {}
    missing = [folder.names[i] for i in range(len(folder)) if folder.stem(i) not in found]
    if missing:
        raise FrameFolderError(
            f"matting with masks/ needs a mask for every frame, but {len(missing)} of {len(folder)} have none in "
            f"{root} (first: {missing[0]}); add masks named after the frames (masks/{folder.stem(0)}.png), or "
            "remove masks/ to let SAM2 segment")
    files = [found[folder.stem(i)] for i in range(len(folder))]
    for path in files:
        check_frame_sized(path, folder.width, folder.height, "mask")
    return files


class MaskFolderEngine(Resumable):
    """The given masks as the segmentation, chunk by chunk (chunks are resume points only)."""

    def __init__(self, folder: FrameFolder, chunks: list[Chunk], should_stop: Callable[[], bool] = lambda: False):
        self.folder, self.chunks, self.should_stop = folder, chunks, should_stop
        self.files = mask_files(folder)

    def read(self, frame: int) -> np.ndarray:
        from core.engine.regions import read_sidecar

        # one target: everything masked is the object to matte
        return (read_sidecar(self.files[frame], self.folder, "mask") > 0).astype(np.uint8)

    def run(self) -> Iterator[object]:
        for pos, chunk in enumerate(self.chunks):
            if self.finished(chunk):
                continue
            began = time.perf_counter()
            yield ChunkStarted(chunk.index, chunk.start, chunk.end, "forward")
            first = chunk.start if pos == 0 else max(chunk.start, self.chunks[pos - 1].end)
            for f in range(first, chunk.end):
                if self.should_stop():
                    raise Cancelled("cancelled")
                yield FrameResult(f, self.read(f), chunk.index)
            yield ChunkFinished(chunk.index, chunk.start, chunk.end, "forward", time.perf_counter() - began,
                                chunk.end - first)


class ClassicalMatter:
    """Trimap (unknown band around the mask edge) + pymatting's solver; optional foreground colours."""

    sequential = False  # frames are independent: several may be matted at once

    def __init__(self, m):
        """`m`: the job's `matting` config (core.config.MattingConfig)."""
        from core.matting.solver import AlphaSolver
        from core.matting.temporal import TemporalCarry

        self.band, self.method, self.foreground = m.band, m.solver, m.foreground
        self.solver = AlphaSolver.from_config(m)
        self.carry = TemporalCarry(m.temporal) if m.temporal > 0 else None   # applied in frame order by the engine
        self.seconds = 0.0

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, prev: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        from core.matting.trimap import band_pixels

        began = time.perf_counter()
        h, w = mask.shape
        alpha = self.solver.matte(rgb, mask, band_pixels(self.band, h, w))
        fg = self.solver.foreground(rgb, alpha) if self.foreground else None
        self.seconds += time.perf_counter() - began
        return alpha, fg

    def describe(self) -> dict:
        return {"method": "classical", "solver": self.method, "band": self.band,
                "solve_max_side": self.solver.max_side, "sample_weight": self.solver.sample_weight,
                "trimap": self.solver.trimap, "colour_overlap": self.solver.colour_overlap, "grow": self.solver.grow,
                "on_edge": self.solver.on_edge,
                "temporal": self.carry.weight if self.carry else 0.0, "seconds": round(self.seconds, 3),
                # frames matted in this run whose mask the first solve found on the true edge (band
                # narrowed) or off it (band moved onto the solved edge); the rest kept the band
                "masks": dict(self.solver.mask_counts)}


class RefinerMatter:
    """The learned refiner (`models.matting`): frames in order, each smoothed with the one before."""

    sequential = True

    def __init__(self, refiner, foreground: bool, max_side: int):
        from core.matting.solver import AlphaSolver

        self.refiner, self.foreground = refiner, foreground
        self.colours = AlphaSolver("cf", max_side) if foreground else None

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, prev: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        alpha = self.refiner.alpha(rgb, mask.astype(bool), prev)
        return alpha, self.colours.foreground(rgb, alpha) if self.colours is not None else None

    def describe(self) -> dict:
        return {"method": "refiner", **self.refiner.describe(), "seconds": round(self.refiner.seconds, 3),
                "sam2_seconds": round(self.refiner.sam2_seconds, 3)}


def _alpha_result(frame: int, alpha: np.ndarray, fg: np.ndarray | None) -> AlphaResult:
    a8 = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    return AlphaResult(frame, a8, np.dstack([fg, a8]) if fg is not None else None, alpha)


class MattingEngine:
    """Wraps a segmentation engine: every FrameResult also gets its alpha matte (and cut-out)."""

    def __init__(self, inner, folder: FrameFolder, matter, *, workers: int = 2,
                 should_stop: Callable[[], bool] = lambda: False):
        self.inner, self.folder, self.matter, self.should_stop = inner, folder, matter, should_stop
        self.workers = 1 if matter.sequential else max(1, workers)
        self._previous: tuple[int, np.ndarray] | None = None  # (frame, alpha) for temporal smoothing

    def resume(self, done: set[tuple[str, int]], handovers: dict, state: dict) -> None:
        self.inner.resume(done, handovers, state)

    def records(self, out: Path, cache: Path) -> Records:
        """The matting method first, then what the segmentation engine records."""
        info = self.matter.describe()
        own = Records(models={"matting": info}, weights={"matting": info["sha256"]} if info.get("sha256") else {},
                      timings={"matting_seconds": info.get("seconds")},
                      fields={"segmentation": "masks/" if isinstance(self.inner, MaskFolderEngine) else "sam2"})
        return own.then(self.inner.records(out, cache))

    def _matte(self, frame: int, id_map: np.ndarray) -> tuple[AlphaResult, np.ndarray]:
        rgb = self.folder.read_rgb(frame)
        prev = None
        if self.matter.sequential and self._previous is not None and self._previous[0] == frame - 1:
            prev = self._previous[1]
        alpha, fg = self.matter(rgb, id_map > 0, prev)
        if self.matter.sequential:
            self._previous = (frame, alpha)
        return _alpha_result(frame, alpha, fg), rgb

    def _in_order(self, matted: tuple[AlphaResult, np.ndarray]) -> AlphaResult:
        """A matte as frames come out in order: the classical matter's temporal carry is applied here
        (frames are matted in parallel, but each carries the one before it)."""
        result, rgb = matted
        carry = getattr(self.matter, "carry", None)
        if carry is None:
            return result
        alpha = carry(result.frame, rgb, result.fine)
        fg = result.rgba[..., :3] if result.rgba is not None else None
        return _alpha_result(result.frame, alpha, fg)

    def run(self) -> Iterator[object]:
        pending: deque[tuple[FrameResult, Future]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="matting") as pool:
            def ready(block: bool) -> Iterator[object]:
                while pending and (block or pending[0][1].done() or len(pending) > 2 * self.workers):
                    result, job = pending.popleft()
                    yield self._in_order(job.result())
                    yield result

            try:
                for event in self.inner.run():
                    if isinstance(event, FrameResult):
                        if self.should_stop():
                            raise Cancelled("cancelled")
                        pending.append((event, pool.submit(self._matte, event.frame, event.id_map)))
                        yield from ready(block=False)
                    elif isinstance(event, ChunkFinished):
                        yield from ready(block=True)
                        yield event
                    elif isinstance(event, ChunkStarted):   # a chunk starts afresh: a resume gives the same alpha
                        yield from ready(block=True)
                        if getattr(self.matter, "carry", None) is not None:
                            self.matter.carry.reset()
                        yield event
                    else:
                        yield event
                yield from ready(block=True)
            finally:
                for _, job in pending:
                    job.cancel()
