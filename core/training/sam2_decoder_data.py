"""Samples for `reelmask train sam2-decoder`: objects in masks, prompts drawn from them, cached
image embeddings. No torch here: the DataLoader takes `DecoderSamples` as it is.

A sample is one object in one frame (a palette index, a grey value or a colour of its mask). Each
time it is used it gets a prompt of one kind, as SAM2 is prompted in reelmask:

    box      the object's box, each side moved by up to 10% of the box size (a detector's or user's box)
    point    one click inside the object (SAM2 answers a single click with three masks)
    points   2-4 clicks: one to three inside and, where there is room, one just outside

Training prompts are drawn from (seed, epoch, sample); validation prompts from the sample alone, so
every epoch is scored on the same prompts. Coordinates are in SAM2 input pixels (size x size).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from core.training.unet_data import Pair, read_mask_values

KINDS = ("box", "point", "points")
MAX_POINTS = 4          # prompt tensors are padded to this many points (label -1 = no point)
MIN_AREA = 0.0005       # objects smaller than this share of the frame are too small to prompt reliably
VOID = 255              # DAVIS palette index for "not annotated": never an object
CACHE_VERSION = 1


@dataclass(frozen=True)
class ObjectSample:
    pair: Pair
    object_id: int
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 (exclusive) in frame pixels


def find_objects(pairs: Sequence[Pair]) -> tuple[list[ObjectSample], int]:
    """Every object of every mask, with its box; (samples, objects skipped as too small)."""
    samples, small = [], 0
    for pair in pairs:
        ids, palette = read_mask_values(pair.mask)
        floor = MIN_AREA * ids.size
        for value in np.unique(ids):
            if value == 0 or (palette and value == VOID):
                continue
            ys, xs = np.nonzero(ids == value)
            if len(xs) < max(floor, 4):
                small += 1
                continue
            samples.append(ObjectSample(pair, int(value), (int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                                                           int(ys.max()) + 1)))
    return samples, small


# ------------------------------------------------------------------ prompts

@dataclass(frozen=True)
class Prompt:
    kind: str
    coords: np.ndarray   # MAX_POINTS x 2 float32, SAM2 input pixels
    labels: np.ndarray   # MAX_POINTS int32: 1 inside, 0 outside, 2/3 box corners, -1 padding


def draw_prompt(mask: np.ndarray, box: tuple[int, int, int, int], kind: str, rng: np.random.Generator,
                size: int, exact: bool = False) -> Prompt:
    """A prompt of `kind` for the object `mask` (HxW bool, frame pixels); `exact` gives the click a
    person would make (deep inside, in the middle) and an unmoved box, for validation."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    points: list[tuple[float, float]]
    if kind == "box":
        bw, bh = x1 - x0, y1 - y0
        jitter = np.zeros(4) if exact else np.clip(rng.normal(0.0, 0.1, 4), -0.2, 0.2) * [bw, bh, bw, bh]
        ax0, ay0 = np.clip([x0 + jitter[0], y0 + jitter[1]], 0, [w - 1, h - 1])
        ax1, ay1 = np.clip([x1 + jitter[2], y1 + jitter[3]], [ax0 + 1, ay0 + 1], [w, h])
        points, labels = [(ax0, ay0), (ax1, ay1)], [2, 3]
    elif kind == "point":
        points, labels = [_inside(mask, rng, deepest=exact)], [1]
    elif kind == "points":
        n_in = int(rng.integers(1, 4))
        points = [_inside(mask, rng, deepest=exact and i == 0) for i in range(n_in)]
        labels = [1] * n_in
        outside = _outside(mask, box, rng)
        if outside is not None:
            points, labels = points + [outside], labels + [0]
        elif n_in == 1:
            points, labels = points + [_inside(mask, rng)], labels + [1]
    else:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {KINDS}")
    coords = np.zeros((MAX_POINTS, 2), np.float32)
    flags = np.full(MAX_POINTS, -1, np.int32)
    scale = np.array([size / w, size / h], np.float32)
    coords[: len(points)] = np.asarray(points, np.float32) * scale  # as sam2 scales a job's prompts
    flags[: len(labels)] = labels
    return Prompt(kind, coords, flags)


