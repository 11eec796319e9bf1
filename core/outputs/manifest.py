"""manifest.json: what a job did, with which models, settings and timings (DESIGN.md, output contract)."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from core import __version__
from core.config import Config
from core.engine.chunks import Chunk
from core.engine.events import Records
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


def record_final_input(out: Path, final_input: Path) -> None:
    """After the daemon moved a job's input on (to done/), the manifest names where it is now, not the
    work/ folder it ran from (a video file by the file itself)."""
    from core.outputs.folder import MANIFEST, write_json
    import json

    path = out / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    source = manifest.get("source") or {}
    inner = final_input / source["file"] if source.get("kind") == "video" and source.get("file") else None
    where = inner if inner is not None and final_input.is_dir() and inner.is_file() else final_input
    manifest["input"] = str(where.resolve())
    write_json(path, manifest)


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


def build_manifest(job: JobFacts, out: Path, chunks: list[Chunk], chunk_log: dict, warnings: list[str],
                   writer: OutputWriter, prompt_counts: dict[int, int], *, prompts: Prompts, model: Records,
                   engine: Records, started_at: str, total: float, model_seconds: float, frame_wait: float,
                   resumed_from: int | None) -> dict:
    """`prompts` are the ones the mode used (none for unet mode); `model` and `engine` are what the
    segmentation model and the mode's engine record."""
    folder = job.folder
    ids = sorted(set(prompts.object_ids) | set(writer.object_frames))
    objects = [
        {"id": o, "first_prompt_frame": prompts.first_frame(o) if o in prompts.object_ids else None,
         "user_prompts": len(prompts.for_object(o)), "prompts_given": prompt_counts.get(o, 0),
         "frames_with_mask": writer.object_frames.get(o, 0)}
        for o in ids
    ]
    manifest = {
        "reelmask": __version__,
        "job_id": job.job_id,
        "name": job.input.stem if folder.source is not None and folder.source.path == job.input else job.input.name,
        "mode": job.choice.mode.value,
        "mode_reason": job.choice.reason,
        "input": str(job.input.resolve()),
        "output": str(out.resolve()),
        "frames": len(folder),
        "frame_size": [folder.width, folder.height],
        "source": folder.source.record() if folder.source is not None else {"kind": "frames"},
        "first_frame": folder.names[0],
        "last_frame": folder.names[-1],
        "objects": objects,
        "chunks": [chunk_log.get(c.index, {"index": c.index, "start": c.start, "end": c.end - 1, "sweeps": []})
                   for c in chunks],
        "models": {**model.models, **engine.models},
        "weights": {**model.weights, **engine.weights},
        "config": job.config.to_dict(),
        "timings": {
            "total_seconds": round(total, 3),
            "model_load_seconds": round(model_seconds, 3),
            **model.timings,
            "frame_wait_seconds": round(frame_wait, 3),
            "frames_per_second": round(len(folder) / total, 3) if total > 0 else None,
            **engine.timings,
        },
        "versions": versions(),
        "warnings": [*warnings, *model.warnings, *engine.warnings],
        "resumed_from_frame": resumed_from,
        "started_at": started_at,
        "finished_at": utc_now(),
    }
    return {**manifest, **model.fields, **engine.fields}
