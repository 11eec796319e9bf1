"""Alpha matte quality metrics: SAD, MSE, gradient and connectivity errors, dtSSD.

All functions take alphas as float arrays in [0, 1] of equal shape (uint8 0-255 arrays are
accepted and divided by 255) and an optional boolean ``region`` that restricts the sum or mean,
usually the trimap's unknown band. Scales follow the published benchmarks: SAD, gradient and
connectivity errors are sums divided by 1000 (Deep Image Matting, Xu et al. 2017; Rhemann et al.
2009), MSE is a plain mean, dtSSD is multiplied by 100 (as the video matting papers report it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_alpha(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return a.astype(np.float64, copy=False)


def _pair(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, g = _as_alpha(pred), _as_alpha(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    if p.ndim != 2:
        raise ValueError(f"alpha must be 2-D (H x W), got shape {p.shape}")
    if region is None:
        mask = np.ones(p.shape, bool)
    else:
        mask = np.asarray(region, bool)
        if mask.shape != p.shape:
            raise ValueError(f"region shape {mask.shape} differs from alpha shape {p.shape}")
    return p, g, mask


def sad(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of absolute differences over ``region`` (everywhere if None), divided by 1000 as in
    the Deep Image Matting benchmark."""
    p, g, m = _pair(pred, gt, region)
    return float(np.abs(p - g)[m].sum() / 1000.0)


def mse(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean squared error over ``region`` (0.0 for an empty region); not rescaled."""
    p, g, m = _pair(pred, gt, region)
    n = int(m.sum())
    return float(((p - g) ** 2)[m].sum() / n) if n else 0.0


def _gauss_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D Gaussian and Gaussian-derivative taps of the DIM ``gaussgradient`` (epsilon 1e-2), with
    the 2-D kernel g(y) * dg(x) normalised to unit L2 norm."""
    half = int(np.ceil(sigma * np.sqrt(-2.0 * np.log(np.sqrt(2.0 * np.pi) * sigma * 1e-2))))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-x ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
    dg = -x * g / sigma ** 2
    norm = np.sqrt((g ** 2).sum() * (dg ** 2).sum())
    return g, dg / norm


def _conv1d(img: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Convolution (kernel flipped) along one axis with replicated borders, same size out."""
    half = len(taps) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(img, pad, mode="edge")
    out = np.zeros_like(img)
    n = img.shape[axis]
    for k, t in enumerate(taps[::-1]):
        out += t * (padded[k:k + n, :] if axis == 0 else padded[:, k:k + n])
    return out


def _gradient_magnitude(a: np.ndarray, sigma: float) -> np.ndarray:
    g, dg = _gauss_kernels(sigma)
    gx = _conv1d(_conv1d(a, dg, axis=1), g, axis=0)
    gy = _conv1d(_conv1d(a, dg, axis=0), g, axis=1)
    return np.sqrt(gx ** 2 + gy ** 2)


def gradient_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None, sigma: float = 1.4) -> float:
    """Gradient error (Rhemann et al. 2009, DIM code): magnitudes of first-order Gaussian
    derivative filters (``sigma``) of prediction and ground truth, squared difference summed over
    ``region``, divided by 1000. Alphas are used as given in [0, 1] (the DIM script's min-max
    rescaling is the identity for mattes that reach both 0 and 1)."""
    p, g, m = _pair(pred, gt, region)
    diff = (_gradient_magnitude(p, sigma) - _gradient_magnitude(g, sigma)) ** 2
    return float(diff[m].sum() / 1000.0)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    import cv2  # connected components; cv2 is a core dependency and cheap next to torch

    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros(binary.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def connectivity_error(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None, step: float = 0.1) -> float:
    """Connectivity error (Rhemann et al. 2009, DIM code): for thresholds 0, step, ..., 1 each
    pixel gets the last level at which it still belongs to the largest 4-connected component of
    (pred >= t) & (gt >= t); phi = 1 - d * (d >= 0.15) with d = alpha - level; summed |phi_pred -
    phi_gt| over ``region``, divided by 1000."""
    p, g, m = _pair(pred, gt, region)
    steps = np.arange(0.0, 1.0 + step / 2, step)
    level = np.full(p.shape, -1.0)
    for i in range(1, len(steps)):
        omega = _largest_component((p >= steps[i]) & (g >= steps[i]))
        level[(level == -1) & ~omega] = steps[i - 1]
    level[level == -1] = 1.0
    dp, dg = p - level, g - level
    phi_p = 1 - dp * (dp >= 0.15)
    phi_g = 1 - dg * (dg >= 0.15)
    return float(np.abs(phi_p - phi_g)[m].sum() / 1000.0)


def dtssd(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
    """Temporal coherence error dtSSD (Erofeev et al. 2015): for each frame t >= 1,
    sqrt(mean over pixels of ((p_t - p_{t-1}) - (g_t - g_{t-1}))^2), averaged over frames and
    multiplied by 100 (as reported by the video matting benchmarks). 0.0 for fewer than 2 frames."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted frames but {len(gts)} ground-truth frames")
    if len(preds) < 2:
        return 0.0
    total = 0.0
    prev_p, prev_g, _ = _pair(preds[0], gts[0], None)
    for pred, gt in zip(preds[1:], gts[1:]):
        p, g, _ = _pair(pred, gt, None)
        total += float(np.sqrt(np.mean(((p - prev_p) - (g - prev_g)) ** 2)))
        prev_p, prev_g = p, g
    return 100.0 * total / (len(preds) - 1)
