"""A matting benchmark suite with exact alpha, made here: composites of procedural (and two real)
foregrounds over real DAVIS backgrounds, each paired with a coarse mask of a typical kind.

Every clip is built in floating point as  image = alpha * foreground + (1 - alpha) * background
(then rounded to 8 bits), so its alpha is exact by construction; fractional alpha comes from
drawing at 4x resolution and averaging (strands, anti-aliased edges) or from smooth fields (veil,
smoke) and motion blur. Backgrounds are real DAVIS frames from ../shared/data/vos (a moving
camera where a clip has several frames). Coarse masks imitate what reaches the matter: a mask
dilated, eroded, at low resolution (blocky), or "segmenter-like" (what a SAM2 mask typically gets
wrong: thin strands below half cover dropped, small holes filled, the edge moved by a smooth
random offset of a few pixels, a small spurious blob).

The clips are deterministic (fixed seeds) and small enough to run on a CPU in a few minutes.
bench/matting_quality.py --suite runs them; tests/test_matting_suite.py checks their exactness.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DATA  # noqa: E402
from core.matting.trimap import disk  # noqa: E402

SIZE = (480, 270)   # width, height of every clip: 16:9 as the DAVIS frames, a quarter of 854x480's pixels
SS = 4              # supersampling for drawn shapes: alpha is the share of covered sub-pixels
SCALE = 1           # build(scale=N) draws every clip N times larger: while it builds, SIZE is N times
                    # larger and SS (drawing units per 480x270 pixel) N times too, so shapes are given in
                    # 480x270 coordinates and still supersampled 4x


@dataclass
class SuiteClip:
    name: str
    what: str                      # one line: foreground, background, mask kind
    images: list[np.ndarray]       # RGB uint8 frames
    alphas: list[np.ndarray]       # exact alpha, float64 in [0, 1]
    masks: list[np.ndarray]        # the coarse mask given to the matter, bool
    fg: list[np.ndarray]           # foreground colours, float64 RGB in [0, 255] (for the exactness test)
    bg: list[np.ndarray]           # background colours, float64 RGB in [0, 255]


# ------------------------------------------------------------------ backgrounds and colours

def background(name: str, start: int = 0, n: int = 1, step: int = 1) -> list[np.ndarray]:
    """n real DAVIS frames of vos/<name> (every `step`-th from `start`), resized to SIZE, float RGB."""
    folder = DATA / "vos" / name / "images"
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"needs the DAVIS clips at {DATA / 'vos'} (set REELMASK_TEST_DATA)")
    out = []
    for i in range(n):
        bgr = cv2.imread(str(files[min(len(files) - 1, start + i * step)]), cv2.IMREAD_COLOR)
        out.append(cv2.cvtColor(cv2.resize(bgr, SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB).astype(np.float64))
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field in [0, 1]: white noise blurred at `scale` pixels, stretched to its range."""
    field = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), scale)
    lo, hi = float(field.min()), float(field.max())
    return ((field - lo) / max(hi - lo, 1e-6)).astype(np.float64)


def textured(rng: np.random.Generator, colour: tuple[float, float, float], spread: float,
             shape: tuple[int, int] | None = None) -> np.ndarray:
    """A foreground colour field: `colour` varied by +-spread with smooth noise per channel."""
    h, w = shape or (SIZE[1], SIZE[0])
    field = np.stack([smooth_noise(rng, (h, w), 6.0 * SCALE) for _ in range(3)], axis=2)
    return np.clip(np.asarray(colour, np.float64) + (field - 0.5) * 2 * spread, 0, 255)


