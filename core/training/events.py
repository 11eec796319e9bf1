"""What trainers yield. The CLI draws progress bars from them, the daemon writes them to SQLite."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainStarted:
    kind: str
    epochs: int
    steps_per_epoch: int
    train_items: int            # training samples (frames) per epoch
    val_items: int              # validation samples
    device: str
    start_epoch: int = 1        # > 1 when an interrupted run continues from last.pt
    warnings: tuple[str, ...] = ()   # what the person training should know (SAM2 with random weights ...)


@dataclass(frozen=True)
class TrainPrepare:
    """Work before the first step (encoding frames for a cache): `done` of `total`, `reused` already there."""
    what: str
    done: int
    total: int
    reused: int = 0


@dataclass(frozen=True)
class TrainStep:
    epoch: int
    step: int                   # optimisation steps done in this run so far (across epochs)
    total_steps: int
    loss: float


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    metrics: dict = field(default_factory=dict)   # the metrics.jsonl line of this epoch (train_loss, val_iou ...)
    best: bool = False                            # this epoch's checkpoint became best.pt
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainFinished:
    out: Path
    best: Path
    last: Path
    metrics: dict = field(default_factory=dict)   # of the best epoch
    seconds: float = 0.0
    stopped_early: bool = False


RANDOM_SAM2 = ("SAM2 runs with RANDOM weights (models.sam2_weights = \"random\"): what this run learns only "
               "fits a random SAM2; use it for tests and speed measurements only")


def format_metrics(metrics: dict) -> str:
    """A metrics.jsonl line for people: "train_loss 0.4123, lr 1.0e-05, ..." (no epoch, no empty values)."""
    def value(v) -> str:
        if isinstance(v, float):
            return f"{v:.1e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
        return str(v)

    return ", ".join(f"{k} {value(v)}" for k, v in metrics.items() if k != "epoch" and v is not None)
