"""Datasets of frames with masks for the U-Net trainer: finding pairs, splitting, loading samples.

Accepted layouts (a "video" is a folder with images/ and masks/, or a reelmask input folder: frames
with a masks/ folder beside them, as refine mode reads them):

    DATA/train/<video>/{images,masks}  [+ DATA/test/<video>/{images,masks} for validation]
    DATA/<video>/{images,masks}        every video trains
    DATA/{images,masks}                one video
    DATA/JPEGImages/480p/<seq>/00000.jpg with DATA/Annotations/480p/<seq>/00000.png
                                       DAVIS; the level folder may be another (480p preferred) or absent
                                       (YouTube-VOS); DATA/ImageSets/<year>/{train,val}.txt, when present,
                                       name the train and test sequences (newest year), else all train

Masks are PNGs named after their image (00012.png for 00012.jpg); any nonzero pixel is the object.
Nothing here imports torch: the dashboard checks datasets with it, and the DataLoader takes the
sample class as it is.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import UnidentifiedImageError

from core.errors import FrameFolderError, TrainingError
from core.config import LimitsConfig
from core.frames import _pil_open, decode_rgb, image_size, is_frame_name, natural_key, to_model_input

IMAGES, MASKS = "images", "masks"
VOS_IMAGES, VOS_MASKS, VOS_SETS = "JPEGImages", "Annotations", "ImageSets"
PREFERRED_LEVEL = "480p"
_LEVEL = re.compile(r"\d+p|full-resolution", re.IGNORECASE)  # DAVIS resolution folders
VOS_LAYOUT = (f"{VOS_IMAGES}/480p/<seq>/00000.jpg with {VOS_MASKS}/480p/<seq>/00000.png "
              "(or without the 480p level, as in YouTube-VOS)")


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


@dataclass(frozen=True)
class Video:
    """The frames of one video that have a mask, in natural order."""

    name: str
    root: Path
    pairs: tuple[Pair, ...]
    unmasked: int = 0  # images without a mask (skipped)


@dataclass(frozen=True)
class Dataset:
    train: tuple[Video, ...]
    test: tuple[Video, ...] = ()   # from DATA/test (or val.txt); empty = hold part of train out
    root: Path = field(default=Path("."))
    note: str = ""                 # how the layout was read (DAVIS level, ImageSets); ends summary()
    test_from: str = "test/"       # where test came from, for Split.how

    @property
    def unmasked(self) -> int:
        return sum(v.unmasked for v in (*self.train, *self.test))

    def summary(self) -> str:
        """One line: what was found (the format `reelmask train` and the dashboard show)."""
        def part(videos: tuple[Video, ...], what: str) -> str:
            n = sum(len(v.pairs) for v in videos)
            return f"{len(videos)} video{'s' if len(videos) != 1 else ''}, {n} frames{what}"

        text = part(self.train, " with masks (train)")
        text += f", {part(self.test, ' (test)')}" if self.test else ", no test/ (part of train is held out)"
        if self.unmasked:
            text += f"; {self.unmasked} frame{'s' if self.unmasked != 1 else ''} without a mask skipped"
        if self.note:
            text += f"; {self.note}"
        return text


def find_dataset(data: Path) -> Dataset:
    """Find the videos of `data` and check every image and mask header; raises TrainingError."""
    data = Path(data)
    if not data.is_dir():
        raise TrainingError(f"the dataset folder {data} does not exist; give --data the folder that holds "
                            "train/<video>/images and masks")
    if (data / VOS_IMAGES).is_dir() or (data / VOS_MASKS).is_dir():
        return _vos_dataset(data)
    if (data / "train").is_dir():
        train = _videos(data / "train")
        test = _videos(data / "test") if (data / "test").is_dir() else ()
        if (data / "test").is_dir() and not test:
            raise TrainingError(f"{data / 'test'} holds no video with image+mask pairs; add <video>/images and "
                                "<video>/masks there, or remove test/ to hold out part of train/ instead")
    else:
        train, test = _videos(data), ()
    if not train:
        where = data / "train" if (data / "train").is_dir() else data
        raise TrainingError(
            f"no image+mask pairs in {where}; expected <video>/images/00000.jpg with <video>/masks/00000.png "
            "(or images/ and masks/ directly in it, or frames beside a masks/ folder)")
    return Dataset(tuple(train), tuple(test), data)


def _videos(root: Path) -> tuple[Video, ...]:
    """root itself when it is a video, else each sub-folder with images/ or masks/; videos without
    pairs dropped."""
    if (root / IMAGES).is_dir() or _frames_beside_masks(root):
        candidates = [root]
    else:
        candidates = [p for p in _subfolders(root) if (p / IMAGES).is_dir() or (p / MASKS).is_dir()]
    videos = []
    for folder in candidates:
        video = _folder_video(folder)
        if video.pairs:
            videos.append(video)
    return tuple(videos)


def _frames_beside_masks(folder: Path) -> bool:
    """A reelmask input folder: frames directly in it, with masks/ (as refine mode reads them)."""
    return (folder / MASKS).is_dir() and not (folder / IMAGES).is_dir() and \
        any(is_frame_name(p.name) and p.is_file() for p in folder.iterdir())


def _folder_video(folder: Path) -> Video:
    """A video folder with images/ and masks/, or frames with masks/ beside them."""
    if _frames_beside_masks(folder):
        return _video(folder.resolve().name, folder, folder, folder / MASKS)
    images_dir, masks_dir = folder / IMAGES, folder / MASKS
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise TrainingError(f"{folder} has no {needed.name}/ folder; a video needs images/ (frames) and "
                                "masks/ (a PNG per frame, same name)")
    return _video(folder.resolve().name, folder, images_dir, masks_dir)


def _video(name: str, root: Path, images_dir: Path, masks_dir: Path) -> Video:
    """The images of `images_dir` paired with the same-stem PNGs of `masks_dir` (both exist), sizes checked."""
    masks = {p.stem: p for p in masks_dir.iterdir() if is_frame_name(p.name) and p.suffix.lower() == ".png"}
    images = sorted((p for p in images_dir.iterdir() if is_frame_name(p.name) and p.is_file()),
                    key=lambda p: natural_key(p.name))
    pairs, unmasked = [], 0
    for image in images:
        mask = masks.get(image.stem)
        if mask is None:
            unmasked += 1
            continue
        size = header_size(image, "image")
        mask_size = header_size(mask, "mask")
        if size != mask_size:
            raise TrainingError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                                f"{size[0]}x{size[1]}; a mask must have the size of its image")
        pairs.append(Pair(image, mask))
    return Video(name, root, tuple(pairs), unmasked)


# ------------------------------------------------------------------ DAVIS / YouTube-VOS

def _vos_dataset(data: Path) -> Dataset:
    """JPEGImages/[level/]<seq> with Annotations/[level/]<seq>; train/test from ImageSets when present."""
    images_top, masks_top = data / VOS_IMAGES, data / VOS_MASKS
    for have, missing in ((images_top, masks_top), (masks_top, images_top)):
        if not missing.is_dir():
            raise TrainingError(f"{data} has {have.name}/ but no {missing.name}/ folder; add it: the DAVIS "
                                f"layout is {VOS_LAYOUT}")
    level, unused = _resolution_level(images_top)
    images_root = images_top / level if level else images_top
    masks_root = masks_top / level if level else masks_top
    if not masks_root.is_dir():
        raise TrainingError(f"{masks_root} is missing; the frames in {images_root}/<seq> need their masks in "
                            f"{masks_root}/<seq> (a PNG per frame, same name)")
    sequences = {p.name: p for p in _subfolders(images_root)}
    train_names, test_names, year, skipped = _image_sets(data / VOS_SETS, sequences, images_root)
    sets = f"{VOS_SETS}/{year}"

    def videos(names: list[str]) -> tuple[Video, ...]:
        found = []
        for name in names:
            if not (masks_root / name).is_dir():
                raise TrainingError(f"sequence {name} has frames in {images_root / name} but no "
                                    f"{masks_root / name} folder; add its masks there (a PNG per frame, same "
                                    "name) or remove the sequence")
            video = _video(name, sequences[name], sequences[name], masks_root / name)
            if video.pairs:
                found.append(video)
        return tuple(found)

    train, test = videos(train_names), videos(test_names)
    if not train:
        raise TrainingError(f"no image+mask pairs in {images_root} and {masks_root}; expected {VOS_LAYOUT}")
    if test_names and not test:
        raise TrainingError(f"no sequence listed in {data / sets / 'val.txt'} has image+mask pairs; add their "
                            f"masks to {masks_root}, or remove val.txt to hold out part of train instead")
    notes = []
    if level:
        notes.append(f"frames from {VOS_IMAGES}/{level}" + (f" ({', '.join(unused)} not used)" if unused else ""))
    if year:
        notes.append(f"train/test from {sets}")
    if skipped:
        notes.append(f"{skipped} listed sequence{'s' if skipped != 1 else ''} not in {images_root.name}/ skipped")
    return Dataset(train, test, data, "; ".join(notes), f"{sets}/val.txt" if test else "test/")


def _resolution_level(images_top: Path) -> tuple[str, list[str]]:
    """The DAVIS resolution folder to use (480p preferred, else the first) and the others; ("", []) when the
    sequences sit directly in JPEGImages/."""
    levels = [p.name for p in _subfolders(images_top) if _LEVEL.fullmatch(p.name)]
    if not levels:
        return "", []
    chosen = next((n for n in levels if n.lower() == PREFERRED_LEVEL), levels[0])
    return chosen, [n for n in levels if n != chosen]


def _image_sets(sets: Path, sequences: dict[str, Path],
                images_root: Path) -> tuple[list[str], list[str], str, int]:
    """(train, test, year, listed but missing) from the newest ImageSets/<year>/{train,val}.txt; without
    them every sequence trains (year "")."""
    years = [p for p in _subfolders(sets) if p.name.isdigit()
             and ((p / "train.txt").is_file() or (p / "val.txt").is_file())] if sets.is_dir() else []
    if not years:
        return sorted(sequences, key=natural_key), [], "", 0
    year = max(years, key=lambda p: int(p.name))
    listed, missing = {}, 0
    for part in ("train", "val"):
        if (year / f"{part}.txt").is_file():
            listed[part], skipped = _listed(year / f"{part}.txt", sequences, images_root)
            missing += skipped
    test = listed.get("val", [])
    train = listed["train"] if "train" in listed else [n for n in sorted(sequences, key=natural_key)
                                                       if n not in test]
    return train, test, year.name, missing


def _listed(file: Path, sequences: dict[str, Path], images_root: Path) -> tuple[list[str], int]:
    """The sequences named in `file` (one a line) that exist, naturally sorted, and how many do not."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"{file} cannot be read ({e}); it should list one sequence name a line") from e
    names = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    present = sorted((n for n in names if n in sequences), key=natural_key)
    if not present:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise TrainingError(f"none of the sequences listed in {file} ({shown or 'none'}) is a folder in "
                            f"{images_root}; fix the list or remove it")
    return present, len(names) - len(present)


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders in natural order."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def header_size(path: Path, what: str) -> tuple[int, int]:
    """Width and height from the file header (core.frames.image_size, up to the default
    limits.max_frame_pixels); a TrainingError naming the file when unreadable."""
    return image_size(path, LimitsConfig().max_frame_pixels, what, error=TrainingError, shown=str(path))


