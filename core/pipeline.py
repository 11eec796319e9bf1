"""One job from a frame folder to a finished output folder.

`prepare_job` checks everything about the input (frames, prompts, job.toml, mode) without
loading a model, so bad input fails in milliseconds. `run_job` then yields events while it
works; the CLI draws a progress bar from them, the daemon records them in SQLite.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from core.config import Config, LimitsConfig, parse_toml, with_overrides
from core.engine.build import build_engine, mask_regions, matting_segmentation, self_train_requested
from core.engine.chunks import Chunk, plan_chunks
from core.engine.events import AlphaResult, ChunkFinished, ChunkStarted, EngineWarning, FrameResult, Phase, PromptUsed
from core.errors import ConfigError, FrameFolderError
from core.frames import FrameFolder, FrameReader, to_model_input
from core.modes import Mode, ModeChoice, choose_mode
from core.outputs.folder import MANIFEST, check_target, open_staging, publish, staging_path, write_json
from core.outputs.checkpoint import Checkpoint, truncate_lines
from core.outputs.manifest import add_engine_records, build_manifest, utc_now
from core.outputs.writer import ALPHA_DIR, PROMPTS_USED, OutputWriter, PreviewSettings
from core.intake import check_tree, read_text
from core.prompts import PROMPTS_FILE, Prompts, mask_names, parse_prompts, read_prompts_json

log = logging.getLogger(__name__)

# the pipeline is the one door to a job: callers (the CLI, the daemon) take the events it yields from here
__all__ = ["AlphaResult", "ChunkFinished", "ChunkStarted", "EngineWarning", "FrameResult", "JobFinished",
           "JobStarted", "ModelPool", "Phase", "PreparedJob", "PromptUsed", "prepare_job", "run_job"]

JOB_TOML = "job.toml"


@dataclass(frozen=True)
class PreparedJob:
    """A validated job: everything known before any model is loaded."""

    job_id: str
    input: Path
    folder: FrameFolder
    prompts: Prompts
    choice: ModeChoice
    config: Config


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    mode: Mode
    frames_total: int
    chunks: int
    frames_done: int = 0  # already written by an earlier, interrupted run
    plan: tuple[Chunk, ...] = ()  # the forward chunks, as they will be reported (empty: planned as they come)


@dataclass(frozen=True)
class JobFinished:
    output: Path
    manifest: dict = field(repr=False)


def read_job_toml(folder: Path, limits: LimitsConfig | None = None) -> tuple[str | None, dict]:
    """job.toml holds config overrides plus an optional top-level `mode`."""
    path = folder / JOB_TOML
    text = read_text(path, (limits or LimitsConfig()).max_job_toml_bytes, "limits.max_job_toml_bytes", ConfigError)
    if text is None:
        return None, {}
    data = parse_toml(text, path)
    mode = data.pop("mode", None)
    if mode is not None and not isinstance(mode, str):
        raise ConfigError(f'{path}: mode must be a string such as "track", got {mode!r:.80}')
    return mode, data


def prepare_job(input_dir: Path, config: Config, *, mode: str | None = None, inbox_mode: str | None = None,
                job_id: str | None = None, trusted: bool = False, confined: bool = False) -> PreparedJob:
    """Validate the folder, its sidecars and the mode; raises a ReelmaskError on bad input.

    The folder is untrusted: its job.toml may set only job-scope keys unless `trusted`, and every
    `limits.*` of the owner's config holds. `confined` (daemon jobs) also refuses links leading out
    of the folder."""
    input_dir = Path(input_dir)
    limits = config.limits  # the owner's: a folder cannot raise its own limits
    if not input_dir.is_dir():
        raise FrameFolderError(f"{input_dir} is not a folder; give a folder of numbered JPEG or PNG frames")
    check_tree(input_dir, limits, confined=confined)
    job_mode, overrides = read_job_toml(input_dir, limits)
    if overrides:
        config = with_overrides(config, overrides, str(input_dir / JOB_TOML), job_scope=not trusted)
    raw_prompts = read_prompts_json(input_dir, limits)
    folder = FrameFolder.scan(input_dir, exclude=mask_names(raw_prompts), limits=limits)
    prompts = Prompts() if raw_prompts is None else parse_prompts(raw_prompts, folder, input_dir / PROMPTS_FILE,
                                                                  limits)
    choice = choose_mode(input_dir, prompts, explicit=mode, job_mode=job_mode, inbox_mode=inbox_mode)
    if choice.mode is Mode.DETECT and self_train_requested(prompts, config) and not prompts.objects:
        raise ConfigError("detector self-training needs the object(s) to learn: add \"objects\" with points or "
                          "boxes on the first frames to prompts.json (and keep \"mode\": \"detect\")")
    if choice.mode is Mode.TRACK and not prompts.objects:
        raise ConfigError(
            f"track mode needs objects to follow, but {input_dir / 'prompts.json'} lists none; add "
            '{"objects": [{"id": 1, "frame": 0, "points": [[x, y]], "labels": [1]}]}'
        )
    if choice.mode is Mode.DETECT:
        from core.models.yolo import resolve_yolo_path

        resolve_yolo_path(config)  # a missing detector fails now, before SAM2 loads
    if choice.mode is Mode.UNET:
        from core.training.unet_checkpoint import resolve_unet_path

        resolve_unet_path(config)  # set, present and a U-Net checkpoint, checked without torch
    elif not (choice.mode is Mode.MATTING and matting_segmentation(folder, prompts) is None):
        from core.models.sam2_decoder import resolve_decoder_path

        resolve_decoder_path(config)  # every SAM2 mode: a wrong models.sam2_decoder fails before SAM2 loads
    if choice.mode is Mode.MATTING:
        _check_matting(folder, prompts, config)
    if choice.mode is Mode.REFINE:
        if not (input_dir / "masks").is_dir():
            raise ConfigError(f"refine mode needs a masks/ folder in {input_dir} with a mask per frame "
                              "(named after the frames)")
        mask_regions(folder, config)  # checks the masks are named after frames
    return PreparedJob(job_id or uuid.uuid4().hex[:12], input_dir, folder, prompts, choice, config)


def _check_matting(folder: FrameFolder, prompts: Prompts, config: Config) -> None:
    """Everything matting mode needs, before any model loads."""
    from core.engine.build import matting_config, matting_segmentation

    source = matting_segmentation(folder, prompts)
    if source is None:
        from core.engine.matting import mask_files

        mask_files(folder)  # one mask per frame
    elif source is Mode.DETECT:
        from core.models.yolo import resolve_yolo_path

        resolve_yolo_path(matting_config(prompts, config))  # matting without prompts detects people
    if config.models.matting:
        from core.matting.refiner import check_checkpoint

        check_checkpoint(config.path(config.models.matting))


class ModelPool:
    """Keeps built models between jobs (the daemon runs many jobs with one set of models)."""

    def __init__(self):
        self._sam2: dict[tuple, object] = {}
        self._yolo: dict[tuple, object] = {}
        self._unet: dict[tuple, object] = {}
        self._refiner: dict[tuple, object] = {}

    def matting_refiner(self, cfg: Config, tracker=None):
        """The learned matting refiner of `models.matting`, sharing `tracker`'s SAM2 when it fits."""
        from core.matting.refiner import load_refiner

        path = cfg.path(cfg.models.matting)
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, cfg.models.device, id(tracker))
        if key not in self._refiner:
            self._refiner.clear()
            self._refiner[key] = load_refiner(path, cfg.models.device, cfg=cfg, tracker=tracker)
        refiner = self._refiner[key]
        refiner.seconds = refiner.sam2_seconds = 0.0
        return refiner

    def unet(self, cfg: Config):
        from core.engine.unet import UnetSegmenter
        from core.training.unet_checkpoint import resolve_unet_path

        path = resolve_unet_path(cfg)
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, cfg.models.device)
        if key not in self._unet:
            self._unet.clear()
            self._unet[key] = UnetSegmenter(path, cfg.models.device)
        segmenter = self._unet[key]
        segmenter.seconds = 0.0
        return segmenter

    def yolo(self, cfg: Config, device: str):
        from core.models.yolo import Detector, resolve_yolo_path

        path = resolve_yolo_path(cfg)
        key = (str(path), path.stat().st_mtime_ns, device, cfg.detect.imgsz)
        if key not in self._yolo:
            self._yolo.clear()
            self._yolo[key] = Detector(path, device=device, imgsz=cfg.detect.imgsz)
        return self._yolo[key]

    def sam2(self, cfg: Config):
        from core.models.sam2_decoder import resolve_decoder_path
        from core.models.sam2_model import Sam2Tracker
        from core.models.weights import resolve_sam2

        weights = resolve_sam2(cfg)
        m = cfg.models
        decoder = resolve_decoder_path(cfg)
        stamp = (str(decoder.resolve()), decoder.stat().st_size, decoder.stat().st_mtime_ns) if decoder else None
        key = (weights.variant.name, str(weights.checkpoint), weights.sha256, m.image_size, m.device,
               m.dtype, m.seed, cfg.output.fill_hole_area, stamp)
        if key not in self._sam2:
            self._sam2.clear()  # one SAM2 at a time: device memory is the scarce thing
            self._sam2[key] = Sam2Tracker(cfg, weights)
        tracker = self._sam2[key]
        tracker.seconds = 0.0
        return tracker


