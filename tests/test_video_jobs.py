"""Video files through whole jobs: as a folder, as a file given to run/submit, dropped into an inbox; the
masks equal those of the same clip given as frames where decoding is lossless."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.engine.events import FrameResult
from core.errors import Cancelled, FrameFolderError
from core.pipeline import prepare_job, run_job
from daemon.watcher import Inbox, InboxWatcher
from tests import daemon_process as dp
from tests.conftest import FAST, data_path, reelmask_command
from tests.video_files import encode, read_rgb_frames

YOLO = ("models", "yolo11n-coco-dequant.pt")


def cfg(*sets):
    return load_config(None, [*FAST, *sets], use_default_path=False)


def masks_of(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}


@pytest.fixture(scope="module")
def dog(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """The first 14 frames of DAVIS dog as a frame folder (symlinks to the shared JPEGs) and decoded."""
    files = sorted(data_path("vos", "dog", "images").glob("*.jpg"))[:14]
    folder = tmp_path_factory.mktemp("dog") / "frames"
    folder.mkdir()
    for f in files:
        os.symlink(f, folder / f.name)
    return folder, read_rgb_frames(files)


def prompts(frame: int = 7) -> dict:
    # the dog sits near the middle of the frame; a prompt on a middle frame makes the job sweep backward too
    return {"objects": [{"id": 1, "frame": frame, "points": [[430, 260]], "labels": [1]},
                        {"id": 2, "frame": 2, "box": [100, 50, 300, 200]}]}


@pytest.mark.slow
def test_lossless_video_gives_the_masks_of_its_frames(tmp_path: Path, dog, model_pool):
    """PNG-in-mov and FFV1 decode to exactly the frames: track mode (forward and backward, three chunks)
    writes masks equal to the frame folder's, with the same names."""
    frames_dir, rgb = dog
    shutil.copytree(frames_dir, tmp_path / "frames", symlinks=True)
    (tmp_path / "frames" / "prompts.json").write_text(json.dumps(prompts()))
    c = cfg("chunking.chunk_size=5", 'output.formats=["png", "mask-video"]')
    list(run_job(prepare_job(tmp_path / "frames", c), tmp_path / "out-frames", models=model_pool))
    expected = masks_of(tmp_path / "out-frames")
    assert len(expected) == 14
    for suffix, codec, pix_fmt in ((".mov", "png", "rgb24"), (".mkv", "ffv1", "bgr0")):
        folder = tmp_path / f"video{suffix}-in"
        folder.mkdir()
        encode(folder / f"dog{suffix}", rgb, codec=codec, pix_fmt=pix_fmt)
        (folder / "prompts.json").write_text(json.dumps(prompts()))
        out = tmp_path / f"out{suffix}"
        manifest = list(run_job(prepare_job(folder, c), out, models=model_pool))[-1].manifest
        got = masks_of(out)
        assert list(got) == [f"{i:05d}.png" for i in range(14)] == list(expected)
        for name in expected:
            assert np.array_equal(got[name], expected[name]), (suffix, name)
        assert manifest["source"]["kind"] == "video" and manifest["source"]["codec"] == codec
        assert manifest["source"]["frames"] == 14 and manifest["frames"] == 14
        assert manifest["first_frame"] == "00000.png"
        times = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
        assert [t["frame"] for t in times] == list(range(14)) and times[3]["time"] == pytest.approx(3 / 25)
    assert "source" in json.loads((tmp_path / "out-frames" / "manifest.json").read_text())
    assert not (tmp_path / "out-frames" / "frames.jsonl").exists()