# ------------------------------------------------------------------ splitting

@dataclass(frozen=True)
class Split:
    train: tuple[Pair, ...]
    val: tuple[Pair, ...]
    how: str  # a few words for logs: "test/", "2 of 5 videos", "last 20% of frames", "none"


def split(dataset: Dataset, val_fraction: float, seed: int) -> Split:
    """Validation = test/ when present; else `val_fraction` of the videos (at least one when there are
    two or more), or of a single video's frames taken as its last ones, so neighbours do not leak."""
    def flat(videos) -> tuple[Pair, ...]:
        return tuple(p for v in videos for p in v.pairs)

    if dataset.test:
        return Split(flat(dataset.train), flat(dataset.test), dataset.test_from)
    videos = dataset.train
    if val_fraction <= 0:
        return Split(flat(videos), (), "none")
    if len(videos) >= 2:
        n_val = min(len(videos) - 1, max(1, round(val_fraction * len(videos))))
        held = set(random.Random(seed).sample(range(len(videos)), n_val))
        val = [v for i, v in enumerate(videos) if i in held]
        train = [v for i, v in enumerate(videos) if i not in held]
        return Split(flat(train), flat(val), f"{n_val} of {len(videos)} videos ({', '.join(v.name for v in val)})")
    pairs = videos[0].pairs
    n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
    if n_val <= 0:
        return Split(pairs, (), "none")
    return Split(pairs[:-n_val], pairs[-n_val:], f"last {n_val} of {len(pairs)} frames")


