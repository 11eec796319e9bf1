"""The U-Net of unet mode: models.unet resolved to a checked checkpoint file (no torch), and the
segmenter that loads it for inference (torch imported when it is built).

A U-Net checkpoint (format core.models.checkpoints.UNET) adds to the common keys:
    "arch": {"in_channels", "base", "depth"}, "img_size": int, "normalize": {"mean", "std", "scale"}.
The network is core/models/unet_net.py; `reelmask train unet` (core/training/unet.py) writes the files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from core.config import Config
from core.errors import ConfigError, ModelError
from core.models.checkpoints import UNET


def resolve_unet_path(cfg: Config) -> Path:
    """models.unet as a checked checkpoint file (no torch); the errors say how to fix the setting."""
    name = cfg.models.unet
    if not name:
        raise ConfigError("unet mode needs models.unet = PATH to a best.pt written by `reelmask train unet`; "
                          "pass --set models.unet=runs/unet-<dataset>/best.pt (or set it in config.toml)")
    path = cfg.path(name)
    if not path.is_file():
        raise ModelError(f"models.unet = '{name}' does not exist (looked at {path}); set it to the best.pt "
                         "of a `reelmask train unet` run")
    UNET.header(path)
    return path


class UnetSegmenter:
    """A U-Net checkpoint loaded for inference on `device` (a models.device value)."""

    def __init__(self, path: Path, device: str):
        import torch

        from core.models.devices import pick_device
        from core.models.unet_net import build_unet

        ckpt = UNET.load(path)
        self.path = Path(path)
        self.arch = dict(ckpt["arch"])
        self.image_size = int(ckpt["img_size"])
        self.epoch = int(ckpt["epoch"])
        self.metrics = dict(ckpt.get("metrics") or {})
        self.device = pick_device(device)
        self.dtype = "float16" if self.device.type == "cuda" else "float32"
        try:
            model = build_unet(self.arch)
            model.load_state_dict(ckpt["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ModelError(f"the U-Net weights in {path} do not fit their architecture {self.arch} ({e}); "
                             "give a best.pt written by `reelmask train unet`") from e
        self.model = model.to(self.device).eval()
        self._torch = torch
        self.seconds = 0.0  # time spent in the network (per job)

    def masks(self, batch, height: int, width: int, threshold: float) -> np.ndarray:
        """N x height x width uint8 masks (1 = object) of a batch of model inputs (N x 3 x S x S)."""
        torch = self._torch
        began = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.dtype == "float16"):
            logits = self.model(batch)
        prob = torch.sigmoid(logits.float())
        prob = torch.nn.functional.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)
        out = (prob[:, 0] > threshold).to(torch.uint8).cpu().numpy()
        self.seconds += time.perf_counter() - began
        return out
