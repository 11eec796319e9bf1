"""Datasets for `reelmask train yolo`: frames with masks (boxes derived from them) or a YOLO-format data.yaml.

    DATA/data.yaml                     a YOLO dataset (train/val image folders or .txt lists, labels/ beside
                                       images/), used as it is; only its `path` is made absolute
    DATA/train/<video>/{images,masks}  the mask layouts of core/training/unet_data.py; boxes per object:
    DATA/<video>/{images,masks}        palette PNGs (DAVIS) give one box per object id, grey/colour masks one
    DATA/{images,masks}                box per connected region; one class, "object"

Nothing here imports torch or ultralytics: the dashboard checks datasets with `check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import TrainingError
from core.frames import IMAGE_SUFFIXES
from core.training.unet_data import Dataset, Pair, find_dataset, read_mask_values, split

CLASS_NAME = "object"
YAML_NAMES = ("data.yaml", "dataset.yaml")


@dataclass(frozen=True)
class YoloYaml:
    """A checked YOLO data.yaml: its content with `path` absolute, and what it holds."""

    file: Path
    content: dict
    names: dict[int, str]
    train_images: int
    train_labels: int
    val_images: int

    def summary(self) -> str:
        shown = ", ".join(list(self.names.values())[:6]) + (", ..." if len(self.names) > 6 else "")
        return (f"YOLO dataset {self.file.name}: {len(self.names)} class{'es' if len(self.names) != 1 else ''} "
                f"({shown}), {self.train_images} train images ({self.train_labels} with labels), "
                f"{self.val_images} val images")


def find_source(data: Path) -> YoloYaml | Dataset:
    """The dataset in `data`: a YOLO data.yaml when there is one, else frames with masks; TrainingError."""
    data = Path(data)
    for name in YAML_NAMES:
        if (data / name).is_file():
            return read_yaml(data / name)
    return find_dataset(data)


def read_yaml(file: Path) -> YoloYaml:
    import yaml

    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise TrainingError(f"{file} cannot be read as YAML ({e}); fix it or remove it to train from masks") from e
    if not isinstance(content, dict):
        raise TrainingError(f"{file} is not a YOLO data.yaml (expected keys path, train, val, names)")
    names = content.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise TrainingError(f"{file} names no classes; add e.g. `names: {{0: dog}}` (one entry per class id)")
    names = {int(k): str(v) for k, v in names.items()}
    root = Path(str(content.get("path") or "."))
    root = (root if root.is_absolute() else file.parent / root).resolve()
    counts = {}
    for key in ("train", "val"):
        if not content.get(key):
            raise TrainingError(f"{file} has no `{key}:` entry; add the folder of its {key} images "
                                f"(e.g. `{key}: images/{key}`, relative to {root})")
        entries = content[key] if isinstance(content[key], list) else [content[key]]
        images = []
        for entry in entries:
            where = Path(str(entry)) if Path(str(entry)).is_absolute() else root / str(entry)
            if not where.exists():
                raise TrainingError(f"{file}: {key} images {where} do not exist; fix `{key}:` or `path:` "
                                    f"(relative entries are read from {root})")
            images += _listed_images(where)
        if not images:
            raise TrainingError(f"{file}: no images (.jpg, .png) under `{key}: {content[key]}` in {root}")
        counts[key] = images
    labelled = sum(_label_of(p).is_file() for p in counts["train"])
    if not labelled:
        raise TrainingError(f"{file}: none of the {len(counts['train'])} train images has a label file; YOLO "
                            "reads labels/<name>.txt beside images/ (e.g. labels/train/0001.txt for "
                            "images/train/0001.jpg)")
    content = {k: v for k, v in content.items() if k != "download"}  # never let a training run fetch data
    content.update(path=str(root), names=names)
    return YoloYaml(file, content, names, len(counts["train"]), labelled, len(counts["val"]))


def _listed_images(where: Path) -> list[Path]:
    if where.is_dir():
        return sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if where.suffix.lower() == ".txt":  # a list of image files, relative to its folder
        lines = [x.strip() for x in where.read_text(encoding="utf-8").splitlines() if x.strip()]
        return [Path(x) if Path(x).is_absolute() else where.parent / x for x in lines]
    return [where] if where.suffix.lower() in IMAGE_SUFFIXES else []


def _label_of(image: Path) -> Path:
    """Ultralytics' rule: the last images/ in the path becomes labels/, the suffix .txt."""
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def write_yaml(source: YoloYaml, root: Path) -> Path:
    """A copy of the user's data.yaml in our dataset folder (absolute `path`, no `download`)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(source.content, sort_keys=False), encoding="utf-8")
    return path


def mask_ids(path: Path) -> np.ndarray:
    """HxW object ids of a mask: palette indices as they are; grey or colour masks numbered by connected region."""
    values, palette = read_mask_values(path)
    if palette:
        return values
    _, regions = cv2.connectedComponents((values > 0).astype(np.uint8), connectivity=8)
    return regions


def build_from_masks(dataset: Dataset, root: Path, val_fraction: float, seed: int) -> tuple[Path, dict, str]:
    """Write the YOLO dataset (image links, box labels) under `root`; (data.yaml, counts, how split)."""
    from core.models.yolo_train import YoloDataset

    parts = split(dataset, val_fraction, seed)
    yolo = YoloDataset(root, CLASS_NAME)
    index = 0
    pairs: list[tuple[str, Pair]] = [("train", p) for p in parts.train] + [("val", p) for p in parts.val]
    for which, pair in pairs:
        yolo.add(index, pair.image, mask_ids(pair.mask), split=which)
        index += 1
    return yolo.write_yaml(), dict(yolo.counts), parts.how
