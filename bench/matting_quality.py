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

--suite runs the variety suite of bench/matting_suite.py instead (11 clips: hair, fur, a veil,
smoke, motion blur, a hard edge, thin objects, camouflage, a fast mover, swaying hair, the real
lemur over another background; each with its own kind of coarse mask) for several candidate
settings, and ends with one summary row per candidate: the geometric mean over the suite of
SAD(matte) / SAD(mask as alpha), the worst clip's ratio and frames/s. --cross (with --suite) gives
each clip's first frame every kind of coarse mask in turn, on the edge, dilated, eroded, blocky and
segmenter-like, and counts the pairs where the matte lost to the mask. --scale 2 draws the suite's
clips at twice the resolution (960x540: the same scenes, edges as sharp), where the band, a share of
the frame, is twice as many pixels; --scale 4 at 1920x1080, over matting.solve_max_side (1024), where
the wide band is solved at about half size.

    .venv/bin/python bench/matting_quality.py --suite
    .venv/bin/python bench/matting_quality.py --suite --candidates default,lkm --clips hair,veil
    .venv/bin/python bench/matting_quality.py --suite --cross --candidates default,wide-on-edge
    .venv/bin/python bench/matting_quality.py --suite --cross --candidates default,band-0.04,band-0.06,band-0.1
    .venv/bin/python bench/matting_quality.py --suite --cross --scale 2 --candidates default
    .venv/bin/python bench/matting_quality.py --holes --candidates default,overlap-0.2

--holes counts the holes each candidate makes deep inside the hand-drawn masks of the DAVIS clips
(opaque objects: a car, a dog, a swan, a rider), where there is no exact alpha to compare with.
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
from core.matting.temporal import TemporalCarry  # noqa: E402
from core.matting.trimap import band_pixels  # noqa: E402

GOAL = 0.5
SUITE_GOAL, SUITE_WORST = 0.4, 0.7

# name -> (settings over MattingConfig's defaults, what it is); "default" is the shipped config
CANDIDATES = {
    "default": ({}, "the shipped matting.* defaults"),
    "previous": ({"trimap": "band", "temporal": 0.0, "on_edge": 0.0}, "the default before the suite: cf with samples, band 0.02, no carry"),
    "cf": ({"trimap": "band", "sample_weight": 0.0, "temporal": 0.0, "on_edge": 0.0}, "plain closed form, band 0.02"),
    "lkm": ({"trimap": "band", "solver": "lkm", "temporal": 0.0, "on_edge": 0.0}, "large kernel matting, band 0.02"),
    "knn": ({"trimap": "band", "solver": "knn", "temporal": 0.0, "on_edge": 0.0}, "KNN matting, band 0.02"),
    "band-grow": ({"trimap": "band", "grow": 2, "temporal": 0.0, "on_edge": 0.0}, "cf with samples, band widened twice where alpha runs on"),
    "colour-nocarry": ({"temporal": 0.0}, "the default without the temporal carry"),
    "wide-on-edge": ({"on_edge": 0.0}, "the default without narrowing the band for a mask on the edge"),
    "on-edge-2": ({"on_edge": 2.0}, "the default, a mask judged on the edge up to 2 (solved) pixels off it"),
    "overlap-0.2": ({"colour_overlap": 0.2}, "the default with the colour trimap's earlier overlap limit"),
    "band-0.04": ({"band": 0.04}, "the default with a band twice as wide"),
    "band-0.06": ({"band": 0.06}, "the default with a band three times as wide"),
    "band-0.1": ({"band": 0.1}, "the default with a band five times as wide"),
}


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