@pytest.mark.slow
def test_h264_video_resumes_frame_accurately(tmp_path: Path, dog, model_pool):
    """An H.264 job stopped part way resumes from its checkpoint (the decoder seeks to the keyframe before
    the chunk) and ends with the masks of an uninterrupted run of the same file."""
    _, rgb = dog
    folder = tmp_path / "in"
    folder.mkdir()
    encode(folder / "dog.mp4", rgb, options={"g": "6", "bf": "2"})
    (folder / "prompts.json").write_text(json.dumps(prompts()))
    c = cfg("chunking.chunk_size=5")
    whole = tmp_path / "whole"
    list(run_job(prepare_job(folder, c), whole, models=model_pool))
    out, seen = tmp_path / "resumed", []
    job = prepare_job(folder, c, job_id="v1")
    with pytest.raises(Cancelled):
        for event in run_job(job, out, models=model_pool, keep_partial=True, should_stop=lambda: len(seen) >= 9):
            if isinstance(event, FrameResult):
                seen.append(event.frame)
    job = prepare_job(folder, c, job_id="v1")  # a new process would probe the file again
    manifest = list(run_job(job, out, models=model_pool, resume=True))[-1].manifest
    assert manifest["resumed_from_frame"] is not None
    a, b = masks_of(whole), masks_of(out)
    assert list(a) == list(b) and len(a) == 14
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.slow
def test_run_a_video_file_with_formats_on_its_own_timeline(tmp_path: Path, dog):
    """`reelmask run FILE` on a variable-rate H.264 file: detect mode (real YOLO), the mask video carries the
    source's timestamps, coco.json decodes to the masks, frames.jsonl has every frame's time."""
    _, rgb = dog
    stamps = [0, 40, 80, 120, 200, 240, 280, 400, 440, 480, 520, 560, 800, 840]  # milliseconds, irregular
    video = encode(tmp_path / "walk.mkv", rgb, pts=stamps, time_base=Fraction(1, 1000))
    (tmp_path / "prompts.json").write_text('{"objects": []}')  # beside the file: never read for a file job
    out = tmp_path / "result"
    r = subprocess.run([*reelmask_command(), "run", str(video), "--out", str(out), "--mode", "detect",
                        *[f"--set={s}" for s in FAST], f"--set=models.yolo={data_path(*YOLO)}",
                        "--set=chunking.chunk_size=7", '--set=output.formats=["png","coco","mask-video"]'],
                       capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "walk" and manifest["frames"] == 14 and manifest["mode_reason"] == "--mode detect"
    src = manifest["source"]
    assert src["variable_frame_rate"] and src["time_base"] == "1/1000" and src["frames"] == 14
    times = [json.loads(x)["time"] for x in (out / "frames.jsonl").read_text().splitlines()]
    assert times == [s / 1000 for s in stamps]
    masks = masks_of(out)
    with av.open(str(out / "masks.mkv")) as c:
        decoded = [(round(float(f.pts * f.time_base) * 1000), f.to_ndarray()) for f in c.decode(video=0)]
    assert [t for t, _ in decoded] == stamps
    for (_, ids), name in zip(decoded, masks):
        assert np.array_equal(ids, masks[name])
    from pycocotools import mask as rle

    coco = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == list(masks)
    by_image = {im["id"]: im["file_name"] for im in coco["images"]}
    assert coco["annotations"], "the dog is detected"
    for ann in coco["annotations"]:
        m = rle.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
        assert np.array_equal(m.astype(bool), masks[by_image[ann["image_id"]]] == ann["track_id"])


def test_truncated_video_job_keeps_the_good_frames_when_told(tmp_path: Path, model_pool):
    frames = [np.full((64, 96, 3), 30 + 5 * i, np.uint8) for i in range(30)]
    for f, i in zip(frames, range(30)):
        f[20:40, 2 * i:2 * i + 20] = (230, 40, 40)
    whole = encode(tmp_path / "whole.mp4", frames, faststart=True, options={"g": "10"})
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / "cut.mp4").write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    (folder / "prompts.json").write_text(json.dumps({"objects": [{"id": 1, "frame": 0, "points": [[10, 30]]}]}))
    with pytest.raises(FrameFolderError, match=r"cut.mp4 is damaged at frame"):
        prepare_job(folder, cfg())
    (folder / "job.toml").write_text('[video]\non_damage = "truncate"\n')  # a folder may choose this itself
    manifest = list(run_job(prepare_job(folder, cfg()), tmp_path / "out", models=model_pool))[-1].manifest
    n = manifest["frames"]
    assert 0 < n < 30 and manifest["source"]["damaged_at_frame"] == n
    assert any("damaged at frame" in w for w in manifest["warnings"])
    assert len(masks_of(tmp_path / "out")) == n


