"""promptless and refine: keyframe bookkeeping with a fake SAM2, mask regions, and both modes end to
end with the real sam2 (random weights, 256 px; its automatic masks are then meaningless)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.config import load_config
from core.engine.chunks import plan_chunks
from core.engine.events import EngineWarning, FrameResult, PromptUsed
from core.engine.keyframes import KeyframeEngine, Region, merge_duplicates
from core.engine.regions import MaskRegions
from core.errors import FrameFolderError
from core.frames import FrameFolder, FrameReader
from core.pipeline import prepare_job, run_job
from tests.conftest import FAST, make_clip

SHAPE = (40, 60)


def _box_mask(x0, y0, x1, y1):
    m = np.zeros(SHAPE, bool)
    m[y0:y1, x0:x1] = True
    return m


class StaticLogits:
    def __init__(self, masks):
        self.masks = masks
        self.obj_ids = sorted(masks)

    def mask(self, obj):
        return self.masks[obj]

    def id_map(self, allowed=None):
        out = np.zeros(SHAPE, np.uint8)
        for o in self.obj_ids:
            out[self.masks[o] & (out == 0)] = o
        return out


class StillTracker:
    """Objects stay where they were prompted (enough to check the keyframe bookkeeping)."""

    def __init__(self):
        self.calls = []

    def new_state(self, frames, h, w):
        return {"obj_ids": [], "masks": {}, "frames": frames}

    def add_mask(self, state, frame, obj_id, mask):
        state["masks"][obj_id] = mask
        state["obj_ids"].append(obj_id)
        self.calls.append(("mask", state["frames"]._frames[frame], obj_id))

    def add_points(self, state, frame, obj_id, points=None, labels=None, box=None):
        xs, ys = zip(*points)
        state["masks"][obj_id] = _box_mask(int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1)
        state["obj_ids"].append(obj_id)
        self.calls.append(("points", state["frames"]._frames[frame], obj_id))

    def propagate(self, state, start, count, reverse):
        for local in range(start, start + count + 1):
            yield local, list(state["obj_ids"]), StaticLogits(dict(state["masks"]))


class ListedRegions:
    source = "auto"

    def __init__(self, by_frame, every):
        self.by_frame, self.every = by_frame, every

    def keyframes(self, chunk):
        return [f for f in range(chunk.start, chunk.end) if f % self.every == 0]

    def regions(self, frame):
        return [Region(frame, m, s) for m, s in self.by_frame.get(frame, [])]


def _engine(tmp_path, n, regions, max_objects=10):
    folder = FrameFolder.scan(make_clip(tmp_path / "c", n=n, size=(SHAPE[1], SHAPE[0])))
    reader = FrameReader(folder, lambda rgb: rgb, prefetch=0)
    tracker = StillTracker()
    engine = KeyframeEngine(tracker, folder, reader, plan_chunks(n, 6, 1), regions, merge_iou=0.9, covered=0.5,
                            max_objects=max_objects)
    return tracker, list(engine.run())


def test_new_regions_become_objects_covered_and_duplicates_do_not(tmp_path: Path):
    a, b = _box_mask(0, 0, 10, 10), _box_mask(30, 20, 45, 35)
    a_again = _box_mask(1, 0, 10, 10)            # IoU 0.9 with a: a duplicate at frame 0
    regions = ListedRegions({0: [(a, 0.9), (a_again, 0.8)], 4: [(_box_mask(2, 2, 9, 9), 0.9)],  # inside a
                             8: [(b, 0.95)], 12: [(b, 0.9), (_box_mask(50, 0, 60, 10), 0.7)]}, every=4)
    tracker, events = _engine(tmp_path, 15, regions)
    frames = [e for e in events if isinstance(e, FrameResult)]
    assert sorted(e.frame for e in frames) == list(range(15))            # every frame once
    new = [(e.frame, e.object_id) for e in events if isinstance(e, PromptUsed) and e.source == "auto"]
    assert new == [(0, 1), (8, 2), (12, 3)]                              # duplicates merged, covered skipped
    by_frame = {e.frame: set(np.unique(e.id_map)) - {0} for e in frames}
    assert by_frame[3] == {1} and by_frame[8] == {1, 2} and by_frame[14] == {1, 2, 3}
    handed = {(e.frame, e.object_id) for e in events if isinstance(e, PromptUsed) and e.source == "handover"}
    assert (5, 1) in handed and (10, 2) in handed                        # chunks [0,6) [5,11) [10,15)


def test_object_limit_and_empty_chunks_are_reported(tmp_path: Path):
    regions = ListedRegions({6: [(_box_mask(i * 12, 0, i * 12 + 10, 10), 0.9) for i in range(4)]}, every=6)
    tracker, events = _engine(tmp_path, 10, regions, max_objects=2)
    frames = [e for e in events if isinstance(e, FrameResult)]
    assert sorted(e.frame for e in frames) == list(range(10))
    assert not any(e.id_map.any() for e in frames if e.frame < 6)           # nothing before the first region
    warnings = [e.message for e in events if isinstance(e, EngineWarning)]
    assert any("object limit (2)" in w for w in warnings) and any("no object found" in w for w in warnings)


def test_merge_duplicates_keeps_the_best_scored():
    a, b = _box_mask(0, 0, 10, 10), _box_mask(0, 0, 10, 11)
    kept = merge_duplicates([Region(0, a, 0.5), Region(0, b, 0.8)], 0.9)
    assert len(kept) == 1 and kept[0].score == 0.8


def _refine_clip(root: Path, n=8, diffs=True) -> Path:
    clip = make_clip(root, n=n, size=(96, 64), objects=2)
    (clip / "masks").mkdir()
    if diffs:
        (clip / "diffs").mkdir()
    for i in range(n):
        img = cv2.imread(str(clip / f"{i:05d}.jpg"))
        m = ((img[..., 0] > 200) & (img[..., 2] < 100)).astype(np.uint8) * 255
        m[50:60, 2:12] = 255                      # a static blob: no difference, dropped by the filter
        cv2.imwrite(str(clip / "masks" / f"{i:05d}.png"), m)
        if diffs:
            d = np.zeros_like(m)
            d[m > 0] = 180
            d[m > 0][::2] = 40
            d[50:60, 2:12] = 3
            cv2.imwrite(str(clip / "diffs" / f"{i:05d}.png"), d)
    return clip


def test_mask_regions_points_and_difference_filter(tmp_path: Path):
    clip = _refine_clip(tmp_path / "c")
    folder = FrameFolder.scan(clip)
    regions = MaskRegions(folder, every=1, min_area=10, filter_threshold=0.08, max_points=64, prompt="points", seed=0)
    found = regions.regions(0)
    assert len(found) == 2 and regions.dropped == 1
    for r in found:
        area = int(r.mask.sum())
        assert len(r.points) == min(max(10, area // 100), 64)
        assert all(r.mask[int(y), int(x)] for x, y in r.points)           # every point inside its component
        assert r.score > 0.08


def test_points_lean_toward_high_difference(tmp_path: Path):
    clip = _refine_clip(tmp_path / "c", n=1)
    m = np.zeros((64, 96), np.uint8)
    m[10:50, 10:90] = 255
    d = np.zeros_like(m)
    d[10:50, 10:50] = 10
    d[10:50, 50:90] = 250
    cv2.imwrite(str(clip / "masks" / "00000.png"), m)
    cv2.imwrite(str(clip / "diffs" / "00000.png"), d)
    r = MaskRegions(FrameFolder.scan(clip), every=1, min_area=10, filter_threshold=0.0, max_points=64,
                    prompt="points", seed=1).regions(0)[0]
    right = sum(1 for x, _ in r.points if x >= 50)
    assert right >= 0.8 * len(r.points)


def test_masks_not_named_after_frames_fail_early(tmp_path: Path):
    clip = make_clip(tmp_path / "c", n=3)
    (clip / "masks").mkdir()
    cv2.imwrite(str(clip / "masks" / "mask_a.png"), np.zeros((120, 160), np.uint8))
    with pytest.raises(FrameFolderError, match="no mask named after a frame"):
        prepare_job(clip, load_config(None, list(FAST), use_default_path=False))


@pytest.mark.parametrize("kind", ["promptless", "refine"])
def test_keyframe_modes_end_to_end(tmp_path: Path, model_pool, kind):
    clip = _refine_clip(tmp_path / "clip") if kind == "refine" else make_clip(tmp_path / "clip", n=8, size=(96, 64))
    cfg = load_config(None, [*FAST, "chunking.chunk_size=5", "promptless.keyframe_every=4",
                             "promptless.points_per_side=8", "refine.keyframe_every=2"], use_default_path=False)
    job = prepare_job(clip, cfg)
    assert job.choice.mode.value == kind                                  # chosen from the folder
    out = tmp_path / "out"
    manifest = list(run_job(job, out, models=model_pool))[-1].manifest
    assert manifest["frames"] == 8 and manifest["mode"] == kind
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:05d}.png" for i in range(8)]
    used = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
    if kind == "refine":
        given = [u for u in used if u["source"] == "mask"]
        assert {u["frame"] for u in given} >= {0} and all(u["points"] for u in given)
        assert any("dropped" in w for w in manifest["warnings"])


@pytest.mark.slow
def test_refine_resumes_to_the_same_masks(tmp_path: Path, model_pool):
    from core.errors import Cancelled

    clip = _refine_clip(tmp_path / "clip", n=12)
    cfg = load_config(None, [*FAST, "chunking.chunk_size=4", "refine.keyframe_every=2"], use_default_path=False)
    whole = tmp_path / "whole"
    list(run_job(prepare_job(clip, cfg), whole, models=model_pool))
    job = prepare_job(clip, cfg, job_id="r1")
    out, seen = tmp_path / "resumed", []
    with pytest.raises(Cancelled):
        for event in run_job(job, out, models=model_pool, keep_partial=True, should_stop=lambda: len(seen) >= 7):
            if isinstance(event, FrameResult):
                seen.append(event.frame)
    manifest = list(run_job(job, out, models=model_pool, resume=True))[-1].manifest
    assert manifest["resumed_from_frame"] in (3, 6)
    for mask in sorted((whole / "masks").iterdir()):
        a, b = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED), cv2.imread(str(out / "masks" / mask.name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, b), mask.name
    assert (whole / "prompts_used.jsonl").read_text() == (out / "prompts_used.jsonl").read_text()
    assert json.loads((whole / "manifest.json").read_text())["warnings"] == manifest["warnings"]
