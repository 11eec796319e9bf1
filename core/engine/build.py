"""One place that builds the engine of each mode from a job's settings (like sam2's build_sam)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from core.config import Config
from core.engine.chunks import Chunk
from core.frames import FrameFolder, FrameReader
from core.modes import Mode
from core.prompts import Prompts


def build_engine(mode: Mode, folder: FrameFolder, prompts: Prompts, cfg: Config, *, tracker, reader: FrameReader,
                 chunks: list[Chunk], scratch: Path, models, should_stop: Callable[[], bool],
                 resume_from=None):
    """The engine for `mode`; `resume_from` = (checkpoint, staging folder) continues an interrupted job.

    `tracker` is the mode's model: the SAM2 tracker, or for unet mode the U-Net segmenter."""
    ckpt, stage = resume_from if resume_from else (None, None)
    if mode is Mode.MATTING:
        return _matting_engine(folder, prompts, cfg, tracker=tracker, reader=reader, chunks=chunks, scratch=scratch,
                               models=models, should_stop=should_stop, resume_from=resume_from)
    if mode is Mode.TRACK:
        from core.engine.track import TrackEngine

        return TrackEngine(tracker, folder, reader, prompts, chunks, scratch / ".backward",
                           anchor_prompts=cfg.chunking.anchor_prompts, should_stop=should_stop,
                           done=set(ckpt.done) if ckpt else frozenset(),
                           handovers=ckpt.handovers(stage) if ckpt else None)
    if mode is Mode.UNET:
        from core.engine.unet import UnetEngine

        engine = UnetEngine(tracker, folder, reader, chunks, threshold=cfg.models.unet_threshold,
                            should_stop=should_stop)
    elif mode is Mode.DETECT:
        engine = _detect_engine(folder, prompts, cfg, models, tracker, reader, chunks, scratch, should_stop)
    else:
        engine = _keyframe_engine(mode, folder, cfg, tracker, reader, chunks, should_stop)
    if ckpt is not None and hasattr(engine, "resume"):
        engine.resume(set(ckpt.done), ckpt.handovers(stage).get("forward", {}), ckpt.engine_state)
    return engine


def matting_segmentation(folder: FrameFolder, prompts: Prompts) -> Mode | None:
    """Where matting mode's segmentation comes from: masks/ (None: no SAM2), track or detect."""
    if (folder.root / "masks").is_dir():
        return None
    return Mode.TRACK if prompts.objects else Mode.DETECT


def matting_config(prompts: Prompts, cfg: Config) -> Config:
    """Without a detect section of its own, matting detects `matting.classes` ("person")."""
    if prompts.objects or (prompts.detect is not None and prompts.detect.classes is not None):
        return cfg
    import dataclasses

    return dataclasses.replace(cfg, detect=dataclasses.replace(cfg.detect, classes=tuple(cfg.matting.classes)))


def _matting_engine(folder, prompts, cfg, *, tracker, reader, chunks, scratch, models, should_stop, resume_from):
    from core.engine.matting import ClassicalMatter, MaskFolderEngine, MattingEngine, RefinerMatter

    source = matting_segmentation(folder, prompts)
    if source is None:
        inner = MaskFolderEngine(folder, chunks, should_stop)
        if resume_from is not None:
            ckpt, stage = resume_from
            inner.resume(set(ckpt.done), {}, ckpt.engine_state)
    else:
        inner = build_engine(source, folder, prompts, matting_config(prompts, cfg), tracker=tracker, reader=reader,
                             chunks=chunks, scratch=scratch, models=models, should_stop=should_stop,
                             resume_from=resume_from)
    m = cfg.matting
    if cfg.models.matting:
        matter = RefinerMatter(models.matting_refiner(cfg, tracker), m.foreground, m.solve_max_side)
    else:
        matter = ClassicalMatter(m.band, m.solver, m.solve_max_side, m.foreground, m.sample_weight)
    return MattingEngine(inner, folder, matter, should_stop=should_stop)


def mask_regions(folder: FrameFolder, cfg: Config):
    from core.engine.regions import MaskRegions

    r = cfg.refine
    return MaskRegions(folder, every=r.keyframe_every, min_area=r.min_area, filter_threshold=r.filter_threshold,
                       max_points=r.max_points, prompt=r.prompt, seed=cfg.models.seed)


def self_train_requested(prompts: Prompts, cfg: Config) -> bool:
    request = prompts.detect
    return request.self_train if request is not None and request.self_train is not None else cfg.detect.self_train


def _detect_engine(folder, prompts, cfg, models, tracker, reader, chunks, stage: Path, should_stop):
    from core.engine.detect_parallel import make_detect_engine

    request = prompts.detect
    d = cfg.detect
    classes = list(request.classes) if request and request.classes is not None else list(d.classes)
    conf = request.min_confidence if request and request.min_confidence is not None else d.min_confidence
    device = "cpu" if tracker.device.type == "cpu" else str(tracker.device)
    options = {"min_confidence": conf, "stride": d.stride, "match_iou": d.match_iou, "lost_chunks": d.lost_chunks,
               "max_objects": d.max_objects, "parallel_chunks": d.parallel_chunks}
    if self_train_requested(prompts, cfg):
        from core.engine.selftrain import SelfTrainingDetect
        from core.models.yolo import Detector, resolve_yolo_path
        from core.models.yolo_train import TrainSettings

        settings = TrainSettings(d.train_epochs, d.train_patience, d.train_imgsz, d.train_batch, device)
        return SelfTrainingDetect(
            tracker, folder, reader, prompts, work=stage / ".selftrain", chunk_size=cfg.chunking.chunk_size,
            overlap=cfg.chunking.overlap, anchor_prompts=cfg.chunking.anchor_prompts, train_frames=d.train_frames,
            base_weights=resolve_yolo_path(cfg), settings=settings, class_name=(classes or ["object"])[0],
            make_detector=lambda path: Detector(path, device=device, imgsz=d.imgsz), detect_options=options,
            should_stop=should_stop)
    detector = models.yolo(cfg, device)
    return make_detect_engine(tracker, detector, folder, reader, chunks, stage / ".detect",
                        classes=detector.class_ids(classes), should_stop=should_stop, **options)


def _keyframe_engine(mode, folder, cfg, tracker, reader, chunks, should_stop):
    from core.engine.keyframes import KeyframeEngine
    from core.engine.regions import AutomaticRegions

    if mode is Mode.REFINE:
        source, k = mask_regions(folder, cfg), cfg.refine
    else:
        k = cfg.promptless
        source = AutomaticRegions(tracker.predictor, folder, every=k.keyframe_every, min_area=k.min_area,
                                  points_per_side=k.points_per_side, pred_iou_thresh=k.pred_iou_thresh,
                                  stability_thresh=k.stability_thresh)
    return KeyframeEngine(tracker, folder, reader, chunks, source, merge_iou=k.merge_iou, covered=k.covered,
                          max_objects=k.max_objects, should_stop=should_stop)
