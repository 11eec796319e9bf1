"""`reelmask train yolo`: datasets from masks or a data.yaml, 1-epoch runs at 64 px from the real YOLO11n weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.errors import Cancelled, ConfigError, TrainingError
from core.training.events import EpochEnd, TrainFinished, TrainStarted, TrainStep
from core.training.yolo import check, train
from core.training.yolo_data import mask_ids
from tests.conftest import data_path, make_seg_dataset
from tests.daemon_process import scaled

ROOT = Path(__file__).resolve().parents[1]
YOLO_FILE = ("models", "yolo11n-coco-dequant.pt")
TINY = ("train.img_size=64", "train.batch_size=4", "train.workers=0", "train.epochs=1", "models.device=cpu")


def _cfg(*sets: str):
    return load_config(None, [*TINY, f"models.yolo={data_path(*YOLO_FILE)}", *sets], use_default_path=False)


def make_yolo_dataset(root: Path, n: int = 4) -> Path:
    """images/{train,val} of a disc, labels/ with its box, data.yaml with a relative path and two classes."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n if split == "train" else 2):
            img = np.full((48, 64, 3), 80, np.uint8)
            x = 16 + 8 * i
            cv2.circle(img, (x, 24), 8, (40, 200, 230), -1)
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.jpg"), img)
            (root / "labels" / split / f"{i:03d}.txt").write_text(f"1 {x / 64:.4f} 0.5 {16 / 64:.4f} {16 / 48:.4f}\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: ball\n")
    return root


def _detects(weights: Path) -> list:
    from core.models.yolo import Detector

    detector = Detector(weights, imgsz=64)
    frame = np.full((48, 64, 3), 90, np.uint8)
    return detector.detect([(0, frame)], detector.class_ids([]), 0.0)


# ------------------------------------------------------------------ check()

def test_check_layouts_without_torch_or_ultralytics(tmp_path: Path):
    seed = make_seg_dataset(tmp_path / "seed")
    make_yolo_dataset(tmp_path / "yolo")
    code = ("import sys; from pathlib import Path; from core.training.registry import check_dataset; "
            f"print(check_dataset('yolo', Path({str(seed)!r}))); print(check_dataset('yolo', Path({str(tmp_path / 'yolo')!r}))); "
            "print('torch' in sys.modules, 'ultralytics' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=scaled(60))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "2 videos, 6 frames with masks (train), no test/ (part of train is held out)",
        "YOLO dataset data.yaml: 2 classes (cat, ball), 4 train images (4 with labels), 2 val images",
        "False False"]


