"""Matting quality: the coarse mask as alpha vs the classical default (vs a learned refiner).

On the real matting data in ../shared/data/matting (the lemur composite image and the 24-frame
lemur_over_blackswan video, both with exact alpha), a coarse mask is made from the ground truth
(alpha > 0.5, then optionally dilated / eroded by N pixels or made blocky by a low resolution) and
turned into alpha three ways:
  - baseline: the binary mask itself used as alpha,
  - classical: the `matting` mode default, AlphaSolver.matte (trimap band + pymatting solver),
  - refiner (with --refiner PATH): core.matting.refiner.load_refiner(PATH, device).alpha(...).
It prints SAD, MSE, gradient and connectivity errors (DIM scales), dtSSD (video), frames/s and the
ratio SAD / SAD(baseline). Goal: classical <= 0.5x the baseline's SAD.

    .venv/bin/python bench/matting_quality.py
    .venv/bin/python bench/matting_quality.py --dilate 5 --solver sm --band 0.03
    .venv/bin/python bench/matting_quality.py --refiner runs/matting-x/best.pt --device cpu
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DATA  # noqa: E402
from core.config import MattingConfig  # noqa: E402
from core.matting import metrics  # noqa: E402
from core.matting.solver import AlphaSolver  # noqa: E402
from core.matting.trimap import band_pixels  # noqa: E402

GOAL = 0.5


@dataclass
class Clip:
    name: str
    frames: list[tuple[np.ndarray, np.ndarray]]  # (RGB uint8, exact alpha float in [0, 1])


@dataclass
class Score:
    sad: float = 0.0
    mse: float = 0.0
    grad: float = 0.0
    conn: float = 0.0
    seconds: float = 0.0
    alphas: list[np.ndarray] = field(default_factory=list)


def _read(rgb_path: Path, alpha_path: Path) -> tuple[np.ndarray, np.ndarray]:
    rgb = cv2.cvtColor(cv2.imread(str(rgb_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return rgb, cv2.imread(str(alpha_path), cv2.IMREAD_GRAYSCALE).astype(np.float64) / 255.0


def load_clips(max_frames: int) -> list[Clip]:
    image = DATA / "matting" / "image" / "lemur_on_beach_composite"
    video = DATA / "matting" / "video" / "lemur_over_blackswan"
    if not image.is_dir() or not video.is_dir():
        sys.exit(f"needs the matting data at {DATA / 'matting'} (set REELMASK_TEST_DATA)")
    stems = sorted(p.stem for p in (video / "images").glob("*.png"))[:max_frames]
    return [Clip("lemur image", [_read(image / "image.png", image / "alpha.png")]),
            Clip(f"lemur video ({len(stems)} frames)",
                 [_read(video / "images" / f"{s}.png", video / "pha" / f"{s}.png") for s in stems])]


def coarse_mask(alpha: np.ndarray, dilate: int, erode: int, block: int) -> np.ndarray:
    """Thresholded ground truth, then dilated / eroded (elliptical, N pixels) or blocky (1/N size)."""
    mask = (alpha > 0.5).astype(np.uint8)
    if dilate:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1,) * 2))
    if erode:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1,) * 2))
    if block > 1:
        h, w = alpha.shape
        small = cv2.resize(alpha.astype(np.float32), (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
        mask = cv2.resize((small > 0.5).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def evaluate(clip: Clip, masks: list[np.ndarray], matte) -> Score:
    """matte(rgb, mask, prev_alpha) -> alpha, frame after frame; metrics against the exact alpha."""
    score, prev = Score(), None
    for (rgb, gt), mask in zip(clip.frames, masks):
        start = time.perf_counter()
        alpha = np.asarray(matte(rgb, mask, prev), np.float64)
        score.seconds += time.perf_counter() - start
        score.sad += metrics.sad(alpha, gt)
        score.mse += metrics.mse(alpha, gt) / len(clip.frames)
        score.grad += metrics.gradient_error(alpha, gt)
        score.conn += metrics.connectivity_error(alpha, gt)
        score.alphas.append(alpha)
        prev = alpha
    return score


def load_refiner_hook(path: str | None, device: str):
    """REFINER HOOK: core.matting.refiner.load_refiner(path, device) must return an object with
    .alpha(rgb, mask, prev_alpha=None) -> float alpha. None (and a printed reason) if unavailable."""
    if path is None:
        return None
    try:
        from core.matting.refiner import load_refiner

        refiner = load_refiner(Path(path), device)
    except Exception as e:  # the refiner is optional here: report why and go on without it
        print(f"refiner not available: {type(e).__name__}: {e}")
        return None
    return lambda rgb, mask, prev: refiner.alpha(rgb, mask, prev_alpha=prev)


def main() -> None:
    defaults = MattingConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dilate", type=int, default=0, metavar="N", help="dilate the thresholded mask by N pixels")
    ap.add_argument("--erode", type=int, default=0, metavar="N", help="erode the thresholded mask by N pixels")
    ap.add_argument("--block", type=int, default=0, metavar="N", help="threshold at 1/N resolution, scale back nearest")
    ap.add_argument("--solver", default=defaults.solver, help=f"matting.solver (default {defaults.solver})")
    ap.add_argument("--band", type=float, default=defaults.band, help=f"matting.band (default {defaults.band})")
    ap.add_argument("--max-side", type=int, default=defaults.solve_max_side,
                    help=f"matting.solve_max_side (default {defaults.solve_max_side})")
    ap.add_argument("--sample-weight", type=float, default=defaults.sample_weight,
                    help=f"matting.sample_weight (default {defaults.sample_weight}; 0 = plain closed form)")
    ap.add_argument("--frames", type=int, default=24, help="video frames to use (at most 24)")
    ap.add_argument("--refiner", default=None, metavar="PATH", help="also evaluate a learned refiner checkpoint")
    ap.add_argument("--device", default="auto", help="device for the refiner")
    args = ap.parse_args()

    solver = AlphaSolver(args.solver, args.max_side, args.sample_weight)
    start = time.perf_counter()
    importlib.import_module("pymatting")  # numba kernels load from cache (or compile) once: kept out of frames/s
    print(f"import pymatting: {time.perf_counter() - start:.1f} s (one-off; about 40 s when numba's cache is cold)")
    methods = {
        "baseline (mask as alpha)": lambda rgb, mask, prev: mask.astype(np.float64),
        f"classical ({args.solver}{f' w{args.sample_weight:g}' if args.solver == 'cf' else ''}, band {args.band:g})":
            lambda rgb, mask, prev: solver.matte(rgb, mask, band_pixels(args.band, *mask.shape)),
    }
    refiner = load_refiner_hook(args.refiner, args.device)
    if refiner is not None:
        methods[f"refiner ({Path(args.refiner).name})"] = refiner

    kind = "alpha > 0.5" + (f", dilated {args.dilate} px" if args.dilate else "") + \
        (f", eroded {args.erode} px" if args.erode else "") + (f", at 1/{args.block} resolution" if args.block > 1 else "")
    print(f"coarse mask: {kind}; solve_max_side {args.max_side}")
    head = f"{'':34} {'SAD':>8} {'MSE e-3':>8} {'Grad':>8} {'Conn':>8} {'dtSSD':>7} {'frames/s':>9} {'SAD/base':>9}"
    ratios = []
    for clip in load_clips(args.frames):
        masks = [coarse_mask(gt, args.dilate, args.erode, args.block) for _, gt in clip.frames]
        print(f"\n{clip.name}, {clip.frames[0][1].shape[1]}x{clip.frames[0][1].shape[0]}")
        print(head)
        base_sad = None
        for name, matte in methods.items():
            s = evaluate(clip, masks, matte)
            base_sad = s.sad if base_sad is None else base_sad
            dt = metrics.dtssd(s.alphas, [gt for _, gt in clip.frames]) if len(clip.frames) > 1 else float("nan")
            fps = len(clip.frames) / s.seconds if s.seconds > 0 else float("inf")
            ratio = s.sad / base_sad if base_sad else float("nan")
            if name.startswith("classical"):
                ratios.append(ratio)
            print(f"{name:34} {s.sad:8.3f} {s.mse * 1e3:8.3f} {s.grad:8.3f} {s.conn:8.3f} {dt:7.3f} {fps:9.2f} {ratio:8.2f}x")
    worst = max(ratios)
    print(f"\nSAD(classical) / SAD(baseline), worst clip: {worst:.2f} (goal <= {GOAL}) {'OK' if worst <= GOAL else 'OVER GOAL'}")


if __name__ == "__main__":
    main()
