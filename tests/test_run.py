"""Track mode end to end: the real sam2 predictor (random weights, 256 px) and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.errors import Cancelled
from core.pipeline import JobFinished, prepare_job, run_job
from tests.conftest import FAST, data_path, make_clip, point_prompt, reelmask_command
from tests.daemon_process import scaled

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*sets: str):
    return load_config(None, [*FAST, *sets], use_default_path=False)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    return subprocess.run([*reelmask_command(), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=scaled(600))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_objects_across_chunks_in_both_directions(tmp_path: Path, model_pool):
    size = (160, 120)
    clip = make_clip(tmp_path / "clip", n=14, size=size, name="frame_{i}.png", objects=2, prompts={"objects": [
        point_prompt(size, frame=0, obj=1),
        {"id": 2, "frame": 9, "box": [20, 60, 150, 110]},
    ]})
    out = tmp_path / "out"
    job = prepare_job(clip, _cfg("chunking.chunk_size=5", "chunking.overlap=1"))
    events = list(run_job(job, out, models=model_pool))
    manifest = events[-1].manifest
    assert isinstance(events[-1], JobFinished)

    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names == sorted(f"frame_{i}.png" for i in range(14))
    with Image.open(out / "masks" / "frame_3.png") as im:
        assert im.mode == "P" and im.size == size
        assert set(np.unique(np.asarray(im))) <= {0, 1, 2}

    assert manifest["frames"] == 14 and manifest["mode"] == "track"
    assert manifest["weights"] == {"sam2": "random"}
    assert any("RANDOM" in w for w in manifest["warnings"])
    assert [c["start"] for c in manifest["chunks"]] == [0, 4, 8, 12]
    assert {o["id"] for o in manifest["objects"]} == {1, 2}
    for key in ("objects", "chunks", "weights", "warnings", "config", "timings", "versions", "job_id", "input"):
        assert key in manifest

    used = _lines(out / "prompts_used.jsonl")
    assert {"frame": 0, "frame_name": "frame_0.png", "object_id": 1, "source": "user", "box": None,
            "points": [[24, 42]], "labels": [1], "confidence": None, "chunk": 0} in used
    sources = {(u["source"], u["object_id"]) for u in used}
    assert ("handover", 1) in sources and ("handover", 2) in sources and ("user", 2) in sources
    for u in used:
        assert set(u) >= {"frame", "frame_name", "object_id", "source", "box", "points", "labels", "confidence"}
    assert not list(tmp_path.glob(".*partial"))


def test_cancel_leaves_no_output(tmp_path: Path, model_pool):
    clip = make_clip(tmp_path / "clip", n=10, prompts={"objects": [point_prompt()]})
    seen = []
    job = prepare_job(clip, _cfg("chunking.chunk_size=4"))
    with pytest.raises(Cancelled):
        for _ in run_job(job, tmp_path / "out", models=model_pool, should_stop=lambda: len(seen) > 2):
            seen.append(1)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_cli_run_writes_the_contract(tmp_path: Path):
    clip = make_clip(tmp_path / "clip", n=8, prompts={"objects": [point_prompt()]})
    out = tmp_path / "result"
    r = _cli("run", str(clip), "--out", str(out), "--mode", "track", "--set", "models.sam2_weights=random",
             "--set", "models.image_size=256", "--set", "chunking.chunk_size=5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8 masks written to" in r.stdout
    assert len(list((out / "masks").glob("*.png"))) == 8
    assert (out / "preview.mp4").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"] == 8 and manifest["weights"]["sam2"] == "random"
    assert _lines(out / "prompts_used.jsonl")[0]["frame"] == 0


@pytest.mark.parametrize("args, words", [
    (["--mode", "unet"], "unet mode needs models.unet"),
    (["--mode", "bogus"], "unknown mode 'bogus'"),
    (["--set", "chunking.chunk_sise=5"], "did you mean 'chunking.chunk_size'"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path, args, words):
    clip = make_clip(tmp_path / "clip", n=3, prompts={"objects": [point_prompt()]})
    r = _cli("run", str(clip), "--out", str(tmp_path / "o"), *args, cwd=tmp_path)
    assert r.returncode == 2
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_refuses_bad_prompts_before_loading_a_model(tmp_path: Path):
    clip = make_clip(tmp_path / "clip", n=3, prompts={"objects": [{"id": 1, "frame": 7, "points": [[1, 1]]}]})
    r = _cli("run", str(clip), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "frame 7 does not exist" in r.stderr


def test_job_toml_overrides_and_mode(tmp_path: Path):
    clip = make_clip(tmp_path / "clip", n=3, prompts={"objects": [point_prompt()]})
    (clip / "job.toml").write_text('mode = "track"\n[chunking]\nchunk_size = 7\n')
    job = prepare_job(clip, _cfg())
    assert job.config.chunking.chunk_size == 7 and job.choice.reason == "mode in job.toml"


@pytest.mark.slow
def test_real_dog_clip(tmp_path: Path, model_pool):
    """DAVIS dog (854x480 real frames): prompt at the ground truth's centre, two chunks."""
    images = data_path("vos", "dog", "images")
    gt = cv2.imread(str(data_path("vos", "dog", "masks") / "00000.png"), cv2.IMREAD_GRAYSCALE)
    ys, xs = np.nonzero(gt)
    clip = tmp_path / "dog"
    clip.mkdir()
    for frame in sorted(images.iterdir()):
        os.symlink(frame, clip / frame.name)
    (clip / "prompts.json").write_text(json.dumps(
        {"objects": [{"id": 1, "frame": 0, "points": [[int(xs.mean()), int(ys.mean())]], "labels": [1]}]}))
    out = tmp_path / "out"
    job = prepare_job(clip, _cfg("chunking.chunk_size=40"))
    manifest = list(run_job(job, out, models=model_pool))[-1].manifest
    n = len(list(images.iterdir()))
    assert manifest["frames"] == n and manifest["frame_size"] == [854, 480]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(p.stem for p in images.iterdir())
    with Image.open(out / "masks" / "00010.png") as im:
        assert im.size == (854, 480) and im.mode == "P"


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [3, 9, 14])
def test_resume_gives_the_same_masks_as_an_uninterrupted_run(tmp_path: Path, model_pool, stop_after):
    """Interrupted in the backward sweep, between sweeps, or in the forward sweep: a resumed job
    redoes only the chunk in flight and ends with exactly the masks of a run that never stopped."""
    size = (96, 64)
    clip = make_clip(tmp_path / "clip", n=16, size=size, objects=2, prompts={"objects": [
        point_prompt(size, frame=4, obj=1), {"id": 2, "frame": 10, "box": [5, 30, 90, 60]}]})
    cfg = _cfg("chunking.chunk_size=5", "output.preview=true")
    whole = tmp_path / "whole"
    list(run_job(prepare_job(clip, cfg), whole, models=model_pool))

    out = tmp_path / "resumed"
    seen = []
    job = prepare_job(clip, cfg, job_id="j1")
    with pytest.raises(Cancelled):
        for event in run_job(job, out, models=model_pool, keep_partial=True,
                             should_stop=lambda: len(seen) >= stop_after):
            if type(event).__name__ == "FrameResult":
                seen.append(event.frame)
    manifest = list(run_job(job, out, models=model_pool, resume=True))[-1].manifest
    assert manifest["resumed_from_frame"] is not None
    for mask in sorted((whole / "masks").iterdir()):
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(out / "masks" / mask.name))), mask.name
    a = [json.loads(x) for x in (whole / "prompts_used.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
    assert a == b
    assert (out / "preview.mp4").stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
