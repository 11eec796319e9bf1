"""The learned matting refiner (seed 001): SAM2 features, the U-Net, `reelmask train matting`, loading.

Real sam2 code with random weights at image_size 256; tiny VideoMatte-layout clips made here; the
shared lemur clip over DAVIS backgrounds when present.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.config import load_config
from core.errors import Cancelled, ModelError, TrainingError
from core.matting.features import CHANNELS, Sam2Features, frame_inputs, mask_prompt
from core.matting.refiner import check_checkpoint, load_refiner, temporal_smooth
from core.models.checkpoints import REFINER
from core.training.events import EpochEnd, TrainFinished, TrainPrepare, TrainStarted, TrainStep
from core.training.matting import check, train
from tests.conftest import FAST, data_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ("models.device=cpu", "train.img_size=64", "train.batch_size=2", "train.workers=0", "train.lr=0.003",
        "train.frame_every=4")
KEYS = {"epoch", "train_loss", "val_loss", "val_sad", "val_mse", "val_grad", "val_dtssd", "lr", "seconds",
        "train_items", "val_items"}


def _cfg(*sets: str):
    return load_config(None, [*FAST, *TINY, *sets], use_default_path=False)


def soft_alpha(w: int, h: int, cx: float, cy: float) -> np.ndarray:
    """A disc with a soft edge plus three thin semi-transparent strands to its right."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = h * 0.25
    alpha = np.clip((r - np.hypot(xx - cx, yy - cy)) / 4.0, 0, 1)
    for k in range(3):
        x = int(cx + r + 2 + 3 * k)
        if x < w:
            alpha[int(cy - r):int(cy + r), x] = np.maximum(alpha[int(cy - r):int(cy + r), x], 0.6)
    return alpha.astype(np.float32)


def make_clip(root: Path, n: int = 20, size: tuple[int, int] = (96, 72), phase: float = 0.0) -> Path:
    """<root>/fgr and <root>/pha: an orange textured foreground whose alpha (soft_alpha) moves right."""
    (root / "fgr").mkdir(parents=True, exist_ok=True)
    (root / "pha").mkdir(exist_ok=True)
    w, h = size
    rng = np.random.default_rng(int(phase * 100) + n)
    fg = (rng.random((h, w, 3)) * 40 + np.array([60, 160, 210])).astype(np.uint8)  # BGR
    for i in range(n):
        alpha = soft_alpha(w, h, w * (0.3 + 0.4 * ((i / max(n - 1, 1) + phase) % 1.0)), h * 0.5)
        cv2.imwrite(str(root / "fgr" / f"{i:05d}.png"), fg)
        cv2.imwrite(str(root / "pha" / f"{i:05d}.png"), (alpha * 255 + 0.5).astype(np.uint8))
    return root


def make_backgrounds(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for j in range(n):
        img = cv2.GaussianBlur((rng.random((60, 80, 3)) * 120 + j * 40).astype(np.uint8), (5, 5), 0)
        cv2.imwrite(str(folder / f"bg{j}.jpg"), img)
    return folder


def make_dataset(root: Path, clips: int = 2, n: int = 20) -> Path:
    for k in range(clips):
        make_clip(root / f"clip{k}", n=n, phase=k / clips)
    make_backgrounds(root / "backgrounds")
    return root


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracker():
    from core.pipeline import ModelPool

    return ModelPool().sam2(_cfg())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, list[object]]:
    """2 clips x 20 frames, every 4th frame (5 + 5 samples, one clip held out), 3 epochs at 64 px."""
    root = tmp_path_factory.mktemp("matting")
    data = make_dataset(root / "data")
    out = root / "run"
    events = list(train(data, out, _cfg("train.epochs=3")))
    return data, out, events


# ------------------------------------------------------------------ SAM2 features

