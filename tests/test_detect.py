"""detect mode: real YOLO boxes against DAVIS ground truth, ID bookkeeping across chunks, end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.config import load_config
from core.engine.chunks import plan_chunks
from core.engine.detect import DetectEngine, box_iou, mask_box_iou, match_tracks
from core.engine.detect_parallel import ParallelDetectEngine, make_detect_engine
from core.engine.events import EngineWarning, FrameResult, PromptUsed
from core.frames import FrameFolder, FrameReader
from core.models.yolo import Detection
from core.pipeline import prepare_job, run_job
from tests.conftest import FAST, data_path, make_clip

YOLO_FILE = ("models", "yolo11n-coco-dequant.pt")


def gt_box(mask_path: Path):
    m = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0
    ys, xs = np.nonzero(m)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if xs.size else None


def test_box_and_mask_overlap():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    mask = np.zeros((20, 20), bool)
    mask[0:10, 0:10] = True
    assert mask_box_iou(mask, (0, 0, 10, 10)) == 1.0
    assert mask_box_iou(mask, (10, 10, 20, 20)) == 0.0


def _det(frame, box, conf=0.9, cls=16):
    return Detection(frame, box, conf, cls, "dog")


def test_match_one_to_one():
    tracks = [[_det(0, (0, 0, 10, 10))], [_det(0, (50, 50, 60, 60))], [_det(0, (100, 0, 110, 10))]]
    a = np.zeros((120, 120), bool)
    a[0:10, 0:10] = True
    b = np.zeros((120, 120), bool)
    b[48:60, 50:60] = True
    c = b.copy()  # a second object in almost the same place: only one of them gets the box
    matched = match_tracks(tracks, {7: a, 9: b, 11: c}, start=0, min_iou=0.3)
    assert matched[0] == 7 and matched[1] in (9, 11) and 2 not in matched


# ---------------------------------------------------------------- fakes that follow drawn discs

def _disc_centres(frame: int, n: int):
    t = frame / (n - 1)
    return {"A": (20 + 120 * t, 30 + 60 * t), "B": (140 - 120 * t, 30 + 60 * t + 8)}


class DiscDetector:
    names = {0: "disc"}

    def __init__(self, n):
        self.n = n

    def detect(self, frames, classes, min_confidence):
        out = []
        for f, _ in frames:
            for cx, cy in _disc_centres(f, self.n).values():
                out.append(Detection(f, (cx - 12, cy - 12, cx + 12, cy + 12), 0.9, 0, "disc"))
        return out


class DiscLogits:
    def __init__(self, frame, owners, n, shape):
        self.obj_ids = sorted(owners)
        self.frame, self.owners, self.n, self.shape = frame, owners, n, shape

    def mask(self, obj):
        cx, cy = _disc_centres(self.frame, self.n)[self.owners[obj]]
        m = np.zeros(self.shape, bool)
        cv2.circle(m.view(np.uint8), (int(cx), int(cy)), 12, 1, -1)
        return m

    def id_map(self, allowed=None):
        out = np.zeros(self.shape, np.uint8)
        for o in self.obj_ids:
            if allowed is None or o in allowed:
                out[self.mask(o) & (out == 0)] = o
        return out


class DiscTracker:
    """Assigns each prompted object to the disc nearest its prompt, then reports that disc."""

    def __init__(self, n, shape):
        self.n, self.shape = n, shape

    def new_state(self, frames, h, w):
        return {"owners": {}, "frames": frames}

    def _own(self, state, local, obj, cx, cy):
        frame = state["frames"]._frames[local]
        near = min(_disc_centres(frame, self.n).items(), key=lambda kv: (kv[1][0] - cx) ** 2 + (kv[1][1] - cy) ** 2)
        state["owners"].setdefault(obj, near[0])

    def add_points(self, state, frame, obj_id, points=None, labels=None, box=None):
        self._own(state, frame, obj_id, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2)

    def add_mask(self, state, frame, obj_id, mask):
        ys, xs = np.nonzero(mask)
        self._own(state, frame, obj_id, xs.mean(), ys.mean())

    def propagate(self, state, start, count, reverse):
        order = range(start, start - count - 1, -1) if reverse else range(start, start + count + 1)
        for local in order:
            frame = state["frames"]._frames[local]
            yield local, sorted(state["owners"]), DiscLogits(frame, state["owners"], self.n, self.shape)


def _disc_engine(tmp_path: Path, n: int, detector, chunk_size: int, parallel: int, lost_chunks: int = 2):
    folder = FrameFolder.scan(make_clip(tmp_path / "c", n=n, size=(160, 120)))
    reader = FrameReader(folder, lambda rgb: rgb, prefetch=0)
    engine = make_detect_engine(DiscTracker(n, (120, 160)), detector, folder, reader, plan_chunks(n, chunk_size, 1),
                                tmp_path / "scratch", classes=None, min_confidence=0.5, stride=3, match_iou=0.3,
                                lost_chunks=lost_chunks, parallel_chunks=parallel)
    assert isinstance(engine, ParallelDetectEngine) == (parallel > 1)
    return engine, reader


@pytest.mark.parametrize("parallel", [1, 3])
def test_ids_stay_with_their_objects_across_chunks_when_paths_cross(tmp_path: Path, parallel):
    """Sequential hand-over, and independent chunks linked afterwards, give the same identities."""
    n = 30
    engine, reader = _disc_engine(tmp_path, n, DiscDetector(n), 7, parallel)
    events = list(engine.run())
    reader.close()
    frames = [e for e in events if isinstance(e, FrameResult)]
    assert sorted(e.frame for e in frames) == list(range(n))
    ids = set()
    for e in frames:
        ids |= set(np.unique(e.id_map)) - {0}
    assert ids == {1, 2}                                   # two objects, never a third id
    owners = {}
    for p in (e for e in events if isinstance(e, PromptUsed) and e.source == "detector"):
        centres = _disc_centres(p.frame, n)
        cx, cy = (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2
        disc = min(centres, key=lambda k: (centres[k][0] - cx) ** 2 + (centres[k][1] - cy) ** 2)
        owners.setdefault(p.object_id, set()).add(disc)
    assert owners == {1: {"A"}, 2: {"B"}}                 # each id keeps its disc through the crossing
    chunks_with_boxes = {p.chunk for p in events if isinstance(p, PromptUsed) and p.source == "detector"}
    assert chunks_with_boxes == set(range(len(plan_chunks(n, 7, 1))))  # the detector prompts every chunk


# ---------------------------------------------------------------- real YOLO on real clips

@pytest.mark.parametrize("clip, cls", [("dog", "dog"), ("car-shadow", "car"), ("blackswan", "bird")])
def test_detector_boxes_per_chunk_match_ground_truth(clip, cls, tmp_path: Path):
    """The boxes detect mode prompts each chunk with (key-frame detections at chunk_size 10, stride
    5): the one on the annotated object overlaps its ground-truth box (other cars may be found too)."""
    from core.models.yolo import Detector

    images, masks = data_path("vos", clip, "images"), data_path("vos", clip, "masks")
    folder = FrameFolder.scan(images)
    detector = Detector(data_path(*YOLO_FILE))
    chunks = plan_chunks(len(folder), 10, 1)
    engine = DetectEngine(None, detector, folder, None, chunks, tmp_path, classes=detector.class_ids([cls]),
                          min_confidence=0.5, stride=5, match_iou=0.3, lost_chunks=2)
    best = []
    for chunk in chunks:
        dets = engine._key_frame_detections(chunk)
        if dets:
            gt = gt_box(masks / f"{folder.stem(dets[0].frame)}.png")
            best.append(max(box_iou(d.box, gt) for d in dets) if gt is not None else 0.0)
    assert len(best) >= len(chunks) - 2, f"{len(best)} of {len(chunks)} chunks had a detection"
    assert float(np.median(best)) >= 0.6, best


@pytest.mark.slow
def test_detect_mode_end_to_end_on_the_dog_clip(tmp_path: Path, model_pool):
    images, masks = data_path("vos", "dog", "images"), data_path("vos", "dog", "masks")
    clip = tmp_path / "dog"
    clip.mkdir()
    for f in sorted(images.iterdir()):
        os.symlink(f, clip / f.name)
    (clip / "prompts.json").write_text(json.dumps({"detect": {"classes": ["dog"], "min_confidence": 0.5}}))
    cfg = load_config(None, [*FAST, "chunking.chunk_size=10", f"models.yolo={data_path(*YOLO_FILE)}"],
                      use_default_path=False)
    job = prepare_job(clip, cfg)
    assert job.choice.mode.value == "detect"
    out = tmp_path / "out"
    manifest = list(run_job(job, out, models=model_pool))[-1].manifest
    assert manifest["frames"] == 60 and len(list((out / "masks").glob("*.png"))) == 60
    assert manifest["models"]["yolo"]["classes"] == ["dog"] and len(manifest["weights"]["yolo"]) == 64
    used = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
    boxes = [u for u in used if u["source"] == "detector"]
    assert boxes and all(u["confidence"] >= 0.5 for u in boxes)
    ious = [box_iou(u["box"], gt_box(masks / f"{Path(u['frame_name']).stem}.png")) for u in boxes]
    assert float(np.median(ious)) >= 0.6, ious
    assert len({u["chunk"] for u in boxes}) >= 4


def test_yolo_dataset_from_masks(tmp_path: Path):
    from core.models.yolo_train import YoloDataset, mask_boxes

    ids = np.zeros((40, 80), np.uint8)
    ids[10:30, 20:60] = 3
    ids[0:2, 0:2] = 4                                  # too small to be a training box
    assert mask_boxes(ids) == [(3, 0.5, 0.5, 0.5, 0.5)]
    frame = tmp_path / "0.jpg"
    cv2.imwrite(str(frame), np.zeros((40, 80, 3), np.uint8))
    ds = YoloDataset(tmp_path / "ds", "dog", val_every=2)
    ds.add(0, frame, ids)
    ds.add(1, frame, np.zeros_like(ids))
    assert (tmp_path / "ds" / "labels" / "train" / "000000.txt").read_text() == "0 0.500000 0.500000 0.500000 0.500000\n"
    assert (tmp_path / "ds" / "labels" / "val" / "000001.txt").read_text() == ""
    assert (tmp_path / "ds" / "images" / "train" / "000000.jpg").resolve() == frame.resolve()
    assert "0: dog" in ds.write_yaml().read_text()
    picture = np.zeros((40, 80, 3), np.uint8)  # a video's frame is no file: it is written as a PNG
    picture[:, :, 0] = 200
    ds.add(2, picture, ids)
    written = cv2.imread(str(tmp_path / "ds" / "images" / "train" / "000002.png"))
    assert not (tmp_path / "ds" / "images" / "train" / "000002.png").is_symlink()
    assert np.array_equal(cv2.cvtColor(written, cv2.COLOR_BGR2RGB), picture)


@pytest.mark.slow
def test_self_training_then_detecting(tmp_path: Path, model_pool):
    """Track the pointed-at object through the first frames, train YOLO on those masks (1 epoch,
    64 px), then detect the rest with it. Random SAM2 weights make the labels meaningless; the path
    (dataset outside the input, training, hand-over to detect mode, outputs) is what is checked."""
    clip = make_clip(tmp_path / "clip", n=14, size=(96, 64), prompts={
        "objects": [{"id": 3, "frame": 0, "points": [[14, 22]], "labels": [1]}],
        "detect": {"self_train": True}, "mode": "detect"})
    before = sorted(p.name for p in clip.rglob("*"))
    cfg = load_config(None, [*FAST, "chunking.chunk_size=5", f"models.yolo={data_path(*YOLO_FILE)}",
                             "detect.train_frames=6", "detect.train_epochs=1", "detect.train_imgsz=64",
                             "detect.train_batch=2", "detect.min_confidence=0.3"], use_default_path=False)
    out = tmp_path / "out"
    events = list(run_job(prepare_job(clip, cfg), out, models=model_pool))
    manifest = events[-1].manifest
    assert sorted(p.name for p in clip.rglob("*")) == before          # nothing written into the input
    assert len(list((out / "masks").glob("*.png"))) == 14
    assert (out / "detector.pt").is_file() and manifest["models"]["yolo_self_trained"]["train_frames"] == 6
    from ultralytics import YOLO
    assert YOLO(str(out / "detector.pt")).names == {0: "object"}
    phases = [e.name for e in events if type(e).__name__ == "Phase"]
    assert phases and phases[0].startswith("training the detector")
    used = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
    assert used[0]["source"] == "user" and used[0]["object_id"] == 3
    assert {u["source"] for u in used if u["chunk"] >= 2} <= {"handover", "detector"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_self_training_needs_objects(tmp_path: Path):
    clip = make_clip(tmp_path / "c", n=3, prompts={"detect": {"classes": ["dog"], "self_train": True}})
    with pytest.raises(Exception, match="self-training needs the object"):
        prepare_job(clip, load_config(None, list(FAST), use_default_path=False))


class EnteringDetector(DiscDetector):
    """Disc A all along; disc B only from frame 9 on (it enters mid-chunk)."""

    def detect(self, frames, classes, min_confidence):
        out = []
        for f, _ in frames:
            for name, (cx, cy) in _disc_centres(f, self.n).items():
                if name == "A" or f >= 9:
                    out.append(Detection(f, (cx - 12, cy - 12, cx + 12, cy + 12), 0.9, 0, "disc"))
        return out


@pytest.mark.parametrize("parallel", [1, 2])
def test_an_object_entering_mid_chunk_is_prompted_where_it_is_found(tmp_path: Path, parallel):
    n = 20
    engine, reader = _disc_engine(tmp_path, n, EnteringDetector(n), 8, parallel)
    events = list(engine.run())
    reader.close()
    prompts = [(e.frame, e.object_id) for e in events if isinstance(e, PromptUsed) and e.source == "detector"]
    assert (10, 2) in prompts            # first looked-at frame (stride 3 from 7) after it enters, in chunk [7, 15)
    frames = {e.frame: set(np.unique(e.id_map)) - {0} for e in events if isinstance(e, FrameResult)}
    assert sorted(frames) == list(range(n))
    assert all(frames[f] == {1} for f in range(10)) and all(frames[f] == {1, 2} for f in range(10, n))
    assert {o for _, o in prompts} == {1, 2}               # the later detections correct, never duplicate


class MissingDetector(DiscDetector):
    """Both discs, except that disc B is not found on frames in `blind` (a detector miss)."""

    def __init__(self, n, blind):
        super().__init__(n)
        self.blind = blind

    def detect(self, frames, classes, min_confidence):
        out = []
        for f, _ in frames:
            for name, (cx, cy) in _disc_centres(f, self.n).items():
                if name == "A" or f not in self.blind:
                    out.append(Detection(f, (cx - 12, cy - 12, cx + 12, cy + 12), 0.9, 0, "disc"))
        return out


@pytest.mark.parametrize("parallel", [1, 2])
def test_an_object_the_detector_misses_carries_on_then_ends(tmp_path: Path, parallel):
    """Chunks [0,6) [5,11) [10,16) [15,21) [20,30): B is missed in the second chunk only, so it is
    carried over from the hand-over and keeps its id; missed from frame 15 on, it ends after one
    chunk (lost_chunks = 1) with a warning."""
    n = 30
    short = _disc_engine(tmp_path / "a", n, MissingDetector(n, blind=set(range(5, 11))), 6, parallel)
    events = list(short[0].run())
    short[1].close()
    frames = {e.frame: set(np.unique(e.id_map)) - {0} for e in events if isinstance(e, FrameResult)}
    assert sorted(frames) == list(range(n)) and all(ids == {1, 2} for ids in frames.values())
    handed = {(e.chunk, e.object_id) for e in events if isinstance(e, PromptUsed) and e.source == "handover"}
    assert (1, 2) in handed

    ending = _disc_engine(tmp_path / "b", n, MissingDetector(n, blind=set(range(15, n))), 6, parallel,
                          lost_chunks=1)
    events = list(ending[0].run())
    ending[1].close()
    frames = {e.frame: set(np.unique(e.id_map)) - {0} for e in events if isinstance(e, FrameResult)}
    assert sorted(frames) == list(range(n))
    assert all(frames[f] == {1, 2} for f in range(21)) and all(frames[f] == {1} for f in range(21, n))
    ended = [e for e in events if isinstance(e, EngineWarning) and "ended" in e.message]
    assert [(e.object_id, e.frame) for e in ended] == [(2, 20)]


@pytest.mark.slow
def test_independent_chunks_on_the_dog_clip_resume_to_the_same_masks(tmp_path: Path, model_pool):
    """Real YOLO and SAM2 (random weights), chunks of 10 run two at a time: chunks with detections
    run from them, the one without carries on from the hand-over, and a job stopped mid-way resumes to exactly the masks of one that never stopped."""
    from core.errors import Cancelled
    from PIL import Image

    images = data_path("vos", "dog", "images")
    clip = tmp_path / "dog"
    clip.mkdir()
    for f in sorted(images.iterdir())[:30]:
        os.symlink(f, clip / f.name)
    (clip / "prompts.json").write_text(json.dumps({"detect": {"classes": ["dog"], "min_confidence": 0.5}}))
    cfg = load_config(None, [*FAST, "chunking.chunk_size=10", "detect.parallel_chunks=2",
                             f"models.yolo={data_path(*YOLO_FILE)}"], use_default_path=False)
    whole = tmp_path / "whole"
    list(run_job(prepare_job(clip, cfg), whole, models=model_pool))
    used = [json.loads(x) for x in (whole / "prompts_used.jsonl").read_text().splitlines()]
    # YOLO finds the dog (>= 0.5) in chunks 0, 1 and 3; chunk 2 (frames 18-27) carries it on from the hand-over
    assert {u["chunk"] for u in used if u["source"] == "detector"} == {0, 1, 3}
    assert {u["chunk"] for u in used if u["source"] == "handover"} == {2}
    assert len(list((whole / "masks").glob("*.png"))) == 30

    out, seen = tmp_path / "resumed", []
    job = prepare_job(clip, cfg, job_id="j1")
    with pytest.raises(Cancelled):
        for event in run_job(job, out, models=model_pool, keep_partial=True, should_stop=lambda: len(seen) >= 15):
            if isinstance(event, FrameResult):
                seen.append(event.frame)
    manifest = list(run_job(job, out, models=model_pool, resume=True))[-1].manifest
    assert manifest["resumed_from_frame"] is not None
    for mask in sorted((whole / "masks").iterdir()):
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(out / "masks" / mask.name))), mask.name
    assert used == [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