def run_job(job: PreparedJob, out: Path, *, models: ModelPool | None = None,
            should_stop: Callable[[], bool] = lambda: False, keep_partial: bool = False,
            resume: bool = False) -> Iterator[object]:
    """Run a prepared job and publish its output folder; yields engine events along the way.

    With `resume`, a staging folder left by an interrupted run of the same job continues from its
    first unfinished chunk. On failure or cancel the staging folder is removed unless `keep_partial`.
    """
    try:
        yield from _run_job(job, out, models, should_stop, resume)
    except BaseException:
        if not keep_partial:
            shutil.rmtree(staging_path(out), ignore_errors=True)
        raise


def _run_job(job: PreparedJob, out: Path, models: ModelPool | None, should_stop: Callable[[], bool],
             resume: bool) -> Iterator[object]:
    cfg = job.config
    started_at, t0 = utc_now(), time.perf_counter()
    check_target(out, cfg.output.overwrite)
    unet = job.choice.mode is Mode.UNET
    plan = _plan(job)
    # every mode resumes chunk by chunk, except detect with self-training (it trains in between)
    resumable = not (job.choice.mode is Mode.DETECT and self_train_requested(job.prompts, cfg))
    previous = Checkpoint.load(staging_path(out)) if resume and resumable else None
    if previous is not None and previous.plan != plan:
        log.warning("the partial output of %s was made with other settings; starting over", job.input.name)
        previous = None
    stage = open_staging(out, keep=previous is not None)
    ckpt = previous or Checkpoint(plan=plan, job_id=job.job_id, output=str(out))
    models = models or ModelPool()
    t_model = time.perf_counter()
    if unet:
        model = models.unet(cfg)  # the U-Net needs no SAM2
    elif job.choice.mode is Mode.MATTING and matting_segmentation(job.folder, job.prompts) is None:
        model = None  # matting of given masks: no segmentation model
    else:
        model = models.sam2(cfg)
    model_seconds = time.perf_counter() - t_model
    warnings = _model_warnings(job, model)

    folder = job.folder
    # the U-Net looks at each frame alone: its chunks are resume points and need no shared frames
    chunks = plan_chunks(len(folder), cfg.chunking.chunk_size, 0 if unet else cfg.chunking.overlap)
    import torch

    if model is None:
        reader = FrameReader(folder, lambda rgb: rgb, prefetch=0)  # nothing reads frames through it
    else:
        size, device = model.image_size, model.device

        def prepare(rgb):
            return torch.from_numpy(to_model_input(rgb, size)).to(device, non_blocking=True)

        reader = FrameReader(folder, prepare, prefetch=cfg.chunking.prefetch)
    preview = (PreviewSettings(cfg.output.preview_fps, cfg.output.preview_max_side, cfg.output.preview_opacity)
               if cfg.output.preview else None)
    if previous is not None:
        truncate_lines(stage / PROMPTS_USED, previous.prompt_lines)
    writer = OutputWriter(stage, folder, preview=None if previous else preview, append_prompts=previous is not None,
                          fill_hole_area=0 if model is None or unet or model.sam2_fills_holes
                          else _hole_area_at_video_res(cfg, folder))
    writer.frames_written, writer.prompt_lines = ckpt.frames_written, ckpt.prompt_lines
    writer.object_frames = dict(ckpt.object_frames)
    engine = build_engine(job.choice.mode, job.folder, job.prompts, cfg, tracker=model, reader=reader,
                          chunks=chunks, scratch=stage, models=models, should_stop=should_stop,
                          resume_from=(ckpt, stage) if previous is not None else None)
    resumed_from = None
    # detect with self-training cuts its chunks after training, so they are announced as they start
    yield JobStarted(job.job_id, job.choice.mode, len(folder), len(chunks), ckpt.frames_written,
                     tuple(chunks) if resumable else ())
    try:
        for event in engine.run():
            if isinstance(event, FrameResult):
                writer.mask(event.frame, event.id_map)
            elif isinstance(event, AlphaResult):
                writer.alpha(event.frame, event.alpha, event.rgba)
            elif isinstance(event, PromptUsed):
                writer.prompt(event)
                if event.source in ("user", "mask", "detector"):
                    ckpt.prompt_counts[event.object_id] = ckpt.prompt_counts.get(event.object_id, 0) + 1
            elif isinstance(event, ChunkStarted):
                if previous is not None and resumed_from is None:
                    resumed_from = event.start if event.sweep == "forward" else event.end - 1
                ckpt.chunk_log.setdefault(event.chunk, {"index": event.chunk, "start": event.start,
                                                        "end": event.end - 1, "sweeps": [], "seconds": 0.0})
            elif isinstance(event, ChunkFinished):
                entry = ckpt.chunk_log[event.chunk]
                entry["sweeps"].append(event.sweep)
                entry["seconds"] = round(entry["seconds"] + event.seconds, 3)
                entry["frames_written"] = entry.get("frames_written", 0) + event.frames_emitted
                writer.flush()
                ckpt.done.append((event.sweep, event.chunk))
                ckpt.frames_written, ckpt.prompt_lines = writer.frames_written, writer.prompt_lines
                ckpt.object_frames = dict(writer.object_frames)
                ckpt.engine_state = dict(event.state)
                ckpt.save(stage, event.sweep, event.chunk, event.handover)
            elif isinstance(event, EngineWarning):
                warnings.append(event.message)
            yield event
        if previous is not None and preview is not None:
            writer.rebuild_preview(preview)
        writer.close()
    except BaseException:
        reader.close()
        try:
            writer.close()
        except Exception:  # the original error matters more than a writer error
            log.debug("writer failed while stopping", exc_info=True)
        raise
    reader.close()
    if writer.frames_written != len(folder):
        raise RuntimeError(f"internal error: wrote {writer.frames_written} of {len(folder)} masks")
    if job.choice.mode is Mode.MATTING and len(list((stage / ALPHA_DIR).glob("*.png"))) != len(folder):
        raise RuntimeError(f"internal error: an alpha matte is missing in {stage / ALPHA_DIR}")

    total = time.perf_counter() - t0
    manifest = build_manifest(job, out, chunks, ckpt.chunk_log, model, warnings, writer, ckpt.prompt_counts,
                              prompts=Prompts() if unet else job.prompts, started_at=started_at, total=total,
                              model_seconds=model_seconds, frame_wait=reader.wait_seconds)
    manifest["resumed_from_frame"] = resumed_from
    add_engine_records(manifest, engine, cfg, stage, out)
    Checkpoint.clear(stage)
    for scratch in stage.glob(".*"):  # hand-over partials, datasets, training runs
        shutil.rmtree(scratch, ignore_errors=True) if scratch.is_dir() else scratch.unlink(missing_ok=True)
    write_json(stage / MANIFEST, manifest)
    publish(stage, out, cfg.output.overwrite)
    yield JobFinished(out, manifest)


