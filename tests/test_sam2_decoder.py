"""`reelmask train sam2-decoder` (seed 003) with the real sam2 at 256 px and random weights, and the
tuned decoder loaded back with models.sam2_decoder in every SAM2 mode."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.errors import Cancelled, ConfigError, ModelError, TrainingError
from core.models.checkpoints import SAM2_DECODER
from core.training.events import EpochEnd, TrainFinished, TrainPrepare, TrainStep
from core.training.runs import read_lines
from core.training.sam2_decoder_data import MAX_POINTS, draw_prompt, find_objects, plan_batches
from core.training.unet_data import find_dataset
from tests.conftest import FAST, data_path, make_clip, point_prompt, reelmask_command

TINY = ("models.device=cpu", "train.workers=0", "train.batch_size=2")


def _cfg(*sets: str):
    return load_config(None, [*FAST, *TINY, *sets], use_default_path=False)


def make_davis(root: Path, sequences=("a", "b", "c"), n: int = 4, size=(96, 64)) -> Path:
    """DAVIS layout: JPEGImages/480p/<seq>, palette Annotations/480p/<seq> with two objects (a disc,
    id 1, and a box, id 2), ImageSets/2017/{train,val}.txt (the last sequence validates)."""
    w, h = size
    rng = np.random.default_rng(5)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    for s, seq in enumerate(sequences):
        images, notes = root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
        images.mkdir(parents=True)
        notes.mkdir(parents=True)
        bg = (rng.random((h, w, 3)) * 50 + 60).astype(np.uint8)
        for i in range(n):
            frame, ids = bg.copy(), np.zeros((h, w), np.uint8)
            cx = 20 + 6 * i + 4 * s
            cv2.circle(frame, (cx, 24), 12, (220, 60, 40), -1)
            cv2.circle(ids, (cx, 24), 12, 1, -1)
            cv2.rectangle(frame, (60 - 3 * i, 36), (84 - 3 * i, 58), (40, 200, 230), -1)
            cv2.rectangle(ids, (60 - 3 * i, 36), (84 - 3 * i, 58), 2, -1)
            cv2.imwrite(str(images / f"{i:05d}.jpg"), frame)
            im = Image.fromarray(ids, mode="P")
            im.putpalette(palette)
            im.save(notes / f"{i:05d}.png")
    if len(sequences) < 2:
        return root
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(sequences[:-1]) + "\n")
    (sets / "val.txt").write_text(sequences[-1] + "\n")
    return root


def _train(data: Path, out: Path, cfg, **kw) -> list[object]:
    from core.training.sam2_decoder import train

    return list(train(data, out, cfg, **kw))


# ------------------------------------------------------------------ samples and prompts (no torch)

def test_objects_come_from_palette_ids_and_skip_void_and_specks(tmp_path: Path):
    data = make_davis(tmp_path / "d", sequences=("a",), n=1)
    path = data / "Annotations" / "480p" / "a" / "00000.png"
    ids = np.asarray(Image.open(path)).copy()
    ids[0:3, 0:3] = 255          # DAVIS "void": never an object
    ids[60:62, 0:1] = 3          # 2 pixels: too small to prompt
    im = Image.fromarray(ids, mode="P")
    im.putpalette(Image.open(path).getpalette())
    im.save(path)
    samples, small = find_objects(find_dataset(data).train[0].pairs)
    assert [s.object_id for s in samples] == [1, 2] and small == 1
    disc = samples[0]
    assert disc.box == (8, 12, 33, 37)            # circle at (20, 24), radius 12, box end exclusive


def test_prompts_are_drawn_from_the_object():
    mask = np.zeros((64, 96), bool)
    mask[20:40, 30:70] = True
    box = (30, 20, 70, 40)
    rng = np.random.default_rng(0)
    to_frame = np.array([96 / 256, 64 / 256])
    for _ in range(50):
        p = draw_prompt(mask, box, "box", rng, 256)
        assert list(p.labels) == [2, 3, -1, -1]
        (x0, y0), (x1, y1) = p.coords[:2] * to_frame
        assert abs(x0 - 30) <= 8.01 and abs(x1 - 70) <= 8.01 and abs(y0 - 20) <= 4.01 and x1 > x0 and y1 > y0
        p = draw_prompt(mask, box, "point", rng, 256)
        assert list(p.labels) == [1, -1, -1, -1]
        x, y = (p.coords[0] * to_frame).astype(int)
        assert mask[y, x]
        p = draw_prompt(mask, box, "points", rng, 256)
        used = p.labels[p.labels >= 0]
        assert 2 <= len(used) <= MAX_POINTS and (used == 1).any()
        for (x, y), label in zip((p.coords[: len(used)] * to_frame).astype(int), used):
            assert mask[y, x] == (label == 1)
    exact = draw_prompt(mask, box, "point", rng, 256, exact=True)
    assert tuple((exact.coords[0] * to_frame).round().astype(int)) in {(49, 29), (50, 30), (49, 30), (50, 29)}
    assert np.allclose(draw_prompt(mask, box, "box", rng, 256, exact=True).coords[:2] * to_frame, [[30, 20], [70, 40]])


def test_batches_hold_one_kind_and_every_sample_once_an_epoch():
    kinds = ("box", "point", "points")
    first = plan_batches(10, kinds, 4, seed=0, epoch=1)
    second = plan_batches(10, kinds, 4, seed=0, epoch=2)
    for plan in (first, second):
        assert sorted(i for b in plan for i, *_ in b) == list(range(10))
        assert all(len({kind for _, kind, _, _ in b}) == 1 and len(b) <= 4 for b in plan)
    assert len(first) == len(second) and first != second             # same step count, new draw
    val = plan_batches(3, kinds, 2, seed=0, epoch=None)
    assert [(i, k) for b in val for i, k, _, exact in b if exact] == [(i, k) for k in kinds for i in range(3)]


# ------------------------------------------------------------------ training

@pytest.mark.slow
def test_training_lowers_the_loss_and_leaves_the_encoder_bit_identical(tmp_path: Path, monkeypatch):
    import torch

    import core.models.sam2_model as sam2_model

    frozen: dict = {}

    class Spy(sam2_model.Sam2Tracker):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            frozen["model"] = self.predictor
            frozen["before"] = {k: v.clone() for k, v in self.predictor.state_dict().items()}

    monkeypatch.setattr(sam2_model, "Sam2Tracker", Spy)
    data = make_davis(tmp_path / "davis")
    out = tmp_path / "run"
    events = _train(data, out, _cfg("train.epochs=3", "train.lr=0.0001"))

    lines = read_lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [0, 1, 2, 3]
    assert lines[0]["train_loss"] is None and lines[0]["val_miou"] is not None     # scored before training
    assert lines[-1]["val_loss"] < lines[0]["val_loss"]
    assert lines[-1]["train_loss"] < lines[1]["train_loss"]
    assert {"val_miou_box", "val_miou_point", "val_miou_points"} <= set(lines[-1])
    assert lines[1]["train_items"] == 16 and lines[1]["val_items"] == 8          # 2 objects x 4 frames per sequence
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == 3 * 9 and steps[-1].step == steps[-1].total_steps          # 6+5+5 samples by kind, 2 a batch

    after = frozen["model"].state_dict()
    changed = {k for k, v in frozen["before"].items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith("sam_mask_decoder.") for k in changed)
    assert not any(k.startswith(("sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")) for k in changed)
    encoder = [k for k in after if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(frozen["before"][k], after[k]) for k in encoder)   # bit-identical

    header = SAM2_DECODER.header(out / "best.pt")
    assert header["sam2"] == {"variant": "sam2.1_hiera_tiny", "weights": "random", "image_size": 256, "seed": 0}
    assert header["trained"] == ["sam_mask_decoder"]
    saved = torch.load(out / "best.pt", weights_only=True)["model"]
    assert saved and all(k.startswith("sam_mask_decoder.") for k in saved)
    finished = events[-1]
    assert isinstance(finished, TrainFinished) and not finished.stopped_early
    assert len(list((out / "cache").glob("*.npz"))) == 12                       # each frame encoded once
    import cv2

    preview = cv2.imread(str(out / "val_preview.png"))   # the dashboard's picture: a validation frame, its mask
    frame = cv2.imread(str(sorted((data / "JPEGImages").rglob("*.jpg"))[0]))
    assert preview is not None and preview.shape == frame.shape and preview.std() > 5
    green = (preview[..., 1] > 200) & (preview[..., 0] < 80) & (preview[..., 2] < 80)
    assert green.sum() > 10                                                      # the true object's outline


@pytest.mark.slow
def test_resume_reuses_the_cache_and_continues(tmp_path: Path):
    data = make_davis(tmp_path / "davis", sequences=("a", "b"), n=3)
    out = tmp_path / "run"
    _train(data, out, _cfg("train.epochs=1"))
    with pytest.raises(TrainingError, match="already holds a training run"):
        _train(data, out, _cfg("train.epochs=2"))
    events = _train(data, out, _cfg("train.epochs=2"), resume=True)
    prepare = [e for e in events if isinstance(e, TrainPrepare)]
    assert prepare == [TrainPrepare("encoding frames", 0, 0, 6)]                 # nothing encoded again
    assert [e.epoch for e in events if isinstance(e, EpochEnd)] == [2]
    assert [m["epoch"] for m in read_lines(out / "metrics.jsonl")] == [0, 1, 2]
    with pytest.raises(TrainingError, match="tuned on SAM2"):
        _train(data, out, _cfg("train.epochs=3", "models.seed=4"), resume=True)


def test_early_stopping_ends_the_run_and_a_resume_does_not_restart_it(tmp_path: Path, monkeypatch):
    import core.training.sam2_decoder as trainer

    scores = iter([4.0, 3.0, 3.5, 3.6, 3.7, 3.8])                               # epoch 0, then 1..5
    monkeypatch.setattr(trainer, "_validate", lambda *a, **kw: {"val_loss": next(scores), "val_miou": 0.1})
    data = make_davis(tmp_path / "davis", sequences=("a", "b"), n=2)
    out = tmp_path / "run"
    events = _train(data, out, _cfg("train.epochs=6", "train.patience=2"))
    assert [e.epoch for e in events if isinstance(e, EpochEnd)] == [0, 1, 2, 3]
    assert events[-1].stopped_early and events[-1].metrics["epoch"] == 1
    again = _train(data, out, _cfg("train.epochs=6", "train.patience=2"), resume=True)
    assert not [e for e in again if isinstance(e, (TrainStep, EpochEnd))] and again[-1].stopped_early


def test_settings_and_cancel(tmp_path: Path):
    data = make_davis(tmp_path / "davis", sequences=("a", "b"), n=2)
    with pytest.raises(TrainingError, match="models.image_size"):
        _train(data, tmp_path / "a", _cfg("train.img_size=512"))
    with pytest.raises(ConfigError, match="train.prompts"):
        _cfg("train.prompts=['lasso']")
    with pytest.raises(TrainingError, match="inside the dataset"):
        _train(data, data / "run", _cfg())
    with pytest.raises(Cancelled):
        _train(data, tmp_path / "b", _cfg(), should_stop=lambda: True)
    events = _train(data, tmp_path / "c", _cfg("train.epochs=1", "train.prompt_encoder=true",
                                               "train.prompts=['box']"))
    assert SAM2_DECODER.header(tmp_path / "c" / "best.pt")["trained"] == ["sam_mask_decoder", "sam_prompt_encoder"]
    assert set(k for k in events[-1].metrics if k.startswith("val_miou_")) == {"val_miou_box"}


def test_a_corrupt_frame_fails_naming_it_and_no_validation_set_works(tmp_path: Path):
    data = make_davis(tmp_path / "davis", sequences=("a",), n=2)                    # no ImageSets: no val.txt
    events = _train(data, tmp_path / "noval", _cfg("train.epochs=1", "train.val_fraction=0"))
    assert events[-1].metrics["val_loss"] is None and events[-1].metrics["train_loss"] > 0
    frame = data / "JPEGImages" / "480p" / "a" / "00001.jpg"
    frame.write_bytes(frame.read_bytes()[: len(frame.read_bytes()) // 3])
    with pytest.raises(TrainingError, match="00001.jpg"):
        _train(data, tmp_path / "run", _cfg("train.epochs=1"))


# ------------------------------------------------------------------ the decoder in every SAM2 mode

@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decoder")
    data = make_davis(root / "davis", sequences=("a", "b"), n=2)
    _train(data, root / "run", _cfg("train.epochs=1", "train.lr=0.001"))
    return root / "run" / "best.pt"


def test_tracker_loads_the_tuned_decoder_and_refuses_another_sam2(decoder: Path):
    import torch

    from core.models.sam2_model import Sam2Tracker
    from core.models.weights import resolve_sam2

    cfg = _cfg(f"models.sam2_decoder={decoder}")
    tracker = Sam2Tracker(cfg, resolve_sam2(cfg))
    saved = torch.load(decoder, weights_only=True)["model"]
    own = tracker.predictor.state_dict()
    assert all(torch.equal(own[k].cpu(), v) for k, v in saved.items())
    assert tracker.decoder["epoch"] == 1 and len(tracker.decoder["sha256"]) == 64
    plain = Sam2Tracker(_cfg(), resolve_sam2(_cfg())).predictor.state_dict()
    assert any(not torch.equal(plain[k], v) for k, v in saved.items())
    other = _cfg(f"models.sam2_decoder={decoder}", "models.seed=9")
    with pytest.raises(ModelError, match="models.seed = 0"):
        Sam2Tracker(other, resolve_sam2(other))
    bigger = _cfg(f"models.sam2_decoder={decoder}", "models.image_size=320")
    assert "tuned at models.image_size = 256" in Sam2Tracker(bigger, resolve_sam2(bigger)).warnings[0]


def test_a_wrong_decoder_setting_fails_before_sam2_loads(tmp_path: Path):
    from core.pipeline import prepare_job

    clip = make_clip(tmp_path / "clip", n=2, prompts={"objects": [point_prompt()]})
    with pytest.raises(ConfigError, match="models.sam2_decoder = 'nope.pt' does not exist"):
        prepare_job(clip, _cfg("models.sam2_decoder=nope.pt"))
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a reelmask SAM2 decoder checkpoint"):
        prepare_job(clip, _cfg(f"models.sam2_decoder={tmp_path / 'other.pt'}"))


@pytest.mark.parametrize("mode", ["track", "detect", "promptless", "refine", "matting"])
def test_every_sam2_mode_runs_with_the_decoder_and_records_it(tmp_path: Path, decoder: Path, model_pool, mode):
    from core.models.weights import sha256_file
    from core.pipeline import prepare_job, run_job
    from tests.test_keyframe_modes import _refine_clip

    sets = [f"models.sam2_decoder={decoder}", "promptless.points_per_side=4"]
    if mode == "detect":
        sets.append(f"models.yolo={data_path('models', 'yolo11n-coco-dequant.pt')}")
    if mode == "refine":
        clip = _refine_clip(tmp_path / "clip", n=3)
    else:
        prompts = {"objects": [point_prompt((96, 64))]} if mode in ("track", "matting") else None
        clip = make_clip(tmp_path / "clip", n=3, size=(96, 64), prompts=prompts)
    job = prepare_job(clip, _cfg(*sets), mode=mode)
    manifest = list(run_job(job, tmp_path / "out", models=model_pool))[-1].manifest
    assert manifest["mode"] == mode and manifest["frames"] == 3
    assert manifest["weights"]["sam2_decoder"] == sha256_file(decoder)
    assert manifest["models"]["sam2"]["decoder"]["path"] == str(decoder.resolve())
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["weights"]["sam2_decoder"] == manifest["weights"]["sam2_decoder"]


# ------------------------------------------------------------------ real clips

@pytest.mark.slow
def test_real_clips_loss_falls_at_256_with_random_weights(tmp_path: Path):
    vos = data_path("vos")
    data = tmp_path / "data"
    for clip in ("dog", "car-shadow"):
        for sub in ("images", "masks"):
            (data / clip / sub).mkdir(parents=True)
            for f in sorted((vos / clip / sub).iterdir())[:10]:
                (data / clip / sub / f.name).symlink_to(f)
    out = tmp_path / "run"
    _train(data, out, _cfg("train.epochs=3", "train.batch_size=4"))                  # the seed's lr 1e-5
    lines = read_lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [0, 1, 2, 3]
    assert lines[3]["train_loss"] < lines[1]["train_loss"] and lines[3]["val_loss"] < lines[0]["val_loss"]


# ------------------------------------------------------------------ daemon job and CLI

def test_daemon_job_records_the_untrained_scores_and_an_early_stop(tmp_path: Path, monkeypatch):
    import core.training.sam2_decoder as trainer
    from core.training.registry import queue_training
    from daemon.service import Daemon
    from daemon.worker import Worker

    scores = iter([4.0, 3.0, 3.5, 3.6])
    monkeypatch.setattr(trainer, "_validate", lambda *a, **kw: {"val_loss": next(scores), "val_miou": 0.2})
    data = make_davis(tmp_path / "davis", sequences=("a", "b"), n=2)
    (tmp_path / "config.toml").write_text('[daemon]\ntick_seconds = 0.1\nprogress_seconds = 0.01\n')
    cfg = load_config(tmp_path / "config.toml")
    daemon = Daemon(cfg)
    store = daemon.store
    sets = [*FAST, *TINY, "train.epochs=5", "train.patience=1"]
    job_id = queue_training(store, cfg, "sam2-decoder", data, None, sets)
    assert Worker(cfg, "w", "cpu", daemon.workers_stop).step() is True
    job = store.job(job_id)
    assert job.state == "done", job.error
    assert [(c["idx"], c["state"]) for c in store.chunks(job_id)] == \
        [(1, "done"), (2, "done"), (3, "skipped"), (4, "skipped"), (5, "skipped")]
    assert job.frames_done == job.frames_total
    assert [r["epoch"] for r in store.train_metrics(job_id, epochs_only=True)] == [0, 1, 2]
    messages = [e["message"] for e in store.events(job_id=job_id)]
    assert any(m.startswith("before training: val_loss 4.0000") for m in messages)
    assert any("encoding frames: 4 to do" in m for m in messages) and any("stopped early" in m for m in messages)
    assert any("RANDOM weights" in e["message"] and e["level"] == "warning" for e in store.events(job_id=job_id))


@pytest.mark.slow
def test_cli_trains_in_the_foreground(tmp_path: Path):
    import subprocess

    data = make_davis(tmp_path / "davis", sequences=("a", "b"), n=2)
    sets = [a for s in (*FAST, *TINY, "train.epochs=1") for a in ("--set", s)]
    r = subprocess.run([*reelmask_command(), "train", "sam2-decoder", "--data", str(data),
                        "--out", "run", *sets], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "before training: val_loss" in r.stderr and "epoch 1: train_loss" in r.stderr
    assert "warning: SAM2 runs with RANDOM weights" in r.stderr
    assert (tmp_path / "run" / "best.pt").is_file() and "best " in r.stdout
