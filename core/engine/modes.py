"""Every mode in one place: what it checks before a model loads, the model it runs on, how it cuts the
video into chunks, what a resume must agree on, and how its engine is built. The pipeline asks
`mode_spec(mode)`; nothing else branches on the mode.

Engines share one small protocol (`Engine`): run() yields events, resume() continues an interrupted
job from its checkpoint, records() says what the engine adds to the manifest (the manifest builder
takes those records and never looks inside an engine).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from core.config import Config
from core.engine.chunks import Chunk, plan_chunks
from core.engine.events import Records
from core.errors import ConfigError
from core.frames import FrameFolder, FrameReader
from core.modes import Mode
from core.prompts import Prompts

SAM2, UNET = "sam2", "unet"  # the segmentation models a mode can run on (None: no model)


class Engine(Protocol):
    def run(self) -> Iterator[object]:
        """Events: ChunkStarted, FrameResult, AlphaResult, PromptUsed, EngineWarning, ChunkFinished."""

    def resume(self, done: set[tuple[str, int]], handovers: dict[str, dict], state: dict) -> None:
        """Continue after the (sweep, chunk) steps in `done`, from the hand-over masks each sweep left and
        the engine state the last finished chunk recorded."""

    def records(self, out: Path, cache: Path) -> Records:
        """What the manifest records of this run (`out`: the final output folder; `cache`: the model cache
        where file checksums are remembered)."""


@dataclass(frozen=True)
class EngineInputs:
    """What an engine is built from."""

    folder: FrameFolder
    prompts: Prompts
    config: Config
    model: object            # the SAM2 tracker, the U-Net segmenter, or None
    reader: FrameReader
    chunks: list[Chunk]
    scratch: Path            # the job's staging folder: engines keep their partial files under a dot name
    models: object           # the ModelPool (detectors and refiners come from it)
    should_stop: Callable[[], bool]
    offload: Callable | None = None  # runs independent work on another worker (detect solo passes); None: all here


class ModeSpec:
    """The defaults every SAM2 mode shares; each mode overrides what is its own."""

    mode: Mode
    writes_alpha = False

    def check(self, root: Path, folder: FrameFolder, prompts: Prompts, cfg: Config) -> None:
        """Input checks of this mode, before any model loads; raises a ReelmaskError that says the fix."""

    def model_kind(self, folder: FrameFolder, prompts: Prompts) -> str | None:
        return SAM2

    def chunks(self, frames: int, cfg: Config) -> list[Chunk]:
        return plan_chunks(frames, cfg.chunking.chunk_size, cfg.chunking.overlap)

    def plan(self, folder: FrameFolder, prompts: Prompts, cfg: Config) -> str:
        """What the chunks and their results depend on; a resume with another plan starts over."""
        prompts_id = hashlib.sha1(repr(prompts.objects).encode()).hexdigest()[:10]
        return (f"{self.mode.value}, {len(folder)} frames, chunks {cfg.chunking.chunk_size}/"
                f"{cfg.chunking.overlap}, anchors {cfg.chunking.anchor_prompts}, prompts {prompts_id}")

    def resumable(self, prompts: Prompts, cfg: Config) -> bool:
        """Whether an interrupted job continues chunk by chunk (and its chunks are known at the start)."""
        return True

    def used_prompts(self, prompts: Prompts) -> Prompts:
        """The prompts the manifest reports as used."""
        return prompts

    def warnings(self, prompts: Prompts) -> list[str]:
        return []

    def objects_known(self, folder: FrameFolder, prompts: Prompts, cfg: Config) -> int:
        """Objects SAM2 follows at once that are known before the start (found ones come later: at least 1)."""
        return 1

    def chunks_at_once(self, folder: FrameFolder, prompts: Prompts, cfg: Config) -> int:
        """SAM2 inference states open at the same time."""
        return 1

    def build(self, x: EngineInputs) -> Engine:
        raise NotImplementedError


class TrackMode(ModeSpec):
    mode = Mode.TRACK

    def check(self, root, folder, prompts, cfg):
        if not prompts.objects:
            raise ConfigError(
                f"track mode needs objects to follow, but {root / 'prompts.json'} lists none; add "
                '{"objects": [{"id": 1, "frame": 0, "points": [[x, y]], "labels": [1]}]}'
            )

    def objects_known(self, folder, prompts, cfg):
        return max(1, len(prompts.objects))

    def build(self, x):
        from core.engine.track import TrackEngine

        return TrackEngine(x.model, x.folder, x.reader, x.prompts, x.chunks, x.scratch / ".backward",
                           anchor_prompts=x.config.chunking.anchor_prompts, should_stop=x.should_stop)


class DetectMode(ModeSpec):
    mode = Mode.DETECT

    def check(self, root, folder, prompts, cfg):
        from core.models.yolo import resolve_yolo_path

        if self_train_requested(prompts, cfg) and not prompts.objects:
            raise ConfigError("detector self-training needs the object(s) to learn: add \"objects\" with points or "
                              "boxes on the first frames to prompts.json (and keep \"mode\": \"detect\")")
        resolve_yolo_path(cfg)  # a missing detector fails now, before SAM2 loads

    def resumable(self, prompts, cfg):
        return not self_train_requested(prompts, cfg)  # self-training cuts its chunks after training

    def chunks_at_once(self, folder, prompts, cfg):
        return 1 if self_train_requested(prompts, cfg) else max(1, cfg.detect.parallel_chunks)

    def build(self, x):
        from core.engine.detect_parallel import make_detect_engine

        cfg, prompts, tracker = x.config, x.prompts, x.model
        request, d = prompts.detect, cfg.detect
        classes = list(request.classes) if request and request.classes is not None else list(d.classes)
        conf = request.min_confidence if request and request.min_confidence is not None else d.min_confidence
        device = "cpu" if tracker.device.type == "cpu" else str(tracker.device)
        options = {"min_confidence": conf, "stride": d.stride, "match_iou": d.match_iou,
                   "lost_chunks": d.lost_chunks, "max_objects": d.max_objects, "parallel_chunks": d.parallel_chunks}
        if self_train_requested(prompts, cfg):
            from core.engine.selftrain import SelfTrainingDetect
            from core.models.yolo import Detector, resolve_yolo_path
            from core.models.yolo_train import TrainSettings

            settings = TrainSettings(d.train_epochs, d.train_patience, d.train_imgsz, d.train_batch, device)
            return SelfTrainingDetect(
                tracker, x.folder, x.reader, prompts, work=x.scratch / ".selftrain",
                chunk_size=cfg.chunking.chunk_size, overlap=cfg.chunking.overlap,
                anchor_prompts=cfg.chunking.anchor_prompts, train_frames=d.train_frames,
                base_weights=resolve_yolo_path(cfg), settings=settings, class_name=(classes or ["object"])[0],
                make_detector=lambda path: Detector(path, device=device, imgsz=d.imgsz), detect_options=options,
                should_stop=x.should_stop)
        detector = x.models.yolo(cfg, device)
        return make_detect_engine(tracker, detector, x.folder, x.reader, x.chunks, x.scratch / ".detect",
                                  classes=detector.class_ids(classes), should_stop=x.should_stop, offload=x.offload,
                                  **options)


class RefineMode(ModeSpec):
    mode = Mode.REFINE

    def check(self, root, folder, prompts, cfg):
        if not (root / "masks").is_dir():
            raise ConfigError(f"refine mode needs a masks/ folder in {root} with a mask per frame "
                              "(named after the frames)")
        mask_regions(folder, cfg)  # checks the masks are named after frames

    def build(self, x):
        k = x.config.refine
        return _keyframe_engine(x, mask_regions(x.folder, x.config), k)


class PromptlessMode(ModeSpec):
    mode = Mode.PROMPTLESS

    def build(self, x):
        from core.engine.regions import AutomaticRegions

        k = x.config.promptless
        source = AutomaticRegions(x.model.predictor, x.folder, every=k.keyframe_every, min_area=k.min_area,
                                  points_per_side=k.points_per_side, pred_iou_thresh=k.pred_iou_thresh,
                                  stability_thresh=k.stability_thresh)
        return _keyframe_engine(x, source, k)


class UnetMode(ModeSpec):
    mode = Mode.UNET

    def check(self, root, folder, prompts, cfg):
        from core.models.unet import resolve_unet_path

        resolve_unet_path(cfg)  # set, present and a U-Net checkpoint, checked without torch

    def model_kind(self, folder, prompts):
        return UNET

    def chunks(self, frames, cfg):
        # the U-Net looks at each frame alone: its chunks are resume points and need no shared frames
        return plan_chunks(frames, cfg.chunking.chunk_size, 0)

    def plan(self, folder, prompts, cfg):
        from core.models.unet import resolve_unet_path

        path = resolve_unet_path(cfg)
        st = path.stat()
        return (f"unet, {len(folder)} frames, chunks {cfg.chunking.chunk_size}, model {path.resolve()} "
                f"{st.st_size} {st.st_mtime_ns}, threshold {cfg.models.unet_threshold}")

    def used_prompts(self, prompts):
        return Prompts()

    def warnings(self, prompts):
        if not prompts.objects:
            return []
        return [f"unet mode takes no prompts: the {len(prompts.objects)} object(s) in prompts.json were ignored "
                "(the U-Net marks its one trained object as id 1)"]

    def build(self, x):
        from core.engine.unet import UnetEngine

        return UnetEngine(x.model, x.folder, x.reader, x.chunks, threshold=x.config.models.unet_threshold,
                          should_stop=x.should_stop)


class MattingMode(ModeSpec):
    """A segmentation (masks/, else track with the prompts, else detect) with an alpha matte per frame."""

    mode = Mode.MATTING
    writes_alpha = True

    def check(self, root, folder, prompts, cfg):
        source = matting_segmentation(folder, prompts)
        if source is None:
            from core.engine.matting import mask_files

            mask_files(folder)  # one mask per frame
        elif source is Mode.DETECT:
            from core.models.yolo import resolve_yolo_path

            resolve_yolo_path(matting_config(prompts, cfg))  # matting without prompts detects people
        if cfg.models.matting:
            from core.matting.refiner import check_checkpoint

            check_checkpoint(cfg.path(cfg.models.matting))

    def model_kind(self, folder, prompts):
        return None if matting_segmentation(folder, prompts) is None else SAM2  # masks/ need no model

    def objects_known(self, folder, prompts, cfg):
        source = matting_segmentation(folder, prompts)
        return MODES[source].objects_known(folder, prompts, cfg) if source else 1

    def chunks_at_once(self, folder, prompts, cfg):
        source = matting_segmentation(folder, prompts)
        return MODES[source].chunks_at_once(folder, prompts, matting_config(prompts, cfg)) if source else 1

    def plan(self, folder, prompts, cfg):
        m = cfg.matting
        return (super().plan(folder, prompts, cfg) + f", matting {cfg.models.matting or 'classical'} {m.solver} "
                f"band {m.band} max {m.solve_max_side} weight {m.sample_weight} foreground {m.foreground} "
                f"temporal {m.temporal}")

    def build(self, x):
        from core.engine.matting import ClassicalMatter, MaskFolderEngine, MattingEngine, RefinerMatter

        cfg = x.config
        source = matting_segmentation(x.folder, x.prompts)
        if source is None:
            inner = MaskFolderEngine(x.folder, x.chunks, x.should_stop)
        else:
            inner = MODES[source].build(dataclasses.replace(x, config=matting_config(x.prompts, cfg)))
        m = cfg.matting
        if cfg.models.matting:
            matter = RefinerMatter(x.models.matting_refiner(cfg, x.model), m.foreground, m.solve_max_side)
        else:
            matter = ClassicalMatter(m)
        return MattingEngine(inner, x.folder, matter, should_stop=x.should_stop)


MODES: dict[Mode, ModeSpec] = {spec.mode: spec for spec in (TrackMode(), DetectMode(), RefineMode(),
                                                           PromptlessMode(), UnetMode(), MattingMode())}


def mode_spec(mode: Mode) -> ModeSpec:
    return MODES[mode]


def model_records(kind: str | None, model, cfg: Config, memory: dict | None = None) -> Records:
    """The manifest's "models" and "weights" entries, timing and warnings of a mode's model."""
    if kind is None:  # matting of given masks: no segmentation model ran
        return Records()
    from core.models.weights import cache_dir, sha256_file

    if kind == UNET:
        info = {"path": str(model.path.resolve()), "epoch": model.epoch, "img_size": model.image_size,
                "arch": model.arch, "threshold": cfg.models.unet_threshold, "device": str(model.device),
                "dtype": model.dtype, "trained_metrics": model.metrics}
        return Records(models={"unet": info}, weights={"unet": sha256_file(model.path, cache_dir(cfg))},
                       timings={"unet_seconds": round(model.seconds, 3)})
    w = model.weights
    info = {"name": w.variant.name, "config": w.variant.config, "checkpoint": str(w.checkpoint) if w.checkpoint else None,
            "image_size": model.image_size, "device": str(model.device), "dtype": model.dtype,
            "decoder": model.decoder,   # None, or the fine-tuned decoder loaded over SAM2's own
            "compile": model.compiled}
    if memory is not None:
        info["memory"] = memory   # the check before the start and the peaks the job reached
    weights = {"sam2": w.sha256}
    if model.decoder:
        weights["sam2_decoder"] = model.decoder["sha256"]
    return Records(models={"sam2": info}, weights=weights, timings={"sam2_seconds": round(model.seconds, 3)},
                   warnings=list(model.warnings))


# ------------------------------------------------------------------ shared by the modes

def self_train_requested(prompts: Prompts, cfg: Config) -> bool:
    request = prompts.detect
    return request.self_train if request is not None and request.self_train is not None else cfg.detect.self_train


def matting_segmentation(folder: FrameFolder, prompts: Prompts) -> Mode | None:
    """Where matting mode's segmentation comes from: masks/ (None: no SAM2), track or detect."""
    if (folder.root / "masks").is_dir():
        return None
    return Mode.TRACK if prompts.objects else Mode.DETECT


def matting_config(prompts: Prompts, cfg: Config) -> Config:
    """Without a detect section of its own, matting detects `matting.classes` ("person")."""
    if prompts.objects or (prompts.detect is not None and prompts.detect.classes is not None):
        return cfg
    return dataclasses.replace(cfg, detect=dataclasses.replace(cfg.detect, classes=tuple(cfg.matting.classes)))


def mask_regions(folder: FrameFolder, cfg: Config):
    from core.engine.regions import MaskRegions

    r = cfg.refine
    return MaskRegions(folder, every=r.keyframe_every, min_area=r.min_area, filter_threshold=r.filter_threshold,
                       max_points=r.max_points, prompt=r.prompt, seed=cfg.models.seed)


def _keyframe_engine(x: EngineInputs, source, k):
    from core.engine.keyframes import KeyframeEngine

    return KeyframeEngine(x.model, x.folder, x.reader, x.chunks, source, merge_iou=k.merge_iou, covered=k.covered,
                          max_objects=k.max_objects, should_stop=x.should_stop)
