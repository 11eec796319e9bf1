"""One job from a frame folder to a finished output folder.

`prepare_job` checks everything about the input (frames, prompts, job.toml, mode) without
loading a model, so bad input fails in milliseconds. `run_job` then yields events while it
works; the CLI draws a progress bar from them, the daemon records them in SQLite.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from core.config import Config, LimitsConfig, parse_toml, with_overrides
from core.engine.chunks import Chunk
from core.engine.events import (AlphaResult, ChunkFinished, ChunkStarted, DeviceMemory, EngineWarning, FrameResult,
                                Phase, PromptUsed, Records)
from core.engine.modes import SAM2, UNET, EngineInputs, mode_spec, model_records
from core.errors import ConfigError, FrameFolderError
from core.frames import FrameFolder, FrameReader, to_model_input
from core.video import is_video_name
from core.modes import Mode, ModeChoice, choose_mode
from core.models.weights import cache_dir
from core.outputs.folder import MANIFEST, check_target, open_staging, publish, staging_path, write_json
from core.outputs.checkpoint import Checkpoint, truncate_lines
from core.outputs.formats import check_formats
from core.outputs.manifest import build_manifest, utc_now
from core.outputs.preview import RANDOM_BANNER
from core.outputs.writer import ALPHA_DIR, PROMPTS_USED, OutputWriter, PreviewSettings
from core.intake import check_tree, read_text
from core.prompts import PROMPTS_FILE, Prompts, mask_names, parse_prompts, read_prompts_json

log = logging.getLogger(__name__)

# the pipeline is the one door to a job: callers (the CLI, the daemon) take the events it yields from here
__all__ = ["AlphaResult", "ChunkFinished", "ChunkStarted", "DeviceMemory", "EngineWarning", "FrameResult",
           "JobFinished", "JobStarted", "ModelPool", "OffloadTask", "Phase", "PreparedJob", "PromptUsed", "prepare_job",
           "run_job", "run_offloaded"]

JOB_TOML = "job.toml"
FRAME_TIMES = "frames.jsonl"


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
    if is_video_name(input_dir.name) and input_dir.is_file():
        return _prepare_video_file(input_dir, config, mode, inbox_mode, job_id, confined)
    if not input_dir.is_dir():
        raise FrameFolderError(f"{input_dir} is not a folder; give a folder of numbered JPEG or PNG frames, or a "
                               "video file (.mp4, .mov, .mkv, .avi, .webm)")
    check_tree(input_dir, limits, confined=confined)
    job_mode, overrides = read_job_toml(input_dir, limits)
    if overrides:
        config = with_overrides(config, overrides, str(input_dir / JOB_TOML), job_scope=not trusted)
    raw_prompts = read_prompts_json(input_dir, limits)
    folder = FrameFolder.scan(input_dir, exclude=mask_names(raw_prompts), limits=limits, video=config.video)
    prompts = Prompts() if raw_prompts is None else parse_prompts(raw_prompts, folder, input_dir / PROMPTS_FILE,
                                                                  limits)
    choice = choose_mode(input_dir, prompts, explicit=mode, job_mode=job_mode, inbox_mode=inbox_mode)
    check_formats(config.output.formats, choice.mode.value)  # before any model loads
    spec = mode_spec(choice.mode)
    spec.check(input_dir, folder, prompts, config)
    if spec.model_kind(folder, prompts) == SAM2:
        from core.models.sam2_decoder import resolve_decoder_path

        resolve_decoder_path(config)  # every SAM2 mode: a wrong models.sam2_decoder fails before SAM2 loads
    return PreparedJob(job_id or uuid.uuid4().hex[:12], input_dir, folder, prompts, choice, config)


def _prepare_video_file(file: Path, config: Config, mode: str | None, inbox_mode: str | None, job_id: str | None,
                        confined: bool) -> PreparedJob:
    """A video file given by itself: no sidecars (nothing beside the file is read), the usual mode choice."""
    if confined and file.is_symlink():
        raise FrameFolderError(f"{file} is a symbolic link; the daemon does not follow links out of its folders: "
                               "copy or move the real file in instead")
    folder = FrameFolder.open_video(file, limits=config.limits, video=config.video)
    prompts = Prompts()
    choice = choose_mode(file, prompts, explicit=mode, inbox_mode=inbox_mode)
    check_formats(config.output.formats, choice.mode.value)
    spec = mode_spec(choice.mode)
    spec.check(file, folder, prompts, config)
    if spec.model_kind(folder, prompts) == SAM2:
        from core.models.sam2_decoder import resolve_decoder_path

        resolve_decoder_path(config)
    return PreparedJob(job_id or uuid.uuid4().hex[:12], file, folder, prompts, choice, config)


class ModelPool:
    """Keeps built models between jobs (the daemon runs many jobs with one set of models)."""

    def __init__(self):
        self._sam2: dict[tuple, object] = {}
        self._yolo: dict[tuple, object] = {}
        self._unet: dict[tuple, object] = {}
        self._refiner: dict[tuple, object] = {}

    def load(self, kind: str | None, cfg: Config):
        """The segmentation model a mode runs on (core.engine.modes: SAM2, UNET, or None for none)."""
        if kind is None:
            return None
        return self.unet(cfg) if kind == UNET else self.sam2(cfg)

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
        from core.models.unet import UnetSegmenter, resolve_unet_path

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
               m.dtype, m.seed, cfg.output.fill_hole_area, stamp, m.compile)
        if key not in self._sam2:
            self._sam2.clear()  # one SAM2 at a time: device memory is the scarce thing
            self._sam2[key] = Sam2Tracker(cfg, weights)
        tracker = self._sam2[key]
        tracker.seconds = 0.0
        return tracker


@dataclass(frozen=True)
class OffloadTask:
    """Independent work of a running job that another worker can do (today: a detect solo pass,
    core.engine.detect_parallel.SoloTask): paths, settings and small records, never frames."""

    job_id: str
    config: Config
    work: object


Helpers = Callable[[OffloadTask], "tuple[object, str] | None"]


def run_offloaded(task: OffloadTask, models: ModelPool, should_stop: Callable[[], bool]) -> object:
    """Do `task` here for a job that runs on another worker, with this worker's models."""
    from core.engine.detect_parallel import run_solo

    tracker = models.sam2(task.config)
    reader = _frame_reader(task.work.folder, tracker, task.config)
    try:
        return run_solo(task.work, tracker, reader, should_stop)
    finally:
        reader.close()


