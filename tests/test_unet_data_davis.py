"""find_dataset on the DAVIS / YouTube-VOS layout: JPEGImages/[level/]<seq> with Annotations/[level/]<seq>."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.errors import TrainingError
from core.training.unet_data import find_dataset, load_sample, split
from core.training.yolo_data import find_source

SIZE = (32, 24)  # width, height


def make_sequence(data: Path, name: str, level: str = "480p", frames: int = 4, every: int = 1) -> None:
    """JPEG frames of a square on noise and, for every `every`-th frame, a palette PNG of the square."""
    images = data / "JPEGImages" / level / name
    masks = data / "Annotations" / level / name
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    rng = np.random.default_rng(len(name) + frames)
    for i in range(frames):
        frame = (rng.random((h, w, 3)) * 80).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        x = 4 + 5 * i
        frame[8:16, x:x + 8] = (230, 210, 70)
        mask[8:16, x:x + 8] = 1
        cv2.imwrite(str(images / f"{i:05d}.jpg"), frame)
        if i % every == 0:
            im = Image.fromarray(mask, mode="P")
            im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            im.save(masks / f"{i:05d}.png")


def write_sets(data: Path, year: str, train: list[str], val: list[str]) -> None:
    folder = data / "ImageSets" / year
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (folder / "val.txt").write_text("".join(f"{n}\n" for n in val))


def names(videos) -> list[str]:
    return [v.name for v in videos]


def test_davis_480p_with_image_sets_takes_the_newest_year(tmp_path: Path):
    data = tmp_path / "DAVIS"
    for seq in ("bear", "dog", "camel"):
        make_sequence(data, seq)
    write_sets(data, "2016", ["bear"], ["camel", "dog"])
    write_sets(data, "2017", ["bear", "camel"], ["dog"])
    dataset = find_dataset(data)
    assert names(dataset.train) == ["bear", "camel"] and names(dataset.test) == ["dog"]
    assert dataset.summary() == ("2 videos, 8 frames with masks (train), 1 video, 4 frames (test); "
                                 "frames from JPEGImages/480p; train/test from ImageSets/2017")
    parts = split(dataset, 0.2, 0)
    assert len(parts.train) == 8 and len(parts.val) == 4 and parts.how == "ImageSets/2017/val.txt"
    pair = dataset.test[0].pairs[2]
    assert pair.image == data / "JPEGImages" / "480p" / "dog" / "00002.jpg"
    assert pair.mask == data / "Annotations" / "480p" / "dog" / "00002.png"
    x, y = load_sample(pair, 32)
    assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32) and 0 < y.mean() < 1
    assert find_source(data) == dataset  # yolo reads the same layout


def test_image_sets_skip_missing_sequences_but_not_a_whole_list(tmp_path: Path):
    data = tmp_path / "DAVIS"
    for seq in ("bear", "dog"):
        make_sequence(data, seq)
    write_sets(data, "2017", ["bear", "gone"], ["dog"])
    dataset = find_dataset(data)
    assert names(dataset.train) == ["bear"] and names(dataset.test) == ["dog"]
    assert dataset.summary().endswith("train/test from ImageSets/2017; 1 listed sequence not in 480p/ skipped")
    (data / "ImageSets" / "2017" / "val.txt").write_text("lost\nmissing\n")
    val = data / "ImageSets" / "2017" / "val.txt"
    with pytest.raises(TrainingError, match=re.escape(f"listed in {val} (lost, missing) is a folder in")):
        find_dataset(data)


def test_youtube_vos_without_level_and_sparse_annotations(tmp_path: Path):
    data = tmp_path / "ytvos"
    for seq in ("0a2f2bd294", "0b34ec1d55", "1a1dc21969"):
        make_sequence(data, seq, level="", frames=11, every=5)  # frames 0, 5, 10 annotated
    dataset = find_dataset(data)
    assert names(dataset.train) == ["0a2f2bd294", "0b34ec1d55", "1a1dc21969"] and dataset.test == ()
    assert [p.image.name for p in dataset.train[0].pairs] == ["00000.jpg", "00005.jpg", "00010.jpg"]
    assert dataset.unmasked == 24 and dataset.note == ""
    assert dataset.summary() == ("3 videos, 9 frames with masks (train), no test/ (part of train is held out); "
                                 "24 frames without a mask skipped")
    parts = split(dataset, 0.34, 0)
    assert len(parts.val) == 3 and parts.how.startswith("1 of 3 videos")


def test_several_levels_prefer_480p_and_say_so(tmp_path: Path):
    data = tmp_path / "DAVIS"
    make_sequence(data, "bear", level="Full-Resolution", frames=3)
    make_sequence(data, "bear", level="480p", frames=2)
    make_sequence(data, "bear", level="1080p", frames=3)
    dataset = find_dataset(data)
    assert [len(v.pairs) for v in dataset.train] == [2]
    assert dataset.note == "frames from JPEGImages/480p (1080p, Full-Resolution not used)"
    assert dataset.summary().endswith("; frames from JPEGImages/480p (1080p, Full-Resolution not used)")
    only_full = tmp_path / "full"
    make_sequence(only_full, "bear", level="Full-Resolution", frames=3)
    assert find_dataset(only_full).note == "frames from JPEGImages/Full-Resolution"


def test_missing_annotations_or_images_name_the_folder(tmp_path: Path):
    data = tmp_path / "DAVIS"
    make_sequence(data, "bear")
    annotations = data / "Annotations"
    annotations.rename(tmp_path / "elsewhere")
    with pytest.raises(TrainingError, match=re.escape(f"{data} has JPEGImages/ but no Annotations/ folder")) as e:
        find_dataset(data)
    assert "JPEGImages/480p/<seq>/00000.jpg with Annotations/480p/<seq>/00000.png" in str(e.value)
    (tmp_path / "elsewhere").rename(annotations)
    (data / "JPEGImages").rename(tmp_path / "frames")
    with pytest.raises(TrainingError, match="has Annotations/ but no JPEGImages/ folder"):
        find_dataset(data)
    (tmp_path / "frames").rename(data / "JPEGImages")
    (annotations / "480p").rename(annotations / "Full-Resolution")
    with pytest.raises(TrainingError, match=re.escape(f"{annotations / '480p'} is missing")):
        find_dataset(data)
    (annotations / "Full-Resolution").rename(annotations / "480p")
    make_sequence(data, "dog")
    (annotations / "480p" / "dog").rename(tmp_path / "dog-masks")
    frames, masks = data / "JPEGImages" / "480p" / "dog", annotations / "480p" / "dog"
    with pytest.raises(TrainingError, match=re.escape(f"sequence dog has frames in {frames} but no {masks} folder")):
        find_dataset(data)


def test_mask_size_is_checked_per_sequence(tmp_path: Path):
    data = tmp_path / "DAVIS"
    make_sequence(data, "bear")
    bad = data / "Annotations" / "480p" / "bear" / "00001.png"
    Image.new("P", (16, 16)).save(bad)
    with pytest.raises(TrainingError, match=re.escape(f"mask {bad} is 16x16 but its image")):
        find_dataset(data)


def test_frames_beside_masks_are_a_video(tmp_path: Path):
    """A refine-mode input folder (frames, masks/ beside them, prompts.json) trains as it is."""
    for clip in ("c1", "c2"):
        root = tmp_path / "data" / clip
        (root / "masks").mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / f"{i:05d}.jpg"), np.full((24, 32, 3), 90, np.uint8))
            cv2.imwrite(str(root / "masks" / f"{i:05d}.png"), np.full((24, 32), 255, np.uint8))
        (root / "prompts.json").write_text("{}")
    dataset = find_dataset(tmp_path / "data")
    assert [v.name for v in dataset.train] == ["c1", "c2"] and all(len(v.pairs) == 3 for v in dataset.train)
    single = find_dataset(tmp_path / "data" / "c1")
    assert len(single.train) == 1 and single.train[0].pairs[0].image.parent == tmp_path / "data" / "c1"
