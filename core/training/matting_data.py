"""Datasets for the matting trainer (seed 001): foreground clips with alpha, backgrounds, composites.

Accepted layouts (a clip is a pair of frame folders, fgr/ = foreground colour, pha/ = alpha):

    DATA/<clip>/{fgr,pha}/00000.png        VideoMatte240K frames, one folder per clip
    DATA/train/<clip>/{fgr,pha}  [+ DATA/test/<clip>/{fgr,pha} for validation]
    DATA/{fgr,pha}/<clip>/00000.jpg        VideoMatte240K_JPEG as distributed (also under train/ and test/)
    DATA/{fgr,pha}/00000.png               one clip

fgr and pha frames pair by file stem. Backgrounds are images (any depth, symlinks followed) and
videos (.mp4 .avi .mov .mkv .webm, read with OpenCV) in `train.backgrounds`, default DATA/backgrounds.
Each clip gets one background (an image, or a video advancing with the clip) chosen from the seed,
so a sample's composite, and therefore its cached SAM2 outputs, never change.
Nothing here imports torch.
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.config import Config
from core.errors import FrameFolderError, TrainingError
from core.frames import IMAGE_SUFFIXES, decode_rgb, is_frame_name, natural_key
from core.training.unet_data import header_size

FGR, PHA, BACKGROUNDS = "fgr", "pha", "backgrounds"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
WHERE_BACKGROUNDS = ("put background images or videos in DATA/backgrounds/ (symlinks are fine) or set "
                     "train.backgrounds to a folder of them")


@dataclass(frozen=True)
class Frame:
    fgr: Path
    pha: Path


@dataclass(frozen=True)
class Clip:
    name: str
    frames: tuple[Frame, ...]   # natural order
    unpaired: int = 0           # fgr frames without a pha frame (skipped)


@dataclass(frozen=True)
class MattingDataset:
    train: tuple[Clip, ...]
    test: tuple[Clip, ...] = ()

    def summary(self, every: int) -> str:
        def part(clips: tuple[Clip, ...], what: str) -> str:
            n = sum(len(c.frames) for c in clips)
            used = sum(len(c.frames[::every]) for c in clips)
            return f"{len(clips)} clip{'s' if len(clips) != 1 else ''}, {n} frames ({used} at every {every}th){what}"

        text = part(self.train, " with alpha (train)")
        text += f", {part(self.test, ' (test)')}" if self.test else ", no test/ (part of train is held out)"
        unpaired = sum(c.unpaired for c in (*self.train, *self.test))
        return text + (f"; {unpaired} fgr frame{'s' if unpaired != 1 else ''} without pha skipped" if unpaired else "")


def find_dataset(data: Path, every: int) -> MattingDataset:
    """The clips of `data`; the headers of every `every`-th frame (the ones training uses) are checked."""
    data = Path(data)
    if not data.is_dir():
        raise TrainingError(f"the dataset folder {data} does not exist; give --data the folder that holds "
                            "<clip>/fgr and <clip>/pha")
    if (data / "train").is_dir():
        train = _clips(data / "train", every)
        test = _clips(data / "test", every) if (data / "test").is_dir() else ()
        if (data / "test").is_dir() and not test:
            raise TrainingError(f"{data / 'test'} holds no clip with fgr+pha frames; add <clip>/fgr and <clip>/pha "
                                "there, or remove test/ to hold out part of train/ instead")
    else:
        train, test = _clips(data, every), ()
    if not train:
        where = data / "train" if (data / "train").is_dir() else data
        raise TrainingError(f"no fgr+pha frame pairs in {where}; expected <clip>/fgr/00000.png with "
                            "<clip>/pha/00000.png (VideoMatte240K layout)")
    return MattingDataset(train, test)


def _clips(root: Path, every: int) -> tuple[Clip, ...]:
    if (root / FGR).is_dir() or (root / PHA).is_dir():
        _need_both(root)
        subs = _subfolders(root / FGR)
        if subs and not _frame_files(root / FGR):  # fgr/<clip>/ with pha/<clip>/
            clips = []
            for sub in subs:
                if not (root / PHA / sub.name).is_dir():
                    raise TrainingError(f"{sub} has no matching {root / PHA / sub.name}; every fgr/<clip> needs "
                                        "pha/<clip> with the alpha frames of the same names")
                clips.append(_clip(sub.name, sub, root / PHA / sub.name, every))
        else:
            clips = [_clip(root.resolve().name, root / FGR, root / PHA, every)]
    else:
        folders = [p for p in _subfolders(root) if (p / FGR).is_dir() or (p / PHA).is_dir()]
        for folder in folders:
            _need_both(folder)
        clips = [_clip(folder.name, folder / FGR, folder / PHA, every) for folder in folders]
    return tuple(c for c in clips if c.frames)


def _need_both(folder: Path) -> None:
    for needed in (FGR, PHA):
        if not (folder / needed).is_dir():
            raise TrainingError(f"{folder} has no {needed}/ folder; a clip needs fgr/ (foreground colour frames) "
                                "and pha/ (alpha frames, same names)")


def _subfolders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def _frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_frame_name(p.name) and p.is_file()),
                  key=lambda p: natural_key(p.name))


def _clip(name: str, fgr_dir: Path, pha_dir: Path, every: int) -> Clip:
    alphas = {p.stem: p for p in _frame_files(pha_dir)}
    frames, unpaired = [], 0
    for fgr in _frame_files(fgr_dir):
        pha = alphas.get(fgr.stem)
        if pha is None:
            unpaired += 1
            continue
        frames.append(Frame(fgr, pha))
    for frame in frames[::every]:
        size, alpha_size = header_size(frame.fgr, "foreground"), header_size(frame.pha, "alpha")
        if size != alpha_size:
            raise TrainingError(f"alpha {frame.pha} is {alpha_size[0]}x{alpha_size[1]} but its foreground "
                                f"{frame.fgr} is {size[0]}x{size[1]}; fgr and pha frames must have one size")
    return Clip(name, tuple(frames), unpaired)


# ------------------------------------------------------------------ backgrounds

@dataclass(frozen=True)
class Background:
    path: Path
    frames: int = 1             # > 1: a video


def backgrounds_folder(data: Path, cfg: Config) -> Path:
    return cfg.path(cfg.train.backgrounds) if cfg.train.backgrounds else Path(data) / BACKGROUNDS


def find_backgrounds(folder: Path) -> tuple[Background, ...]:
    """Every image and video under `folder` (symlinks followed), in natural order; TrainingError when none."""
    if not folder.is_dir():
        raise TrainingError(f"no backgrounds: {folder} does not exist; {WHERE_BACKGROUNDS}")
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        for name in sorted(files, key=natural_key):
            path = Path(top) / name
            suffix = path.suffix.lower()
            if name.startswith("."):
                continue
            if suffix in IMAGE_SUFFIXES:
                header_size(path, "background")
                found.append(Background(path))
            elif suffix in VIDEO_SUFFIXES:
                found.append(Background(path, _video_frames(path)))
    if not found:
        raise TrainingError(f"no background images or videos in {folder}; {WHERE_BACKGROUNDS}")
    return tuple(found)


def _video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    if n <= 0:
        raise TrainingError(f"background video {path} cannot be read by OpenCV; convert it (ffmpeg -i "
                            f"{path.name} -c:v libx264 out.mp4) or remove it")
    return n


def read_background(bg: Background, frame: int) -> np.ndarray:
    """HxWx3 uint8 RGB of an image, or of frame `frame` of a video."""
    if bg.frames <= 1:
        try:
            return decode_rgb(bg.path)
        except FrameFolderError as e:
            raise TrainingError(f"background {bg.path} cannot be decoded; re-export it or remove it") from e
    cap = cv2.VideoCapture(str(bg.path))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, bgr = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = cap.read()
    finally:
        cap.release()
    if not ok:
        raise TrainingError(f"background video {bg.path} gives no frame {frame}; re-encode it or remove it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------ splitting and samples

@dataclass(frozen=True)
class Sample:
    """One composite: a frame of a clip over its clip's background, with its coarse-mask seed."""

    clip: str
    frame: Frame
    background: Background
    bg_frame: int
    crop: tuple[float, float, float]    # zoom >= 1, x and y offset in 0..1
    seed: int                           # of the coarse-mask perturbation

    def key(self) -> dict:
        """What makes this sample's composite and mask (for the SAM2 cache)."""
        def stamp(p: Path) -> list:
            st = p.stat()
            return [str(p.resolve()), st.st_size, st.st_mtime_ns]

        return {"fgr": stamp(self.frame.fgr), "pha": stamp(self.frame.pha), "bg": stamp(self.background.path),
                "bg_frame": self.bg_frame, "crop": list(self.crop), "seed": self.seed}


