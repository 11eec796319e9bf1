"""`reelmask train unet`: the direct U-Net binary segmenter of seed 000, trained with plain PyTorch.

`check` validates a dataset without torch (the dashboard calls it); `train` yields TrainStarted, a
TrainStep per optimisation step, an EpochEnd per epoch and TrainFinished, writing into `out`:
metrics.jsonl (one line per epoch), last.pt (every epoch, resumable) and best.pt (lowest val_loss,
or train loss without validation). Dataset layouts: see core/training/unet_data.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterator

from core import __version__
from core.config import Config
from core.errors import TrainingError
from core.training.registry import with_kind_defaults
from core.training.events import EpochEnd, TrainFinished, TrainStarted, TrainStep
from core.models.checkpoints import UNET, save_checkpoint
from core.training.runs import write_val_preview
from core.training.runs import BEST, LAST, batches, previous_run, optimise, resume_state, save_epoch, data_workers
from core.training.unet_data import Samples, find_dataset, split

# what best.pt keeps of last.pt
BEST_KEYS = ("kind", "format", "arch", "img_size", "normalize", "epoch", "metrics", "model", "reelmask")
# the normalisation of core.frames.to_model_input (ImageNet statistics), recorded for other readers
NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 255.0}


def check(data: Path) -> str:
    """Validate the dataset layout and every image/mask header; a one-line summary of what was found."""
    return find_dataset(Path(data)).summary()


def train(data: Path, out: Path, cfg: Config, *, should_stop: Callable[[], bool] = lambda: False,
          resume: bool = False) -> Iterator[object]:
    """Train a U-Net on `data` into `out`; yields training events. Raises Cancelled when should_stop()."""
    cfg = with_kind_defaults(cfg, "unet")
    t = cfg.train
    data, out = Path(data), Path(out)
    parts = split(find_dataset(data), t.val_fraction, t.seed)
    previous = previous_run(out, resume, UNET.load)
    if previous is not None and previous["img_size"] != t.img_size:
        raise TrainingError(f"{out / LAST} was trained at train.img_size = {previous['img_size']}; resume with "
                            f"--set train.img_size={previous['img_size']} or choose another --out")

    import torch
    from torch.utils.data import DataLoader

    from core.models.devices import pick_device
    from core.models.unet_net import DEFAULT_ARCH, build_unet
    from core.training.unet_loss import frame_ious, segmentation_loss

    began = time.perf_counter()
    device = pick_device(cfg.models.device)
    cuda = device.type == "cuda"
    torch.manual_seed(t.seed)
    arch = dict(previous["arch"]) if previous else dict(DEFAULT_ARCH)
    model = build_unet(arch).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    history, best, start = resume_state(previous, model, optimizer, t.lr, out, UNET.header, save_checkpoint,
                                        BEST_KEYS)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)

    train_set = Samples(parts.train, t.img_size, augment=True, seed=t.seed)
    val_set = Samples(parts.val, t.img_size)
    loader_options = {"batch_size": t.batch_size, "num_workers": data_workers(t.workers), "pin_memory": cuda}
    steps = math.ceil(len(train_set) / t.batch_size)
    total = steps * max(0, t.epochs - start + 1)
    yield TrainStarted(UNET.kind, t.epochs, steps, len(train_set), len(val_set), str(device), start)

    step = 0
    for epoch in range(start, t.epochs + 1):
        epoch_began = time.perf_counter()
        train_set.epoch = epoch
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        model.train()
        loss_sum, seen = 0.0, 0
        for x, y in batches(DataLoader(train_set, sampler=order.tolist(), **loader_options), should_stop):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                logits = model(x)
            loss = segmentation_loss(logits, y)
            value = optimise(loss, optimizer, scaler, epoch, t.lr)
            step += 1
            loss_sum, seen = loss_sum + value * len(x), seen + len(x)
            yield TrainStep(epoch, step, total, value)

        val_loss = val_iou = None
        if len(val_set):
            model.eval()
            v_loss, v_ious, shown = 0.0, [], False
            with torch.inference_mode():
                for x, y in batches(DataLoader(val_set, shuffle=False, **loader_options), should_stop):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                        logits = model(x)
                    v_loss += segmentation_loss(logits, y).item() * len(x)
                    v_ious.extend(frame_ious(logits, y).tolist())
                    if not shown:  # the first validation image, as the dashboard's preview of this run
                        _val_preview(out, x[0], logits[0], y[0])
                        shown = True
            val_loss, val_iou = round(v_loss / len(val_set), 6), round(sum(v_ious) / len(v_ious), 6)
        seconds = time.perf_counter() - epoch_began
        metrics = {"epoch": epoch, "train_loss": round(loss_sum / seen, 6), "val_loss": val_loss,
                   "val_iou": val_iou, "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                   "train_items": len(train_set), "val_items": len(val_set)}
        history.append(metrics)
        score = val_loss if val_loss is not None else metrics["train_loss"]
        is_best = best is None or score < best["value"]
        if is_best:
            best = {"epoch": epoch, "value": score}
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        ckpt = {"kind": UNET.kind, "format": UNET.format, "arch": arch, "img_size": t.img_size, "normalize": NORMALIZE,
                "epoch": epoch, "metrics": metrics, "model": weights, "reelmask": __version__}
        save_epoch(out, ckpt, {"optimizer": optimizer.state_dict(), "history": history, "best": best,
                               "split": parts.how, "data": str(data.resolve())}, is_best, history, save_checkpoint)
        yield EpochEnd(epoch, metrics, is_best, seconds)

    best_metrics = next((m for m in history if best and m["epoch"] == best["epoch"]), {})
    yield TrainFinished(out, out / BEST, out / LAST, best_metrics, time.perf_counter() - began)


def _val_preview(out: Path, x, logits, y) -> None:
    import numpy as np

    mean = np.array(NORMALIZE["mean"], np.float32)[:, None, None]
    std = np.array(NORMALIZE["std"], np.float32)[:, None, None]
    rgb = ((x.float().cpu().numpy() * std + mean) * NORMALIZE["scale"]).clip(0, 255).transpose(1, 2, 0)
    predicted = (logits.float().cpu().numpy().reshape(rgb.shape[:2]) > 0)
    truth = y.float().cpu().numpy().reshape(rgb.shape[:2]) > 0.5
    write_val_preview(out, rgb, predicted, truth)
