"""The matting refiner network (seed 001): a small U-Net from RGB + coarse mask + SAM2 outputs to alpha.

Full resolution takes the RGB frame, the coarse mask and SAM2's mask probability (its logits
upsampled); the quarter-resolution level also takes the SAM2 feature stack of
core/matting/features.py (logits + the mask decoder's upscaled embedding), projected by a 1x1 conv.
GroupNorm instead of BatchNorm: batches are small and eval behaves like training.

Imports torch; only the trainer and the refiner import this module, and only when they run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The architecture every new run gets; checkpoints carry their own, so this may change later.
DEFAULT_ARCH = {"widths": [16, 32, 64, 96, 128], "feature_channels": 33, "feature_width": 32}
IMAGE_CHANNELS = 5          # RGB, coarse mask, SAM2 probability
LOGIT_SCALE = 8.0           # SAM2 logits (+-32) are divided by this before the network sees them
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, max(1, c // 4)), c)


class DoubleConv(nn.Sequential):
    """(3x3 conv, GroupNorm, ReLU) twice."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
        )


class RefinerNet(nn.Module):
    """U-Net over len(widths) levels (1, 1/2, 1/4, ...); SAM2 features join at level 2 (1/4)."""

    FEATURE_LEVEL = 2

    def __init__(self, widths: list[int], feature_channels: int, feature_width: int):
        super().__init__()
        if len(widths) <= self.FEATURE_LEVEL + 1:
            raise ValueError(f"the refiner needs more than {self.FEATURE_LEVEL + 1} levels, got widths {widths}")
        self.project = nn.Sequential(nn.Conv2d(feature_channels, feature_width, 1, bias=False), _norm(feature_width),
                                     nn.ReLU(inplace=True))
        self.down = nn.ModuleList()
        cin = IMAGE_CHANNELS
        for level, w in enumerate(widths):
            self.down.append(DoubleConv(cin + (feature_width if level == self.FEATURE_LEVEL else 0), w))
            cin = w
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(DoubleConv(cin + w, w))
            cin = w
        self.head = nn.Sequential(nn.Conv2d(cin + IMAGE_CHANNELS, cin, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(cin, 1, 1))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def inputs(self, rgb: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The full-resolution input: normalised RGB (rgb in 0..1), the mask, SAM2's probability."""
        logits = F.interpolate(logits, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([(rgb - self.mean) / self.std, mask, torch.sigmoid(logits)], dim=1)

    def forward(self, rgb: torch.Tensor, mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Alpha logits N x 1 x S x S from rgb N x 3 x S x S (0..1), mask N x 1 x S x S (0/1) and
        features N x C x S/4 x S/4 (raw SAM2 logits first)."""
        x0 = x = self.inputs(rgb, mask, features[:, :1])
        features = torch.cat([features[:, :1] / LOGIT_SCALE, features[:, 1:]], dim=1)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            if level == self.FEATURE_LEVEL:
                f = F.interpolate(features, size=x.shape[-2:], mode="bilinear", align_corners=False) \
                    if features.shape[-2:] != x.shape[-2:] else features
                x = torch.cat([x, self.project(f)], dim=1)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(torch.cat([x, x0], dim=1))


def build_refiner(arch: dict) -> RefinerNet:
    return RefinerNet([int(w) for w in arch["widths"]], int(arch["feature_channels"]), int(arch["feature_width"]))


def to_tensors(rgb, mask, features, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batches of cached/prepared arrays (uint8 rgb, uint8 mask, float16 features; numpy or torch) as
    float32 tensors on `device`: rgb in 0..1, mask 0/1, features as they are."""
    rgb, mask, features = (torch.as_tensor(a).to(device, non_blocking=True) for a in (rgb, mask, features))
    return rgb.float() / 255.0, mask.float(), features.float()


def weighted_l1(alpha_logits: torch.Tensor, target: torch.Tensor, semi_weight: float) -> torch.Tensor:
    """Seed 001's loss: L1 between sigmoid(logits) and the ground truth, `semi_weight` times heavier
    where the ground truth is semi-transparent (0 < alpha < 1), averaged over pixels."""
    pred = torch.sigmoid(alpha_logits.float())
    semi = (target > 0.5 / 255) & (target < 1 - 0.5 / 255)
    weight = torch.where(semi, torch.full_like(target, semi_weight), torch.ones_like(target))
    return (weight * (pred - target).abs()).mean()
