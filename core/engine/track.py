"""`track` mode: user prompts propagated by SAM2 chunk by chunk, in both directions.

Each object o has a first prompt frame F(o). Frames at or after F(o) get o from the forward
sweep, frames before it from the backward sweep. Each sweep walks the chunks in order; the
masks of the last shared frame of one chunk prompt the next (hand-over, `add_new_mask`), and an
object's latest user prompt frame can ride along as an extra conditioning frame (an "anchor")
so SAM2 keeps the user's own view of the object in every chunk, as it would in one long state.

Only one chunk's SAM2 state exists at a time; memory does not grow with the video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from core.engine.chunks import Chunk, backward_handover_frame, chunk_of, forward_handover_frame
from core.engine.events import ChunkFinished, ChunkStarted, EngineWarning, FrameResult, PromptUsed, Records
from core.errors import Cancelled
from core.frames import FrameFolder, FrameReader, FrameWindow
from core.models.sam2_model import Sam2Tracker
from core.prompts import ObjectPrompt, Prompts


@dataclass
class _Plan:
    """The conditioning inputs of one chunk run."""

    chunk: Chunk
    frames: list[int]                        # global frame of each local index
    user: list[ObjectPrompt] = field(default_factory=list)
    anchors: list[ObjectPrompt] = field(default_factory=list)
    handover: dict[int, np.ndarray] = field(default_factory=dict)  # object -> mask on the edge frame

    def local(self, frame: int) -> int:
        # anchors come first (forward) or last (backward); chunk frames are contiguous
        return self.frames.index(frame)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


class TrackEngine:
    """Runs track mode over a frame folder; iterate `run()` for events."""

    def __init__(self, tracker: Sam2Tracker, folder: FrameFolder, reader: FrameReader, prompts: Prompts,
                 chunks: list[Chunk], scratch: Path, anchor_prompts: bool = True,
                 should_stop: Callable[[], bool] = lambda: False):
        self.tracker = tracker
        self.folder = folder
        self.reader = reader
        self.prompts = prompts
        self.chunks = chunks
        self.scratch = scratch
        self.anchor_prompts = anchor_prompts
        self.should_stop = should_stop
        self.first = {o: prompts.first_frame(o) for o in prompts.object_ids}
        # resuming: (sweep, chunk) steps already finished, and the hand-over each sweep left behind
        self.done: set[tuple[str, int]] = set()
        self.resumed: dict[str, dict[int, np.ndarray]] = {}

    def resume(self, done: set[tuple[str, int]], handovers: dict[str, dict[int, np.ndarray]], state: dict) -> None:
        self.done, self.resumed = set(done), dict(handovers)

    def records(self, out: Path, cache: Path) -> Records:
        return Records()  # the tracker's own record is SAM2's, which the pipeline takes from the model

    # ------------------------------------------------------------------ sweeps

    def run(self) -> Iterator[object]:
        if not self.first:
            raise ValueError("track mode needs at least one object prompt")
        min_f, max_f = min(self.first.values()), max(self.first.values())
        if max_f > 0:
            yield from self._backward(min_f, max_f)
        yield from self._forward(min_f, max_f)

    def _forward(self, min_f: int, max_f: int) -> Iterator[object]:
        c0 = chunk_of(self.chunks, min_f, last=True)
        handover: dict[int, np.ndarray] = {}
        for chunk in self.chunks[c0.index:]:
            if ("forward", chunk.index) in self.done:
                handover = self.resumed.get("forward", {})
                continue
            alive = [o for o, f in self.first.items() if f < chunk.end]
            start = min_f if chunk is c0 else chunk.start
            emit_from = start if chunk is c0 else self.chunks[chunk.index - 1].end
            following = self.chunks[chunk.index + 1] if chunk.index + 1 < len(self.chunks) else None
            edge = forward_handover_frame(chunk, following) if following else None
            plan = self._plan(chunk, alive, handover, edge_frame=chunk.start, forward=True)
            handover = {}

            def shown(frame: int, alive=alive, emit_from=emit_from) -> set[int] | None:
                """The objects of this frame's id map (None: the frame is not emitted)."""
                return None if frame < emit_from else {o for o in alive if self.first[o] <= frame}

            def keep(frame: int, logits) -> np.ndarray | None:
                if frame == edge:
                    for o in alive:
                        if o in logits.obj_ids:
                            handover[o] = logits.mask(o)
                objects = shown(frame)
                if objects is None:
                    return None
                id_map = logits.id_map(objects)
                if frame < max_f:
                    id_map = self._merge_backward(frame, id_map)
                return id_map

            yield from self._run_chunk(plan, start, chunk.end - 1, reverse=False, keep=keep, sweep="forward",
                                       handover_out=handover, shown=shown)

    def _backward(self, min_f: int, max_f: int) -> Iterator[object]:
        todo = [c for c in self.chunks if c.start < max_f]
        handover: dict[int, np.ndarray] = {}
        later: Chunk | None = None
        for chunk in reversed(todo):
            if ("backward", chunk.index) in self.done:
                handover = self.resumed.get("backward", {})
                later = chunk
                continue
            needing = [o for o, f in self.first.items() if f > chunk.start]
            prompt_frames = [p.frame for o in needing for p in self.prompts.for_object(o) if p.frame in chunk]
            continuing = later is not None and any(o in handover or self.first[o] >= chunk.end for o in needing)
            start = chunk.end - 1 if (continuing or not prompt_frames) else max(prompt_frames)
            emit_below = later.start if later is not None else start + 1
            preceding = self.chunks[chunk.index - 1] if chunk.index > 0 else None
            edge = backward_handover_frame(chunk, preceding) if preceding else None
            plan = self._plan(chunk, needing, handover, edge_frame=chunk.end - 1, forward=False)
            handover = {}

            def shown(frame: int, needing=needing, emit_below=emit_below) -> set[int] | None:
                """The objects of this frame's id map (None: the frame is not emitted)."""
                allowed = {o for o in needing if frame < self.first[o]}
                return None if frame >= emit_below or not allowed else allowed

            def keep(frame: int, logits) -> np.ndarray | None:
                if frame == edge:
                    for o in needing:
                        if o in logits.obj_ids:
                            handover[o] = logits.mask(o)
                allowed = shown(frame)
                if allowed is None:
                    return None
                id_map = logits.id_map(allowed)
                if frame >= min_f:  # forward sweep adds the objects it owns here
                    self._save_backward(frame, id_map)
                    return None
                return id_map

            yield from self._run_chunk(plan, start, chunk.start, reverse=True, keep=keep, sweep="backward",
                                       handover_out=handover, shown=shown)
            later = chunk

    # ------------------------------------------------------------------ one chunk

    def _plan(self, chunk: Chunk, objects: list[int], handover: dict[int, np.ndarray], *, edge_frame: int,
              forward: bool) -> _Plan:
        user, anchors, given = [], [], {}
        for o in objects:
            mine = self.prompts.for_object(o)
            inside = [p for p in mine if p.frame in chunk]
            user += inside
            mask = handover.get(o)
            has_edge_prompt = any(p.frame == edge_frame for p in inside)
            if mask is not None and mask.any() and not has_edge_prompt:
                given[o] = mask
            if inside and o not in given:
                continue
            # the object's latest prompt on the side the sweep comes from
            outside = [p for p in mine if (p.frame < chunk.start if forward else p.frame >= chunk.end)]
            if not outside:
                continue
            if (o not in given and not inside) or self.anchor_prompts:
                anchors.append(max(outside, key=lambda p: p.frame) if forward else min(outside, key=lambda p: p.frame))
        anchor_frames = sorted({p.frame for p in anchors})
        body = list(range(chunk.start, chunk.end))
        frames = anchor_frames + body if forward else body + anchor_frames
        return _Plan(chunk, frames, user, anchors, given)

    def _run_chunk(self, plan: _Plan, start: int, stop: int, *, reverse: bool,
                   keep: Callable[[int, object], np.ndarray | None], sweep: str,
                   handover_out: dict[int, np.ndarray],
                   shown: Callable[[int], set[int] | None] | None = None) -> Iterator[object]:
        chunk = plan.chunk
        began = time.perf_counter()
        yield ChunkStarted(chunk.index, chunk.start, chunk.end, sweep)
        window = FrameWindow(self.reader, plan.frames, chunk.start, chunk.end)
        state = self.tracker.new_state(window, self.folder.height, self.folder.width)
        for p in plan.anchors + plan.user:
            yield self._give(state, plan, p, chunk.index)
        for o, mask in plan.handover.items():
            self.tracker.add_mask(state, plan.local(chunk.end - 1 if reverse else chunk.start), o, mask)
            yield PromptUsed(chunk.end - 1 if reverse else chunk.start, o, "handover", chunk.index, box=mask_box(mask))
        if not state["obj_ids"]:
            yield EngineWarning(f"chunk {chunk.index} (frames {chunk.start}-{chunk.end - 1}) has no object to track")
            yield ChunkFinished(chunk.index, chunk.start, chunk.end, sweep, time.perf_counter() - began, 0)
            return
        emitted = 0
        first, last = plan.local(start), plan.local(stop)
        allowed_for = None if shown is None else (lambda local: shown(plan.frames[local]))
        for local, _ids, logits in self.tracker.propagate(state, first, abs(last - first), reverse, allowed_for):
            if self.should_stop():
                raise Cancelled("cancelled")
            frame = plan.frames[local]
            id_map = keep(frame, logits)
            if id_map is not None:
                emitted += 1
                yield FrameResult(frame, id_map, chunk.index)
        # the state is still held when the chunk's end is reported: the memory read there (at its
        # fullest) is the chunk's peak; it goes when the next chunk is asked for
        yield ChunkFinished(chunk.index, chunk.start, chunk.end, sweep, time.perf_counter() - began, emitted,
                            dict(handover_out))
        del state

    def _give(self, state: dict, plan: _Plan, p: ObjectPrompt, chunk_index: int) -> PromptUsed:
        local = plan.local(p.frame)
        if p.mask_path is not None:
            mask = p.load_mask(self.folder.width, self.folder.height)
            self.tracker.add_mask(state, local, p.object_id, mask)
            return PromptUsed(p.frame, p.object_id, "mask", chunk_index, box=mask_box(mask))
        self.tracker.add_points(state, local, p.object_id, points=p.points, labels=p.labels, box=p.box)
        return PromptUsed(p.frame, p.object_id, "user", chunk_index, box=p.box, points=p.points, labels=p.labels)

    # ------------------------------------------------------------------ backward partials

    def _partial_path(self, frame: int) -> Path:
        return self.scratch / f"{frame:08d}.png"

    def _save_backward(self, frame: int, id_map: np.ndarray) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(self._partial_path(frame)), id_map)

    def _merge_backward(self, frame: int, id_map: np.ndarray) -> np.ndarray:
        path = self._partial_path(frame)
        if not path.exists():
            return id_map
        back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # kept: a resumed chunk may need it again
        return np.where(id_map > 0, id_map, back).astype(np.uint8)
