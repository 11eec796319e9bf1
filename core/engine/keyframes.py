"""Modes that find objects on keyframes: `promptless` (automatic masks) and `refine` (given masks).

SAM2 propagates forward through each chunk. At every keyframe the propagation pauses: candidate
regions are compared with what is already tracked there; regions no tracked object covers become
new objects (prompted on that keyframe), duplicates among the candidates are merged. The masks of
the last shared frame of a chunk prompt the next chunk (hand-over), as in track mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from core.engine.chunks import Chunk, Resumable, forward_handover_frame
from core.engine.events import ChunkFinished, ChunkStarted, EngineWarning, FrameResult, PromptUsed
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
        emitted = 0
        keys = sorted({k for k in self.source.keyframes(chunk) if chunk.start <= k < chunk.end})
        pos = chunk.start
        tracked_at_pos = _id_map_of(given, (self.folder.height, self.folder.width))
        pending = keys[:]
        while pos < chunk.end:
            if pending and pending[0] == pos:
                pending.pop(0)
                for event in self._add_new(state, chunk, pos, tracked_at_pos):
                    yield event
            stop = (pending[0] if pending else chunk.end - 1)
            if not state["obj_ids"]:  # nothing to track yet: empty masks up to the next keyframe
                for f in range(pos, stop if pending else stop + 1):
                    if f >= emit_from:
                        emitted += 1
                        yield FrameResult(f, np.zeros((self.folder.height, self.folder.width), np.uint8), chunk.index)
                pos = stop if pending else chunk.end
                tracked_at_pos = np.zeros((self.folder.height, self.folder.width), np.uint8)
                continue
            last_map = None
            for local, _ids, logits in self.tracker.propagate(state, pos - chunk.start, stop - pos, False):
                if self.should_stop():
                    raise Cancelled("cancelled")
                f = chunk.start + local
                if f == edge:
                    for o in logits.obj_ids:
                        handover_out[o] = logits.mask(o)
                ids = logits.id_map()
                if f == stop and pending:
                    last_map = ids  # the keyframe: decide on new objects before it is written
                    break
                if f >= emit_from:
                    emitted += 1
                    yield FrameResult(f, ids, chunk.index)
            if pending:
                pos, tracked_at_pos = stop, last_map
            else:
                pos = chunk.end
        if not emitted and emit_from < chunk.end:
            yield EngineWarning(f"chunk {chunk.index} produced no frames")
        if not state["obj_ids"]:
            yield EngineWarning(f"chunk {chunk.index} (frames {chunk.start}-{chunk.end - 1}): no object found; "
                                "its masks are empty", frame=chunk.start)
        yield ChunkFinished(chunk.index, chunk.start, chunk.end, "forward", time.perf_counter() - began, emitted,
                            dict(handover_out), self.snapshot())

    def _add_new(self, state: dict, chunk: Chunk, frame: int, tracked: np.ndarray) -> Iterator[object]:
        """Prompt the regions on `frame` that no tracked object covers yet."""
        regions = merge_duplicates(self.source.regions(frame), self.merge_iou)
        occupied = tracked > 0
        for r in regions:
            area = np.count_nonzero(r.mask)
            if area == 0 or np.count_nonzero(r.mask & occupied) / area >= self.covered:
                continue
            if self.next_id > min(self.max_objects, MAX_OBJECT_ID):
                yield EngineWarning(f"object limit ({self.max_objects}) reached on frame {frame}; "
                                    "further regions ignored", frame=frame)
                return
            obj, self.next_id = self.next_id, self.next_id + 1
            local = frame - chunk.start
            if r.points is not None:
                self.tracker.add_points(state, local, obj, points=r.points, labels=[1] * len(r.points))
                yield PromptUsed(frame, obj, self.source.source, chunk.index, box=mask_box(r.mask),
                                 points=r.points, labels=tuple([1] * len(r.points)), confidence=r.score)
            else:
                self.tracker.add_mask(state, local, obj, r.mask)
                yield PromptUsed(frame, obj, self.source.source, chunk.index, box=mask_box(r.mask),
                                 confidence=r.score)
            occupied = occupied | r.mask


def _id_map_of(masks: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for obj, m in masks.items():
        out[m & (out == 0)] = obj
    return out