def test_check_errors_say_what_and_how(tmp_path: Path):
    with pytest.raises(TrainingError, match="no image\\+mask pairs"):
        check((tmp_path / "empty").mkdir() or tmp_path / "empty")
    bad = make_yolo_dataset(tmp_path / "y")
    (bad / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n")
    with pytest.raises(TrainingError, match="names no classes; add e.g."):
        check(bad)
    (bad / "data.yaml").write_text("train: images/train\nval: images/nowhere\nnames: [a]\n")
    with pytest.raises(TrainingError, match="val images .*nowhere do not exist"):
        check(bad)
    (bad / "data.yaml").write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(TrainingError, match="no `val:` entry"):
        check(bad)
    for label in (bad / "labels" / "train").iterdir():
        label.unlink()
    (bad / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a]\n")
    with pytest.raises(TrainingError, match="has a label file"):
        check(bad)


def test_mask_ids_palette_ids_and_grey_regions(tmp_path: Path):
    grey = np.zeros((20, 40), np.uint8)
    grey[2:8, 2:8] = 255
    grey[10:18, 20:38] = 255                                    # a second region: a second box
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    assert len(np.unique(mask_ids(tmp_path / "g.png"))) == 3
    pal = np.zeros((20, 40), np.uint8)
    pal[2:8, 2:8] = 2
    pal[10:18, 20:38] = 2                                       # one object id in two pieces: one box
    pal[10:18, 2:10] = 5
    im = Image.fromarray(pal, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    im.save(tmp_path / "p.png")
    assert sorted(np.unique(mask_ids(tmp_path / "p.png")).tolist()) == [0, 2, 5]


# ------------------------------------------------------------------ training

def test_train_from_masks_gives_a_detector(tmp_path: Path):
    data = make_seg_dataset(tmp_path / "data")
    before = sorted(p.name for p in data.rglob("*"))
    out = tmp_path / "run"
    events = list(train(data, out, _cfg()))
    assert sorted(p.name for p in data.rglob("*")) == before            # nothing written into the data
    started, finished = events[0], events[-1]
    assert isinstance(started, TrainStarted) and isinstance(finished, TrainFinished)
    assert (started.kind, started.epochs, started.start_epoch, started.device) == ("yolo", 1, 1, "cpu")
    assert started.train_items == 3 and started.val_items == 3          # one video of two held out
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == started.steps_per_epoch and steps[-1].step == steps[-1].total_steps
    assert all(np.isfinite(s.loss) for s in steps)
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert len(ends) == 1 and ends[0].best
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == [ends[0].metrics] and lines[0]["epoch"] == 1
    assert {"train_box_loss", "train_cls_loss", "train_dfl_loss", "precision", "recall", "mAP50", "mAP50-95",
            "lr", "seconds"} <= set(lines[0])
    assert finished.best == out / "best.pt" and finished.last == out / "last.pt" and finished.metrics == lines[0]
    assert (out / "dataset" / "data.yaml").is_file() and (out / "ultralytics" / "weights" / "best.pt").is_file()
    labels = sorted((out / "dataset" / "labels").rglob("*.txt"))
    assert len(labels) == 6 and all(len(p.read_text().splitlines()) == 1 for p in labels)
    assert isinstance(_detects(out / "best.pt"), list)
    import cv2

    preview = cv2.imread(str(out / "val_preview.png"))   # the dashboard's picture: a validation image, its boxes
    first = cv2.imread(str(sorted((out / "dataset" / "images" / "val").glob("*"))[0]))
    assert preview is not None and preview.shape == first.shape
    green = (preview[..., 1] > 200) & (preview[..., 0] < 80) & (preview[..., 2] < 80)
    assert green.sum() > 8                                                # the true box drawn

    # usable as models.yolo in detect mode
    from core.models.yolo import Detector, resolve_yolo_path

    cfg = load_config(None, [f"models.yolo={out / 'best.pt'}"], use_default_path=False)
    detector = Detector(resolve_yolo_path(cfg), imgsz=64)
    assert detector.names == {0: "object"} and detector.class_ids(["object"]) == [0]

    with pytest.raises(TrainingError, match="already holds a training run"):
        list(train(data, out, _cfg()))


def test_train_from_a_yolo_dataset(tmp_path: Path):
    data = make_yolo_dataset(tmp_path / "yolo")
    out = tmp_path / "run"
    events = list(train(data, out, _cfg("train.lr=0.001")))
    assert isinstance(events[-1], TrainFinished) and events[0].train_items == 4 and events[0].val_items == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    from core.models.yolo import Detector

    assert Detector(out / "best.pt").names == {0: "cat", 1: "ball"}
    assert isinstance(_detects(out / "best.pt"), list)
    assert (data / "data.yaml").read_text().startswith("path: .")      # the user's yaml untouched


@pytest.mark.slow
def test_cancel_then_resume(tmp_path: Path):
    data = make_seg_dataset(tmp_path / "data")
    out = tmp_path / "run"
    seen: list[object] = []
    run = train(data, out, _cfg("train.epochs=2"), should_stop=lambda: any(isinstance(e, EpochEnd) for e in seen))
    with pytest.raises(Cancelled, match="--resume continues"):
        for event in run:
            seen.append(event)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and (out / "last.pt").is_file()
    from core.models.safe_load import load_checkpoint

    # what Ultralytics writes mid-run (optimizer, train args) passes reelmask's restricted loader
    mid_run = load_checkpoint(out / "ultralytics" / "weights" / "last.pt")
    assert mid_run["epoch"] == 0 and mid_run["optimizer"] is not None and mid_run["train_args"]["epochs"] == 2
    events = list(train(data, out, _cfg("train.epochs=2"), resume=True))
    assert events[0].start_epoch == 2 and [e.epoch for e in events if isinstance(e, EpochEnd)] == [2]
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert isinstance(events[-1], TrainFinished) and events[-1].best.is_file()
    assert load_checkpoint(out / "last.pt")["optimizer"] is None       # stripped at the end, still loadable
    again = list(train(data, out, _cfg("train.epochs=2"), resume=True))  # finished: nothing left to train
    assert len(again) == 1 and isinstance(again[0], TrainFinished)


def test_img_size_must_be_a_multiple_of_32():
    with pytest.raises(ConfigError, match=r"train.img_size must be 0 .*or a multiple of 32"):   # YOLO's stride; config checks it
        _cfg("train.img_size=70")