def test_features_come_from_the_real_sam2_and_are_deterministic(tracker):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    alpha = soft_alpha(96, 72, 40, 36)
    rgb = np.where(alpha[..., None] > 0.5, np.array([220, 150, 50], np.uint8), np.uint8(90)).astype(np.uint8)
    mask = alpha > 0.5
    features = Sam2Features(tracker)
    native = features(rgb, mask, 256)          # S/4 = 64: SAM2's own resolution, no resizing
    assert native.shape == (CHANNELS, 64, 64) == (33, 64, 64) and native.dtype == np.float16
    assert np.array_equal(native, features(rgb, mask, 256))
    small = features(rgb, mask, 128)
    assert small.shape == (33, 32, 32) and np.isfinite(small.astype(np.float32)).all()
    assert features.seconds > 0

    # channel 0 is what sam2's own image predictor returns for the same prompts
    predictor = SAM2ImagePredictor(tracker.predictor)
    predictor._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]
    box, mask_input = mask_prompt(mask, 256)
    import torch

    with torch.inference_mode():
        predictor.set_image(rgb)
        _, _, low = predictor.predict(box=box, mask_input=mask_input, multimask_output=False, return_logits=True)
    assert np.allclose(native[0].astype(np.float32), low[0], atol=0.05)
    assert not np.array_equal(native[1], native[2])   # the decoder's embedding, not copies of the logits


def test_refiner_forward_on_real_features(tracker):
    import torch

    from core.matting.refiner_model import DEFAULT_ARCH, build_refiner, to_tensors

    model = build_refiner(DEFAULT_ARCH).eval()
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 2_000_000
    alpha = soft_alpha(96, 72, 50, 36)
    rgb = (np.random.default_rng(0).random((72, 96, 3)) * 255).astype(np.uint8)
    feats = Sam2Features(tracker)(rgb, alpha > 0.5, 128)
    inputs = frame_inputs(rgb, alpha > 0.5, 128)
    assert inputs.rgb.shape == (3, 128, 128) and inputs.mask.shape == (1, 128, 128)
    with torch.inference_mode():
        out = torch.sigmoid(model(*to_tensors(inputs.rgb[None], inputs.mask[None], feats[None], "cpu")))
    assert out.shape == (1, 1, 128, 128) and 0 <= float(out.min()) and float(out.max()) <= 1


# ------------------------------------------------------------------ training

def _started(events: list) -> TrainStarted:
    return next(e for e in events if isinstance(e, TrainStarted))


def test_training_lowers_the_loss_and_writes_the_run(trained):
    data, out, events = trained
    prepare = [e for e in events if isinstance(e, TrainPrepare)]
    assert prepare[0] == TrainPrepare("caching SAM2 outputs", 0, 10, 0) and prepare[-1].done == 10  # progress first
    [started] = [e for e in events if isinstance(e, TrainStarted)]
    assert started.device == "cpu" and started.start_epoch == 1
    assert (started.train_items, started.val_items, started.steps_per_epoch) == (5, 5, 3)
    steps = [e for e in events if isinstance(e, TrainStep)]
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert [s.step for s in steps] == list(range(1, 10)) and isinstance(events[-1], TrainFinished)
    lines = _metrics(out)
    assert [e.metrics for e in ends] == lines and len(lines) == 3
    assert lines[-1]["train_loss"] < lines[0]["train_loss"], lines
    for line in lines:
        assert set(line) == KEYS and all(line[k] is not None for k in KEYS)
    assert lines[-1]["val_sad"] <= lines[0]["val_sad"]
    best = min(lines, key=lambda m: m["val_sad"])["epoch"]
    header = REFINER.header(out / "best.pt")
    assert header["epoch"] == best and header["img_size"] == 64 and header["kind"] == "matting-refiner"
    assert header["sam2"]["variant"] == "sam2.1_hiera_tiny" and header["sam2"]["weights"] == "random"
    assert header["sam2"]["image_size"] == 256 and header["features"]["channels"] == 33
    index = json.loads((out / "cache" / "index.json").read_text())
    assert (index["samples"], index["computed"], index["reused"]) == (10, 10, 0)
    assert len(list((out / "cache").glob("*.npz"))) == 10 and not list(data.rglob("*.npz"))
    import cv2

    preview = cv2.imread(str(out / "val_preview.png"))  # the dashboard's picture of the run
    assert preview is not None and preview.std() > 5


