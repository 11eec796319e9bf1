"""Modes that find objects on keyframes: `promptless` (automatic masks) and `refine` (given masks).

SAM2 propagates forward through each chunk. At every keyframe the candidate regions are compared
with what is already tracked there; regions no tracked object covers become new objects, prompted
on that keyframe (the propagation then restarts there), and duplicates among them are merged. The masks of
the last shared frame of a chunk prompt the next chunk (hand-over), as in track mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from core.engine.chunks import Chunk, Resumable, forward_handover_frame
from core.engine.events import ChunkFinished, ChunkStarted, EngineWarning, FrameResult, PromptUsed, Records
from core.engine.track import mask_box
from core.errors import Cancelled
from core.frames import FrameFolder, FrameReader, FrameWindow
from core.prompts import MAX_OBJECT_ID


@dataclass(frozen=True)
class Region:
    """A candidate object on a keyframe."""

    frame: int
    mask: np.ndarray
    score: float | None = None                         # automatic masks: predicted IoU
    points: tuple[tuple[float, float], ...] | None = None  # prompt with points instead of the mask


class RegionSource(Protocol):
    source: str  # the prompts_used.jsonl source of its prompts: "auto" or "mask"

    def keyframes(self, chunk: Chunk) -> list[int]: ...

    def regions(self, frame: int) -> list[Region]: ...


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def merge_duplicates(regions: list[Region], iou: float) -> list[Region]:
    """Keep the best-scored of regions that overlap more than `iou` (largest first when unscored)."""
    order = sorted(regions, key=lambda r: (-(r.score or 0.0), -int(np.count_nonzero(r.mask))))
    kept: list[Region] = []
    for r in order:
        if all(mask_iou(r.mask, k.mask) <= iou for k in kept):
            kept.append(r)
    return kept


class KeyframeEngine(Resumable):
    def __init__(self, tracker, folder: FrameFolder, reader: FrameReader, chunks: list[Chunk],
                 source: RegionSource, *, merge_iou: float, covered: float, max_objects: int,
                 should_stop: Callable[[], bool] = lambda: False):
        self.tracker, self.folder, self.reader, self.chunks = tracker, folder, reader, chunks
        self.source, self.merge_iou, self.covered, self.max_objects = source, merge_iou, covered, max_objects
        self.should_stop = should_stop
        self.next_id = 1

    def snapshot(self) -> dict:
        return {"next_id": self.next_id, "dropped": getattr(self.source, "dropped", 0)}

    def restore(self, state: dict) -> None:
        self.next_id = state.get("next_id", self.next_id)
        if hasattr(self.source, "dropped"):
            self.source.dropped = state.get("dropped", 0)

    def records(self, out: Path, cache: Path) -> Records:
        dropped = getattr(self.source, "dropped", 0)
        if not dropped:
            return Records()
        return Records(warnings=[f"refine: {dropped} mask component(s) had a mean difference under "
                                 f"refine.filter_threshold ({self.source.filter_threshold}) and were dropped"])

    def run(self) -> Iterator[object]:
        handover: dict[int, np.ndarray] = {}
        for chunk in self.chunks:
            if self.finished(chunk):
                handover = self.resumed_handover
                continue
            following = self.chunks[chunk.index + 1] if chunk.index + 1 < len(self.chunks) else None
            edge = forward_handover_frame(chunk, following) if following else None
            given, handover = {o: m for o, m in handover.items() if m.any()}, {}
            yield from self._chunk(chunk, given, edge, handover)

    def _chunk(self, chunk: Chunk, given: dict[int, np.ndarray], edge: int | None,
               handover_out: dict[int, np.ndarray]) -> Iterator[object]:
        began = time.perf_counter()
        yield ChunkStarted(chunk.index, chunk.start, chunk.end, "forward")
        emit_from = chunk.start if chunk.index == 0 else self.chunks[chunk.index - 1].end
        window = FrameWindow(self.reader, list(range(chunk.start, chunk.end)), chunk.start, chunk.end)
        state = self.tracker.new_state(window, self.folder.height, self.folder.width)
        for obj, mask in given.items():
            self.tracker.add_mask(state, 0, obj, mask)
            yield PromptUsed(chunk.start, obj, "handover", chunk.index, box=mask_box(mask))
        shape = (self.folder.height, self.folder.width)
        keys = sorted({k for k in self.source.keyframes(chunk) if chunk.start <= k < chunk.end})
        emitted = 0
        pos = chunk.start
        if not state["obj_ids"]:
            # nothing handed over: empty masks up to the first keyframe that has regions
            pos, new = chunk.end, ([], False)
            for k in keys:
                new = self._new_regions(k, np.zeros(shape, np.uint8))
                if new[0]:
                    pos = k
                    break
            for f in range(max(chunk.start, emit_from), pos):
                emitted += 1
                yield FrameResult(f, np.zeros(shape, np.uint8), chunk.index)
            yield from self._prompt(state, chunk, pos, *new)
        elif keys and keys[0] == chunk.start:
            yield from self._prompt(state, chunk, pos, *self._new_regions(pos, _id_map_of(given, shape)))
        # one propagation to the chunk end; it pauses (and restarts at that keyframe) only where a
        # keyframe brings new objects, so frames are not computed twice when nothing is new
        while pos < chunk.end and state["obj_ids"]:
            restart = None
            for local, _ids, logits in self.tracker.propagate(state, pos - chunk.start, chunk.end - 1 - pos, False):
                if self.should_stop():
                    raise Cancelled("cancelled")
                f = chunk.start + local
                if f == edge:
                    for o in logits.obj_ids:
                        handover_out[o] = logits.mask(o)
                ids = logits.id_map()
                if f != pos and f in keys:
                    new = self._new_regions(f, ids)
                    if new[0]:
                        restart = (f, new)
                        break
                    if new[1]:
                        yield self._limit_warning(f)
                if f >= emit_from:
                    emitted += 1
                    yield FrameResult(f, ids, chunk.index)
            if restart is None:
                break
            pos = restart[0]
            yield from self._prompt(state, chunk, pos, *restart[1])
        if not state["obj_ids"]:
            yield EngineWarning(f"chunk {chunk.index} (frames {chunk.start}-{chunk.end - 1}): no object found; "
                                "its masks are empty", frame=chunk.start)
        yield ChunkFinished(chunk.index, chunk.start, chunk.end, "forward", time.perf_counter() - began, emitted,
                            dict(handover_out), self.snapshot())

    def _new_regions(self, frame: int, tracked: np.ndarray) -> tuple[list[Region], bool]:
        """The regions on `frame` that no tracked object covers yet (duplicates merged), within the
        object limit; and whether the limit cut some off."""
        occupied = tracked > 0
        out: list[Region] = []
        for r in merge_duplicates(self.source.regions(frame), self.merge_iou):
            area = np.count_nonzero(r.mask)
            if area == 0 or np.count_nonzero(r.mask & occupied) / area >= self.covered:
                continue
            if self.next_id + len(out) > min(self.max_objects, MAX_OBJECT_ID):
                return out, True
            out.append(r)
            occupied = occupied | r.mask
        return out, False

    def _prompt(self, state: dict, chunk: Chunk, frame: int, regions: list[Region],
                limited: bool) -> Iterator[object]:
        """Make each region a new object on `frame`."""
        local = frame - chunk.start
        for r in regions:
            obj, self.next_id = self.next_id, self.next_id + 1
            if r.points is not None:
                self.tracker.add_points(state, local, obj, points=r.points, labels=[1] * len(r.points))
                yield PromptUsed(frame, obj, self.source.source, chunk.index, box=mask_box(r.mask),
                                 points=r.points, labels=tuple([1] * len(r.points)), confidence=r.score)
            else:
                self.tracker.add_mask(state, local, obj, r.mask)
                yield PromptUsed(frame, obj, self.source.source, chunk.index, box=mask_box(r.mask),
                                 confidence=r.score)
        if limited:
            yield self._limit_warning(frame)

    def _limit_warning(self, frame: int) -> EngineWarning:
        return EngineWarning(f"object limit ({self.max_objects}) reached on frame {frame}; further regions ignored",
                             frame=frame)


def _id_map_of(masks: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for obj, m in masks.items():
        out[m & (out == 0)] = obj
    return out