def compose(alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(np.rint(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ shapes (drawn at SS x, averaged)

def _canvas() -> np.ndarray:
    return np.zeros((SIZE[1] // SCALE * SS, SIZE[0] // SCALE * SS), np.uint8)


def _down(canvas: np.ndarray) -> np.ndarray:
    return cv2.resize(canvas.astype(np.float32) / 255.0, SIZE, interpolation=cv2.INTER_AREA).astype(np.float64)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * SS)), int(round(y * SS))


def strands(canvas: np.ndarray, rng: np.random.Generator, roots: np.ndarray, normals: np.ndarray,
            length: tuple[float, float], width: tuple[float, float], curl: float) -> None:
    """A strand from each root along its normal, bending randomly, `width` pixels thick (at 1x)."""
    for (x, y), (nx, ny) in zip(roots, normals):
        n = float(rng.uniform(*length))
        wd = max(1, int(round(rng.uniform(*width) * SS)))
        angle = np.arctan2(ny, nx) + rng.normal(0, 0.3)
        pts = [(x, y)]
        steps = max(2, int(n / 4))
        for _ in range(steps):
            angle += rng.normal(0, curl)
            x, y = x + 4 * np.cos(angle), y + 4 * np.sin(angle)
            pts.append((x, y))
        poly = np.array([_pt(px, py) for px, py in pts], np.int32)
        cv2.polylines(canvas, [poly], False, 255, wd, cv2.LINE_8)


def ellipse_outline(cx: float, cy: float, ax: float, ay: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    roots = np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)
    normals = np.stack([np.cos(t) / ax, np.sin(t) / ay], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return roots, normals


def blob(canvas: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, wobble: float = 0.25) -> None:
    """A filled irregular closed shape of radius about r (a body, a head, a rock)."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    radius = r * (1 + wobble * (smooth_noise(rng, (1, 64), 3.0)[0] - 0.5))
    poly = np.array([_pt(cx + rr * np.cos(a), cy + rr * np.sin(a)) for rr, a in zip(radius, t)], np.int32)
    cv2.fillPoly(canvas, [poly], 255, cv2.LINE_8)


# ------------------------------------------------------------------ coarse masks

def mask_dilated(alpha: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate((alpha > 0.5).astype(np.uint8), disk(px)) > 0


def mask_eroded(alpha: np.ndarray, px: int) -> np.ndarray:
    return cv2.erode((alpha > 0.5).astype(np.uint8), disk(px)) > 0


def mask_blocky(alpha: np.ndarray, factor: int) -> np.ndarray:
    h, w = alpha.shape
    small = cv2.resize(alpha.astype(np.float32), (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize((small > 0.5).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def mask_segmenter(alpha: np.ndarray, rng: np.random.Generator, shift: float = 3.0) -> np.ndarray:
    """What a segmenter's mask typically gets wrong: a smoothed alpha thresholded at 0.5 (strands
    below half cover gone, gaps closed), small holes filled, the edge moved in or out by a smooth
    random offset of up to `shift` pixels, and a small spurious blob near the object."""
    h, w = alpha.shape
    soft = cv2.GaussianBlur(alpha.astype(np.float32), (0, 0), 1.5)
    mask = (soft > 0.5).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disk(2))
    if not mask.any():
        return mask > 0
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 3)
    signed = inside - outside                                   # > 0 inside
    offset = (smooth_noise(rng, (h, w), 25.0) - 0.5) * 2 * shift
    moved = (signed + offset) > 0
    ys, xs = np.nonzero(mask)
    k = int(rng.integers(len(ys)))
    cy, cx = int(ys[k]), int(xs[k])
    for _ in range(20):   # a blob of about 5 px on the outside, within 15 px of the edge
        y, x = cy + int(rng.integers(-15, 16)), cx + int(rng.integers(-15, 16))
        if 0 <= y < h and 0 <= x < w and not mask[y, x] and outside[y, x] < 15:
            cv2.circle(moved.view(np.uint8), (x, y), 4, 1, -1)
            break
    return moved


# ------------------------------------------------------------------ the clips

def _still(name: str, what: str, alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> SuiteClip:
    return SuiteClip(name, what, [compose(alpha, fg, bg)], [alpha], [mask], [fg], [bg])


def hair(rng: np.random.Generator) -> SuiteClip:
    c = _canvas()
    blob(c, rng, 240, 150, 60)
    roots, normals = ellipse_outline(240, 150, 55, 55, 260)
    strands(c, rng, roots, normals, (15, 60), (0.3, 2.5), 0.15)
    alpha = _down(c)
    fg = textured(rng, (120, 80, 50), 40)
    return _still("hair", "strands 0.3-2.5 px around a head, over DAVIS bmx-trees; mask dilated 5 px",
                  alpha, fg, background("bmx-trees", 20)[0], mask_dilated(alpha, 5))


def fur(rng: np.random.Generator) -> SuiteClip:
    c = _canvas()
    blob(c, rng, 230, 140, 75, 0.35)
    roots, normals = ellipse_outline(230, 140, 70, 70, 900)
    strands(c, rng, roots, normals, (6, 18), (0.3, 1.2), 0.25)
    alpha = _down(c)
    fg = textured(rng, (200, 190, 170), 35)
    return _still("fur", "dense short fur (0.3-1.2 px) on an animal-like body, over DAVIS dog; segmenter-like mask",
                  alpha, fg, background("dog", 10)[0], mask_segmenter(alpha, rng))


def veil(rng: np.random.Generator) -> SuiteClip:
    c = _canvas()
    blob(c, rng, 200, 150, 55, 0.2)
    body = _down(c)
    h, w = body.shape
    yy, xx = np.mgrid[0:h, 0:w]
    region = np.clip(1.0 - np.hypot((xx - 280 * SCALE) / (120.0 * SCALE), (yy - 140 * SCALE) / (90.0 * SCALE)),
                     0, 1) ** 0.5   # a broad cloth
    cloth = region * (0.3 + 0.5 * smooth_noise(rng, (h, w), 8.0 * SCALE))
    alpha = 1 - (1 - body) * (1 - cloth)                          # the body seen through the veil too
    fg = np.where(body[..., None] > 0, textured(rng, (60, 90, 160), 30), textured(rng, (240, 240, 250), 10))
    fg = body[..., None] * textured(rng, (60, 90, 160), 30) + (1 - body[..., None]) * fg
    return _still("veil", "a broad semi-transparent veil (alpha up to 0.8) beside a solid body, over DAVIS blackswan; "
                  "mask dilated 3 px", alpha, fg, background("blackswan", 15)[0], mask_dilated(alpha, 3))


def smoke(rng: np.random.Generator) -> SuiteClip:
    h, w = SIZE[1], SIZE[0]
    yy, xx = np.mgrid[0:h, 0:w]
    plume = np.clip(1.0 - np.hypot((xx - 240 * SCALE) / (110.0 * SCALE), (yy - 150 * SCALE) / (100.0 * SCALE)), 0, 1)
    alpha = np.clip(plume ** 0.6 * (0.5 + 0.8 * smooth_noise(rng, (h, w), 10.0 * SCALE)), 0, 0.95)
    fg = textured(rng, (210, 210, 215), 15)
    return _still("smoke", "a smoke plume, soft everywhere (alpha up to 0.95), over DAVIS car-shadow; segmenter-like mask",
                  alpha, fg, background("car-shadow", 30)[0], mask_segmenter(alpha, rng, 2.0))


def motion_blur(rng: np.random.Generator) -> SuiteClip:
    c = _canvas()
    cv2.rectangle(c, _pt(150, 110), _pt(330, 170), 255, -1)
    cv2.circle(c, _pt(190, 175), 22 * SS, 255, -1)
    cv2.circle(c, _pt(290, 175), 22 * SS, 255, -1)
    sharp = _down(c)
    kernel = np.ones((1, 31 * SCALE), np.float64) / (31 * SCALE)  # a 31-pixel horizontal motion (at 480x270)
    alpha = np.clip(cv2.filter2D(sharp, -1, kernel, borderType=cv2.BORDER_CONSTANT), 0, 1)
    colours = textured(rng, (200, 40, 40), 40)
    fg = np.stack([cv2.filter2D(colours[..., k] * sharp, -1, kernel, borderType=cv2.BORDER_CONSTANT) for k in range(3)], 2)
    fg = np.where(alpha[..., None] > 1e-6, fg / np.maximum(alpha[..., None], 1e-6), colours)
    fg = np.clip(fg, 0, 255)
    return _still("motion-blur", "a car shape blurred over 31 px of horizontal motion, over DAVIS bmx-trees; "
                  "mask at 1/8 resolution", alpha, fg, background("bmx-trees", 50)[0], mask_blocky(alpha, 8))


def hard_edge(rng: np.random.Generator) -> SuiteClip:
    c = _canvas()
    poly = np.array([_pt(x, y) for x, y in [(140, 60), (330, 80), (360, 200), (250, 240), (120, 190)]], np.int32)
    cv2.fillPoly(c, [poly], 255, cv2.LINE_8)
    cv2.circle(c, _pt(240, 150), 25 * SS, 0, -1)                  # a hole through it
    alpha = _down(c)
    fg = textured(rng, (90, 160, 90), 50)
    return _still("hard-edge", "a solid polygon with a hole (only anti-aliased edges are soft), over DAVIS car-shadow; "
                  "segmenter-like mask", alpha, fg, background("car-shadow", 5)[0], mask_segmenter(alpha, rng))


def thin(rng: np.random.Generator) -> SuiteClip:
    c = _canvas()
    cv2.line(c, _pt(100, 10), _pt(120, 265), 255, 4 * SS)        # a pole, 4 px
    rope = np.array([_pt(120 + 3 * t, 60 + 40 * np.sin(t / 18.0) + t * 0.4) for t in range(0, 110)], np.int32)
    cv2.polylines(c, [rope], False, 255, int(2.2 * SS))          # a rope, 2.2 px
    wire = np.array([_pt(120 + 3.2 * t, 30 + 0.3 * t + 12 * np.sin(t / 25.0)) for t in range(0, 110)], np.int32)
    cv2.polylines(c, [wire], False, 255, int(1.2 * SS))          # a wire, 1.2 px
    alpha = _down(c)
    fg = textured(rng, (60, 50, 40), 20)
    return _still("thin", "a 4 px pole, a 2.2 px rope and a 1.2 px wire, over DAVIS blackswan; mask dilated 4 px",
                  alpha, fg, background("blackswan", 40)[0], mask_dilated(alpha, 4))


def camouflage(rng: np.random.Generator) -> SuiteClip:
    c = _canvas()
    blob(c, rng, 250, 140, 65, 0.3)
    roots, normals = ellipse_outline(250, 140, 60, 60, 300)
    strands(c, rng, roots, normals, (8, 30), (0.5, 2.0), 0.2)
    alpha = _down(c)
    bg = background("dog", 40)[0]
    fg = np.roll(bg, (60, 150), axis=(0, 1))                      # its colours are the background's own
    fg = cv2.GaussianBlur(fg, (0, 0), 2.0)
    return _still("camouflage", "a furry shape coloured from the same background, over DAVIS dog; mask eroded 3 px",
                  alpha, fg, bg, mask_eroded(alpha, 3))


def fast_mover(rng: np.random.Generator, n: int = 6) -> SuiteClip:
    bgs = background("bmx-trees", 0, n, 2)
    colours = textured(rng, (230, 200, 60), 30, (SIZE[1], SIZE[0] + 400 * SCALE))
    base = _canvas()
    blob(base, rng, 90, 140, 40, 0.3)
    roots, normals = ellipse_outline(90, 140, 38, 38, 150)
    strands(base, rng, roots, normals, (8, 25), (0.4, 1.8), 0.2)
    images, alphas, masks, fgs = [], [], [], []
    for i in range(n):
        dx = 55 * i * SCALE                                       # 55 px a frame (at 480x270)
        alpha = np.roll(_down(base), dx, axis=1)
        fg = colours[:, 400 * SCALE - dx:400 * SCALE - dx + SIZE[0]]
        images.append(compose(alpha, fg, bgs[i]))
        alphas.append(alpha)
        masks.append(mask_segmenter(alpha, rng))
        fgs.append(fg)
    return SuiteClip("fast-mover", f"a furry ball crossing the frame at 55 px a frame ({n} frames, moving camera "
                     "DAVIS bmx-trees); segmenter-like masks", images, alphas, masks, fgs, bgs)


def swaying_hair(rng: np.random.Generator, n: int = 6) -> SuiteClip:
    """A nearly still head of hair before a still background: where the temporal carry should pay."""
    bg = background("blackswan", 0)[0]
    fg = textured(rng, (70, 50, 40), 30)
    state = rng.bit_generator.state
    images, alphas, masks = [], [], []
    for i in range(n):
        rng.bit_generator.state = state                            # the same strands, swaying slightly
        c = _canvas()
        blob(c, rng, 240, 140, 55)
        roots, normals = ellipse_outline(240, 140, 50, 50, 200)
        normals = normals + np.array([0.04 * np.sin(i / 2.0), 0.0])
        strands(c, rng, roots, normals, (15, 45), (0.3, 2.0), 0.12)
        alpha = _down(c)
        images.append(compose(alpha, fg, bg))
        alphas.append(alpha)
        masks.append(mask_dilated(alpha, 4))
    return SuiteClip("swaying-hair", f"hair swaying slightly before a still DAVIS blackswan frame ({n} frames); "
                     "mask dilated 4 px", images, alphas, masks, [fg] * n, [bg] * n)


def lemur_over(rng: np.random.Generator) -> SuiteClip:
    """The real lemur foreground (exact alpha from the shared data) over a DAVIS frame it was not tuned on."""
    src = DATA / "matting" / "image" / "lemur_on_beach_composite"
    fgr = cv2.cvtColor(cv2.imread(str(src / "fgr.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    pha = cv2.imread(str(src / "alpha.png"), cv2.IMREAD_GRAYSCALE)
    if fgr is None or pha is None:
        raise FileNotFoundError(f"needs the matting data at {src} (set REELMASK_TEST_DATA)")
    h, w = SIZE[1], SIZE[0]
    scale = h / pha.shape[0]
    size = (int(round(pha.shape[1] * scale)), h)
    fg_small = cv2.resize(fgr, size, interpolation=cv2.INTER_AREA).astype(np.float64)
    a_small = cv2.resize(pha.astype(np.float32) / 255.0, size, interpolation=cv2.INTER_AREA).astype(np.float64)
    x0 = (w - size[0]) // 2
    alpha = np.zeros((h, w))
    fg = np.zeros((h, w, 3))
    alpha[:, x0:x0 + size[0]] = a_small
    fg[:, x0:x0 + size[0]] = fg_small
    return _still("lemur-real", "the real lemur foreground (exact alpha) over DAVIS dog; mask at 1/6 resolution",
                  alpha, fg, background("dog", 60)[0], mask_blocky(alpha, 6))


CLIPS: dict[str, Callable[[np.random.Generator], SuiteClip]] = {
    "hair": hair, "fur": fur, "veil": veil, "smoke": smoke, "motion-blur": motion_blur, "hard-edge": hard_edge,
    "thin": thin, "camouflage": camouflage, "fast-mover": fast_mover, "swaying-hair": swaying_hair,
    "lemur-real": lemur_over,
}


# every kind of coarse mask, for bench/matting_quality.py --cross: each clip's alpha under each
# (short names: they head the table's columns)
MASK_KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "on-edge": lambda a, rng: a > 0.5,                        # thresholded exactly: a segmenter on a good day
    "dil3": lambda a, rng: mask_dilated(a, 3),
    "dil6": lambda a, rng: mask_dilated(a, 6),
    "ero3": lambda a, rng: mask_eroded(a, 3),
    "ero5": lambda a, rng: mask_eroded(a, 5),
    "blk6": lambda a, rng: mask_blocky(a, 6),                 # made at 1/6 resolution
    "blk10": lambda a, rng: mask_blocky(a, 10),
    "seg": lambda a, rng: mask_segmenter(a, rng),             # segmenter-like, edge moved by up to 3 px
    "seg4": lambda a, rng: mask_segmenter(a, rng, 4.0),
}


def build(names: list[str] | None = None, seed: int = 17, scale: int = 1) -> list[SuiteClip]:
    """The suite's clips (all, or those named), each from its own seeded generator. `scale` draws
    them that many times larger (2: 960x540): shapes, strands, blur and motion grow with it, while
    anti-aliasing stays a pixel wide and the coarse masks' errors stay in pixels, as a sharper
    camera's would."""
    global SIZE, SS, SCALE
    if scale < 1:
        raise ValueError(f"scale must be a whole number >= 1, got {scale}")
    saved = SIZE, SS, SCALE
    SIZE, SS, SCALE = (saved[0][0] * scale, saved[0][1] * scale), saved[1] * scale, scale
    try:
        out = []
        for i, (name, make) in enumerate(CLIPS.items()):
            if names and name not in names:
                continue
            out.append(make(np.random.default_rng([seed, i])))
        return out
    finally:
        SIZE, SS, SCALE = saved


def available() -> bool:
    return (DATA / "vos").is_dir() and (DATA / "matting").is_dir()


if __name__ == "__main__":   # write the suite's pictures for a look: bench/matting_suite.py OUT_DIR
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "matting-suite")
    out.mkdir(parents=True, exist_ok=True)
    for clip in build():
        for i, (image, alpha, mask) in enumerate(zip(clip.images, clip.alphas, clip.masks)):
            cv2.imwrite(str(out / f"{clip.name}_{i}_image.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(out / f"{clip.name}_{i}_alpha.png"), np.rint(alpha * 255).astype(np.uint8))
            cv2.imwrite(str(out / f"{clip.name}_{i}_mask.png"), mask.astype(np.uint8) * 255)
        print(f"{clip.name:14} {len(clip.images)} frame(s)  {clip.what}")