def run_job(job: PreparedJob, out: Path, *, models: ModelPool | None = None,
            should_stop: Callable[[], bool] = lambda: False, keep_partial: bool = False,
            resume: bool = False, helpers: Helpers | None = None) -> Iterator[object]:
    """Run a prepared job and publish its output folder; yields engine events along the way.

    With `resume`, a staging folder left by an interrupted run of the same job continues from its
    first unfinished chunk. On failure or cancel the staging folder is removed unless `keep_partial`.
    `helpers(task)` runs independent work of the job on another worker and returns the result with
    that worker's name, or None when none is free (see OffloadTask).
    """
    try:
        yield from _run_job(job, out, models, should_stop, resume, helpers)
    except BaseException:
        if not keep_partial:
            shutil.rmtree(staging_path(out), ignore_errors=True)
        raise


def _run_job(job: PreparedJob, out: Path, models: ModelPool | None, should_stop: Callable[[], bool],
             resume: bool, helpers: Helpers | None) -> Iterator[object]:
    cfg = job.config
    started_at, t0 = utc_now(), time.perf_counter()
    check_target(out, cfg.output.overwrite)
    spec = mode_spec(job.choice.mode)
    plan = spec.plan(job.folder, job.prompts, cfg)
    resumable = spec.resumable(job.prompts, cfg)
    previous = Checkpoint.load(staging_path(out)) if resume and resumable else None
    if previous is not None and previous.plan != plan:
        log.warning("the partial output of %s was made with other settings; starting over", job.input.name)
        previous = None
    stage = open_staging(out, keep=previous is not None)
    ckpt = previous or Checkpoint(plan=plan, job_id=job.job_id, output=str(out))
    models = models or ModelPool()
    t_model = time.perf_counter()
    kind = spec.model_kind(job.folder, job.prompts)
    model = models.load(kind, cfg)
    folder = job.folder
    chunks = spec.chunks(len(folder), cfg)
    memory = _memory_check(spec, job, cfg, kind, model, chunks)   # measures the cost once per model: load time
    model_seconds = time.perf_counter() - t_model
    warnings = _model_warnings([*(folder.source.warnings if folder.source else ()), *spec.warnings(job.prompts)],
                               kind, model)
    watch = MemoryWatch(model if kind == SAM2 else None)
    reader = _frame_reader(folder, model, cfg)
    random = kind == SAM2 and model.weights.is_random
    preview = (PreviewSettings(cfg.output.preview_fps, cfg.output.preview_max_side, cfg.output.preview_opacity,
                               RANDOM_BANNER if random else None) if cfg.output.preview else None)
    if previous is not None:
        truncate_lines(stage / PROMPTS_USED, previous.prompt_lines)
    writer = OutputWriter(stage, folder, preview=None if previous else preview, append_prompts=previous is not None,
                          fill_hole_area=0 if kind != SAM2 or model.sam2_fills_holes
                          else _hole_area_at_video_res(cfg, folder), png16="png16" in cfg.output.formats)
    writer.frames_written, writer.prompt_lines = ckpt.frames_written, ckpt.prompt_lines
    writer.object_frames = dict(ckpt.object_frames)
    offload = None if helpers is None else (lambda work: helpers(OffloadTask(job.job_id, cfg, work)))
    engine = spec.build(EngineInputs(folder, job.prompts, cfg, model, reader, chunks, stage, models, should_stop,
                                     offload))
    if previous is not None:
        engine.resume(set(ckpt.done), ckpt.handovers(stage), ckpt.engine_state)
    resumed_from = None
    for message in warnings:  # known before the first frame (random weights, the input's damage): said now
        yield EngineWarning(message)
    # detect with self-training cuts its chunks after training, so they are announced as they start
    yield JobStarted(job.job_id, job.choice.mode, len(folder), len(chunks), ckpt.frames_written,
                     tuple(chunks) if resumable else ())
    try:
        for event in engine.run():
            if isinstance(event, ChunkStarted) and previous is not None and resumed_from is None:
                resumed_from = event.start if event.sweep == "forward" else event.end - 1
            _record(event, writer, ckpt, stage, warnings)
            yield event
            reading = watch.read(force=isinstance(event, (ChunkStarted, ChunkFinished)))
            if reading is not None:
                yield reading
        if previous is not None and preview is not None:
            writer.rebuild_preview(preview)
        made = writer.formats(cfg.output.formats, cfg.output.preview_fps)
        writer.close()
    except BaseException:
        reader.close()
        try:
            writer.close()
        except Exception:  # the original error matters more than a writer error
            log.debug("writer failed while stopping", exc_info=True)
        folder.close()
        raise
    reader.close()
    folder.close()
    if writer.frames_written != len(folder):
        raise RuntimeError(f"internal error: wrote {writer.frames_written} of {len(folder)} masks")
    if spec.writes_alpha and len(list((stage / ALPHA_DIR).glob("*.png"))) != len(folder):
        raise RuntimeError(f"internal error: an alpha matte is missing in {stage / ALPHA_DIR}")

    total = time.perf_counter() - t0
    if memory is not None:
        memory.update(watch.summary())
    records = engine.records(out, cache_dir(cfg))
    if made:
        records = records.then(Records(fields={"formats": list(cfg.output.formats), "format_files": made}))
    for name, source in records.files.items():  # e.g. the self-trained detector
        shutil.copyfile(source, stage / name)
    manifest = build_manifest(job, out, chunks, ckpt.chunk_log, warnings, writer, ckpt.prompt_counts,
                              prompts=spec.used_prompts(job.prompts), model=model_records(kind, model, cfg, memory),
                              engine=records, started_at=started_at, total=total, model_seconds=model_seconds,
                              frame_wait=reader.wait_seconds, resumed_from=resumed_from)
    Checkpoint.clear(stage)
    for scratch in stage.glob(".*"):  # hand-over partials, datasets, training runs
        shutil.rmtree(scratch, ignore_errors=True) if scratch.is_dir() else scratch.unlink(missing_ok=True)
    if folder.source is not None:
        write_frame_times(stage / FRAME_TIMES, folder)
    write_json(stage / MANIFEST, manifest)
    publish(stage, out, cfg.output.overwrite)
    yield JobFinished(out, manifest)


