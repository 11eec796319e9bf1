"""The direct U-Net network (seed 000): an encoder-decoder with skip connections and one logit channel.

Imports torch; the U-Net trainer (core/training/unet.py) and the segmenter of unet mode
(core/models/unet.py) import it when they run.
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
