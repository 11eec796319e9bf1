"""Training kinds by name. Checking a dataset needs no torch, so the TUI and `--queue` can do it."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from core.config import Config
from core.errors import TrainingError


@dataclass(frozen=True)
class TrainerSpec:
    kind: str
    module: str                 # has check(data) -> str (a summary) and train(data, out, cfg, ...) -> events
    summary: str
    # what train.epochs / lr / batch_size / img_size = 0 mean for this kind (its seed's values);
    # img_size 0 here means models.image_size, lr 0 the library's own default
    defaults: dict = field(default_factory=lambda: {"epochs": 20, "lr": 1e-4, "batch_size": 8, "img_size": 640})


TRAINERS: dict[str, TrainerSpec] = {
    "unet": TrainerSpec("unet", "core.training.unet", "direct U-Net binary segmenter (seed 000)"),
    "matting": TrainerSpec("matting", "core.training.matting", "alpha refiner for matting mode (seed 001)"),
    "sam2-decoder": TrainerSpec("sam2-decoder", "core.training.sam2_decoder", "SAM2 mask decoder fine-tuning (seed 003)",
                                {"epochs": 15, "lr": 1e-5, "batch_size": 4, "img_size": 0}),
    "yolo": TrainerSpec("yolo", "core.training.yolo", "Ultralytics detector from masks or a YOLO dataset",
                        {"epochs": 20, "lr": 0.0, "batch_size": 8, "img_size": 640}),
}


def spec(kind: str) -> TrainerSpec:
    found = TRAINERS.get(kind)
    if found is None:
        raise TrainingError(f"unknown training kind '{kind}'; choose one of {', '.join(TRAINERS)}")
    return found


def with_kind_defaults(cfg: Config, kind: str) -> Config:
    """`cfg` with train.epochs / lr / batch_size / img_size left at 0 replaced by `kind`'s defaults.
    sam2-decoder trains at SAM2's own input size: its img_size is models.image_size, and another
    value is refused rather than silently ignored."""
    t, defaults = cfg.train, spec(kind).defaults
    chosen = {key: getattr(t, key) or defaults[key] for key in ("epochs", "lr", "batch_size", "img_size")}
    if kind == "sam2-decoder":
        if chosen["img_size"] not in (0, cfg.models.image_size):
            raise TrainingError(f"sam2-decoder trains at SAM2's input size, models.image_size = "
                                f"{cfg.models.image_size}; set --set models.image_size={chosen['img_size']} "
                                "instead of train.img_size (or leave train.img_size at 0)")
        chosen["img_size"] = cfg.models.image_size
    return dataclasses.replace(cfg, train=dataclasses.replace(t, **chosen))


def check_dataset(kind: str, data: Path) -> str:
    """Validate `data` for `kind` without loading torch; returns a one-line summary of what was found."""
    data = Path(data)
    if not data.is_dir():
        raise TrainingError(f"the dataset folder {data} does not exist; give --data the folder that holds train/")
    return importlib.import_module(spec(kind).module).check(data)


def trainer(kind: str) -> Callable[..., Iterator[object]]:
    """train(data, out, cfg, *, should_stop, resume) of `kind` (imports torch)."""
    return importlib.import_module(spec(kind).module).train


def default_out(cfg: Config, kind: str, data: Path) -> Path:
    """<train.out>/<kind>-<dataset folder name>, numbered when taken."""
    root = cfg.path(cfg.train.out)
    name = f"{kind}-{Path(data).resolve().name}"
    candidate, n = root / name, 2
    while candidate.exists():
        candidate, n = root / f"{name}-{n}", n + 1
    return candidate


def queue_training(store, cfg: Config, kind: str, data: Path | str, out: Path | str | None = None,
                   sets: list[str] | tuple[str, ...] = ()) -> str:
    """Check the request and add a training job (kind "train", mode = KIND) for the daemon."""
    from core.config import parse_sets, with_overrides

    data = Path(data).expanduser().resolve()
    summary = check_dataset(kind, data)
    with_kind_defaults(with_overrides(cfg, parse_sets(list(sets)), "reelmask train --set") if sets else cfg, kind)
    target = Path(out).expanduser().resolve() if out else default_out(cfg, kind, data)
    if (target / "last.pt").exists() or (target / "best.pt").exists():
        raise TrainingError(f"{target} already holds a training run; choose another --out")
    busy = [j for j in store.jobs(["queued", "running", "interrupted"]) if j.kind == "train" and j.output_path == str(target)]
    if busy:
        raise TrainingError(f"training job {busy[0].id} already writes to {target}; choose another --out")
    target.mkdir(parents=True, exist_ok=True)  # claims the name, so the next default run is numbered
    options = {"sets": list(sets)} if sets else None
    job_id = store.add_job(f"{kind}: {data.name}", data, kind="train", mode=kind, source="train", options=options)
    store.update_job(job_id, output_path=str(target))
    store.log("info", f"training {kind} queued on {data} ({summary}) -> {target}", job_id)
    return job_id