def test_a_video_still_being_copied_is_not_taken(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = InboxWatcher([Inbox(inbox, None)], settle_seconds=5.0)
    part = inbox / "clip.mp4.part"
    part.write_bytes(b"x" * 100)
    (inbox / "notes.txt").write_text("not a job")
    assert watcher.ready(now=0.0) == [] and watcher.ready(now=100.0) == []
    video = inbox / "clip.mp4"
    part.rename(video)
    assert watcher.ready(now=200.0) == []  # first seen now
    with open(video, "ab") as f:  # still growing
        f.write(b"y" * 10)
    assert watcher.ready(now=204.0) == []
    assert watcher.ready(now=208.0) == []  # changed at 204
    assert [e for e, _ in watcher.ready(now=209.5)] == [video]
    other = inbox / "b.MOV"
    other.write_bytes(b"z")
    (inbox / "b.ready").touch()  # STEM.ready: ready at once
    assert other in [e for e, _ in watcher.ready(now=209.6)]


@pytest.mark.slow
def test_daemon_takes_bare_video_files_and_submitted_ones(tmp_path: Path, dog):
    """A video file dropped into the inbox becomes a job named after its stem once its marker appears (or it
    settles) and moves through work/ to done/<stem>/; `reelmask submit FILE` queues a file where it is."""
    _, rgb = dog
    root = tmp_path
    dp.write_config(root, {"promptless": {"points_per_side": 4, "keyframe_every": 10},
                           "watch": {"settle_seconds": 1.0}})
    (root / "inbox").mkdir()
    proc = dp.start(root)
    try:
        partial = root / "inbox" / "walk.mp4.part"  # copied in under a partial name, then renamed
        encode(root / "walk.mp4", rgb[:6]).rename(partial)
        partial.rename(root / "inbox" / "walk.mp4")
        (root / "inbox" / "walk.mp4.ready").touch()
        kept = root / "kept"
        kept.mkdir()
        encode(kept / "still.mkv", rgb[:5], codec="ffv1", pix_fmt="bgr0")
        r = dp.cli(root, "submit", str(kept / "still.mkv"))
        assert r.returncode == 0, r.stderr

        def both_done():
            jobs = dp.status(root)["jobs"]
            return len(jobs) == 2 and all(j["state"] == "done" for j in jobs) and jobs

        jobs = dp.wait(both_done, 240, "both video jobs done", proc)
        assert sorted(j["name"] for j in jobs) == ["still", "walk"]
    finally:
        dp.stop(proc)
    assert (root / "done" / "walk" / "walk.mp4").is_file()
    assert not (root / "inbox" / "walk.mp4.ready").exists() and not list((root / "inbox").iterdir())
    assert (kept / "still.mkv").is_file()  # submitted files stay where they are
    for name, n in (("walk", 6), ("still", 5)):
        m = json.loads((root / "outbox" / name / "manifest.json").read_text())
        assert m["frames"] == n and m["source"]["kind"] == "video"
        assert sorted(p.name for p in (root / "outbox" / name / "masks").iterdir()) == [f"{i:05d}.png" for i in range(n)]


def test_a_bare_file_that_is_no_video_fails_into_failed(tmp_path: Path):
    root = tmp_path
    dp.write_config(root)
    (root / "inbox").mkdir()
    proc = dp.start(root)
    try:
        (root / "inbox" / "broken.mp4").write_bytes(b"\x00\x01not a video" * 50)
        (root / "inbox" / "broken.ready").touch()
        job = dp.wait(lambda: next((j for j in dp.status(root)["jobs"] if j["state"] == "failed"), None), 120,
                      "the broken file failed", proc)
    finally:
        dp.stop(proc)
    assert job["name"] == "broken" and "broken.mp4 cannot be opened" in job["error"]
    assert (root / "failed" / "broken" / "broken.mp4").is_file()
    assert "cannot be opened" in (root / "failed" / "broken" / "error.txt").read_text()


def test_matting_a_video_folder_equals_its_frames_and_keeps_its_timeline(tmp_path: Path):
    """Matting mode on an FFV1 video with masks/ named by output frame: the mattes equal those of the same
    frames as PNGs, and alpha.mov (ProRes 4444) carries the source's irregular timestamps."""
    from tests.test_matting_mode import soft_clip

    frames_dir, _ = soft_clip(tmp_path / "frames", n=4)
    rgb = read_rgb_frames(sorted(frames_dir.glob("*.png")))
    video_dir = tmp_path / "video"
    shutil.copytree(frames_dir / "masks", video_dir / "masks")
    stamps = [0, 100, 150, 400]
    encode(video_dir / "soft.mkv", rgb, codec="ffv1", pix_fmt="bgr0", pts=stamps, time_base=Fraction(1, 1000))
    c = cfg('output.formats=["png", "prores"]')
    list(run_job(prepare_job(frames_dir, c, mode="matting"), tmp_path / "out-frames"))
    manifest = list(run_job(prepare_job(video_dir, c, mode="matting"), tmp_path / "out-video"))[-1].manifest
    assert manifest["mode"] == "matting" and manifest["source"]["codec"] == "ffv1"
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "out-frames" / "alpha" / f"{i:05d}.png"))
        b = np.asarray(Image.open(tmp_path / "out-video" / "alpha" / f"{i:05d}.png"))
        assert np.array_equal(a, b), i
    with av.open(str(tmp_path / "out-video" / "alpha.mov")) as mov:
        assert [round(float(f.pts * f.time_base) * 1000) for f in mov.decode(video=0)] == stamps


def test_preview_of_a_video_keeps_its_timeline(tmp_path: Path, model_pool):
    """preview.mp4 (H.264) of a variable-rate video carries each picture's own timestamp."""
    frames = [np.full((64, 96, 3), 20 * i, np.uint8) for i in range(6)]
    stamps = [0, 40, 200, 240, 600, 640]
    folder = tmp_path / "in"
    folder.mkdir()
    encode(folder / "v.mkv", frames, codec="ffv1", pix_fmt="bgr0", pts=stamps, time_base=Fraction(1, 1000))
    (folder / "prompts.json").write_text(json.dumps({"objects": [{"id": 1, "frame": 2, "points": [[40, 30]]}]}))
    list(run_job(prepare_job(folder, cfg("output.preview=true")), tmp_path / "out", models=model_pool))
    with av.open(str(tmp_path / "out" / "preview.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert [round(float(f.pts * f.time_base) * 1000) for f in c.decode(video=0)] == stamps
