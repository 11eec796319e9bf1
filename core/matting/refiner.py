"""The learned matting refiner (`models.matting`, seed 001) for inference.

Per frame: SAM2 in image mode prompted with the coarse mask gives its logits and intermediate
features (core/matting/features.py, exactly as the trainer cached them), the small U-Net of
core/matting/refiner_model.py turns RGB + mask + those into alpha at its own size, the alpha is
scaled back to the frame and smoothed with the previous frame's alpha inside the uncertain band.

A refiner checkpoint is a torch.save'd dict (best.pt / last.pt of `reelmask train matting`):
    {"kind": "matting-refiner", "format": 1, "arch": {...}, "img_size": int, "epoch": int,
     "metrics": {...}, "sam2": {"variant", "weights" ("random" or sha256), "image_size", "seed",
     "fingerprint"}, "features": {"version", "channels", "description"}, "model": state_dict,
     "reelmask": version}
last.pt adds "optimizer", "history" and "best". The format (core.models.checkpoints.REFINER) is
read and written through core/models/checkpoints.py.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np

from core.config import Config, MattingConfig
from core.errors import ModelError
from core.models.checkpoints import REFINER

UNCERTAIN = 0.01     # alpha in (UNCERTAIN, 1 - UNCERTAIN) is the uncertain band temporal smoothing acts in
MOTION = 0.5         # a change of alpha this large between frames is motion, not flicker: no smoothing

# how far from the mask edge (share of the shorter image side) the refiner may change the alpha: a
# little beyond the 2.5% the training masks were dilated or eroded by
REACH = 0.03


def check_checkpoint(path: Path) -> dict:
    """models.matting checked before a job starts (no torch): the header, or a ModelError with the fix."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"models.matting = {path} does not exist; set it to the best.pt of a "
                         "`reelmask train matting` run, or leave it empty for the classical solver")
    return REFINER.header(path)


def temporal_smooth(alpha: np.ndarray, prev: np.ndarray | None, weight: float) -> np.ndarray:
    """Blend `prev` into `alpha` with `weight` inside the uncertain band (pixels near semi-transparent
    ones of this frame); where alpha changed by MOTION or more the object moved and nothing blends."""
    if prev is None or weight <= 0:
        return alpha
    prev = np.asarray(prev)
    prev = prev.astype(np.float32) / 255.0 if prev.dtype == np.uint8 else prev.astype(np.float32, copy=False)
    if prev.shape != alpha.shape:
        raise ValueError(f"the previous alpha is {prev.shape[1]}x{prev.shape[0]} but this frame's is "
                         f"{alpha.shape[1]}x{alpha.shape[0]}; pass the previous frame's alpha of the same video")
    band = ((alpha > UNCERTAIN) & (alpha < 1 - UNCERTAIN)).astype(np.uint8)
    band = cv2.dilate(band, np.ones((3, 3), np.uint8)) > 0
    w = weight * np.clip(1.0 - np.abs(alpha - prev) / MOTION, 0.0, 1.0)
    return np.where(band, (1.0 - w) * alpha + w * prev, alpha).astype(np.float32)


def _describe_sam2(identity: dict) -> str:
    weights = identity["weights"] if identity["weights"] == "random" else f"sha256 {identity['weights'][:12]}..."
    text = f"{identity['variant']} ({weights}) at models.image_size = {identity['image_size']}"
    return text + (f", models.seed = {identity.get('seed')}" if identity["weights"] == "random" else "")


def _sam2_config(cfg: Config, sam2: dict, device: str) -> Config:
    """A config whose models.* build the SAM2 the refiner was trained with."""
    m = cfg.models
    common = {"image_size": int(sam2["image_size"]), "device": device}
    if not sam2.get("decoder"):  # trained on SAM2's own decoder: do not load the job's fine-tuned one
        common["sam2_decoder"] = ""
    if sam2["weights"] == "random":
        models = dataclasses.replace(m, sam2=sam2["variant"], sam2_weights="random", sam2_arch="auto",
                                     seed=int(sam2.get("seed", 0)), **common)
    else:
        from core.models.registry import find_variant
        from core.models.weights import resolve_sam2

        models = dataclasses.replace(m, **common)
        named = find_variant(m.sam2)
        mine = False
        if named is None or named.name == sam2["variant"]:  # never fetch another variant just to compare
            try:
                mine = resolve_sam2(dataclasses.replace(cfg, models=models)).sha256 == sam2["weights"]
            except ModelError:
                mine = False
        if not mine:  # the config names other weights: the official checkpoint of the variant
            models = dataclasses.replace(models, sam2=sam2["variant"], sam2_weights="auto", sam2_arch="auto")
    return dataclasses.replace(cfg, models=models)


def _build_tracker(path: Path, cfg: Config, sam2: dict, device: str):
    from core.models.sam2_model import Sam2Tracker
    from core.models.weights import resolve_sam2

    sam_cfg = _sam2_config(cfg, sam2, device)
    weights = resolve_sam2(sam_cfg)
    if weights.sha256 != sam2["weights"]:
        raise ModelError(f"the matting refiner {path} was trained on SAM2 features of {_describe_sam2(sam2)}, but "
                         f"{weights.variant.name} resolves to weights sha256 {weights.sha256[:12]}...; set "
                         "models.sam2 to the checkpoint it was trained with, or retrain the refiner")
    return Sam2Tracker(sam_cfg, weights)


