"""`detect` mode (seed 002, SAM2-LongVideo, extended): YOLO boxes prompt SAM2 chunk by chunk.

Per chunk: YOLO looks at every `stride`-th frame, then at the remaining ones, until a frame has
detections of the wanted classes above the threshold (the chunk's key frame). Every detection
on it, not only the best one, prompts SAM2 with its box. Detections are matched one-to-one to the
objects handed over from the previous chunk (mask IoU on the hand-over frame, box IoU later);
matched ones keep their id, the others become new objects. SAM2 runs backward from the prompts
to the chunk start and forward to its end. A chunk without detections continues from the
hand-over masks; one with neither is a warning and gets empty masks. Objects no detection
confirms for `detect.lost_chunks` chunks in a row end.

On the later looked-at frames of a chunk the propagation pauses: detections that overlap an object
SAM2 is tracking there correct that object with their box; the others are objects that entered
mid-chunk and are prompted from that frame on. So identities inside a chunk come from SAM2 itself,
and every detection prompts SAM2 on the frame where it was found.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from core.engine.chunks import Chunk, Resumable, forward_handover_frame
from core.engine.events import ChunkFinished, ChunkStarted, EngineWarning, FrameResult, PromptUsed, Records
from core.engine.track import mask_box
from core.errors import Cancelled
from core.frames import FrameFolder, FrameReader, FrameWindow
from core.models.yolo import Detection
from core.prompts import MAX_OBJECT_ID


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_box_iou(mask: np.ndarray, box) -> float:
    """IoU between a mask and a box drawn as a filled rectangle."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    rect = np.zeros(mask.shape, bool)
    rect[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = True
    inter = np.count_nonzero(mask & rect)
    union = np.count_nonzero(mask | rect)
    return inter / union if union else 0.0


def match_tracks(tracks: list[list[Detection]], handover: dict[int, np.ndarray], start: int,
                 min_iou: float) -> dict[int, int]:
    """One-to-one: track index -> object id, greedy by overlap with the handed-over masks.

    A track found on the hand-over frame compares its box with the mask itself; one found later
    compares with the mask's box (the object may have moved a little since)."""
    scores = []
    for ti, track in enumerate(tracks):
        first = track[0]
        for obj, mask in handover.items():
            if first.frame == start:
                iou = mask_box_iou(mask, first.box)
            else:
                mb = mask_box(mask)
                iou = box_iou(mb, first.box) if mb else 0.0
            scores.append((iou, ti, obj))
    out: dict[int, int] = {}
    taken: set[int] = set()
    for iou, ti, obj in sorted(scores, reverse=True):
        if iou >= min_iou and ti not in out and obj not in taken:
            out[ti] = obj
            taken.add(obj)
    return out


def detector_records(engine, cache: Path, shown_path: Path | None = None) -> Records:
    """The manifest's "yolo" entries of a detect engine: the detector (at `shown_path` when it is not
    where it was loaded from), its classes and thresholds, and its checksum."""
    from core.models.weights import sha256_file

    detector = engine.detector
    if detector is None or getattr(detector, "path", None) is None:
        return Records()
    info = {"path": str(shown_path or detector.path), "imgsz": detector.imgsz,
            "classes": [detector.names[c] for c in engine.classes or []] or "all",
            "min_confidence": engine.min_confidence, "stride": engine.stride}
    return Records(models={"yolo": info}, weights={"yolo": sha256_file(detector.path, cache)})


@dataclass
class _ChunkPlan:
    boxes: dict[int, list[Detection]] = field(default_factory=dict)  # object -> its detections (box prompts)
    masks: dict[int, np.ndarray] = field(default_factory=dict)    # object -> hand-over mask on chunk start
    first: dict[int, int] = field(default_factory=dict)           # object -> its first conditioned frame


class DetectEngine(Resumable):
    def __init__(self, tracker, detector, folder: FrameFolder, reader: FrameReader, chunks: list[Chunk],
                 scratch: Path, *, classes: list[int] | None, min_confidence: float, stride: int,
                 match_iou: float, lost_chunks: int, max_objects: int = 20,
                 should_stop: Callable[[], bool] = lambda: False,
                 handover: dict[int, np.ndarray] | None = None, next_id: int = 1, first_emit: int | None = None):
        self.tracker, self.detector, self.folder, self.reader = tracker, detector, folder, reader
        self.chunks, self.scratch = chunks, scratch
        self.classes, self.min_confidence, self.stride = classes, min_confidence, stride
        self.match_iou, self.lost_chunks, self.should_stop = match_iou, lost_chunks, should_stop
        self.max_objects = min(max_objects, MAX_OBJECT_ID)
        self.next_id = next_id
        self.unseen: dict[int, int] = {}  # object -> chunks in a row without a confirming detection
        self.initial = dict(handover or {})  # masks on the first chunk's first frame (after self-training)
        self.first_emit = first_emit         # frames before it are already written

    def snapshot(self) -> dict:
        return {"next_id": self.next_id, "unseen": {str(k): v for k, v in self.unseen.items()}}

    def records(self, out: Path, cache: Path) -> Records:
        return detector_records(self, cache)

    def restore(self, state: dict) -> None:
        self.next_id = state.get("next_id", self.next_id)
        self.unseen = {int(k): v for k, v in state.get("unseen", {}).items()}

    def run(self) -> Iterator[object]:
        handover = self.initial
        for pos, chunk in enumerate(self.chunks):
            if self.finished(chunk):
                handover = self.resumed_handover
                continue
            detections, later = self._scan(chunk)
            plan, notes = self._plan(chunk, detections, handover)
            for note in notes:
                yield note
            following = self.chunks[pos + 1] if pos + 1 < len(self.chunks) else None
            edge = forward_handover_frame(chunk, following) if following else None
            if pos == 0:
                emit_from = chunk.start if self.first_emit is None else self.first_emit
            else:
                emit_from = self.chunks[pos - 1].end
            handover = {}
            yield from self._run_chunk(chunk, plan, edge, handover, emit_from, later)

    def _scan(self, chunk: Chunk) -> tuple[list[Detection], dict[int, list[Detection]]]:
        """Detections on the chunk's key frame (the first looked-at frame with any), and those on the
        later looked-at frames. Every `stride`-th frame is looked at; when none of them has a match,
        every other frame is tried until one has, so a chunk is given up on only when none has."""
        looked = list(range(chunk.start, chunk.end, self.stride))
        found = self._detect(looked)
        if not found:
            rest = [f for f in range(chunk.start, chunk.end) if f not in looked]
            for i in range(0, len(rest), 8):
                found = self._detect(rest[i:i + 8])
                if found:
                    break
        if not found:
            return [], {}
        key = min(d.frame for d in found)
        later: dict[int, list[Detection]] = {}
        for d in found:
            if d.frame != key:
                later.setdefault(d.frame, []).append(d)
        return [d for d in found if d.frame == key], later

    def _key_frame_detections(self, chunk: Chunk) -> list[Detection]:
        return self._scan(chunk)[0]

    def _detect(self, frames: list[int]) -> list[Detection]:
        return self.detector.detect([(f, self.folder.read_rgb(f)) for f in frames],
                                    self.classes, self.min_confidence)

    # ------------------------------------------------------------------ prompts for one chunk

    def _plan(self, chunk: Chunk, detections: list[Detection], handover: dict[int, np.ndarray]):
        notes: list[object] = []
        tracks = [[d] for d in sorted(detections, key=lambda d: -d.confidence)]
        matched = match_tracks(tracks, handover, chunk.start, self.match_iou)
        plan = _ChunkPlan()
        for obj, mask in handover.items():
            confirmed = obj in matched.values()
            self.unseen[obj] = 0 if confirmed else self.unseen.get(obj, 0) + 1
            if self.unseen[obj] > self.lost_chunks:
                notes.append(EngineWarning(f"object {obj} ended at frame {chunk.start}: no detection for "
                                           f"{self.lost_chunks} chunk(s)", frame=chunk.start, object_id=obj))
                continue
            if not mask.any() and not confirmed:
                continue  # out of sight at the hand-over frame: only a new detection brings it back
            plan.masks[obj] = mask
            plan.first[obj] = chunk.start
        for ti, track in enumerate(tracks):
            det = track[0]
            obj = matched.get(ti)
            if obj is None:
                if len(plan.first) >= self.max_objects or self.next_id > MAX_OBJECT_ID:
                    notes.append(EngineWarning(f"object limit (detect.max_objects = {self.max_objects}) reached: "
                                               f"a {det.class_name} ({det.confidence:.2f}) on frame {det.frame} "
                                               "is not tracked", frame=det.frame))
                    continue
                obj, self.next_id = self.next_id, self.next_id + 1
                self.unseen[obj] = 0
            if det.frame == chunk.start:
                plan.masks.pop(obj, None)  # a fresh box on the hand-over frame replaces the mask there
            plan.boxes[obj] = track
            plan.first[obj] = min(plan.first.get(obj, det.frame), det.frame)
        if not plan.first:
            notes.append(EngineWarning(f"chunk {chunk.index} (frames {chunk.start}-{chunk.end - 1}): no detection "
                                       "and nothing handed over; its masks are empty", frame=chunk.start))
        return plan, notes

    # ------------------------------------------------------------------ SAM2 on one chunk

    def _run_chunk(self, chunk: Chunk, plan: _ChunkPlan, edge: int | None, handover_out: dict[int, np.ndarray],
                   emit_from: int, later: dict[int, list[Detection]]) -> Iterator[object]:
        began = time.perf_counter()
        yield ChunkStarted(chunk.index, chunk.start, chunk.end, "forward")
        emitted = 0
        if not plan.first:
            empty = np.zeros((self.folder.height, self.folder.width), np.uint8)
            for f in range(emit_from, chunk.end):
                emitted += 1
                yield FrameResult(f, empty, chunk.index)
            yield ChunkFinished(chunk.index, chunk.start, chunk.end, "forward", time.perf_counter() - began, emitted,
                                {}, self.snapshot())
            return
        window = FrameWindow(self.reader, list(range(chunk.start, chunk.end)), chunk.start, chunk.end)
        state = self.tracker.new_state(window, self.folder.height, self.folder.width)
        for obj, mask in plan.masks.items():
            self.tracker.add_mask(state, 0, obj, mask)
            yield PromptUsed(chunk.start, obj, "handover", chunk.index, box=mask_box(mask))
        for obj, track in plan.boxes.items():
            for det in track:  # every detection prompts SAM2 on the frame where it was found
                self.tracker.add_points(state, det.frame - chunk.start, obj, box=det.box)
                yield PromptUsed(det.frame, obj, "detector", chunk.index, box=det.box, confidence=det.confidence,
                                 class_name=det.class_name)
        lo, hi = min(plan.first.values()), max(plan.first.values())
        partial: dict[int, Path] = {}
        self.scratch.mkdir(parents=True, exist_ok=True)
        if hi > chunk.start:  # backward from the latest prompt to the chunk start
            for local, _ids, logits in self.tracker.propagate(state, hi - chunk.start, hi - chunk.start, True):
                self._check_stop()
                f = chunk.start + local
                allowed = {o for o, first in plan.first.items() if f < first}
                if f < emit_from or not allowed:
                    continue
                ids = logits.id_map(allowed)
                if f < lo:
                    emitted += 1
                    yield FrameResult(f, ids, chunk.index)
                else:
                    partial[f] = self.scratch / f"{f:08d}.png"
                    cv2.imwrite(str(partial[f]), ids)
        # forward to the chunk end, pausing on each later looked-at frame with detections: SAM2's own
        # masks there tell which detections are tracked objects (their box corrects them) and which
        # are new objects (prompted from that frame on)
        pauses = sorted(f for f in later if lo < f < chunk.end)
        pos = lo
        while True:
            stop = pauses[0] if pauses else chunk.end - 1
            paused = None
            for local, _ids, logits in self.tracker.propagate(state, pos - chunk.start, stop - pos, False):
                self._check_stop()
                f = chunk.start + local
                if f == edge:
                    for o in logits.obj_ids:
                        handover_out[o] = logits.mask(o)
                if pauses and f == stop:
                    paused = logits
                    break
                if f < emit_from:
                    continue
                ids = logits.id_map({o for o, first in plan.first.items() if first <= f})
                if f in partial:
                    back = cv2.imread(str(partial.pop(f)), cv2.IMREAD_UNCHANGED)
                    ids = np.where(ids > 0, ids, back).astype(np.uint8)
                emitted += 1
                yield FrameResult(f, ids, chunk.index)
            if not pauses:
                break
            pauses.pop(0)
            yield from self._detections_on_tracked_frame(state, chunk, stop, later[stop], paused, plan)
            pos = stop
        yield ChunkFinished(chunk.index, chunk.start, chunk.end, "forward", time.perf_counter() - began, emitted,
                            dict(handover_out), self.snapshot())

    def _detections_on_tracked_frame(self, state: dict, chunk: Chunk, frame: int, dets: list[Detection],
                                     logits, plan: _ChunkPlan) -> Iterator[object]:
        tracked = {o: logits.mask(o) for o in logits.obj_ids if o in plan.first}
        scores = sorted(((mask_box_iou(m, d.box), di, o) for di, d in enumerate(dets) for o, m in tracked.items()),
                        reverse=True)
        owner: dict[int, int] = {}
        for iou, di, o in scores:
            if iou >= self.match_iou and di not in owner and o not in owner.values():
                owner[di] = o
        for di, det in sorted(enumerate(dets), key=lambda x: -x[1].confidence):
            obj = owner.get(di)
            if obj is None:
                if len(plan.first) >= self.max_objects or self.next_id > MAX_OBJECT_ID:
                    yield EngineWarning(f"object limit (detect.max_objects = {self.max_objects}) reached: a "
                                        f"{det.class_name} on frame {frame} is not tracked", frame=frame)
                    continue
                obj, self.next_id = self.next_id, self.next_id + 1
                self.unseen[obj] = 0
                plan.first[obj] = frame
            else:
                self.unseen[obj] = 0  # confirmed by a later detection of this chunk
            self.tracker.add_points(state, frame - chunk.start, obj, box=det.box)
            yield PromptUsed(frame, obj, "detector", chunk.index, box=det.box, confidence=det.confidence,
                             class_name=det.class_name)

    def _check_stop(self) -> None:
        if self.should_stop():
            raise Cancelled("cancelled")
