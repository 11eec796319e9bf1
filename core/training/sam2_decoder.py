"""`reelmask train sam2-decoder`: fine-tune SAM2's mask decoder on frames with masks (seed 003).

The image encoder is frozen, so each frame is encoded once: its embeddings (the image embedding and
the two high-resolution feature maps the decoder reads, made by sam2's own SAM2ImagePredictor) go to
OUT/cache and every epoch costs only the decoder. The mask decoder is trained (and the prompt encoder
with train.prompt_encoder) on prompts drawn from the masks: jittered boxes, single clicks and a few
clicks with a negative one (core/training/sam2_decoder_data.py). The decoder's conv_s0/conv_s1 run
on the encoder's features when a frame is encoded, so they are cached with them and stay frozen.

Loss, per sample, as SAM2's own training recipe weighs it: 20 x sigmoid focal + 1 x dice on the mask
(at SAM2's input size; a single click is scored by the best of its three masks), + 1 x L1 between
the predicted and the actual IoU of each mask, + 1 x binary cross-entropy of the object score.
Seed defaults: AdamW, lr 1e-5, weight decay 0.01, batch 4, 15 epochs, decoder attention dropout 0.1,
early stopping after train.patience epochs without a lower val_loss.

metrics.jsonl: an epoch 0 line scores the untouched decoder on the validation prompts, then one
line per epoch: train_loss, val_loss, val_miou (masks chosen as at inference: the best-scored of
three for a click, SAM2's stability rule otherwise, empty when the object score says absent) and
val_miou per prompt kind. best.pt (lowest val_loss) loads with models.sam2_decoder = PATH.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core import __version__
from core.config import Config
from core.errors import Cancelled, TrainingError
from core.models.checkpoints import SAM2_DECODER, save_checkpoint
from core.models.sam2_decoder import base_identity
from core.training.events import RANDOM_SAM2, EpochEnd, TrainFinished, TrainPrepare, TrainStarted, TrainStep
from core.training.registry import with_kind_defaults
from core.training.runs import BEST, LAST, METRICS, batches, previous_run, optimise, resume_state, save_epoch, write_lines, data_workers
from core.training.sam2_decoder_data import (DecoderSamples, cache_key, find_objects, plan_batches,
                                             unique_images)
from core.training.unet_data import find_dataset, read_mask_values, split

CACHE = "cache"
BEST_KEYS = ("kind", "format", "sam2", "trained", "frozen", "prompts", "started_from", "epoch", "metrics", "model",
             "reelmask")
FROZEN = ("image_encoder", "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")
# SAM2's training weights for its mask, dice, IoU and object-score losses
W_FOCAL, W_DICE, W_IOU, W_OBJECT = 20.0, 1.0, 1.0, 1.0


def check(data: Path) -> str:
    """Validate the dataset layout and every image/mask header; a one-line summary of what was found."""
    return find_dataset(Path(data)).summary()


def train(data: Path, out: Path, cfg: Config, *, should_stop: Callable[[], bool] = lambda: False,
          resume: bool = False) -> Iterator[object]:
    """Fine-tune the mask decoder of models.sam2 on `data` into `out`; yields training events.
    Raises Cancelled when should_stop(), TrainingError for data or settings that cannot work."""
    cfg = with_kind_defaults(cfg, SAM2_DECODER.kind)
    t = cfg.train
    data, out = Path(data), Path(out)
    if out.resolve().is_relative_to(data.resolve()):
        raise TrainingError(f"--out {out} is inside the dataset {data}; the run (and its embedding cache) must live "
                            "elsewhere: choose another --out")
    parts = split(find_dataset(data), t.val_fraction, t.seed)
    train_objects, small = find_objects(parts.train)
    val_objects, val_small = find_objects(parts.val)
    if not train_objects:
        raise TrainingError(f"the masks of {data} hold no object of at least 0.05% of the frame to train on; "
                            "check that the masks mark objects with non-zero values")
    previous = previous_run(out, resume, SAM2_DECODER.load)

    import torch
    from torch.utils.data import DataLoader

    from core.models.sam2_model import Sam2Tracker
    from core.models.weights import resolve_sam2

    began = time.perf_counter()
    weights = resolve_sam2(cfg)
    tracker = Sam2Tracker(cfg, weights)
    model, device = tracker.predictor, tracker.device
    identity = base_identity(weights, tracker.image_size, cfg.models.seed)
    if previous is not None and previous["sam2"] != identity:
        raise TrainingError(f"{out / LAST} was tuned on SAM2 {previous['sam2']}, this config gives {identity}; "
                            "resume with the same models.* settings or choose another --out")
    size = tracker.image_size
    torch.manual_seed(t.seed)

    trained_names = ["sam_mask_decoder"] + (["sam_prompt_encoder"] if t.prompt_encoder else [])
    trained = torch.nn.ModuleDict({name: getattr(model, name) for name in trained_names})
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for name, p in trained.named_parameters() if not name.startswith(FROZEN[1:])]
    for p in params:
        p.requires_grad_(True)
    _set_dropout(model.sam_mask_decoder, t.dropout)
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    history, best, start = resume_state(previous, trained, optimizer, t.lr, out, SAM2_DECODER.header, save_checkpoint,
                                        BEST_KEYS)

    # encode every frame once (sam2's image predictor, the way inference encodes a prompted frame)
    cache_dir = out / CACHE
    all_objects = train_objects + val_objects
    cache = yield from _fill_cache(tracker, list(unique_images(all_objects)), cache_dir, identity,
                                   max(1, t.batch_size), should_stop)
    train_set = DecoderSamples(train_objects, cache, size)
    val_set = DecoderSamples(val_objects, cache, size)
    cuda = device.type == "cuda"
    loader_options = {"num_workers": data_workers(t.workers), "pin_memory": cuda, "collate_fn": _collate}
    steps = len(plan_batches(len(train_set), t.prompts, t.batch_size, t.seed, 1))
    total = steps * max(0, t.epochs - start + 1)
    yield TrainStarted(SAM2_DECODER.kind, t.epochs, steps, len(train_set), len(val_set), str(device), start,
                       (RANDOM_SAM2,) if weights.is_random else ())

    step_ctx = _Step(model, device, trained_names)
    if previous is None:  # how the decoder does before any training: the line every epoch compares with
        line = {"epoch": 0, "train_loss": None, **_validate(step_ctx, val_set, t, loader_options, should_stop),
                "lr": t.lr, "train_items": len(train_set), "val_items": len(val_set),
                "skipped_small_objects": small + val_small}
        history = [line]
        write_lines(out / METRICS, history)
        yield EpochEnd(0, line, False, 0.0)

    header = {"kind": SAM2_DECODER.kind, "format": SAM2_DECODER.format, "sam2": identity, "trained": trained_names, "frozen": list(FROZEN),
              "prompts": list(t.prompts), "reelmask": __version__,
              "started_from": (tracker.decoder or {}).get("path")}
    stopped = _stopped_early(history, best, t.patience)
    step = 0
    for epoch in range(start, t.epochs + 1):
        if stopped:
            break
        epoch_began = time.perf_counter()
        trained.train()
        loss_sum, seen = 0.0, 0
        plan = plan_batches(len(train_set), t.prompts, t.batch_size, t.seed, epoch)
        loader = DataLoader(train_set, batch_sampler=plan, **loader_options)
        for batch in batches(loader, should_stop):
            loss, _ = step_ctx.losses(batch, train=True)
            value = optimise(loss, optimizer, None, epoch, t.lr)
            step += 1
            n = len(batch[0])
            loss_sum, seen = loss_sum + value * n, seen + n
            yield TrainStep(epoch, step, total, value)

        trained.eval()
        scores = _validate(step_ctx, val_set, t, loader_options, should_stop, preview=out)
        seconds = time.perf_counter() - epoch_began
        metrics = {"epoch": epoch, "train_loss": round(loss_sum / max(seen, 1), 6), **scores,
                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                   "train_items": len(train_set), "val_items": len(val_set)}
        history.append(metrics)
        score = metrics["val_loss"] if metrics["val_loss"] is not None else metrics["train_loss"]
        is_best = best is None or score < best["value"]
        if is_best:
            best = {"epoch": epoch, "value": score}
        state = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
        ckpt = {**header, "epoch": epoch, "metrics": metrics, "model": state}
        save_epoch(out, ckpt, {"optimizer": optimizer.state_dict(), "history": history, "best": best,
                               "split": parts.how, "data": str(data.resolve())}, is_best, history, save_checkpoint)
        yield EpochEnd(epoch, metrics, is_best, seconds)
        stopped = _stopped_early(history, best, t.patience)

    best_metrics = next((m for m in history if best and m["epoch"] == best["epoch"]), {})
    yield TrainFinished(out, out / BEST, out / LAST, best_metrics, time.perf_counter() - began, stopped)


def _stopped_early(history: list[dict], best: dict | None, patience: int) -> bool:
    """train.patience epochs in a row without a new best: the run is over (also when resumed)."""
    last = max((m["epoch"] for m in history), default=0)
    return bool(patience and best and last - best["epoch"] >= patience)


def _set_dropout(decoder, p: float) -> None:
    """Dropout in the attention layers of the decoder's two-way transformer (active in train() only)."""
    for module in decoder.transformer.modules():
        if hasattr(module, "dropout_p"):
            module.dropout_p = p