def _check_tracker(path: Path, tracker, sam2: dict) -> None:
    from core.matting.features import sam2_identity

    have = sam2_identity(tracker)

    def weights(identity: dict) -> str:
        w = identity["weights"]
        return "random" if w == "random" else f"the checkpoint with sha256 {w[:12]}..."

    wrong = []
    if have["variant"] != sam2["variant"]:
        wrong.append(f"models.sam2 = {sam2['variant']} (this job: {have['variant']})")
    if have["weights"] != sam2["weights"]:
        wrong.append(f"models.sam2_weights = {weights(sam2)} (this job: {weights(have)})")
    if have["image_size"] != sam2["image_size"]:
        wrong.append(f"models.image_size = {sam2['image_size']} (this job: {have['image_size']})")
    if have.get("decoder") != sam2.get("decoder"):
        wrong.append("models.sam2_decoder = " + (f"the decoder with sha256 {sam2['decoder'][:12]}..." if sam2.get("decoder")
                                                 else '"" (SAM2\'s own decoder)') + " (this job: "
                     + (f"sha256 {have['decoder'][:12]}...)" if have.get("decoder") else "SAM2's own)"))
    if not wrong and have["fingerprint"] != sam2["fingerprint"]:
        wrong.append(f"models.seed = {sam2.get('seed')} (random weights of another seed)" if sam2["weights"] == "random"
                     else "models.sam2_weights = the checkpoint it was trained with (this job's weights differ)")
    if wrong:
        raise ModelError(f"the matting refiner {path} needs the SAM2 it was trained with ({_describe_sam2(sam2)}): "
                         f"set {'; '.join(wrong)}, or train a refiner for this SAM2 with `reelmask train matting`")


class Refiner:
    """A loaded refiner plus the SAM2 that makes its features. `alpha()` is called frame by frame."""

    def __init__(self, path: Path, ckpt: dict, tracker, device: str, temporal: float):
        import torch

        from core.matting.features import Sam2Features
        from core.matting.refiner_model import build_refiner
        from core.models.devices import pick_device
        from core.models.weights import sha256_file

        self.path = Path(path)
        self.arch = dict(ckpt["arch"])
        self.image_size = int(ckpt["img_size"])
        self.epoch = int(ckpt["epoch"])
        self.metrics = dict(ckpt.get("metrics") or {})
        self.sam2 = dict(ckpt["sam2"])
        self.temporal = float(temporal)
        self.sha256 = sha256_file(self.path)
        self.device = pick_device(device)
        try:
            model = build_refiner(self.arch)
            model.load_state_dict(ckpt["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ModelError(f"the refiner weights in {path} do not fit their architecture {self.arch} ({e}); "
                             f"{REFINER.fix}") from e
        self.model = model.to(self.device).eval()
        self.tracker = tracker
        self.features = Sam2Features(tracker)
        self._torch = torch
        self.sam2_seconds = 0.0   # time in SAM2 (image encoder + decoder) since loading or the last reset
        self.seconds = 0.0        # time in alpha() in all, SAM2 included

    def alpha(self, rgb: np.ndarray, mask: np.ndarray, prev_alpha: np.ndarray | None = None) -> np.ndarray:
        """float32 HxW alpha in [0,1] for one frame: rgb uint8 HxWx3 (input size), mask bool HxW (the
        coarse segmentation; an empty one gives an all-zero alpha), prev_alpha the previous frame's
        alpha (or None for the first frame)."""
        from core.matting.features import frame_inputs
        from core.matting.refiner_model import to_tensors
        from core.matting.trimap import UNKNOWN, band_pixels, trimap_from_mask

        torch = self._torch
        began = time.perf_counter()
        h, w = rgb.shape[:2]
        mask = np.asarray(mask, bool)
        if mask.shape != (h, w):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the frame is {w}x{h}")
        if not mask.any():  # no object in this frame: nothing to matte (and no SAM2 call)
            self.seconds += time.perf_counter() - began
            return np.zeros((h, w), np.float32)
        sam2_before = self.features.seconds
        features = self.features(rgb, mask, self.image_size)
        self.sam2_seconds += self.features.seconds - sam2_before
        inputs = frame_inputs(rgb, mask, self.image_size)
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            x = to_tensors(inputs.rgb[None], inputs.mask[None], features[None], self.device)
            prob = torch.sigmoid(self.model(*x).float())
            prob = torch.nn.functional.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        alpha = prob[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
        # the refiner corrects the segmentation near its edge (as far as training perturbed it);
        # further away the mask stands, so a refiner out of its depth cannot invent matte there
        trimap = trimap_from_mask(mask, band_pixels(REACH, h, w))
        alpha = np.where(trimap == UNKNOWN, alpha, trimap.astype(np.float32) / 255.0)
        alpha = np.clip(temporal_smooth(alpha, prev_alpha, self.temporal), 0.0, 1.0)
        self.seconds += time.perf_counter() - began
        return alpha

    def describe(self) -> dict:
        """For manifest.json: the checkpoint, its training epoch and sizes, and the SAM2 it needs."""
        return {"path": str(self.path), "sha256": self.sha256, "epoch": self.epoch, "img_size": self.image_size,
                "sam2": {k: self.sam2.get(k) for k in ("variant", "weights", "image_size")},
                "temporal": self.temporal, "metrics": self.metrics}


def load_refiner(path: Path, device: str = "auto", *, cfg: Config | None = None, tracker=None) -> Refiner:
    """Load a refiner checkpoint. Without `tracker`, builds the SAM2 it was trained with (variant,
    weights, image_size from the checkpoint; `cfg` supplies the cache and a checkpoint path); a given
    `tracker` must match it, else ModelError with the settings to use."""
    path = Path(path)
    ckpt = REFINER.load(path)
    sam2 = dict(ckpt["sam2"])
    if tracker is None:
        tracker = _build_tracker(path, cfg or Config(), sam2, device)
    _check_tracker(path, tracker, sam2)
    temporal = cfg.matting.temporal if cfg is not None else MattingConfig().temporal
    return Refiner(path, ckpt, tracker, device, temporal)
