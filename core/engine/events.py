"""What engines yield. Pipelines consume these; nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FrameResult:
    """The final object-id map of one frame (0 = background)."""

    frame: int
    id_map: np.ndarray = field(repr=False)
    chunk: int


@dataclass(frozen=True)
class PromptUsed:
    """One prompt actually given to SAM2 (a line of prompts_used.jsonl)."""

    frame: int
    object_id: int
    source: str  # user | detector | handover | auto | mask
    chunk: int
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    confidence: float | None = None
    class_name: str | None = None  # the detector's class (detector prompts)


@dataclass(frozen=True)
class ChunkStarted:
    chunk: int
    start: int
    end: int
    sweep: str  # forward | backward


@dataclass(frozen=True)
class ChunkFinished:
    chunk: int
    start: int
    end: int
    sweep: str
    seconds: float
    frames_emitted: int
    handover: dict = field(default_factory=dict, repr=False)  # object id -> mask for the next chunk
    state: dict = field(default_factory=dict)  # the engine's own counters after this chunk (for resuming)


@dataclass(frozen=True)
class EngineWarning:
    message: str
    frame: int | None = None
    object_id: int | None = None


@dataclass(frozen=True)
class DeviceMemory:
    """What a running job holds on its model's device, in MiB: `job_mb` is its own SAM2 state (exact even
    when jobs share a device); `used_mb` and `peak_mb` are the process's allocation now and its peak
    since the job started (CUDA only, else None; they include the model's weights)."""

    device: str
    job_mb: float
    used_mb: float | None = None
    peak_mb: float | None = None


@dataclass(frozen=True)
class Phase:
    """A stage of a job that is not frame-by-frame work (e.g. training the detector)."""

    name: str


@dataclass(frozen=True)
class AlphaResult:
    """The 8-bit alpha matte of one frame (matting mode), with its RGBA cut-out when asked for."""

    frame: int
    alpha: np.ndarray = field(repr=False)
    rgba: np.ndarray | None = field(default=None, repr=False)
    fine: np.ndarray | None = field(default=None, repr=False)  # the alpha in [0, 1] before 8-bit rounding


@dataclass
class Records:
    """What a model or an engine adds to a job's manifest: entries of its "models", "weights" and
    "timings" sections, warnings, top-level fields, and files to put in the output folder (name ->
    where the file is now)."""

    models: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    fields: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def then(self, other: "Records") -> "Records":
        """These records followed by `other`'s (later entries win)."""
        return Records({**self.models, **other.models}, {**self.weights, **other.weights},
                       {**self.timings, **other.timings}, [*self.warnings, *other.warnings],
                       {**self.fields, **other.fields}, {**self.files, **other.files})
