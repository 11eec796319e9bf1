"""What the learned matting refiner sees of SAM2 (seed 001's "segmentation + intermediate data").

One function pair serves both the trainer's precompute and inference, so the two match exactly:

- `Sam2Features(tracker)(rgb, mask, size)` runs the real SAM2 model of a `Sam2Tracker` in image mode
  (sam2's own `SAM2ImagePredictor` on `tracker.predictor`), prompted with the coarse mask: its box
  and the mask itself as `mask_input` logits. It returns, resized to size/4 x size/4 (the refiner's
  quarter-resolution level), a float16 stack of
    channel 0      SAM2's low-resolution mask logits (clamped to +-32 by sam2), natively S/4 x S/4
    channels 1..32 the mask decoder's upscaled embedding: the prompt-conditioned per-pixel features
                   that the decoder's hypernetwork turns into the mask (S/4 x S/4, 32 channels),
                   captured with a forward hook on `sam_mask_decoder.output_upscaling[-1]`
  where S = models.image_size (256 -> 64 x 64, 1024 -> 256 x 256 before resizing).
- `frame_inputs(rgb, mask, size)` is the image side: the RGB frame and the coarse mask at size x size.

Importing this module loads nothing heavy; torch and sam2 load when a `Sam2Features` is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

VERSION = 1              # bump when what the features hold changes (cached features become stale)
MASK_LOGIT = 10.0        # the coarse mask as SAM2 mask_input: +10 inside, -10 outside
EMBED_CHANNELS = 32      # the mask decoder's upscaled embedding (transformer_dim / 8)
CHANNELS = 1 + EMBED_CHANNELS
DESCRIPTION = ("sam2 image-mode low-res mask logits (1) + mask decoder upscaled embedding (32), "
               "prompted with the coarse mask's box and the mask as mask_input")

_capture = threading.local()  # per-thread slot the decoder hook writes into while we predict


def _keep_embedding(module, args, output) -> None:
    slot = getattr(_capture, "slot", None)
    if slot is not None:
        slot.append(output)


@dataclass(frozen=True)
class FrameInputs:
    """The image side of one refiner sample, at the refiner's size."""

    rgb: np.ndarray       # 3 x size x size uint8
    mask: np.ndarray      # 1 x size x size uint8 (0/1): the coarse segmentation


def frame_inputs(rgb: np.ndarray, mask: np.ndarray, size: int) -> FrameInputs:
    """`rgb` (H x W x 3 uint8) and `mask` (H x W bool) squeezed to size x size, as SAM2 does."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    small = cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=interp)
    m = cv2.resize(np.asarray(mask, np.float32), (size, size), interpolation=interp) > 0.5
    return FrameInputs(np.ascontiguousarray(small.transpose(2, 0, 1)), m[None].astype(np.uint8))


def mask_prompt(mask: np.ndarray, sam_size: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The coarse mask as SAM2 prompts: its box [x0, y0, x1, y1] in frame pixels (None when empty) and
    1 x S/4 x S/4 mask_input logits."""
    m = np.asarray(mask, bool)
    low = sam_size // 4
    soft = cv2.resize(m.astype(np.float32), (low, low), interpolation=cv2.INTER_AREA)
    logits = ((soft * 2.0 - 1.0) * MASK_LOGIT)[None].astype(np.float32)
    ys, xs = np.nonzero(m)
    if not len(xs):
        return None, logits
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32), logits


def sam2_identity(tracker) -> dict:
    """What made the features: SAM2 variant, weights ("random" or sha256), image size, a fingerprint
    of the weights (tells random models built with different seeds apart) and the sha256 of a
    fine-tuned decoder (models.sam2_decoder) or None."""
    return {"variant": tracker.weights.variant.name, "weights": tracker.weights.sha256,
            "image_size": int(tracker.image_size), "fingerprint": weights_fingerprint(tracker.predictor),
            "decoder": (getattr(tracker, "decoder", None) or {}).get("sha256")}


def weights_fingerprint(model) -> str:
    """sha256 (first 16 hex) of the mask decoder's and the patch embedding's weights, bytes on the CPU."""
    h = hashlib.sha256()
    params = [*model.sam_mask_decoder.parameters(), next(model.image_encoder.parameters())]
    for p in params:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class Sam2Features:
    """Runs SAM2 in image mode on frames with a coarse mask; `seconds` sums the time spent."""

    def __init__(self, tracker):
        from core.models.sam2_model import image_predictor

        self.tracker = tracker
        model = tracker.predictor
        self.sam_size = int(model.image_size)
        self.predictor = image_predictor(model)
        if not getattr(model, "_reelmask_embedding_hook", False):
            # installed once per model and idle unless this thread is inside __call__, so a tracker
            # shared with video propagation on another thread is not disturbed
            model.sam_mask_decoder.output_upscaling[-1].register_forward_hook(_keep_embedding)
            model._reelmask_embedding_hook = True
        self.seconds = 0.0

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
        """CHANNELS x size/4 x size/4 float16 features of one frame (rgb H x W x 3 uint8, mask H x W bool)."""
        import torch
        import torch.nn.functional as F

        began = time.perf_counter()
        box, mask_input = mask_prompt(mask, self.sam_size)
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.tracker.dtype == "bfloat16"
               else contextlib.nullcontext())
        _capture.slot = []
        try:
            with torch.inference_mode(), amp:
                self.predictor.set_image(np.ascontiguousarray(rgb))
                _, _, low_res = self.predictor.predict(box=box, mask_input=mask_input, multimask_output=False,
                                                       return_logits=True)
                embedding = _capture.slot[-1][:1].float()
        finally:
            _capture.slot = None
            self.predictor.reset_predictor()
        with torch.inference_mode():
            logits = torch.from_numpy(low_res[:1]).to(embedding.device, torch.float32)[None]
            stack = torch.cat([logits, embedding], dim=1)
            quarter = size // 4
            if stack.shape[-1] != quarter:
                stack = F.interpolate(stack, size=(quarter, quarter), mode="bilinear", align_corners=False,
                                      antialias=quarter < stack.shape[-1])
            out = stack[0].to(torch.float16).cpu().numpy()
        self.seconds += time.perf_counter() - began
        return out
