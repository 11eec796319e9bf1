"""The U-Net trainer (seed 000) and unet mode: tiny synthetic videos, the real DAVIS clips when present."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.errors import Cancelled, ConfigError, ModelError, TrainingError
from core.training.events import EpochEnd, TrainFinished, TrainStarted, TrainStep
from core.training.unet import check, train
from core.models.checkpoints import UNET
from tests.conftest import FAST, data_path, make_clip, reelmask_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ("train.img_size=32", "train.batch_size=4", "train.workers=0", "train.lr=0.01", "models.device=cpu")


def _cfg(*sets: str):
    return load_config(None, [*FAST, *TINY, *sets], use_default_path=False)


def make_video(root: Path, n: int = 8, size: tuple[int, int] = (64, 48), phase: float = 0.0,
               palette: bool = False, unmasked: int = 0) -> Path:
    """images/ of a bright disc moving over noise, masks/ with the disc (0/255 grey or a DAVIS palette PNG)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    w, h = size
    rng = np.random.default_rng(int(phase * 10) + n)
    for i in range(n + unmasked):
        frame = (rng.random((h, w, 3)) * 90).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        x = int(w * (0.2 + 0.6 * ((i / max(n - 1, 1) + phase) % 1.0)))
        cv2.circle(frame, (x, h // 2), h // 4, (240, 220, 60), -1)
        cv2.circle(mask, (x, h // 2), h // 4, 255, -1)
        cv2.imwrite(str(root / "images" / f"{i:05d}.jpg"), frame)
        if i >= n:
            continue  # frames without a mask
        if palette:
            im = Image.fromarray((mask > 0).astype(np.uint8), mode="P")
            im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            im.save(root / "masks" / f"{i:05d}.png")
        else:
            cv2.imwrite(str(root / "masks" / f"{i:05d}.png"), mask)
    return root


def make_dataset(root: Path, videos: int = 3, n: int = 8, test: bool = False) -> Path:
    for k in range(videos):
        make_video(root / "train" / f"v{k}", n=n, phase=k / videos, palette=k == 1)
    if test:
        make_video(root / "test" / "t0", n=4, phase=0.5)
    return root


def _run(data: Path, out: Path, cfg, **kw) -> list[object]:
    return list(train(data, out, cfg, **kw))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ check()

def test_check_accepts_the_three_layouts(tmp_path: Path):
    seed = make_dataset(tmp_path / "seed", videos=3, n=6, test=True)
    assert check(seed) == "3 videos, 18 frames with masks (train), 1 video, 4 frames (test)"
    flat = tmp_path / "flat"
    make_video(flat / "a", n=5)
    make_video(flat / "b", n=4, unmasked=2)
    assert check(flat) == ("2 videos, 9 frames with masks (train), no test/ (part of train is held out); "
                           "2 frames without a mask skipped")
    one = make_video(tmp_path / "one", n=7, palette=True)
    (one / "images" / "00003.jpg").rename(one / "images" / "00003.JPG")  # any case
    (one / "masks" / "00003.png").rename(one / "masks" / "00003.PNG")
    assert check(one).startswith("1 video, 7 frames with masks (train)")


def test_check_errors_name_the_path_and_the_fix(tmp_path: Path):
    with pytest.raises(TrainingError, match=f"{tmp_path / 'nowhere'} does not exist"):
        check(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "train" / "v0" / "images").mkdir(parents=True)
    (empty / "train" / "v0" / "masks").mkdir()
    cv2.imwrite(str(empty / "train" / "v0" / "images" / "00000.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(TrainingError, match=f"no image\\+mask pairs in {empty / 'train'}"):
        check(empty)
    no_masks = tmp_path / "nomasks" / "v0" / "images"
    no_masks.mkdir(parents=True)
    with pytest.raises(TrainingError, match="has no masks/ folder"):
        check(tmp_path / "nomasks")
    bad = make_video(tmp_path / "bad" / "v0", n=3)
    (bad / "images" / "00001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(TrainingError, match=f"image {bad / 'images' / '00001.jpg'} cannot be read"):
        check(tmp_path / "bad")


def test_check_loads_no_torch(tmp_path: Path):
    make_dataset(tmp_path / "d", videos=2, n=3)
    code = ("import sys; from core.training.registry import check_dataset; "
            f"print(check_dataset('unet', {str(tmp_path / 'd')!r})); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["2 videos, 6 frames with masks (train), no test/ (part of train is held out)",
                                     "False"]


# ------------------------------------------------------------------ train()

def test_training_lowers_the_loss_and_writes_the_run(tmp_path: Path):
    data = make_dataset(tmp_path / "data", videos=3, n=8)
    out = tmp_path / "run"
    events = _run(data, out, _cfg("train.epochs=4"))
    started = events[0]
    assert isinstance(started, TrainStarted) and started.start_epoch == 1 and started.device == "cpu"
    # 3 videos, val_fraction 0.2: one video (8 frames) held out, 16 train frames = 4 steps of 4
    assert (started.train_items, started.val_items, started.steps_per_epoch) == (16, 8, 4)
    steps = [e for e in events if isinstance(e, TrainStep)]
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert len(steps) == 4 * 4 and [s.step for s in steps] == list(range(1, 17))
    assert all(s.total_steps == 16 for s in steps)
    assert isinstance(events[-1], TrainFinished) and len(ends) == 4
    lines = _metrics(out)
    assert [e.metrics for e in ends] == lines
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    for line in lines:
        assert {"epoch", "train_loss", "val_loss", "val_iou", "lr", "seconds"} <= set(line)
        assert 0.0 <= line["val_iou"] <= 1.0
    best_epoch = min(lines, key=lambda m: m["val_loss"])["epoch"]
    assert UNET.header(out / "best.pt")["epoch"] == best_epoch == events[-1].metrics["epoch"]
    header = UNET.header(out / "last.pt")
    assert header["epoch"] == 4 and header["kind"] == "unet" and header["img_size"] == 32
    assert not list(out.glob(".*tmp")) and not list(out.glob(".*.tmp.png"))
    preview = cv2.imread(str(out / "val_preview.png"))  # the dashboard's picture of the run: a validation frame
    assert preview is not None and preview.shape[:2] == (32, 32)
    assert preview.std() > 5  # a picture, not a blank


def test_validation_from_test_folder_or_none(tmp_path: Path):
    data = make_dataset(tmp_path / "data", videos=2, n=4, test=True)
    events = _run(data, tmp_path / "a", _cfg("train.epochs=1"))
    assert (events[0].train_items, events[0].val_items) == (8, 4)
    one = make_video(tmp_path / "one", n=10)
    events = _run(one, tmp_path / "b", _cfg("train.epochs=1", "train.val_fraction=0.3"))
    assert (events[0].train_items, events[0].val_items) == (7, 3)   # the last 3 frames
    events = _run(one, tmp_path / "c", _cfg("train.epochs=2", "train.val_fraction=0"))
    assert events[0].val_items == 0
    lines = _metrics(tmp_path / "c")
    assert lines[0]["val_loss"] is None and lines[0]["val_iou"] is None
    best = min(lines, key=lambda m: m["train_loss"])["epoch"]
    assert UNET.header(tmp_path / "c" / "best.pt")["epoch"] == best


def test_resume_continues_and_a_used_out_is_refused(tmp_path: Path):
    data = make_dataset(tmp_path / "data", videos=2, n=4)
    out = tmp_path / "run"
    _run(data, out, _cfg("train.epochs=2"))
    with pytest.raises(TrainingError, match="already holds a training run .*choose another --out"):
        _run(data, out, _cfg("train.epochs=3"))
    events = _run(data, out, _cfg("train.epochs=3"), resume=True)
    assert events[0].start_epoch == 3
    assert [e.epoch for e in events if isinstance(e, EpochEnd)] == [3]
    assert len([e for e in events if isinstance(e, TrainStep)]) == events[0].steps_per_epoch
    assert [m["epoch"] for m in _metrics(out)] == [1, 2, 3]
    assert UNET.header(out / "last.pt")["epoch"] == 3
    with pytest.raises(TrainingError, match="train.img_size = 32"):
        _run(data, out, _cfg("train.epochs=4", "train.img_size=64"), resume=True)


def test_resume_truncates_metrics_to_last_pt(tmp_path: Path):
    data = make_dataset(tmp_path / "data", videos=2, n=4)
    out = tmp_path / "run"
    _run(data, out, _cfg("train.epochs=2"))
    with open(out / "metrics.jsonl", "a") as f:  # a line of an epoch whose last.pt never got written
        f.write(json.dumps({"epoch": 3, "train_loss": 0.1}) + "\n")
    events = _run(data, out, _cfg("train.epochs=2"), resume=True)
    assert events[0].start_epoch == 3 and isinstance(events[-1], TrainFinished)
    assert [m["epoch"] for m in _metrics(out)] == [1, 2]


def test_cancel_mid_epoch(tmp_path: Path):
    data = make_dataset(tmp_path / "data", videos=2, n=8)
    seen = []
    with pytest.raises(Cancelled):
        for event in train(data, tmp_path / "run", _cfg("train.epochs=3"), should_stop=lambda: len(seen) >= 3):
            if isinstance(event, TrainStep):
                seen.append(event)
    assert len(seen) == 3


def _png_with_corrupt_pixels(path: Path) -> None:
    """A PNG whose header and chunk checksums are sound but whose pixel data does not inflate: only
    decoding it finds the damage."""
    import struct
    import zlib

    ok, buf = cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))
    b = buf.tobytes()
    i = b.find(b"IDAT")
    n = struct.unpack(">I", b[i - 4:i])[0]
    bad = b[i + 4:i + 6] + bytes(n - 2)  # the zlib header kept, the stream zeroed
    path.write_bytes(b[:i + 4] + bad + struct.pack(">I", zlib.crc32(b"IDAT" + bad)) + b[i + 8 + n:])


def test_corrupt_frame_fails_naming_the_file(tmp_path: Path):
    data = make_dataset(tmp_path / "data", videos=2, n=4)
    cut = data / "train" / "v0" / "images" / "00002.jpg"
    cut.write_bytes(cut.read_bytes()[:-300])  # a truncated JPEG: the dataset check decodes it and says so
    with pytest.raises(TrainingError, match=f"^image {cut} cannot be read as an image"):
        check(data)
    cut.unlink()
    bad = cut.with_suffix(".png")
    _png_with_corrupt_pixels(bad)
    check(data)  # headers and checksums are sound
    for workers in (0, 1):  # from a DataLoader worker process the error comes back as the same line
        with pytest.raises(TrainingError, match=f"^image {bad} cannot be decoded") as e:
            _run(data, tmp_path / f"run{workers}", _cfg("train.epochs=1", f"train.workers={workers}"))
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_real_clips_loss_falls(tmp_path: Path):
    """DAVIS dog + car-shadow as DATA/train/<clip> (symlinks), every 2nd frame at 64 px."""
    data = tmp_path / "data"
    for clip in ("dog", "car-shadow"):
        src = data_path("vos", clip)
        for sub in ("images", "masks"):
            (data / "train" / clip / sub).mkdir(parents=True)
            for path in sorted((src / sub).iterdir())[::2]:
                (data / "train" / clip / sub / path.name).symlink_to(path)
    out = tmp_path / "run"
    events = _run(data, out, _cfg("train.epochs=3", "train.img_size=64", "train.batch_size=8",
                                  "train.lr=0.003", "train.val_fraction=0"))
    lines = _metrics(out)
    assert events[0].train_items == 50
    assert lines[-1]["train_loss"] < lines[0]["train_loss"], lines


# ------------------------------------------------------------------ unet mode

DISC = np.array([230, 40, 40])  # BGR colour of make_clip's first disc


def _clip_dataset(root: Path) -> Path:
    """make_clip's frames as a training video, masks = pixels of the disc's colour."""
    clip = make_clip(root / "frames", n=12)
    video = root / "data" / "train" / "clip"
    (video / "masks").mkdir(parents=True)
    (video / "images").symlink_to(clip)
    for frame in sorted(clip.glob("*.jpg")):
        near = np.abs(cv2.imread(str(frame)).astype(int) - DISC).sum(axis=2) < 90
        cv2.imwrite(str(video / "masks" / f"{frame.stem}.png"), near.astype(np.uint8) * 255)
    return root / "data"


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unet")
    out = root / "run"
    _run(_clip_dataset(root), out, _cfg("train.epochs=10", "train.img_size=64", "train.batch_size=2", "train.lr=0.003"))
    return out / "best.pt"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


def test_unet_mode_from_the_cli(tmp_path: Path, unet_checkpoint: Path):
    import hashlib

    clip = make_clip(tmp_path / "clip", n=9, prompts={"objects": [{"id": 1, "frame": 0, "points": [[20, 40]]}]})
    out = tmp_path / "out"
    args = ["run", str(clip), "--out", str(out), "--mode", "unet", "--set", f"models.unet={unet_checkpoint}",
            "--set", "chunking.chunk_size=4", "--set", "models.device=cpu"]
    code = ("import sys; from core.cli import main; rc = main(sys.argv[1:]); "
            "print('loaded', *[m for m in ('sam2', 'ultralytics') if m in sys.modules]); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "loaded"  # neither SAM2 nor YOLO came near this run
    assert "9 masks written to" in r.stdout and "(unet," in r.stdout
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.stem for p in masks] == [f"{i:05d}" for i in range(9)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "unet" and manifest["frames"] == 9
    assert manifest["weights"] == {"unet": hashlib.sha256(unet_checkpoint.read_bytes()).hexdigest()}
    assert manifest["models"]["unet"]["img_size"] == 64 and "sam2" not in manifest["models"]
    assert [c["start"] for c in manifest["chunks"]] == [0, 4] and manifest["chunks"][-1]["end"] == 8
    assert any("takes no prompts" in w for w in manifest["warnings"])
    assert (out / "prompts_used.jsonl").read_text() == ""
    assert (out / "preview.mp4").stat().st_size > 0
    for path in masks:
        with Image.open(path) as im:
            assert im.mode == "P" and im.size == (160, 120)
            got = np.asarray(im)
        assert set(np.unique(got)) <= {0, 1}
        truth = np.abs(cv2.imread(str(clip / f"{path.stem}.jpg")).astype(int) - DISC).sum(axis=2) < 90
        assert _iou(got == 1, truth) > 0.5, path.name
    assert manifest["objects"] == [{"id": 1, "first_prompt_frame": None, "user_prompts": 0, "prompts_given": 0,
                                    "frames_with_mask": 9}]


def test_unet_mode_resumes_chunk_by_chunk(tmp_path: Path, unet_checkpoint: Path, model_pool):
    from core.engine.events import ChunkFinished, FrameResult
    from core.pipeline import prepare_job, run_job

    clip = make_clip(tmp_path / "clip", n=11)
    cfg = _cfg(f"models.unet={unet_checkpoint}", "chunking.chunk_size=4")
    whole = list(run_job(prepare_job(clip, cfg, mode="unet"), tmp_path / "whole", models=model_pool))
    assert sum(isinstance(e, FrameResult) for e in whole) == 11

    job = prepare_job(clip, cfg, mode="unet")
    chunks_done = []
    with pytest.raises(Cancelled):
        for event in run_job(job, tmp_path / "out", models=model_pool, keep_partial=True,
                             should_stop=lambda: len(chunks_done) >= 2):
            if isinstance(event, ChunkFinished):
                chunks_done.append(event)
    events = list(run_job(job, tmp_path / "out", models=model_pool, resume=True))
    assert sum(isinstance(e, FrameResult) for e in events) == 3   # frames 8..10 only
    assert events[-1].manifest["resumed_from_frame"] == 8
    for i in range(11):
        a = np.asarray(Image.open(tmp_path / "whole" / "masks" / f"{i:05d}.png"))
        b = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{i:05d}.png"))
        assert np.array_equal(a, b)


@pytest.mark.parametrize("value, error, words", [
    ("", ConfigError, "unet mode needs models.unet = PATH to a best.pt written by `reelmask train unet`"),
    ("missing.pt", ModelError, "models.unet = 'missing.pt' does not exist"),
    ("notes.txt", ModelError, "is not a reelmask U-Net checkpoint"),
    ("other.pt", ModelError, "is not a reelmask U-Net checkpoint (kind 'sam2'"),
])
def test_unet_mode_needs_a_unet_checkpoint(tmp_path: Path, value, error, words):
    import torch

    from core.pipeline import prepare_job

    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"kind": "sam2", "model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    clip = make_clip(tmp_path / "clip", n=3)
    cfg = load_config(None, [*FAST, f"models.unet={value}"], use_default_path=False)
    cfg = dataclasses.replace(cfg, base_dir=tmp_path)
    with pytest.raises(error) as e:
        prepare_job(clip, cfg, mode="unet")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unet_mode_cli_error_is_one_line(tmp_path: Path):
    clip = make_clip(tmp_path / "clip", n=3)
    r = subprocess.run([*reelmask_command(), "run", str(clip), "--out", str(tmp_path / "o"),
                        "--mode", "unet"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unet mode needs models.unet = PATH" in r.stderr and not (tmp_path / "o").exists()


def test_yolo_weights_are_not_a_unet(tmp_path: Path):
    yolo = data_path("models", "yolo11n-coco-dequant.pt")
    with pytest.raises(ModelError, match="is not a reelmask U-Net checkpoint"):
        UNET.header(yolo)


def test_a_daemon_unet_job_records_the_chunks_it_ran(tmp_path: Path, unet_checkpoint: Path):
    """The worker records the chunks the pipeline announces: a unet job's chunks share no frames
    (the daemon used to plan them again with chunking.overlap and left a row pending for ever)."""
    import threading

    from core.store import Store
    from daemon.worker import Worker

    clip = make_clip(tmp_path / "clip", n=9)
    places = [f"paths.{k}={tmp_path / k}" for k in ("work", "outbox", "done", "failed")]
    cfg = _cfg(f"models.unet={unet_checkpoint}", "chunking.chunk_size=4", "chunking.overlap=1",
               f"paths.db={tmp_path / 'state.db'}", "limits.min_free_mb=0", *places)
    store = Store(tmp_path / "state.db")
    job_id = store.add_job("clip", clip, source="submit", mode="unet")
    assert Worker(cfg, "w", "cpu", threading.Event()).step()
    assert store.job(job_id).state == "done"
    assert [(c["start"], c["end"], c["state"]) for c in store.chunks(job_id)] == [(0, 3, "done"), (4, 8, "done")]