# ------------------------------------------------------------------ samples

def read_mask_values(path: Path) -> tuple[np.ndarray, bool]:
    """(HxW int values, whether the PNG is a palette image): palette indices, grey values, or colours
    packed as 0xRRGGBB; 0 is background. A TrainingError naming the file when it cannot be read."""
    try:
        with _pil_open(path) as im:
            if im.mode == "P":
                return np.asarray(im).astype(np.int32), True
            if im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB")).astype(np.int32)
                return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], False
            if im.mode not in ("L", "1", "I", "I;16", "F"):
                im = im.convert("L")
            return np.asarray(im).astype(np.int32), False
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise TrainingError(f"mask {path} cannot be read ({e}); re-export it or remove it") from e


def read_binary_mask(path: Path) -> np.ndarray:
    """HxW bool: any nonzero pixel (palette index, grey value or colour) is the object."""
    return read_mask_values(path)[0] > 0


def load_sample(pair: Pair, size: int, flip: bool = False, gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(3xSxS normalised image, 1xSxS mask in 0..1) resized to `size`; `flip` mirrors both, `gain` scales
    the brightness."""
    try:
        rgb = decode_rgb(pair.image)
    except FrameFolderError as e:
        raise TrainingError(f"image {pair.image} cannot be decoded (corrupt or truncated); re-export it or "
                            "remove it") from e
    mask = read_binary_mask(pair.mask).astype(np.float32)
    if mask.shape != rgb.shape[:2]:
        raise TrainingError(f"mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                            f"{rgb.shape[1]}x{rgb.shape[0]}; a mask must have the size of its image")
    if gain != 1.0:
        rgb = np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    if flip:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    x = to_model_input(np.ascontiguousarray(rgb), size)
    interp = cv2.INTER_AREA if size < max(mask.shape) else cv2.INTER_LINEAR
    y = cv2.resize(np.ascontiguousarray(mask), (size, size), interpolation=interp)[None]
    return x, np.ascontiguousarray(y, dtype=np.float32)


class Samples:
    """Map-style dataset for torch's DataLoader (no torch needed): index -> (image, mask) arrays.

    With `augment`, each sample is flipped left-right with probability 1/2 and its brightness scaled
    by up to +-15%, drawn from (seed, epoch, index) so a run is the same with any number of workers.
    """

    def __init__(self, pairs: tuple[Pair, ...], size: int, *, augment: bool = False, seed: int = 0):
        self.pairs, self.size, self.augment, self.seed = pairs, size, augment, seed
        self.epoch = 0  # set before each epoch; workers get a fresh copy per epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        flip, gain = False, 1.0
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            flip, gain = bool(rng.random() < 0.5), float(rng.uniform(0.85, 1.15))
        return load_sample(self.pairs[index], self.size, flip, gain)
