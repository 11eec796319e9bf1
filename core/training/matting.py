"""`reelmask train matting`: the learned alpha refiner of seed 001 for matting mode (`models.matting`).

Every `train.frame_every`-th frame of each clip is composited over its clip's background; a coarse
mask made from the true alpha with segmentation-like errors prompts SAM2, whose logits and
intermediate features are cached once in OUT/cache/ (core/training/matting_cache.py). Each epoch
moves image, mask, alpha and features together (flips, homographies, elastic), trains the small
U-Net with L1 weighted `train.semi_weight` times where the truth is semi-transparent, and validates
on held-out clips in frame order: SAD, MSE, gradient error, dtSSD (core/matting/metrics.py).

`check` needs no torch (the dashboard calls it); `train` yields TrainStarted, a TrainStep per step,
an EpochEnd per epoch and TrainFinished, writing metrics.jsonl, last.pt (resumable) and best.pt
(lowest val_sad, or train loss without validation). Layouts: core/training/matting_data.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core import __version__
from core.config import Config, TrainConfig
from core.errors import TrainingError
from core.matting import features as feature_spec
from core.models.checkpoints import REFINER, save_checkpoint
from core.training.registry import with_kind_defaults
from core.training.events import RANDOM_SAM2, EpochEnd, TrainFinished, TrainStarted, TrainStep
from core.training.matting_cache import CachedSamples, FeatureCache
from core.training.matting_data import (BACKGROUNDS, backgrounds_folder, find_backgrounds, find_dataset,
                                        split)
from core.training.runs import write_val_preview
from core.training.runs import BEST, LAST, batches, previous_run, optimise, resume_state, save_epoch, data_workers

CACHE = "cache"
CKPT_KEYS = ("kind", "format", "arch", "img_size", "epoch", "metrics", "sam2", "features", "train", "model", "reelmask")


def check(data: Path) -> str:
    """Validate clips (pairs, headers of the frames used at the default train.frame_every) and
    DATA/backgrounds when present; a one-line summary."""
    data = Path(data)
    every = TrainConfig().frame_every
    summary = find_dataset(data, every).summary(every)
    if (data / BACKGROUNDS).is_dir():
        n = len(find_backgrounds(data / BACKGROUNDS))
        return f"{summary}; {n} background{'s' if n != 1 else ''} in {BACKGROUNDS}/"
    return f"{summary}; no {BACKGROUNDS}/ (train.backgrounds must name a folder of them)"


def _sam2_key(cfg: Config):
    """Variant, weights and sizes of the SAM2 that makes the features (resolves, may download)."""
    from core.models.weights import resolve_sam2

    weights = resolve_sam2(cfg)
    key = {"variant": weights.variant.name, "weights": weights.sha256, "image_size": cfg.models.image_size,
           "seed": cfg.models.seed if weights.is_random else None}
    return weights, key


def train(data: Path, out: Path, cfg: Config, *, should_stop: Callable[[], bool] = lambda: False,
          resume: bool = False) -> Iterator[object]:
    """Train a matting refiner on `data` into `out`; yields training events. Raises Cancelled when
    should_stop(), TrainingError for data that cannot work."""
    cfg = with_kind_defaults(cfg, "matting")
    t = cfg.train
    data, out = Path(data), Path(out)
    if out.resolve().is_relative_to(data.resolve()):
        raise TrainingError(f"--out {out} is inside the dataset {data}; the run (and its SAM2 cache) must live "
                            "elsewhere: choose another --out")
    parts = split(find_dataset(data, t.frame_every), find_backgrounds(backgrounds_folder(data, cfg)),
                  t.frame_every, t.val_fraction, t.seed)
    previous = previous_run(out, resume, REFINER.load)
    weights, sam2_key = _sam2_key(cfg)
    if previous is not None:
        if previous["img_size"] != t.img_size:
            raise TrainingError(f"{out / LAST} was trained at train.img_size = {previous['img_size']}; resume with "
                                f"--set train.img_size={previous['img_size']} or choose another --out")
        if {k: previous["sam2"].get(k) for k in sam2_key} != sam2_key:
            raise TrainingError(f"{out / LAST} was trained on features of SAM2 {previous['sam2']}; resume with "
                                "the same models.sam2, models.sam2_weights, models.image_size (and models.seed) "
                                "or choose another --out")

    import torch
    from torch.utils.data import DataLoader

    from core.matting.refiner_model import DEFAULT_ARCH, build_refiner, to_tensors, weighted_l1
    from core.models.devices import pick_device
    from core.models.sam2_model import Sam2Tracker
    from core.training.matting_augment import augment

    began = time.perf_counter()
    device = pick_device(cfg.models.device)
    cuda = device.type == "cuda"
    torch.manual_seed(t.seed)
    arch = dict(previous["arch"]) if previous else dict(DEFAULT_ARCH)
    model = build_refiner(arch).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr)
    history, best, start = resume_state(previous, model, optimizer, t.lr, out, REFINER.header, save_checkpoint,
                                        CKPT_KEYS)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)

    train_samples = [s for clip in parts.train for s in clip]
    val_clips = [clip for clip in parts.val if clip]
    n_val = sum(len(c) for c in val_clips)
    steps = math.ceil(len(train_samples) / t.batch_size)
    total = steps * max(0, t.epochs - start + 1)
    cache = FeatureCache(out / CACHE, t.img_size, sam2_key)
    yield from cache.fill([*train_samples, *(s for c in val_clips for s in c)], lambda: Sam2Tracker(cfg, weights),
                          should_stop)
    yield TrainStarted("matting", t.epochs, steps, len(train_samples), n_val, str(device), start,
                       (RANDOM_SAM2,) if weights.is_random else ())
    identity = cache.identity()
    if cuda:
        torch.cuda.empty_cache()  # SAM2 is done with: its memory goes back before training
    train_set = CachedSamples([cache.path(s) for s in train_samples])
    loader_options = {"batch_size": t.batch_size, "num_workers": data_workers(t.workers), "pin_memory": cuda}
    header = {"kind": REFINER.kind, "format": REFINER.format, "arch": arch, "img_size": t.img_size, "sam2": identity,
              "features": {"version": feature_spec.VERSION, "channels": feature_spec.CHANNELS,
                           "description": feature_spec.DESCRIPTION},
              "train": {"frame_every": t.frame_every, "semi_weight": t.semi_weight, "split": parts.how},
              "reelmask": __version__}

    step = 0
    for epoch in range(start, t.epochs + 1):
        epoch_began = time.perf_counter()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        model.train()
        loss_sum, seen = 0.0, 0
        for batch in batches(DataLoader(train_set, sampler=order.tolist(), **loader_options), should_stop):
            rgb, mask, feats = to_tensors(*batch[:3], device)
            alpha = batch[3].to(device).float() / 255.0
            rng = np.random.default_rng([t.seed, epoch, step])
            rgb, mask, feats, alpha = augment(rgb, mask, feats, alpha, rng)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                logits = model(rgb, mask, feats)
            loss = weighted_l1(logits, alpha, t.semi_weight)
            value = optimise(loss, optimizer, scaler, epoch, t.lr)
            step += 1
            loss_sum, seen = loss_sum + value * len(rgb), seen + len(rgb)
            yield TrainStep(epoch, step, total, value)

        scores = _validate(model, val_clips, cache, device, t, should_stop, preview=out) if n_val else {}
        seconds = time.perf_counter() - epoch_began
        metrics = {"epoch": epoch, "train_loss": round(loss_sum / max(seen, 1), 6),
                   **{k: scores.get(k) for k in ("val_loss", "val_sad", "val_mse", "val_grad", "val_dtssd")},
                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                   "train_items": len(train_samples), "val_items": n_val}
        history.append(metrics)
        score = metrics["val_sad"] if metrics["val_sad"] is not None else metrics["train_loss"]
        is_best = best is None or score < best["value"]
        if is_best:
            best = {"epoch": epoch, "value": score}
        weights_now = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        ckpt = {**header, "epoch": epoch, "metrics": metrics, "model": weights_now}
        save_epoch(out, ckpt, {"optimizer": optimizer.state_dict(), "history": history, "best": best,
                               "data": str(data.resolve())}, is_best, history, save_checkpoint)
        yield EpochEnd(epoch, metrics, is_best, seconds)

    best_metrics = next((m for m in history if best and m["epoch"] == best["epoch"]), {})
    yield TrainFinished(out, out / BEST, out / LAST, best_metrics, time.perf_counter() - began)


def _validate(model, clips, cache: FeatureCache, device, t: TrainConfig, should_stop,
              preview: Path | None = None) -> dict:
    """Validation clips in frame order: weighted L1, and SAD / MSE / gradient error per frame and
    dtSSD per clip (core.matting.metrics), averaged. With `preview` (the run folder), the first
    validation frame's matte goes to val_preview.png there."""
    import torch

    from core.matting.metrics import dtssd, gradient_error, mse, sad
    from core.matting.refiner_model import to_tensors, weighted_l1

    model.eval()
    losses, sads, mses, grads, dts = [], [], [], [], []
    with torch.inference_mode():
        for clip in clips:
            preds, gts = [], []
            for rgb, mask, feats, alpha in batches(_chunks(CachedSamples([cache.path(s) for s in clip]), t.batch_size),
                                                    should_stop):
                x = to_tensors(rgb, mask, feats, device)
                target = torch.as_tensor(alpha).to(device).float() / 255.0
                with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                    logits = model(*x)
                losses.append(weighted_l1(logits, target, t.semi_weight).item() * len(target))
                preds.extend(torch.sigmoid(logits.float())[:, 0].cpu().numpy())
                gts.extend(target[:, 0].cpu().numpy())
                if preview is not None and len(preds) == len(target):  # the first batch of the first clip
                    first = np.asarray(rgb[0])
                    if first.ndim == 3 and first.shape[-1] != 3:
                        first = first.transpose(1, 2, 0)
                    if first.shape[:2] == preds[0].shape:
                        write_val_preview(preview, first.astype(np.uint8), preds[0] > 0.5, gts[0] > 0.5)
            for p, g in zip(preds, gts):
                sads.append(sad(p, g))
                mses.append(mse(p, g))
                grads.append(gradient_error(p, g))
            if len(preds) >= 2:
                dts.append(dtssd(preds, gts))
    n = len(sads)

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 6) if values else None

    return {"val_loss": round(sum(losses) / n, 6), "val_sad": mean(sads), "val_mse": mean(mses),
            "val_grad": mean(grads), "val_dtssd": mean(dts)}


def _chunks(dataset: CachedSamples, size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Consecutive samples stacked into batches, in order (no DataLoader: validation order matters)."""
    for i in range(0, len(dataset), size):
        items = [dataset[j] for j in range(i, min(i + size, len(dataset)))]
        yield tuple(np.stack(parts) for parts in zip(*items))