def run_suite(names: list[str], clips: list[str] | None, scale: int = 1) -> None:
    import dataclasses

    from bench import matting_suite

    suite = matting_suite.build(clips, scale=scale)
    start = time.perf_counter()
    importlib.import_module("pymatting")
    print(f"import pymatting: {time.perf_counter() - start:.1f} s (one-off)")
    h, w = suite[0].images[0].shape[:2]
    print(f"suite: {len(suite)} clips, {sum(len(c.images) for c in suite)} frames at {w}x{h}, exact alpha")
    for clip in suite:
        print(f"  {clip.name:13} {clip.what}")
    summary = []
    for name in names:
        changes, what = CANDIDATES[name]
        m = dataclasses.replace(MattingConfig(), **changes)
        solver = AlphaSolver.from_config(m)
        print(f"\n{name}: {what} (solver {m.solver}, trimap {m.trimap}, band {m.band:g}, sample_weight "
              f"{m.sample_weight:g}, grow {m.grow}, on_edge {m.on_edge:g}, temporal {m.temporal:g})")
        print(f"{'':14} {'SAD':>8} {'base SAD':>9} {'MSE e-3':>8} {'Grad':>8} {'Conn':>8} {'dtSSD':>7} {'base dt':>8} "
              f"{'frames/s':>9} {'SAD/base':>9}")
        ratios, frames, seconds = [], 0, 0.0
        for clip in suite:
            data = Clip(clip.name, list(zip(clip.images, clip.alphas)))
            s = evaluate(data, clip.masks, classical(solver, m.band, m.temporal))
            base = evaluate(data, clip.masks, lambda rgb, mask, prev: mask.astype(np.float64))
            gts = clip.alphas
            dt = metrics.dtssd(s.alphas, gts) if len(gts) > 1 else float("nan")
            base_dt = metrics.dtssd(base.alphas, gts) if len(gts) > 1 else float("nan")
            ratio = s.sad / base.sad
            ratios.append(ratio)
            frames, seconds = frames + len(gts), seconds + s.seconds
            print(f"{clip.name:14} {s.sad:8.3f} {base.sad:9.3f} {s.mse * 1e3:8.3f} {s.grad:8.3f} {s.conn:8.3f} {dt:7.3f} "
                  f"{base_dt:8.3f} {len(gts) / s.seconds:9.2f} {ratio:8.2f}x")
        geo = float(np.exp(np.mean(np.log(ratios))))
        worst = max(ratios)
        summary.append((name, geo, worst, suite[int(np.argmax(ratios))].name, frames / seconds))
        print(f"{'suite':14} geometric mean SAD/base {geo:.3f}, worst {worst:.2f}")
    print(f"\n{'candidate':16} {'geo-mean SAD/base':>18} {'worst clip':>22} {'frames/s':>9}")
    for name, geo, worst, clip, fps in summary:
        print(f"{name:16} {geo:18.3f} {worst:8.2f} ({clip:>11}) {fps:9.2f}")
    print(f"goal: geometric mean <= {SUITE_GOAL}, no clip over {SUITE_WORST}")


def run_cross(names: list[str], clips: list[str] | None, scale: int = 1) -> None:
    """Each suite clip's first frame under every kind of coarse mask (bench/matting_suite.py
    MASK_KINDS), not only the kind the suite pairs it with: SAD(matte) / SAD(mask as alpha) per
    clip and kind, then per candidate the geometric mean of each kind and over all, and how many
    pairs the matte lost to the mask. With several candidates, a last row gives the best of them
    for every pair: what an oracle choosing one candidate per frame would reach."""
    import dataclasses

    from bench import matting_suite

    suite = matting_suite.build(clips, scale=scale)
    kinds = matting_suite.MASK_KINDS
    importlib.import_module("pymatting")
    summary, tables = [], []
    for name in names:
        changes, what = CANDIDATES[name]
        solver = AlphaSolver.from_config(m := dataclasses.replace(MattingConfig(), **changes))
        print(f"\n{name}: {what}")
        print(f"{'':14}" + "".join(f"{k:>8}" for k in kinds))
        table = []
        for clip in suite:
            rgb, alpha = clip.images[0], clip.alphas[0]
            row = []
            for make in kinds.values():
                mask = make(alpha, np.random.default_rng(5))
                matte = solver.matte(rgb, mask, band_pixels(m.band, *mask.shape))
                row.append(metrics.sad(matte, alpha) / max(metrics.sad(mask.astype(np.float64), alpha), 1e-9))
            table.append(row)
            print(f"{clip.name:14}" + "".join(f"{r:8.2f}" for r in row))
        t = np.array(table)
        tables.append(t)
        per_kind = np.exp(np.log(t).mean(axis=0))
        print(f"{'geo-mean':14}" + "".join(f"{g:8.3f}" for g in per_kind))
        summary.append((name, float(np.exp(np.log(t).mean())), int((t > 1.0).sum()), t.size, float(t.max())))
    if len(tables) > 1:
        t = np.min(tables, axis=0)
        summary.append(("best per frame", float(np.exp(np.log(t).mean())), int((t > 1.0).sum()), t.size, float(t.max())))
    print(f"\n{'candidate':16} {'geo-mean SAD/base':>18} {'lost to the mask':>17} {'worst':>7}")
    for name, geo, lost, n, worst in summary:
        print(f"{name:16} {geo:18.3f} {f'{lost} of {n}':>17} {worst:7.2f}")


def deep_holes(alpha: np.ndarray, mask: np.ndarray, band_px: int) -> int:
    """Pixels more than `band_px` inside the mask that the matte puts under 0.5: holes, where the
    mask is of an opaque object."""
    deep = cv2.erode(np.asarray(mask).astype(np.uint8), np.ones((2 * band_px + 1, 2 * band_px + 1), np.uint8)) > 0
    return int(((np.asarray(alpha) < 0.5) & deep).sum())


