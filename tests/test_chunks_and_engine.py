"""Chunk planning and the track engine's sweeps, with a fake SAM2 that records what it is given.

The real SAM2 path runs in test_run.py; here the fake makes the bookkeeping checkable:
which frames each object gets, where hand-over masks come from and go to, and anchors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.engine.chunks import plan_chunks
from core.engine.events import FrameResult, PromptUsed
from core.engine.track import TrackEngine
from core.frames import FrameFolder, FrameReader
from core.prompts import ObjectPrompt, Prompts
from tests.conftest import make_clip


@pytest.mark.parametrize("n, size, overlap, expected", [
    (10, 5, 1, [(0, 5), (4, 9), (8, 10)]),
    (9, 5, 1, [(0, 5), (4, 9)]),
    (11, 5, 0, [(0, 5), (5, 11)]),          # a 1-frame tail folds into the chunk before
    (3, 100, 1, [(0, 3)]),
    (12, 6, 3, [(0, 6), (3, 9), (6, 12)]),
])
def test_plan_chunks(n, size, overlap, expected):
    assert [(c.start, c.end) for c in plan_chunks(n, size, overlap)] == expected


class FakeLogits:
    def __init__(self, ids, frame, told=None):
        self.obj_ids, self.frame = ids, frame
        self.told, self.asked = told, None   # the objects announced to propagate, those id_map was asked for

    def id_map(self, allowed=None):
        self.asked = allowed
        row = np.array([[o if (allowed is None or o in allowed) else 0 for o in range(1, 5)]], np.uint8)
        return row

    def mask(self, obj):
        return np.full((2, 2), self.frame + 1, np.int32)  # encodes the frame it came from


class FakeTracker:
    def __init__(self):
        self.calls: list[tuple] = []
        self.propagated = 0
        self.logits: list[FakeLogits] = []

    def new_state(self, frames, h, w):
        return {"frames": frames, "obj_ids": [], "inputs": {}}

    def _add(self, state, local, obj, kind, payload):
        if obj not in state["obj_ids"]:
            state["obj_ids"].append(obj)
        state["inputs"].setdefault(local, []).append(obj)
        self.calls.append((kind, state["frames"]._frames[local], obj, payload))

    def add_points(self, state, frame, obj_id, points=None, labels=None, box=None):
        self._add(state, frame, obj_id, "points", None)

    def add_mask(self, state, frame, obj_id, mask):
        self._add(state, frame, obj_id, "mask", int(mask.flat[0]) - 1)

    def propagate(self, state, start, count, reverse, allowed_for=None):
        order = range(start, start - count - 1, -1) if reverse else range(start, start + count + 1)
        for local in order:
            self.propagated += 1
            frame = state["frames"]._frames[local]
            told = allowed_for(local) if allowed_for is not None else None
            logits = FakeLogits(list(state["obj_ids"]), frame, told)
            self.logits.append(logits)
            yield local, list(state["obj_ids"]), logits


def _run(tmp_path: Path, n: int, prompts: list[ObjectPrompt], size=5, overlap=1, anchors=True):
    folder = FrameFolder.scan(make_clip(tmp_path / "c", n=n, size=(32, 24)))
    reader = FrameReader(folder, lambda rgb: rgb, prefetch=0)
    fake = FakeTracker()
    engine = TrackEngine(fake, folder, reader, Prompts(tuple(prompts)), plan_chunks(n, size, overlap),
                         tmp_path / "scratch", anchor_prompts=anchors)
    events = list(engine.run())
    reader.close()
    # the engine announces each frame's objects before it asks for that frame's id map (so a GPU can
    # start the map early), and asks for exactly those
    assert all(lg.asked == lg.told for lg in fake.logits if lg.asked is not None or lg.told is not None)
    return fake, events


def _frames(events):
    results = [e for e in events if isinstance(e, FrameResult)]
    return {r.frame: set(int(v) for v in r.id_map.ravel() if v) for r in results}, results


@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_every_frame_once_with_every_object(tmp_path: Path, overlap):
    prompts = [ObjectPrompt(1, 0, points=((1, 1),), labels=(1,)),
               ObjectPrompt(2, 7, points=((1, 1),), labels=(1,)),
               ObjectPrompt(3, 13, box=(1, 1, 5, 5))]
    fake, events = _run(tmp_path, 20, prompts, size=5, overlap=overlap)
    per_frame, results = _frames(events)
    assert len(results) == 20 and sorted(per_frame) == list(range(20))  # each frame exactly once
    assert all(objs == {1, 2, 3} for objs in per_frame.values())        # forward + backward cover all
    # frames below the last first-prompt got their backward objects through the scratch folder
    assert {int(p.stem) for p in (tmp_path / "scratch").glob("*.png")} <= set(range(13))


def test_handover_masks_come_from_the_shared_frame(tmp_path: Path):
    fake, events = _run(tmp_path, 14, [ObjectPrompt(1, 0, points=((1, 1),), labels=(1,))], size=5, overlap=1)
    handovers = [(frame, src) for kind, frame, obj, src in fake.calls if kind == "mask"]
    # chunks [0,5) [4,9) [8,13)... hand-over frames are the first frame of each next chunk
    assert handovers == [(4, 4), (8, 8), (12, 12)]
    used = [e for e in events if isinstance(e, PromptUsed) and e.source == "handover"]
    assert [u.frame for u in used] == [4, 8, 12]


def test_handover_without_overlap_uses_previous_last_frame(tmp_path: Path):
    fake, _ = _run(tmp_path, 10, [ObjectPrompt(1, 0, points=((1, 1),), labels=(1,))], size=5, overlap=0)
    assert [(f, s) for k, f, o, s in fake.calls if k == "mask"] == [(5, 4)]


def test_anchor_prompt_rides_along_in_later_chunks(tmp_path: Path):
    p = ObjectPrompt(1, 0, points=((1, 1),), labels=(1,))
    fake, events = _run(tmp_path, 14, [p], anchors=True)
    anchors = [c for c in fake.calls if c[0] == "points"]
    assert [c[1] for c in anchors] == [0, 0, 0, 0]  # its own chunk + three later chunks
    fake, _ = _run(tmp_path / "b", 14, [p], anchors=False)
    assert [c[1] for c in fake.calls if c[0] == "points"] == [0]


def test_backward_from_a_late_prompt_reaches_frame_zero(tmp_path: Path):
    fake, events = _run(tmp_path, 12, [ObjectPrompt(5 - 4, 10, box=(1, 1, 5, 5))], size=5, overlap=1)
    per_frame, _ = _frames(events)
    assert all(objs == {1} for objs in per_frame.values()) and len(per_frame) == 12
    backward_masks = [(f, s) for k, f, o, s in fake.calls if k == "mask"]
    assert (4, 4) in backward_masks  # chunk [4,9) hands its first frame back to chunk [0,5)
