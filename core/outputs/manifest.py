"""manifest.json: what a job did, with which models, settings and timings (DESIGN.md, output contract)."""

from __future__ import annotations

import dataclasses
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from core import __version__
from core.config import Config
from core.engine.chunks import Chunk
from core.frames import FrameFolder
from core.modes import ModeChoice
from core.outputs.writer import OutputWriter
from core.prompts import Prompts


class JobFacts(Protocol):
    """What the manifest reads of a job (the pipeline's prepared job has these)."""

    job_id: str
    input: Path
    folder: FrameFolder
    config: Config
    choice: ModeChoice


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"reelmask": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "sam2", "numpy", "opencv-python", "ultralytics"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def model_record(model, cfg: Config) -> tuple[dict, dict, dict]:
    """The manifest's "models" and "weights" entries and the model's timing, for SAM2 or the U-Net."""
    from core.engine.unet import UnetSegmenter

    if model is None:  # matting of given masks: no segmentation model ran
        return {}, {}, {}
    if isinstance(model, UnetSegmenter):
        from core.models.weights import cache_dir, sha256_file

        info = {"path": str(model.path.resolve()), "epoch": model.epoch, "img_size": model.image_size,
                "arch": model.arch, "threshold": cfg.models.unet_threshold, "device": str(model.device),
                "dtype": model.dtype, "trained_metrics": model.metrics}
        return ({"unet": info}, {"unet": sha256_file(model.path, cache_dir(cfg))},
                {"unet_seconds": round(model.seconds, 3)})
    w = model.weights
    info = {"name": w.variant.name, "config": w.variant.config, "checkpoint": str(w.checkpoint) if w.checkpoint else None,
            "image_size": model.image_size, "device": str(model.device), "dtype": model.dtype,
            "decoder": model.decoder}   # None, or the fine-tuned decoder loaded over SAM2's own
    weights = {"sam2": w.sha256}
    if model.decoder:
        weights["sam2_decoder"] = model.decoder["sha256"]
    return {"sam2": info}, weights, {"sam2_seconds": round(model.seconds, 3)}


def build_manifest(job: JobFacts, out: Path, chunks: list[Chunk], chunk_log: dict, model, warnings: list[str],
                   writer: OutputWriter, prompt_counts: dict[int, int], *, prompts: Prompts, started_at: str,
                   total: float, model_seconds: float, frame_wait: float) -> dict:
    """`prompts` are the ones the mode used (none for unet mode)."""
    folder = job.folder
    ids = sorted(set(prompts.object_ids) | set(writer.object_frames))
    objects = [
        {"id": o, "first_prompt_frame": prompts.first_frame(o) if o in prompts.object_ids else None,
         "user_prompts": len(prompts.for_object(o)), "prompts_given": prompt_counts.get(o, 0),
         "frames_with_mask": writer.object_frames.get(o, 0)}
        for o in ids
    ]
    models, weights, model_timing = model_record(model, job.config)
    return {
        "reelmask": __version__,
        "job_id": job.job_id,
        "name": job.input.name,
        "mode": job.choice.mode.value,
        "mode_reason": job.choice.reason,
        "input": str(job.input.resolve()),
        "output": str(out.resolve()),
        "frames": len(folder),
        "frame_size": [folder.width, folder.height],
        "first_frame": folder.names[0],
        "last_frame": folder.names[-1],
        "objects": objects,
        "chunks": [chunk_log.get(c.index, {"index": c.index, "start": c.start, "end": c.end - 1, "sweeps": []})
                   for c in chunks],
        "models": models,
        "weights": weights,
        "config": job.config.to_dict(),
        "timings": {
            "total_seconds": round(total, 3),
            "model_load_seconds": round(model_seconds, 3),
            **model_timing,
            "frame_wait_seconds": round(frame_wait, 3),
            "frames_per_second": round(len(folder) / total, 3) if total > 0 else None,
        },
        "versions": versions(),
        "warnings": [*warnings, *getattr(model, "warnings", ())],
        "resumed_from_frame": None,
        "started_at": started_at,
        "finished_at": utc_now(),
    }


def add_engine_records(manifest: dict, engine, cfg: Config, stage: Path, out: Path) -> None:
    """What only some engines know: refine's dropped components, the detector, a self-trained detector,
    the matting method."""
    if hasattr(engine, "matter"):
        info = engine.describe()
        manifest["models"]["matting"] = info
        if info.get("sha256"):
            manifest["weights"]["matting"] = info["sha256"]
        manifest["timings"]["matting_seconds"] = info.get("seconds")
        manifest["segmentation"] = "masks/" if getattr(engine.inner, "files", None) else "sam2"
        engine = engine.inner  # the segmentation engine's own records follow
    dropped = getattr(getattr(engine, "source", None), "dropped", 0)
    if dropped:
        manifest["warnings"].append(f"refine: {dropped} mask component(s) had a mean difference under "
                                    f"refine.filter_threshold ({cfg.refine.filter_threshold}) and were dropped")
    detector = getattr(engine, "detector", None)
    if detector is not None and getattr(detector, "path", None) is not None:
        from core.models.weights import cache_dir, sha256_file

        trained_path = out / "detector.pt" if getattr(engine, "trained", None) else detector.path
        manifest["models"]["yolo"] = {"path": str(trained_path), "imgsz": detector.imgsz,
                                      "classes": [detector.names[c] for c in engine.classes or []] or "all",
                                      "min_confidence": engine.min_confidence, "stride": engine.stride}
        manifest["weights"]["yolo"] = sha256_file(detector.path, cache_dir(cfg))
    trained = getattr(engine, "trained", None)
    if trained is not None:  # the self-trained detector is part of the result
        shutil.copyfile(trained, stage / "detector.pt")
        manifest["models"]["yolo_self_trained"] = {"path": str(out / "detector.pt"),
                                                  "train_frames": engine.train_frames,
                                                  "settings": dataclasses.asdict(engine.settings)}
