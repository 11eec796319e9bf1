"""The direct U-Net (seed 000): an encoder-decoder with skip connections and one logit channel.

Imports torch; only the trainer and the unet engine import this module, and only when they run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The architecture every new run gets; checkpoints carry their own, so this may change later.
DEFAULT_ARCH = {"in_channels": 3, "base": 32, "depth": 4}


class DoubleConv(nn.Sequential):
    """(3x3 conv, BatchNorm, ReLU) twice."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """`depth` encoder levels of `base * 2**i` channels, a bottleneck, and a mirrored decoder with
    bilinear upsampling. Any input size works (the decoder follows the skip's size)."""

    def __init__(self, in_channels: int = 3, base: int = 32, depth: int = 4):
        super().__init__()
        widths = [base * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w))
            cin = w
        self.bottleneck = DoubleConv(cin, cin * 2)
        self.up = nn.ModuleList()
        cin *= 2
        for w in reversed(widths):
            self.up.append(DoubleConv(cin + w, w))
            cin = w
        self.head = nn.Conv2d(cin, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, ceil_mode=True)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)  # N x 1 x H x W logits


def build_unet(arch: dict) -> UNet:
    return UNet(int(arch.get("in_channels", 3)), int(arch["base"]), int(arch["depth"]))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits plus soft Dice (per image, averaged): BCE for every pixel, Dice so a small object
    is not drowned by its background."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def frame_ious(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU per frame of (sigmoid > 0.5) with (mask > 0.5); an empty prediction of an empty mask is 1."""
    pred = (logits > 0).flatten(1)
    t = (target > 0.5).flatten(1)
    inter = (pred & t).sum(1).float()
    union = (pred | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
