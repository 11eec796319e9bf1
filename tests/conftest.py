"""Shared fixtures: tiny synthetic clips, the shared real data (when present), a SAM2 model pool."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REELMASK_TEST_DATA", ROOT.parent / "shared" / "data"))

# The settings every SAM2 test runs with: real architecture and code, random weights, 256 px.
FAST = ("models.sam2_weights=random", "models.image_size=256", "output.preview=false")


def reelmask_command() -> list[str]:
    """The installed `reelmask` script (what users and the systemd unit run), else its entry point in a
    fresh Python."""
    script = Path(sys.executable).parent / "reelmask"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from core.cli import main; sys.exit(main())"]


def data_path(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set REELMASK_TEST_DATA)")
    return path


def make_clip(root: Path, n: int = 12, size: tuple[int, int] = (160, 120), name: str = "{i:05d}.jpg",
              objects: int = 1, prompts: dict | None = None) -> Path:
    """Frames of coloured discs moving over a textured background, plus optional prompts.json."""
    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(7)
    bg = (rng.random((h, w, 3)) * 60 + 80).astype(np.uint8)
    for i in range(n):
        frame = bg.copy()
        for k in range(objects):
            x = int(w * 0.15 + (w * 0.7) * i / max(n - 1, 1)) if k == 0 else int(w * 0.85 - (w * 0.7) * i / max(n - 1, 1))
            y = int(h * (0.35 + 0.3 * k))
            cv2.circle(frame, (x, y), max(4, h // 8), (230, 40 + 150 * k, 40), -1)
        cv2.imwrite(str(root / name.format(i=i)), frame)
    if prompts is not None:
        (root / "prompts.json").write_text(json.dumps(prompts))
    return root


def make_seg_dataset(root: Path) -> Path:
    """A tiny seed-000 layout dataset: train/{a,b}/{images,masks}, 3 frames each, a disc and its mask."""
    for video in ("a", "b"):
        images, masks = root / "train" / video / "images", root / "train" / video / "masks"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for i in range(3):
            img = np.full((32, 48, 3), 90, np.uint8)
            mask = np.zeros((32, 48), np.uint8)
            cv2.circle(img, (10 + 8 * i, 16), 6, (230, 60, 40), -1)
            cv2.circle(mask, (10 + 8 * i, 16), 6, 255, -1)
            cv2.imwrite(str(images / f"{i:04d}.jpg"), img)
            cv2.imwrite(str(masks / f"{i:04d}.png"), mask)
    return root


def point_prompt(size=(160, 120), frame: int = 0, obj: int = 1) -> dict:
    w, h = size
    return {"id": obj, "frame": frame, "points": [[int(w * 0.15), int(h * 0.35)]], "labels": [1]}


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_clip(tmp_path / "clip", prompts={"objects": [point_prompt()]})


@pytest.fixture(scope="session")
def model_pool():
    from core.pipeline import ModelPool

    return ModelPool()
