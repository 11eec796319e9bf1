"""`detect` mode with chunks that run independently (`detect.parallel_chunks` > 1).

A chunk in which YOLO finds something does not need the chunk before it: its detections alone
prompt SAM2 (the "solo" pass, with chunk-local object ids), so up to `parallel_chunks` of them run at
once on worker threads, each with its own inference state and frame reader, while the main thread
scans the next chunks with YOLO. Solo results land in the job's scratch folder as id maps.

The main thread then links chunks in order, as the one-after-another engine would:

1. Solo objects seen on the chunk's first frame are matched one-to-one to the objects handed over
   from the previous chunk (mask IoU on that frame); matched ones take the global id.
2. Handed-over objects that no detection confirmed carry on (until `detect.lost_chunks`) in a
   continuation pass: SAM2 on this chunk prompted only with their hand-over masks. This is the only
   work that waits for the previous chunk, and it is skipped when every object was detected again.
3. Solo objects that entered mid-chunk and overlap a continuing object on their first frame are
   that object (it hands over to the detection from that frame on); the rest get new ids.
4. The chunk's id maps are the solo maps relabelled to global ids, with continuing objects filling
   the background. Chunks without detections are continuation passes only.

Prompts are given to SAM2 the same way as in the sequential engine (every detection on the frame it
was found on; hand-over masks on the chunk's first frame) and all go to prompts_used.jsonl with
their global ids. Resuming works chunk by chunk as with the sequential engine.

With `offload` (the Ray executor's idle workers), a solo pass may run on another worker instead of a
thread here: it gets a SoloTask (paths, settings, the chunk's detections), writes the id maps into
the same scratch folder on shared storage and sends back the rest; the manifest lists such chunks
under "chunks_elsewhere". With no other worker free the pass runs here, as without `offload`.
"""

from __future__ import annotations

import copy
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from core.engine.chunks import Chunk, forward_handover_frame
from core.engine.detect import DetectEngine, _ChunkPlan
from core.engine.events import ChunkFinished, ChunkStarted, EngineWarning, FrameResult, PromptUsed
from core.engine.keyframes import mask_iou
from core.errors import Cancelled
from core.engine.events import Records
from core.frames import FrameFolder, FrameReader
from core.models.yolo import Detection
from core.prompts import MAX_OBJECT_ID


@dataclass
class _Solo:
    """A chunk run from its own detections only, with chunk-local object ids."""

    maps: Path                       # <frame:08d>.png local id maps, every frame of the chunk
    first: dict[int, int]            # local id -> first frame SAM2 was prompted on
    edge: dict[int, np.ndarray]      # local id -> mask on the hand-over frame to the next chunk
    events: list                     # PromptUsed / EngineWarning, local ids

    edge_files: tuple[int, ...] = ()  # local ids whose edge mask waits in a file (a pass run elsewhere)

    def read(self, frame: int) -> np.ndarray:
        return cv2.imread(str(self.maps / f"{frame:08d}.png"), cv2.IMREAD_UNCHANGED)

    def store_edges(self) -> None:
        """Put the hand-over masks into files beside the id maps, to send this to another worker."""
        for local, mask in self.edge.items():
            np.save(self.maps / f"edge-{local}.npy", mask, allow_pickle=False)
        self.edge_files, self.edge = tuple(sorted(self.edge)), {}

    def load_edges(self) -> None:
        for local in self.edge_files:
            self.edge[local] = np.load(self.maps / f"edge-{local}.npy", allow_pickle=False)
        self.edge_files = ()


@dataclass(frozen=True)
class SoloTask:
    """A solo pass as another worker runs it: paths, settings and the chunk's detections (boxes, no
    pixels); that worker reads the frames from the folder and writes the id maps under `scratch`."""

    folder: FrameFolder
    chunks: tuple[Chunk, ...]
    scratch: Path
    options: dict  # the engine's detect settings (classes, min_confidence, stride, ...)
    chunk: Chunk
    detections: list[Detection]
    later: dict[int, list[Detection]]
    edge: int | None


def run_solo(task: SoloTask, tracker, reader: FrameReader, should_stop: Callable[[], bool]) -> _Solo:
    """Run a solo pass here for a job whose engine runs on another worker; `reader` gives the frame
    preparation for this worker's SAM2. The result keeps its hand-over masks in files."""
    engine = ParallelDetectEngine(tracker, None, task.folder, reader, list(task.chunks), task.scratch,
                                  should_stop=should_stop, **task.options)
    solo = engine._solo(task.chunk, task.detections, task.later, task.edge)
    solo.store_edges()
    return solo


