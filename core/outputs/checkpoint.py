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
        )

    def save(self, stage: Path, sweep: str, handover: dict[int, np.ndarray]) -> None:
        """Record a finished step; the hand-over masks go first so the JSON never points at a missing file."""
        path = stage / f".handover-{sweep}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **{str(k): v for k, v in handover.items()})
        os.replace(tmp, path)
        write_json(stage / CHECKPOINT, {
            "done": self.done, "prompt_lines": self.prompt_lines, "frames_written": self.frames_written,
            "object_frames": self.object_frames, "chunk_log": self.chunk_log, "prompt_counts": self.prompt_counts,
        })

    @staticmethod
    def handovers(stage: Path) -> dict[str, dict[int, np.ndarray]]:
        out = {}
        for sweep in ("forward", "backward"):
            path = stage / f".handover-{sweep}.npz"
            if path.exists():
                with np.load(path) as data:
                    out[sweep] = {int(k): data[k] for k in data.files}
        return out


def truncate_lines(path: Path, keep: int) -> None:
    """Cut a JSONL file back to its first `keep` lines (drop what an unfinished chunk wrote)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
    path.write_text("".join(lines), encoding="utf-8")
