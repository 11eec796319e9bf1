"""detect mode with detector self-training (seed 002's `use_pretrained_YOLO: False`).

1. The objects the user pointed at in prompts.json are tracked by SAM2 through the first
   `detect.train_frames` frames (track mode, chunk by chunk); those frames' masks are outputs too.
2. Their masks become a YOLO dataset in the job's work folder (boxes from the masks, one class).
3. Ultralytics fine-tunes `models.yolo` on it (seed defaults: 300 epochs, patience 50, imgsz 640).
4. The rest of the video runs in detect mode with the trained detector, continuing from the masks
   of the last training frame, so the user's object ids carry on.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator

from core.engine.chunks import Chunk, plan_chunks
from core.engine.detect import detector_records
from core.engine.detect_parallel import make_detect_engine
from core.engine.events import EngineWarning, FrameResult, Phase, Records
from core.engine.track import TrackEngine
from core.frames import FrameFolder, FrameReader
from core.models.yolo_train import TrainSettings, YoloDataset, train_detector
from core.prompts import Prompts


class SelfTrainingDetect:
    def __init__(self, tracker, folder: FrameFolder, reader: FrameReader, prompts: Prompts, *, work: Path,
                 chunk_size: int, overlap: int, anchor_prompts: bool, train_frames: int, base_weights: Path,
                 settings: TrainSettings, make_detector: Callable[[Path], object], class_name: str,
                 detect_options: dict, should_stop: Callable[[], bool] = lambda: False):
        self.tracker, self.folder, self.reader, self.prompts = tracker, folder, reader, prompts
        self.work, self.chunk_size, self.overlap, self.anchor_prompts = work, chunk_size, overlap, anchor_prompts
        self.train_frames = min(train_frames, len(folder))
        self.base_weights, self.settings, self.make_detector = base_weights, settings, make_detector
        self.class_name, self.detect_options, self.should_stop = class_name, detect_options, should_stop
        self.trained: Path | None = None
        self.detector = None
        self.classes = None
        self.min_confidence = detect_options["min_confidence"]
        self.stride = detect_options["stride"]

    def resume(self, done: set, handovers: dict, state: dict) -> None:
        raise RuntimeError("detect with self-training does not resume: it trains between its chunks")

    def records(self, out: Path, cache: Path) -> Records:
        """The detector as other detect jobs record it, and the self-trained detector.pt, which is part
        of the result."""
        records = detector_records(self, cache, out / "detector.pt" if self.trained else None)
        if self.trained is not None:
            records.models["yolo_self_trained"] = {"path": str(out / "detector.pt"), "train_frames": self.train_frames,
                                                   "settings": asdict(self.settings)}
            records.files["detector.pt"] = self.trained
        return records

    def run(self) -> Iterator[object]:
        t = self.train_frames
        used = tuple(p for p in self.prompts.objects if p.frame < t)
        late = sorted({p.object_id for p in self.prompts.objects if p.frame >= t})
        if late:
            yield EngineWarning(f"self-training: prompts of object(s) {late} lie after the first {t} training "
                                "frames and are not used")
        head = plan_chunks(t, self.chunk_size, self.overlap)
        dataset = YoloDataset(self.work / "yolo-dataset", self.class_name)
        track = TrackEngine(self.tracker, self.folder, self.reader, replace(self.prompts, objects=used), head,
                            self.work / "backward", anchor_prompts=self.anchor_prompts, should_stop=self.should_stop)
        last = None
        for event in track.run():
            if isinstance(event, FrameResult):
                f = event.frame
                dataset.add(f, self.folder.frame_file(f) or self.folder.read_rgb(f), event.id_map)
                if event.frame == t - 1:
                    last = event.id_map
            yield event
        if t >= len(self.folder):
            return
        yield Phase(f"training the detector on {dataset.counts['train']} frames "
                    f"({self.settings.epochs} epochs at most)")
        self.trained = train_detector(self.base_weights, dataset.write_yaml(), self.work / "yolo-train", self.settings)
        self.detector = self.make_detector(self.trained)
        rest = [Chunk(len(head) + i, c.start + t - 1, c.end + t - 1)
                for i, c in enumerate(plan_chunks(len(self.folder) - t + 1, self.chunk_size, self.overlap))]
        handover = {int(o): last == o for o in set(last.ravel().tolist()) - {0}} if last is not None else {}
        ids = self.prompts.object_ids or [0]
        engine = make_detect_engine(self.tracker, self.detector, self.folder, self.reader, rest, self.work / "detect",
                              classes=None, should_stop=self.should_stop, handover=handover,
                              next_id=max(ids) + 1, first_emit=t, **self.detect_options)
        yield from engine.run()