def _inside(mask: np.ndarray, rng: np.random.Generator, deepest: bool = False) -> tuple[float, float]:
    """A pixel of the object: the one farthest from its edge, or a random one away from the edge
    when the object is thick enough (clicks land inside, not on the outline)."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    if deepest:  # of the pixels about as deep as the deepest, the one nearest their middle
        ys, xs = np.nonzero(dist >= float(dist.max()) - 1.0)
        i = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        return float(xs[i]), float(ys[i])
    ys, xs = np.nonzero(dist >= min(3.0, float(dist.max())))
    i = int(rng.integers(len(xs)))
    return float(xs[i]), float(ys[i])


def _outside(mask: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> tuple[float, float] | None:
    """A background pixel near the object: inside its box grown by a quarter, or None without room."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    gx, gy = (x1 - x0) // 4 + 2, (y1 - y0) // 4 + 2
    X0, Y0, X1, Y1 = max(0, x0 - gx), max(0, y0 - gy), min(w, x1 + gx), min(h, y1 + gy)
    ys, xs = np.nonzero(~mask[Y0:Y1, X0:X1])
    if not len(xs):
        return None
    i = int(rng.integers(len(xs)))
    return float(xs[i] + X0), float(ys[i] + Y0)


# ------------------------------------------------------------------ embedding cache

def cache_key(image: Path, size: int, sam2: dict) -> str:
    """File name of an image's cached embeddings: what the image is and which SAM2 encoded it."""
    st = image.stat()
    key = {"v": CACHE_VERSION, "image": str(image.resolve()), "bytes": st.st_size, "mtime": st.st_mtime_ns,
           "size": size, "sam2": sam2}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24] + ".npz"


# ------------------------------------------------------------------ loading

class DecoderSamples:
    """Map-style dataset: (sample index, kind, prompt seed, exact) -> (image embedding, two high-res
    feature maps, the object mask at size x size as uint8, prompt coords, prompt labels)."""

    def __init__(self, samples: Sequence[ObjectSample], cache: dict[Path, Path], size: int):
        self.samples, self.cache, self.size = list(samples), dict(cache), size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: tuple[int, str, int, bool]):
        i, kind, seed, exact = index
        sample = self.samples[i]
        mask = read_mask_values(sample.pair.mask)[0] == sample.object_id
        prompt = draw_prompt(mask, sample.box, kind, np.random.default_rng(seed), self.size, exact)
        small = cv2.resize(mask.astype(np.float32), (self.size, self.size),
                           interpolation=cv2.INTER_AREA if self.size < max(mask.shape) else cv2.INTER_LINEAR)
        with np.load(self.cache[sample.pair.image]) as z:
            embed, s0, s1 = z["embed"], z["s0"], z["s1"]
        return embed, s0, s1, (small > 0.5).astype(np.uint8), prompt.coords, prompt.labels


def plan_batches(n: int, kinds: Sequence[str], batch_size: int, seed: int, epoch: int | None) -> list[list[tuple]]:
    """Batches of dataset indices, each of one prompt kind (a single click is answered with three
    masks, the others with one). Training (`epoch` given): every sample once, with a kind and prompt
    drawn for this epoch, in shuffled order. Validation (`epoch` None): every sample with every
    kind, exact prompts, fixed order."""
    if epoch is None:
        return [[(i, kind, i, True) for i in range(start, min(n, start + batch_size))]
                for kind in kinds for start in range(0, n, batch_size)]
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    by_kind: dict[str, list[tuple]] = {k: [] for k in kinds}
    for j, i in enumerate(order):  # kinds in turn: the same number of batches every epoch
        kind = kinds[j % len(kinds)]
        by_kind[kind].append((i, kind, rng.randrange(2**31), False))
    batches = []
    for items in by_kind.values():
        rng.shuffle(items)
        batches += [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
    rng.shuffle(batches)
    return batches


def unique_images(samples: Sequence[ObjectSample]) -> Iterator[Path]:
    seen: set[Path] = set()
    for s in samples:
        if s.pair.image not in seen:
            seen.add(s.pair.image)
            yield s.pair.image