class ParallelDetectEngine(DetectEngine):
    def __init__(self, *args, parallel_chunks: int = 2,
                 offload: Callable[[SoloTask], tuple[_Solo, str] | None] | None = None, **kwargs):
        """`offload(task)` runs a solo pass on another worker and returns it with that worker's name, or
        None when no other worker is free (the pass then runs here)."""
        super().__init__(*args, **kwargs)
        self.workers = max(1, parallel_chunks)
        self.offload = offload
        self.elsewhere: list[dict] = []  # {"chunk", "worker"} of the solo passes run on other workers
        self._abort = threading.Event()

    def records(self, out: Path, cache: Path) -> Records:
        base = super().records(out, cache)
        if not self.elsewhere:
            return base
        return base.then(Records(fields={"chunks_elsewhere": sorted(self.elsewhere, key=lambda e: e["chunk"])}))

    def _options(self) -> dict:
        return {"classes": self.classes, "min_confidence": self.min_confidence, "stride": self.stride,
                "match_iou": self.match_iou, "lost_chunks": self.lost_chunks, "max_objects": self.max_objects}

    def run(self) -> Iterator[object]:
        self._abort.clear()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="reelmask-chunk")
        ahead: deque[tuple[int, Chunk, Future | None | str]] = deque()
        todo = iter(enumerate(self.chunks))

        def scan_ahead() -> None:
            # YOLO runs here, on the calling thread (its predictor is not shared across threads);
            # SAM2 solo passes run on the pool meanwhile
            while len(ahead) <= self.workers:
                item = next(todo, None)
                if item is None:
                    return
                pos, chunk = item
                if self.finished(chunk):
                    ahead.append((pos, chunk, "finished"))
                    continue
                detections, later = self._scan(chunk)
                self._check_stop()
                job = pool.submit(self._solo_somewhere, chunk, detections, later, self._edge(pos)) if detections else None
                ahead.append((pos, chunk, job))

        try:
            handover = self.initial
            while True:
                scan_ahead()
                if not ahead:
                    break
                pos, chunk, job = ahead.popleft()
                if job == "finished":
                    handover = self.resumed_handover
                    continue
                solo = job.result() if job is not None else None
                if pos == 0:
                    emit_from = chunk.start if self.first_emit is None else self.first_emit
                else:
                    emit_from = self.chunks[pos - 1].end
                out: dict[int, np.ndarray] = {}
                yield from self._link(chunk, solo, handover, emit_from, self._edge(pos), out)
                handover = out
                if solo is not None:
                    shutil.rmtree(solo.maps, ignore_errors=True)
        finally:
            self._abort.set()  # solo passes still running stop at their next frame
            pool.shutdown(wait=True, cancel_futures=True)

    def _edge(self, pos: int) -> int | None:
        following = self.chunks[pos + 1] if pos + 1 < len(self.chunks) else None
        return forward_handover_frame(self.chunks[pos], following) if following else None

    def _check_stop(self) -> None:
        if self._abort.is_set() or self.should_stop():
            raise Cancelled("cancelled")

    # ------------------------------------------------------------------ worker threads

    def _solo_somewhere(self, chunk: Chunk, detections: list[Detection], later: dict[int, list[Detection]],
                        edge: int | None) -> _Solo:
        """The solo pass on another worker when one is free, else here."""
        if self.offload is not None:
            task = SoloTask(self.folder, tuple(self.chunks), self.scratch, self._options(), chunk, detections,
                            later, edge)
            done = self.offload(task)
            if done is not None:
                solo, worker = done
                solo.load_edges()
                self.elsewhere.append({"chunk": chunk.index, "worker": worker})
                return solo
        return self._solo(chunk, detections, later, edge)

    def _solo(self, chunk: Chunk, detections: list[Detection], later: dict[int, list[Detection]],
              edge: int | None) -> _Solo:
        maps = self.scratch / f"solo-{chunk.index:05d}"
        shutil.rmtree(maps, ignore_errors=True)
        maps.mkdir(parents=True)
        # the sequential engine's planning and SAM2 code, on a copy with its own ids, scratch and reader
        solo = copy.copy(self)
        solo.next_id, solo.unseen, solo.max_objects = 1, {}, MAX_OBJECT_ID
        solo.scratch = maps / "backward"
        solo.reader = FrameReader(self.folder, self.reader._prepare, prefetch=self.reader._prefetch)
        try:
            plan, notes = solo._plan(chunk, detections, {})
            edge_masks: dict[int, np.ndarray] = {}
            events: list = [n for n in notes if not isinstance(n, EngineWarning) or "object limit" in n.message]
            for event in solo._run_chunk(chunk, plan, edge, edge_masks, chunk.start, later):
                if isinstance(event, FrameResult):
                    cv2.imwrite(str(maps / f"{event.frame:08d}.png"), event.id_map)
                elif isinstance(event, (PromptUsed, EngineWarning)):
                    events.append(event)
        finally:
            solo.reader.close()
        return _Solo(maps, dict(plan.first), edge_masks, events)

    # ------------------------------------------------------------------ linking, in chunk order

    def _link(self, chunk: Chunk, solo: _Solo | None, handover: dict[int, np.ndarray], emit_from: int,
              edge: int | None, handover_out: dict[int, np.ndarray]) -> Iterator[object]:
        began = time.perf_counter()
        yield ChunkStarted(chunk.index, chunk.start, chunk.end, "forward")
        lut: dict[int, int] = {}  # local id -> global id
        first_map = solo.read(chunk.start) if solo else None
        scores = []
        for local in (solo.first if solo else ()):
            seen = first_map == local
            if seen.any():
                scores += [(mask_iou(seen, mask), local, obj) for obj, mask in handover.items()]
        for iou, local, obj in sorted(scores, reverse=True):
            if iou >= self.match_iou and local not in lut and obj not in lut.values():
                lut[local] = obj

        carried: dict[int, np.ndarray] = {}
        for obj, mask in handover.items():
            if obj in lut.values():
                self.unseen[obj] = 0
                continue
            self.unseen[obj] = self.unseen.get(obj, 0) + 1
            if self.unseen[obj] > self.lost_chunks:
                yield EngineWarning(f"object {obj} ended at frame {chunk.start}: no detection for "
                                    f"{self.lost_chunks} chunk(s)", frame=chunk.start, object_id=obj)
            elif mask.any():
                carried[obj] = mask

        cont_maps, cont_edge = None, {}
        if carried:
            cont_maps = self.scratch / f"carry-{chunk.index:05d}"
            shutil.rmtree(cont_maps, ignore_errors=True)
            cont_maps.mkdir(parents=True)
            plan = _ChunkPlan(masks=carried, first={o: chunk.start for o in carried})
            for event in self._run_chunk(chunk, plan, edge, cont_edge, chunk.start, {}):
                if isinstance(event, FrameResult):
                    cv2.imwrite(str(cont_maps / f"{event.frame:08d}.png"), event.id_map)
                elif isinstance(event, (PromptUsed, EngineWarning)):
                    yield event

        takeover: dict[int, int] = {}  # continuing object -> frame a mid-chunk detection took it over
        for local in sorted(solo.first if solo else (), key=lambda o: solo.first[o]):
            at = solo.first[local]
            if local in lut or cont_maps is None or at == chunk.start:
                continue
            found = solo.read(at) == local
            there = cv2.imread(str(cont_maps / f"{at:08d}.png"), cv2.IMREAD_UNCHANGED)
            best = max(((mask_iou(found, there == o), o) for o in carried
                        if o not in lut.values() and o not in takeover), default=(0.0, None))
            if best[1] is not None and best[0] >= self.match_iou:
                lut[local] = best[1]
                takeover[best[1]] = at
                self.unseen[best[1]] = 0

        live = set(lut.values()) | set(carried)
        for local in sorted(solo.first if solo else ()):
            if local in lut:
                continue
            if len(live) >= self.max_objects or self.next_id > MAX_OBJECT_ID:
                yield EngineWarning(f"object limit (detect.max_objects = {self.max_objects}) reached: an object "
                                    f"detected on frame {solo.first[local]} is not tracked", frame=solo.first[local])
                continue
            lut[local], self.next_id = self.next_id, self.next_id + 1
            self.unseen[lut[local]] = 0
            live.add(lut[local])

        for event in (solo.events if solo else ()):
            if isinstance(event, PromptUsed):
                if event.object_id in lut:
                    yield replace(event, object_id=lut[event.object_id])
            else:
                yield event
        if not live:
            yield EngineWarning(f"chunk {chunk.index} (frames {chunk.start}-{chunk.end - 1}): no detection and "
                                "nothing handed over; its masks are empty", frame=chunk.start)

        table = np.zeros(256, np.uint8)
        for local, obj in lut.items():
            table[local] = obj
        emitted = 0
        for f in range(emit_from, chunk.end):
            self._check_stop()
            ids = table[solo.read(f)] if solo else np.zeros((self.folder.height, self.folder.width), np.uint8)
            if cont_maps is not None:
                rest = cv2.imread(str(cont_maps / f"{f:08d}.png"), cv2.IMREAD_UNCHANGED)
                for obj, at in takeover.items():
                    if f >= at:
                        rest[rest == obj] = 0
                ids = np.where(ids > 0, ids, rest).astype(np.uint8)
            emitted += 1
            yield FrameResult(f, ids, chunk.index)
        for obj, mask in cont_edge.items():
            if obj not in takeover:
                handover_out[obj] = mask
        for local, mask in (solo.edge.items() if solo else ()):
            if local in lut:
                handover_out[lut[local]] = mask
        if cont_maps is not None:
            shutil.rmtree(cont_maps, ignore_errors=True)
        yield ChunkFinished(chunk.index, chunk.start, chunk.end, "forward", time.perf_counter() - began, emitted,
                            dict(handover_out), self.snapshot())


def make_detect_engine(*args, parallel_chunks: int = 1, offload=None, **kwargs) -> DetectEngine:
    """The sequential engine, or the independent-chunk one when `parallel_chunks` > 1 (whose solo passes
    may run on other workers through `offload`)."""
    if parallel_chunks > 1:
        return ParallelDetectEngine(*args, parallel_chunks=parallel_chunks, offload=offload, **kwargs)
    return DetectEngine(*args, **kwargs)