@dataclass(frozen=True)
class Split:
    train: tuple[tuple[Sample, ...], ...]   # per clip, consecutive sampled frames in order
    val: tuple[tuple[Sample, ...], ...]
    how: str


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


def clip_samples(clip: Clip, frames: tuple[Frame, ...], backgrounds: tuple[Background, ...], seed: int,
                 every: int) -> tuple[Sample, ...]:
    """Samples of `frames` (every `every`-th of the clip) over the clip's background, from the seed."""
    rng = np.random.default_rng([seed, _stable(clip.name)])
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    start = int(rng.integers(bg.frames))
    crop = (float(rng.uniform(1.0, 1.25)), float(rng.random()), float(rng.random()))
    return tuple(Sample(clip.name, f, bg, (start + i * every) % bg.frames if bg.frames > 1 else 0, crop,
                        _stable(f"{seed}/{clip.name}/{f.fgr.stem}"))
                 for i, f in enumerate(frames))


def split(dataset: MattingDataset, backgrounds: tuple[Background, ...], every: int, val_fraction: float,
          seed: int) -> Split:
    """Every `every`-th frame of each clip as samples. Validation = test/ when present; else
    `val_fraction` of the clips (at least one when there are two or more), or of a single clip's
    sampled frames taken as its last ones."""
    def samples(clips: tuple[Clip, ...]) -> tuple[tuple[Sample, ...], ...]:
        return tuple(clip_samples(c, c.frames[::every], backgrounds, seed, every) for c in clips)

    if dataset.test:
        return Split(samples(dataset.train), samples(dataset.test), "test/")
    clips = dataset.train
    if val_fraction <= 0:
        return Split(samples(clips), (), "none")
    if len(clips) >= 2:
        n_val = min(len(clips) - 1, max(1, round(val_fraction * len(clips))))
        held = set(random.Random(seed).sample(range(len(clips)), n_val))
        val = tuple(c for i, c in enumerate(clips) if i in held)
        train = tuple(c for i, c in enumerate(clips) if i not in held)
        return Split(samples(train), samples(val), f"{n_val} of {len(clips)} clips ({', '.join(c.name for c in val)})")
    [whole] = samples(clips)
    n_val = min(len(whole) - 1, max(1, round(val_fraction * len(whole))))
    if n_val <= 0:
        return Split((whole,), (), "none")
    return Split((whole[:-n_val],), (whole[-n_val:],), f"last {n_val} of {len(whole)} sampled frames")