def _memory_check(spec, job: PreparedJob, cfg: Config, kind: str | None, model, chunks: list[Chunk]) -> dict | None:
    """Before a SAM2 job starts: would it fit in its device's free memory? Raises DeviceMemoryError
    with what to change; returns the manifest's record (None for a mode without SAM2)."""
    if kind != SAM2:
        return None
    if not cfg.models.memory_check:
        return {"checked": False, "reason": "models.memory_check = false"}
    from core.models.memory_cost import check_fits

    frames = max((c.end - c.start for c in chunks), default=len(job.folder))
    return check_fits(model, spec.objects_known(job.folder, job.prompts, cfg), frames, job.folder.height,
                      job.folder.width, cfg.chunking.prefetch, spec.chunks_at_once(job.folder, job.prompts, cfg))


class MemoryWatch:
    """Device memory of a running SAM2 job, read at most once a second (and at chunk edges) as
    DeviceMemory events; the peaks go to the manifest."""

    EVERY = 1.0

    def __init__(self, tracker):
        self.tracker = tracker
        self.last = float("-inf")
        self.job_peak = 0.0
        self.cuda = tracker is not None and tracker.device.type == "cuda"
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(tracker.device)

    def read(self, force: bool = False) -> DeviceMemory | None:
        now = time.monotonic()
        if self.tracker is None or (not force and now - self.last < self.EVERY):
            return None
        self.last = now
        job = self.tracker.live.held_mb()
        self.job_peak = max(self.job_peak, job)
        used = peak = None
        if self.cuda:
            import torch

            used = torch.cuda.memory_allocated(self.tracker.device) / 2**20
            peak = torch.cuda.max_memory_allocated(self.tracker.device) / 2**20
        return DeviceMemory(str(self.tracker.device), round(job, 1), used and round(used, 1), peak and round(peak, 1))

    def summary(self) -> dict:
        out = {"job_state_peak_mb": round(self.job_peak, 1)}
        if self.cuda:
            import torch

            out["process_peak_mb"] = round(torch.cuda.max_memory_allocated(self.tracker.device) / 2**20, 1)
        return out