def _collate(items: list[tuple]) -> tuple:
    """A batch as CPU tensors (pinned by the DataLoader on CUDA)."""
    import torch

    return tuple(torch.from_numpy(np.stack(column)) for column in zip(*items))


def _fill_cache(tracker, images: list[Path], root: Path, identity: dict, batch: int,
                should_stop: Callable[[], bool]) -> Iterator[object]:
    """Encode the images not cached yet; returns {image: cache file}. Yields TrainPrepare progress."""
    from core.frames import decode_rgb
    from core.models.sam2_model import image_predictor

    root.mkdir(parents=True, exist_ok=True)
    size = tracker.image_size
    paths = {image: root / cache_key(image, size, identity) for image in images}
    missing = [image for image, path in paths.items() if not path.is_file()]
    yield TrainPrepare("encoding frames", 0, len(missing), len(images) - len(missing))
    if not missing:
        return paths
    predictor = image_predictor(tracker.predictor)
    for start in range(0, len(missing), batch):
        if should_stop():
            raise Cancelled("training cancelled while encoding frames; the cache keeps what is done (--resume continues)")
        group = missing[start:start + batch]
        frames = [_decode(image, decode_rgb) for image in group]
        with tracker.running():
            predictor.set_image_batch(frames)
            feats = predictor._features
            embed = feats["image_embed"].float().cpu().numpy().astype(np.float16)
            s0, s1 = (f.float().cpu().numpy().astype(np.float16) for f in feats["high_res_feats"])
        predictor.reset_predictor()
        for i, image in enumerate(group):
            target = paths[image]
            tmp = target.with_name(f".{target.stem}.tmp.npz")
            with open(tmp, "wb") as f:
                np.savez(f, embed=embed[i], s0=s0[i], s1=s1[i])
            tmp.replace(target)
        yield TrainPrepare("encoding frames", min(start + batch, len(missing)), len(missing), len(images) - len(missing))
    return paths


