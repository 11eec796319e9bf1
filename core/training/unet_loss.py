"""The U-Net trainer's loss and its validation score (seed 000). Imports torch; core/training/unet.py
imports it when it trains."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