def test_resume_reuses_the_sam2_cache(trained, tmp_path: Path):
    data, first, _ = trained
    out = tmp_path / "run"
    shutil.copytree(first, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cache").glob("*.npz")}
    with pytest.raises(TrainingError, match="already holds a training run .*choose another --out"):
        list(train(data, out, _cfg("train.epochs=4")))
    events = list(train(data, out, _cfg("train.epochs=4"), resume=True))
    assert _started(events).start_epoch == 4 and [e.epoch for e in events if isinstance(e, EpochEnd)] == [4]
    index = json.loads((out / "cache" / "index.json").read_text())
    assert (index["computed"], index["reused"]) == (0, 10)           # SAM2 did not run again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cache").glob("*.npz")} == stamps
    assert [m["epoch"] for m in _metrics(out)] == [1, 2, 3, 4]
    with pytest.raises(TrainingError, match="train.img_size = 64"):
        list(train(data, out, _cfg("train.epochs=5", "train.img_size=96"), resume=True))
    with pytest.raises(TrainingError, match="same models.sam2"):
        list(train(data, out, _cfg("train.epochs=5", "models.seed=1"), resume=True))


def test_cancel_while_caching_and_while_training(trained, tmp_path: Path):
    data, first, _ = trained
    with pytest.raises(Cancelled, match="caching SAM2"):
        list(train(data, tmp_path / "a", _cfg("train.epochs=2"), should_stop=lambda: True))
    assert not list((tmp_path / "a" / "cache").glob("*.npz"))
    shutil.copytree(first / "cache", tmp_path / "b" / "cache")      # a run whose caching was done
    seen: list[TrainStep] = []
    with pytest.raises(Cancelled):
        for event in train(data, tmp_path / "b", _cfg("train.epochs=3", "train.batch_size=1"),
                           should_stop=lambda: len(seen) >= 2):
            if isinstance(event, TrainStep):
                seen.append(event)
    assert len(seen) == 2 and not (tmp_path / "b" / "last.pt").exists()


def test_real_clip_loss_falls(tmp_path: Path):
    """The shared lemur-over-blackswan clip (24 frames) over DAVIS frames as backgrounds (symlinks)."""
    clip = data_path("matting", "video", "lemur_over_blackswan")
    data = tmp_path / "data"
    (data / "lemur").mkdir(parents=True)
    for sub in ("fgr", "pha"):
        (data / "lemur" / sub).symlink_to(clip / sub)
    (data / "backgrounds").mkdir()
    for name in ("dog", "car-shadow"):
        (data / "backgrounds" / name).symlink_to(data_path("vos", name, "images"))
    assert check(data).startswith("1 clip, 24 frames")
    out = tmp_path / "run"
    events = list(train(data, out, _cfg("train.epochs=3", "train.frame_every=4", "train.val_fraction=0")))
    lines = _metrics(out)
    assert _started(events).train_items == 6 and lines[0]["val_sad"] is None
    assert lines[-1]["train_loss"] < lines[0]["train_loss"], lines


# ------------------------------------------------------------------ loading and inference

def test_load_refiner_round_trip(trained, tracker):
    data, out, _ = trained
    refiner = load_refiner(out / "best.pt", "cpu")           # builds the SAM2 it was trained with
    assert refiner.image_size == 64
    fgr = cv2.cvtColor(cv2.imread(str(data / "clip0" / "fgr" / "00005.png")), cv2.COLOR_BGR2RGB)
    alpha = cv2.imread(str(data / "clip0" / "pha" / "00005.png"), cv2.IMREAD_GRAYSCALE) / 255.0
    first = refiner.alpha(fgr, alpha > 0.5)
    assert first.shape == (72, 96) and first.dtype == np.float32 and 0 <= first.min() and first.max() <= 1
    assert refiner.seconds >= refiner.sam2_seconds > 0
    assert not refiner.alpha(fgr, np.zeros((72, 96), bool)).any()        # no object, no matte
    again = load_refiner(out / "best.pt", "cpu", cfg=_cfg("matting.temporal=0.5"), tracker=tracker)
    assert np.allclose(again.alpha(fgr, alpha > 0.5), first, atol=1e-5)    # the shared tracker fits
    smoothed = again.alpha(fgr, alpha > 0.5, prev_alpha=np.clip(first + 0.1, 0, 1))
    assert smoothed.shape == first.shape and not np.array_equal(smoothed, first)
    described = refiner.describe()
    assert described["epoch"] == REFINER.header(out / "best.pt")["epoch"] and described["img_size"] == 64
    assert described["sam2"] == {"variant": "sam2.1_hiera_tiny", "weights": "random", "image_size": 256}
    import hashlib

    assert described["sha256"] == hashlib.sha256((out / "best.pt").read_bytes()).hexdigest()


def test_a_tracker_that_does_not_fit_is_refused(trained):
    from core.pipeline import ModelPool

    _, out, _ = trained
    other = ModelPool().sam2(_cfg("models.image_size=128"))
    with pytest.raises(ModelError, match="set models.image_size = 256 \\(this job: 128\\)"):
        load_refiner(out / "best.pt", "cpu", tracker=other)


def test_wrong_files_are_not_refiners(tmp_path: Path, trained):
    import torch

    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"kind": "unet", "format": 1, "model": {}}, tmp_path / "unet.pt")
    for name, words in (("notes.txt", "is not a reelmask matting refiner checkpoint"),
                        ("unet.pt", "kind 'unet', expected 'matting-refiner'")):
        with pytest.raises(ModelError, match=words) as e:
            load_refiner(tmp_path / name, "cpu")
        assert str(tmp_path / name) in str(e.value) and "reelmask train matting" in str(e.value)
    with pytest.raises(ModelError, match="does not exist"):
        check_checkpoint(tmp_path / "missing.pt")
    assert check_checkpoint(trained[1] / "last.pt")["kind"] == "matting-refiner"