def _decode(image: Path, decode_rgb):
    try:
        return decode_rgb(image)
    except Exception as e:
        raise TrainingError(f"image {image} cannot be decoded ({e}); re-export it or remove it") from e


class _Step:
    """One forward pass of the prompt encoder and mask decoder on cached embeddings, and its losses."""

    def __init__(self, model, device, trained: list[str]):
        self.model, self.device = model, device
        self.prompt_trained = "sam_prompt_encoder" in trained

    def losses(self, batch, train: bool):
        """(mean loss, per-sample dict of loss / IoU of the mask inference would give)."""
        import torch
        import torch.nn.functional as F

        model, dev = self.model, self.device
        embed, s0, s1, gt, coords, labels = (torch.as_tensor(x).to(dev, non_blocking=True) for x in batch)
        embed, s0, s1 = embed.float(), s0.float(), s1.float()
        gt = gt.float()[:, None]
        used = int((labels >= 0).sum(dim=1).max())
        coords, labels = coords[:, :used], labels[:, :used]
        single_click = bool((labels >= 0).sum(dim=1).eq(1).all())  # batches hold one prompt kind
        with torch.set_grad_enabled(train and self.prompt_trained):
            sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            image_pe = model.sam_prompt_encoder.get_dense_pe()
        decoder = model.sam_mask_decoder
        masks, iou_pred, _, object_logits = decoder.predict_masks(
            image_embeddings=embed, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=False, high_res_features=[s0, s1])
        size = gt.shape[-1]
        up = F.interpolate(masks.float(), size=(size, size), mode="bilinear", align_corners=False)
        candidates = slice(1, None) if single_click else slice(0, 1)
        cand = up[:, candidates]
        target = gt.expand_as(cand)
        focal = _focal(cand, target)
        dice = _dice(cand, target)
        mask_loss = W_FOCAL * focal + W_DICE * dice                      # B x K
        chosen = mask_loss.argmin(dim=1)
        rows = torch.arange(len(chosen), device=dev)
        with torch.no_grad():
            actual_iou = _iou(up > 0, gt.expand_as(up) > 0.5)            # B x 4
        iou_loss = (iou_pred[:, candidates].float() - actual_iou[:, candidates]).abs().mean(dim=1)
        object_loss = F.binary_cross_entropy_with_logits(object_logits[:, 0].float(),
                                                         torch.ones_like(object_logits[:, 0].float()), reduction="none")
        per_sample = mask_loss[rows, chosen] + W_IOU * iou_loss + W_OBJECT * object_loss
        if train:
            return per_sample.mean(), None
        with torch.no_grad():  # the mask reelmask would use: as SAM2 picks it at inference
            if single_click:
                pick = iou_pred[:, 1:].argmax(dim=1) + 1
                pred = up[rows, pick]
            elif decoder.dynamic_multimask_via_stability:
                picked, _ = decoder._dynamic_multimask_via_stability(masks, iou_pred)
                pred = F.interpolate(picked.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            else:
                pred = up[:, 0]
            present = (object_logits[:, 0] > 0)[:, None, None]
            shown = (pred > 0) & present
            ious = _iou(shown, gt[:, 0] > 0.5)
        return per_sample.mean(), {"loss": per_sample.detach().cpu().numpy(), "iou": ious.cpu().numpy(),
                                   "first": shown[0].cpu().numpy()}


def _val_preview(out: Path, val_set: DecoderSamples, index: tuple, predicted: np.ndarray) -> None:
    """The object's frame with the decoder's mask for its prompt (red) and the true mask (green outline),
    at the frame's own size (SAM2 predicts on a square; the mask is stretched back)."""
    import cv2

    from core.training.runs import write_val_preview

    sample = val_set.samples[index[0]]
    bgr = cv2.imread(str(sample.pair.image), cv2.IMREAD_COLOR)
    if bgr is None:
        return
    h, w = bgr.shape[:2]
    truth = read_mask_values(sample.pair.mask)[0] == sample.object_id
    mask = cv2.resize(predicted.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    write_val_preview(out, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), mask, truth)


def _focal(logits, target, alpha: float = 0.25, gamma: float = 2.0):
    """Sigmoid focal loss, mean over pixels: B x K."""
    import torch.nn.functional as F

    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(dim=2)


def _dice(logits, target):
    """1 - soft dice, per mask: B x K."""
    prob = logits.sigmoid().flatten(2)
    target = target.flatten(2)
    return 1 - (2 * (prob * target).sum(dim=2) + 1) / (prob.sum(dim=2) + target.sum(dim=2) + 1)


def _iou(pred, gt):
    """IoU of boolean masks over the last two dims; two empty masks agree (1)."""
    inter = (pred & gt).flatten(-2).sum(dim=-1).float()
    union = (pred | gt).flatten(-2).sum(dim=-1).float()
    return (inter / union.clamp(min=1)).where(union > 0, union.new_ones(()))


def _validate(step: _Step, val_set: DecoderSamples, t, loader_options: dict,
              should_stop: Callable[[], bool], preview: Path | None = None) -> dict:
    """val_loss and val_miou over every validation object with every prompt kind, plus val_miou_<kind>;
    with `preview` (the run folder), the first validation object's predicted mask goes to val_preview.png."""
    import torch
    from torch.utils.data import DataLoader

    if not len(val_set):
        return {"val_loss": None, "val_miou": None}
    losses, by_kind = [], {k: [] for k in t.prompts}
    plan = plan_batches(len(val_set), t.prompts, t.batch_size, t.seed, None)
    loader = DataLoader(val_set, batch_sampler=plan, **loader_options)
    with torch.no_grad():
        for indices, batch in zip(plan, batches(loader, should_stop)):
            _, scored = step.losses(batch, train=False)
            losses.extend(scored["loss"].tolist())
            by_kind[indices[0][1]].extend(scored["iou"].tolist())
            if preview is not None:
                _val_preview(preview, val_set, indices[0], scored["first"])
                preview = None
    ious = [v for values in by_kind.values() for v in values]
    return {"val_loss": round(float(np.mean(losses)), 6), "val_miou": round(float(np.mean(ious)), 6),
            **{f"val_miou_{k}": round(float(np.mean(v)), 6) for k, v in by_kind.items() if v}}

