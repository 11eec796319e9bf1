"""Resume points: after each finished chunk a job records what is done in its staging folder,
so a crash or kill -9 loses at most the chunk in flight."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.outputs.folder import write_json

CHECKPOINT = ".checkpoint.json"


@dataclass
class Checkpoint:
    done: list[tuple[str, int]] = field(default_factory=list)   # (sweep, chunk) steps finished
    prompt_lines: int = 0                                         # lines of prompts_used.jsonl they wrote
    frames_written: int = 0
    object_frames: dict[int, int] = field(default_factory=dict)
    chunk_log: dict[int, dict] = field(default_factory=dict)
    prompt_counts: dict[int, int] = field(default_factory=dict)
    handover_files: dict[str, str] = field(default_factory=dict)  # sweep -> file of its latest hand-over
    plan: str = ""  # what the chunks were cut from; a resume with another plan starts over
    engine_state: dict = field(default_factory=dict)  # the mode engine's counters (next object id, ...)
    job_id: str = ""   # whose partial output this is: a daemon that lost its database adopts the job again
    output: str = ""   # the output folder this staging folder becomes

    @classmethod
    def load(cls, stage: Path) -> "Checkpoint | None":
        try:
            data = json.loads((stage / CHECKPOINT).read_text())
        except (OSError, ValueError):
            return None
        return cls(
            done=[(s, int(i)) for s, i in data["done"]],
            prompt_lines=data["prompt_lines"],
            frames_written=data["frames_written"],
            object_frames={int(k): v for k, v in data["object_frames"].items()},
            chunk_log={int(k): v for k, v in data["chunk_log"].items()},
            prompt_counts={int(k): v for k, v in data.get("prompt_counts", {}).items()},
            handover_files=dict(data.get("handover_files", {})),
            plan=data.get("plan", ""),
            engine_state=data.get("engine_state", {}),
            job_id=data.get("job_id", ""),
            output=data.get("output", ""),
        )

    def save(self, stage: Path, sweep: str, chunk: int, handover: dict[int, np.ndarray]) -> None:
        """Record a finished step. The hand-over masks get a file per step, written before the JSON
        that names it, so a kill at any point leaves a consistent pair."""
        name = f".handover-{sweep}-{chunk:05d}.npz"
        tmp = stage / f".tmp-{name}"
        np.savez_compressed(tmp, **{str(k): v for k, v in handover.items()})
        os.replace(tmp, stage / name)
        self.handover_files[sweep] = name
        write_json(stage / CHECKPOINT, {
            "done": self.done, "prompt_lines": self.prompt_lines, "frames_written": self.frames_written,
            "object_frames": self.object_frames, "chunk_log": self.chunk_log, "prompt_counts": self.prompt_counts,
            "handover_files": self.handover_files, "plan": self.plan, "engine_state": self.engine_state,
            "job_id": self.job_id, "output": self.output,
        })
        for old in stage.glob(f".handover-{sweep}-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def handovers(self, stage: Path) -> dict[str, dict[int, np.ndarray]]:
        out = {}
        for sweep, name in self.handover_files.items():
            with np.load(stage / name) as data:
                out[sweep] = {int(k): data[k] for k in data.files}
        return out

    @staticmethod
    def clear(stage: Path) -> None:
        """Remove the resume files once the job is complete."""
        (stage / CHECKPOINT).unlink(missing_ok=True)
        for path in stage.glob(".handover-*.npz"):
            path.unlink()


def truncate_lines(path: Path, keep: int) -> None:
    """Cut a JSONL file back to its first `keep` lines (drop what an unfinished chunk wrote)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
    path.write_text("".join(lines), encoding="utf-8")