def test_temporal_smoothing_only_in_the_uncertain_band():
    alpha = np.zeros((20, 20), np.float32)
    alpha[:, 10:] = 1.0
    alpha[:, 9] = 0.5                                  # the uncertain band: column 9 (and its neighbours)
    prev = alpha.copy()
    prev[:, 9] = 0.7
    prev[:, 0] = 0.2                                   # far from the band: never blended
    out = temporal_smooth(alpha, prev, 0.3)
    w = 0.3 * (1 - 0.2 / 0.5)                          # a change of 0.2 is mostly flicker
    assert np.allclose(out[:, 9], (1 - w) * 0.5 + w * 0.7, atol=1e-6)
    assert np.array_equal(out[:, 0], alpha[:, 0]) and np.array_equal(out[:, 12:], alpha[:, 12:])
    moved = np.zeros_like(alpha)                       # the object left: a large change is not flicker
    assert np.all(temporal_smooth(alpha, moved + (alpha > 0.6), 0.3)[:, 9] == 0.5)
    assert temporal_smooth(alpha, None, 0.3) is alpha and temporal_smooth(alpha, prev, 0.0) is alpha


# ------------------------------------------------------------------ check() and layouts

def test_check_accepts_the_layouts(tmp_path: Path):
    flat = make_dataset(tmp_path / "flat", clips=2, n=12)
    assert check(flat) == ("2 clips, 24 frames (4 at every 10th) with alpha (train), no test/ (part of train is "
                           "held out); 3 backgrounds in backgrounds/")
    split = tmp_path / "split"
    make_clip(split / "train" / "a", n=5)
    make_clip(split / "test" / "b", n=3)
    assert check(split).startswith("1 clip, 5 frames (1 at every 10th) with alpha (train), 1 clip, 3 frames")
    assert check(split).endswith("no backgrounds/ (train.backgrounds must name a folder of them)")
    vm = tmp_path / "videomatte" / "train"                 # VideoMatte240K_JPEG: fgr/<clip>, pha/<clip>
    for clip in ("0000", "0001"):
        make_clip(tmp_path / "tmpclip" / clip, n=4)
        for sub in ("fgr", "pha"):
            (vm / sub).mkdir(parents=True, exist_ok=True)
            shutil.move(tmp_path / "tmpclip" / clip / sub, vm / sub / clip)
    assert check(tmp_path / "videomatte").startswith("2 clips, 8 frames")
    one = make_clip(tmp_path / "one", n=6)
    (one / "pha" / "00005.png").unlink()
    assert check(one).startswith("1 clip, 5 frames") and "1 fgr frame without pha skipped" in check(one)