def write_frame_times(path: Path, folder: FrameFolder) -> None:
    """frames.jsonl: each output frame of a video input with its timestamp on the source's timeline."""
    info = folder.source
    with open(path, "w", encoding="utf-8") as f:
        for i, name in enumerate(folder.names):
            f.write(json.dumps({"frame": i, "name": name, "pts": info.pts[i],
                                "time": round(float(info.pts[i] * info.time_base), 6)}) + "\n")


def _model_warnings(warnings: list[str], kind: str | None, model) -> list[str]:
    """The mode's warnings, and one when SAM2 has random weights; each is logged too."""
    if kind == SAM2 and model.weights.is_random:
        warnings.append("SAM2 runs with RANDOM weights (models.sam2_weights = \"random\"): the masks are "
                        "meaningless; use this for tests and speed measurements only")
    for msg in warnings:
        log.warning(msg)
    return warnings


def _frame_reader(folder: FrameFolder, model, cfg: Config) -> FrameReader:
    """Frames decoded ahead and turned into the model's input on its device (none for a mode without a model)."""
    if model is None:
        return FrameReader(folder, lambda rgb: rgb, prefetch=0)  # nothing reads frames through it
    import torch

    size, device = model.image_size, model.device

    pin = device.type == "cuda"

    def prepare(rgb):
        # on the reader thread: page-locked memory lets the copy to the GPU run without holding this thread
        host = torch.from_numpy(to_model_input(rgb, size))
        return (host.pin_memory() if pin else host).to(device, non_blocking=True)

    return FrameReader(folder, prepare, prefetch=cfg.chunking.prefetch)


def _record(event: object, writer: OutputWriter, ckpt: Checkpoint, stage: Path, warnings: list[str]) -> None:
    """What an engine event leaves behind: masks, mattes and prompts written, chunk timings, and after
    each chunk the resume checkpoint."""
    if isinstance(event, FrameResult):
        writer.mask(event.frame, event.id_map)
    elif isinstance(event, AlphaResult):
        writer.alpha(event.frame, event.alpha, event.rgba, event.fine)
    elif isinstance(event, PromptUsed):
        writer.prompt(event)
        if event.source in ("user", "mask", "detector"):
            ckpt.prompt_counts[event.object_id] = ckpt.prompt_counts.get(event.object_id, 0) + 1
    elif isinstance(event, ChunkStarted):
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


def _hole_area_at_video_res(cfg: Config, folder: FrameFolder) -> int:
    """output.fill_hole_area is in SAM2 mask pixels (image_size / 4 square); scale it to the frame."""
    if cfg.output.fill_hole_area <= 0:
        return 0
    low = cfg.models.image_size / 4
    return int(round(cfg.output.fill_hole_area * (folder.width / low) * (folder.height / low)))