# ------------------------------------------------------------------ composites and coarse masks

def read_alpha(path: Path) -> np.ndarray:
    """HxW float32 alpha in 0..1 from an 8- or 16-bit grey (or colour: first channel) image."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise TrainingError(f"alpha {path} cannot be decoded (corrupt or truncated); re-export it or remove it")
    if img.ndim == 3:
        img = img[..., 0]
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


def composite(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 RGB, HxW float32 alpha) of the sample: foreground over its background crop."""
    try:
        fgr = decode_rgb(sample.frame.fgr).astype(np.float32)
    except FrameFolderError as e:
        raise TrainingError(f"foreground {sample.frame.fgr} cannot be decoded (corrupt or truncated); re-export it "
                            "or remove it") from e
    alpha = read_alpha(sample.frame.pha)
    h, w = fgr.shape[:2]
    if alpha.shape != (h, w):
        raise TrainingError(f"alpha {sample.frame.pha} is {alpha.shape[1]}x{alpha.shape[0]} but its foreground is "
                            f"{w}x{h}; fgr and pha frames must have one size")
    bg = read_background(sample.background, sample.bg_frame)
    zoom, fx, fy = sample.crop
    scale = max(w / bg.shape[1], h / bg.shape[0]) * zoom
    bw, bh = max(w, round(bg.shape[1] * scale)), max(h, round(bg.shape[0] * scale))
    bg = cv2.resize(bg, (bw, bh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x, y = int(fx * (bw - w)), int(fy * (bh - h))
    bg = bg[y:y + h, x:x + w].astype(np.float32)
    a = alpha[..., None]
    rgb = np.clip(fgr * a + bg * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
    return rgb, alpha


def coarse_mask(alpha: np.ndarray, seed: int) -> np.ndarray:
    """A binary mask from the true alpha with the errors a video segmentation makes: a random
    threshold, dilation or erosion, blocky edges, a blob added or cut; HxW bool."""
    rng = np.random.default_rng(seed)
    h, w = alpha.shape
    short = min(h, w)
    mask = (alpha > rng.uniform(0.2, 0.8)).astype(np.uint8)
    r = int(round(rng.uniform(0.0, 0.025) * short))
    op = rng.random()
    if r > 0 and op < 0.7:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        mask = cv2.dilate(mask, kernel) if op < 0.35 else cv2.erode(mask, kernel)
    if rng.random() < 0.3:
        block = max(2, int(round(rng.uniform(0.01, 0.04) * short)))
        small = cv2.resize(mask.astype(np.float32), (max(1, w // block), max(1, h // block)),
                           interpolation=cv2.INTER_AREA)
        mask = cv2.resize((small > 0.5).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.2:
        ys, xs = np.nonzero(cv2.Canny(mask * 255, 50, 150))
        if len(xs):
            i = int(rng.integers(len(xs)))
            axes = (max(1, int(rng.uniform(0.02, 0.06) * short)), max(1, int(rng.uniform(0.02, 0.06) * short)))
            cv2.ellipse(mask, (int(xs[i]), int(ys[i])), axes, float(rng.uniform(0, 180)), 0, 360,
                        int(rng.random() < 0.5), -1)
    return mask > 0
