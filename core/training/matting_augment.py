"""Joint augmentation of a matting batch (seed 001: flips and elastic deformations; homographies too).

One sampling grid per sample moves the image, the coarse mask, the ground-truth alpha and the SAM2
features (at a quarter of the size) together: output pixel -> mirror (p = FLIP) -> homography
(p = WARP: corners moved by up to WARP_CORNER of the half-size) -> plus a smooth random displacement
(p = ELASTIC, up to ELASTIC_SHIFT of the half-size). Normalised coordinates (align_corners=False)
name the same point at every resolution, so the features follow the image exactly. Borders reflect.

Imports torch; the trainer imports this module when it runs.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

FLIP, WARP, ELASTIC = 0.5, 0.5, 0.5
WARP_CORNER = 0.12
ELASTIC_SHIFT = 0.04
ELASTIC_GRID = 5


def _homography(rng: np.random.Generator) -> np.ndarray:
    """3x3 map from output to input in normalised coordinates: the unit square's corners moved."""
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32)
    moved = square + rng.uniform(-WARP_CORNER, WARP_CORNER, size=(4, 2)).astype(np.float32)
    return cv2.getPerspectiveTransform(square, moved).astype(np.float32)


def sampling_grid(n: int, size: int, rng: np.random.Generator, device) -> torch.Tensor | None:
    """N x size x size x 2 grid for grid_sample, or None when no sample is transformed."""
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / size, 1 - 1 / size, size, device=device),
                            torch.linspace(-1 + 1 / size, 1 - 1 / size, size, device=device), indexing="ij")
    grids, changed = [], False
    for _ in range(n):
        x, y = xs, ys
        if rng.random() < FLIP:
            x, changed = -x, True
        if rng.random() < WARP:
            h = torch.as_tensor(_homography(rng), device=device)
            w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
            x, y = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
            changed = True
        if rng.random() < ELASTIC:
            coarse = torch.as_tensor(rng.uniform(-ELASTIC_SHIFT, ELASTIC_SHIFT, (1, 2, ELASTIC_GRID, ELASTIC_GRID)),
                                     dtype=torch.float32, device=device)
            shift = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
            x, y = x + shift[0], y + shift[1]
            changed = True
        grids.append(torch.stack([x, y], dim=-1))
    return torch.stack(grids) if changed else None


def augment(rgb: torch.Tensor, mask: torch.Tensor, features: torch.Tensor, alpha: torch.Tensor,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch (float tensors N x C x S x S, features N x C x S/4 x S/4) moved by random grids."""
    grid = sampling_grid(rgb.shape[0], rgb.shape[-1], rng, rgb.device)
    if grid is None:
        return rgb, mask, features, alpha

    def warp(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(t, g, mode="bilinear", padding_mode="reflection", align_corners=False)

    small = F.interpolate(grid.permute(0, 3, 1, 2), size=features.shape[-2:], mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1)
    return (warp(rgb, grid).clamp(0, 1), (warp(mask, grid) > 0.5).float(), warp(features, small),
            warp(alpha, grid).clamp(0, 1))
