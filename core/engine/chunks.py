"""Splitting a video into overlapping chunks, each one SAM2 inference state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.engine.events import Records


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first frame (inclusive)
    end: int    # last frame + 1

    def __contains__(self, frame: int) -> bool:
        return self.start <= frame < self.end

    def __len__(self) -> int:
        return self.end - self.start


def plan_chunks(num_frames: int, size: int, overlap: int) -> list[Chunk]:
    """Chunks of `size` frames, neighbours sharing `overlap` frames.

    A last chunk of a single frame is folded into the one before it, so every chunk can be
    propagated in both directions.
    """
    if num_frames <= 0:
        return []
    step = size - overlap
    bounds: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + size, num_frames)
        bounds.append((start, end))
        if end == num_frames:
            break
        start += step
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return [Chunk(i, s, e) for i, (s, e) in enumerate(bounds)]


def chunk_of(chunks: list[Chunk], frame: int, last: bool = True) -> Chunk:
    """The last (or first) chunk that contains `frame`."""
    hits = [c for c in chunks if frame in c]
    return hits[-1] if last else hits[0]


def forward_handover_frame(chunk: Chunk, following: Chunk) -> int:
    """Frame of `chunk` whose masks prompt `following` (placed on following.start)."""
    return following.start if following.start < chunk.end else chunk.end - 1


def backward_handover_frame(chunk: Chunk, preceding: Chunk) -> int:
    """Frame of `chunk` whose masks prompt `preceding` (placed on preceding.end - 1)."""
    return preceding.end - 1 if preceding.end - 1 >= chunk.start else chunk.start


class Resumable:
    """For engines that walk chunks forward once: skip finished chunks, restore counters."""

    done: set[tuple[str, int]] = frozenset()
    resumed_handover: dict = {}

    def resume(self, done: set[tuple[str, int]], handovers: dict, state: dict) -> None:
        self.done = set(done)
        self.resumed_handover = dict(handovers.get("forward", {}))
        self.restore(state)

    def finished(self, chunk: Chunk) -> bool:
        return ("forward", chunk.index) in self.done

    def restore(self, state: dict) -> None:  # overridden by engines with counters
        pass

    def snapshot(self) -> dict:
        return {}

    def records(self, out: Path, cache: Path) -> Records:  # overridden by engines with more to say
        return Records()
