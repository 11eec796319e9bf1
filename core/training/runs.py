"""A training run folder, shared by the trainers: last.pt / best.pt / metrics.jsonl, refusing to
overwrite a run, resuming one, and the batch loop's cancel check. No torch at import."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from core.errors import Cancelled, ModelError, TrainingError

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
VAL_PREVIEW = "val_preview.png"  # one validation image with the prediction (red) and the truth (green outline)


def write_val_preview(out: Path, rgb, predicted, truth) -> None:
    """val_preview.png in the run folder, replaced each epoch (the dashboard's preview of a training job)."""
    import cv2
    import numpy as np

    picture = rgb.astype(np.float32)
    picture[predicted] = picture[predicted] * 0.5 + np.array([230, 40, 40], np.float32) * 0.5
    picture = np.ascontiguousarray(picture.clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, (40, 230, 40), 1)
    tmp = out / f".{VAL_PREVIEW}.tmp.png"
    if cv2.imwrite(str(tmp), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        os.replace(tmp, out / VAL_PREVIEW)


def data_workers(requested: int) -> int:
    """train.workers, held to the CPUs this process may use: more loader processes than CPUs only
    compete for them (and torch warns about it)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(requested, cpus))


def refuse_existing(out: Path, also: tuple[str, ...] = ()) -> None:
    """A run folder that already holds a run (or any of `also`) is never overwritten without --resume."""
    taken = [name for name in (LAST, BEST, METRICS, *also) if (out / name).exists()]
    if taken:
        raise TrainingError(f"{out} already holds a training run ({', '.join(taken)}); choose another --out, "
                            "or pass --resume to continue it")


def previous_run(out: Path, resume: bool, load: Callable[[Path], dict]) -> dict | None:
    """last.pt of an earlier run in `out` (read with `load`) when resuming; refuses to overwrite a run
    otherwise. None when there is nothing to continue: start from epoch 1."""
    if not resume:
        refuse_existing(out)
        return None
    if not (out / LAST).exists():
        return None
    try:
        data = load(out / LAST)
    except Exception as e:
        raise TrainingError(f"cannot resume from {out / LAST} ({e}); choose another --out to start over") from e
    if "optimizer" not in data or "history" not in data:
        raise TrainingError(f"{out / LAST} is not a resumable last.pt (no optimizer state); choose another --out")
    return data


def resume_state(previous: dict | None, model, optimizer, lr: float, out: Path, read_header: Callable[[Path], dict],
                 save: Callable[[Path, dict], None], best_keys: Iterable[str]) -> tuple[list[dict], dict | None, int]:
    """Make the run folder; with `previous` (last.pt), load its weights and optimizer (the configured
    learning rate wins over the saved one), rewrite metrics.jsonl to the epochs it covers and best.pt
    if a crash came between the two files. Returns (history, best, first epoch to run): ([], None, 1)
    for a new run."""
    out.mkdir(parents=True, exist_ok=True)
    if previous is None:
        return [], None, 1
    model.load_state_dict(previous["model"])
    optimizer.load_state_dict(previous["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    history = [dict(m) for m in previous["history"] if m.get("epoch", 0) <= previous["epoch"]]
    write_lines(out / METRICS, history)
    best = previous.get("best")
    if (best or {}).get("epoch") == previous["epoch"]:
        try:
            current = read_header(out / BEST)["epoch"]
        except ModelError:  # missing or unreadable: write it again
            current = None
        if current != best["epoch"]:
            save(out / BEST, {k: previous[k] for k in best_keys if k in previous})
    return history, best, previous["epoch"] + 1


def save_epoch(out: Path, ckpt: dict, run: dict, best_now: bool, history: list[dict],
               save: Callable[[Path, dict], None]) -> None:
    """The files of a finished epoch: last.pt (`ckpt` plus `run`: optimizer, history, best, ...) first,
    since it says which epoch is best and so lets --resume repair a crash anywhere after it; then
    best.pt (`ckpt` alone) when this epoch is the best so far; then metrics.jsonl."""
    save(out / LAST, {**ckpt, **run})
    if best_now:
        save(out / BEST, ckpt)
    write_lines(out / METRICS, history)


def optimise(loss, optimizer, scaler, epoch: int, lr: float) -> float:
    """One optimisation step on `loss` (through the mixed-precision `scaler` when given); returns the
    loss value. A loss that is no longer finite stops the run, saying what to change."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingError(f"the loss became {value} in epoch {epoch}; lower train.lr "
                            f"(now {lr}) and start again with another --out")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return value


def batches(loader, should_stop: Callable[[], bool]) -> Iterator[object]:
    """The loader's batches, checking should_stop before each; a dataset error from a worker process
    comes back as the one-line TrainingError it was."""
    items = iter(loader)
    while True:
        if should_stop():
            raise Cancelled("training cancelled; last.pt holds the last finished epoch (--resume continues)")
        try:
            batch = next(items)
        except StopIteration:
            return
        except TrainingError as e:
            last_line = str(e).strip().splitlines()[-1]
            raise TrainingError(last_line.split("TrainingError: ", 1)[-1]) from None
        yield batch


def read_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_lines(path: Path, lines: list[dict]) -> None:
    """metrics.jsonl, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