def run_holes(names: list[str]) -> None:
    """Solid real objects stay solid: on the DAVIS clips in the data folder (vos/<clip>: images/ and
    hand-drawn masks/), every 6th of the first 30 frames, the pixels more than a band inside the mask
    that the matte puts under 0.5, per clip and candidate. The objects there are opaque, so those are
    holes (no exact alpha exists for these clips; this counts only that kind of error)."""
    import dataclasses

    clips = sorted(p for p in (DATA / "vos").glob("*") if (p / "images").is_dir() and (p / "masks").is_dir())
    if not clips:
        sys.exit(f"needs DAVIS clips at {DATA / 'vos'} (set REELMASK_TEST_DATA)")
    importlib.import_module("pymatting")
    print(f"{'holes (px)':16}" + "".join(f"{c.name:>12}" for c in clips) + f"{'all':>9}")
    for name in names:
        m = dataclasses.replace(MattingConfig(), **CANDIDATES[name][0])
        solver = AlphaSolver.from_config(m)
        row = []
        for clip in clips:
            count = 0
            for path in sorted((clip / "images").glob("*.jpg"))[:30:6]:
                mask = cv2.imread(str(clip / "masks" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE) > 0
                rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
                bp = band_pixels(m.band, *mask.shape)
                count += deep_holes(solver.matte(rgb, mask, bp), mask, bp)
            row.append(count)
        print(f"{name:16}" + "".join(f"{n:12d}" for n in row) + f"{sum(row):9d}")


def classical(solver: AlphaSolver, band: float, temporal: float):
    """The matting mode's classical matte, frame after frame, with the temporal carry (a fresh one per
    clip: it starts when `prev` is None)."""
    state = {"carry": None, "frame": 0}

    def matte(rgb, mask, prev):
        if prev is None:
            state["carry"], state["frame"] = (TemporalCarry(temporal) if temporal > 0 else None), 0
        alpha = solver.matte(rgb, mask, band_pixels(band, *mask.shape))
        if state["carry"] is not None:
            alpha = state["carry"](state["frame"], rgb, alpha)
        state["frame"] += 1
        return alpha

    return matte


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
    ap.add_argument("--trimap", default=defaults.trimap, help=f"matting.trimap (default {defaults.trimap})")
    ap.add_argument("--on-edge", type=float, default=defaults.on_edge,
                    help=f"matting.on_edge (default {defaults.on_edge}; 0 = the band never narrows)")
    ap.add_argument("--temporal", type=float, default=defaults.temporal,
                    help=f"matting.temporal (default {defaults.temporal})")
    ap.add_argument("--frames", type=int, default=24, help="video frames to use (at most 24)")
    ap.add_argument("--refiner", default=None, metavar="PATH", help="also evaluate a learned refiner checkpoint")
    ap.add_argument("--device", default="auto", help="device for the refiner")
    ap.add_argument("--suite", action="store_true", help="run the variety suite (bench/matting_suite.py) instead")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help=f"with --suite: some of {', '.join(CANDIDATES)}")
    ap.add_argument("--clips", default="", help="with --suite: only these clips (comma-separated)")
    ap.add_argument("--cross", action="store_true", help="with --suite: every clip's first frame under every kind of "
                    "coarse mask (on the edge, dilated, eroded, blocky, segmenter-like), not only its own")
    ap.add_argument("--holes", action="store_true", help="count holes the candidates make deep inside the "
                    "hand-drawn masks of the DAVIS clips (solid objects), instead")
    ap.add_argument("--scale", type=int, default=1, help="with --suite: draw the clips this many times larger "
                    "(2: 960x540, 4: 1920x1080, over matting.solve_max_side; the masks' errors stay in pixels)")
    args = ap.parse_args()
    if args.cross and not args.suite:
        sys.exit("--cross goes with --suite")
    if args.suite or args.holes:
        names = [n for n in args.candidates.split(",") if n]
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            sys.exit(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
        if args.holes:
            run_holes(names)
            return
        (run_cross if args.cross else run_suite)(names, [c for c in args.clips.split(",") if c] or None, args.scale)
        return

    solver = AlphaSolver(args.solver, args.max_side, args.sample_weight, trimap=args.trimap, on_edge=args.on_edge)
    start = time.perf_counter()
    importlib.import_module("pymatting")  # numba kernels load from cache (or compile) once: kept out of frames/s
    print(f"import pymatting: {time.perf_counter() - start:.1f} s (one-off; about 40 s when numba's cache is cold)")
    methods = {
        "baseline (mask as alpha)": lambda rgb, mask, prev: mask.astype(np.float64),
        f"classical ({args.solver}{f' w{args.sample_weight:g}' if args.solver == 'cf' else ''}, band {args.band:g}, "
        f"{args.trimap}, on_edge {args.on_edge:g})": classical(solver, args.band, args.temporal),
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