def test_check_and_train_errors_name_the_path_and_the_fix(tmp_path: Path):
    with pytest.raises(TrainingError, match="does not exist"):
        check(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no fgr\\+pha frame pairs in .*VideoMatte240K layout"):
        check(tmp_path / "empty")
    half = tmp_path / "half" / "clip"
    (half / "fgr").mkdir(parents=True)
    with pytest.raises(TrainingError, match=f"{half} has no pha/ folder"):
        check(tmp_path / "half")
    odd = make_clip(tmp_path / "odd" / "c", n=3)
    cv2.imwrite(str(odd / "pha" / "00000.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(TrainingError, match=f"alpha {odd / 'pha' / '00000.png'} is 10x10 but its foreground"):
        check(tmp_path / "odd")
    bad = make_clip(tmp_path / "bad" / "c", n=3)
    (bad / "fgr" / "00000.png").write_bytes(b"not a png")
    with pytest.raises(TrainingError, match=f"foreground {bad / 'fgr' / '00000.png'} cannot be read"):
        check(tmp_path / "bad")
    no_bg = make_clip(tmp_path / "nobg" / "c", n=3).parent
    with pytest.raises(TrainingError, match="no backgrounds: .* does not exist; put background images"):
        list(train(no_bg, tmp_path / "run", _cfg()))
    (no_bg / "backgrounds").mkdir()
    with pytest.raises(TrainingError, match="no background images or videos in"):
        check(no_bg)
    with pytest.raises(TrainingError, match="inside the dataset"):
        list(train(no_bg, no_bg / "run", _cfg()))


def test_video_backgrounds_and_the_setting(tmp_path: Path):
    from core.training.matting_data import composite, find_backgrounds, find_dataset, split

    data = tmp_path / "data"
    make_clip(data / "c", n=6)
    videos = tmp_path / "elsewhere"
    videos.mkdir()
    writer = cv2.VideoWriter(str(videos / "bg.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60))
    for i in range(5):
        writer.write(np.full((60, 80, 3), 40 * i, np.uint8))
    writer.release()
    backgrounds = find_backgrounds(videos)
    assert len(backgrounds) == 1 and backgrounds[0].frames == 5
    parts = split(find_dataset(data, 2), backgrounds, 2, 0.0, 0)
    samples = parts.train[0]
    assert [s.bg_frame for s in samples] == [(samples[0].bg_frame + 2 * i) % 5 for i in range(3)]
    rgb, alpha = composite(samples[1])
    assert rgb.shape == (72, 96, 3) and alpha.shape == (72, 96)
    cfg = _cfg(f"train.backgrounds={videos}")
    from core.training.matting_data import backgrounds_folder

    assert backgrounds_folder(data, cfg) == videos


def test_check_loads_no_torch_and_the_trainer_is_registered(tmp_path: Path):
    data = make_dataset(tmp_path / "d", clips=2, n=3)
    code = ("import sys; from core.training.registry import check_dataset; "
            f"print(check_dataset('matting', {str(data)!r})); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False" and r.stdout.startswith("2 clips, 6 frames")


def test_augmentation_moves_features_with_the_image():
    import torch
    import torch.nn.functional as F

    from core.training.matting_augment import augment

    alpha = torch.as_tensor(soft_alpha(128, 128, 50, 64))[None, None].repeat(4, 1, 1, 1)
    rgb = alpha.repeat(1, 3, 1, 1)
    mask = (alpha > 0.5).float()
    features = F.interpolate(alpha, size=(32, 32), mode="area").repeat(1, 33, 1, 1)
    moved = augment(rgb, mask, features, alpha, np.random.default_rng(3))
    rgb2, mask2, features2, alpha2 = moved
    assert not torch.equal(alpha2, alpha) and torch.equal(rgb2[:, :1], alpha2)
    assert torch.equal(mask2, (mask2 > 0.5).float())
    follow = F.interpolate(alpha2, size=(32, 32), mode="area")
    assert float((features2[:, :1] - follow).abs().mean()) < 0.02       # the features follow the image
    assert float((features[:, :1] - follow).abs().mean()) > 0.05        # ... which did move