def _plan(job: PreparedJob) -> str:
    """What the chunks and their results depend on; a resume with another plan starts over."""
    cfg = job.config
    if job.choice.mode is Mode.UNET:
        from core.training.unet_checkpoint import resolve_unet_path

        path = resolve_unet_path(cfg)
        st = path.stat()
        return (f"unet, {len(job.folder)} frames, chunks {cfg.chunking.chunk_size}, model {path.resolve()} "
                f"{st.st_size} {st.st_mtime_ns}, threshold {cfg.models.unet_threshold}")
    prompts_id = hashlib.sha1(repr(job.prompts.objects).encode()).hexdigest()[:10]
    plan = (f"{job.choice.mode.value}, {len(job.folder)} frames, chunks {cfg.chunking.chunk_size}/"
            f"{cfg.chunking.overlap}, anchors {cfg.chunking.anchor_prompts}, prompts {prompts_id}")
    if job.choice.mode is Mode.MATTING:
        m = cfg.matting
        plan += (f", matting {cfg.models.matting or 'classical'} {m.solver} band {m.band} max {m.solve_max_side} "
                 f"weight {m.sample_weight} foreground {m.foreground} temporal {m.temporal}")
    return plan


def _model_warnings(job: PreparedJob, model) -> list[str]:
    warnings = []
    if job.choice.mode is Mode.UNET:
        if job.prompts.objects:
            warnings.append(f"unet mode takes no prompts: the {len(job.prompts.objects)} object(s) in "
                            "prompts.json were ignored (the U-Net marks its one trained object as id 1)")
    elif model is not None and model.weights.is_random:
        warnings.append("SAM2 runs with RANDOM weights (models.sam2_weights = \"random\"): the masks are "
                        "meaningless; use this for tests and speed measurements only")
    for msg in warnings:
        log.warning(msg)
    return warnings


def _hole_area_at_video_res(cfg: Config, folder: FrameFolder) -> int:
    """output.fill_hole_area is in SAM2 mask pixels (image_size / 4 square); scale it to the frame."""
    if cfg.output.fill_hole_area <= 0:
        return 0
    low = cfg.models.image_size / 4
    return int(round(cfg.output.fill_hole_area * (folder.width / low) * (folder.height / low)))
