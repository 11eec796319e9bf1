"""kill -9 at random moments, and a deleted database: every job still ends done, exactly as an
uninterrupted run would have made it."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.store import Access, Store
from tests import daemon_process as dp
from tests.conftest import DATA, make_clip, point_prompt
from tests.daemon_process import scaled

YOLO = DATA / "models" / "yolo11n-coco-dequant.pt"


def _root(path: Path, chunk: int) -> Path:
    path.mkdir(parents=True)
    dp.write_config(path, {"models": {"yolo": str(YOLO)}, "chunking": {"chunk_size": chunk}})
    (path / "inbox").mkdir()
    return path


def _jobs(root: Path) -> list:
    try:
        store = Store(root / "reelmask.db", Access.READ)
    except Exception:  # not created yet by a starting daemon
        return []
    try:
        return store.jobs()
    finally:
        store.close()


def _folders(staging: Path) -> dict[str, Path]:
    """A track clip, a refine clip (masks/ from the discs) and, with the shared data, a detect clip."""
    size = (96, 64)
    track = make_clip(staging / "track", n=40, size=size, objects=2,
                      prompts={"objects": [point_prompt(size), point_prompt(size, frame=20, obj=2)]})
    refine = make_clip(staging / "refine", n=40, size=size, objects=2)
    (refine / "masks").mkdir()
    for frame in sorted(refine.glob("*.jpg")):
        disc = (cv2.imread(str(frame))[..., 0] > 200).astype(np.uint8) * 255  # the discs are the only blue
        cv2.imwrite(str(refine / "masks" / f"{frame.stem}.png"), disc)
    folders = {"track": track, "refine": refine}
    if YOLO.is_file() and (DATA / "vos" / "dog" / "images").is_dir():
        detect = staging / "detect"
        detect.mkdir()
        for f in sorted((DATA / "vos" / "dog" / "images").glob("*.jpg"))[:30]:
            shutil.copy(f, detect / f.name)
        (detect / "prompts.json").write_text(json.dumps({"detect": {"classes": ["dog"]}}))
        folders["detect"] = detect
    return folders


def _drop_all(folders: dict[str, Path], inbox: Path) -> None:
    for name, path in folders.items():
        dest = inbox / name
        shutil.copytree(path, dest.with_name(f".{name}.copying"))
        os.rename(dest.with_name(f".{name}.copying"), dest)
        (dest / ".ready").write_text("")


def _outputs(root: Path, name: str) -> dict[str, bytes]:
    out = root / "outbox" / name
    files = {p.name: p.read_bytes() for p in sorted((out / "masks").glob("*.png"))}
    files["prompts_used.jsonl"] = (out / "prompts_used.jsonl").read_bytes()
    return files


def _log(root: Path) -> str:
    return (root / "daemon.log").read_text(errors="replace") if (root / "daemon.log").exists() else ""


def _chunk_starts(root: Path) -> list[tuple[str, str]]:
    lines = _log(root).splitlines()
    return [(m.group(1), m.group(2)) for m in (re.search(r"INFO daemon\.worker: (\S+): chunk (\d+ \w+)", x)
                                               for x in lines) if m]


@pytest.mark.slow
def test_kill9_at_20_random_moments(tmp_path: Path):
    folders = _folders(tmp_path / "staging")
    reference, soak = _root(tmp_path / "reference", 8), _root(tmp_path / "soak", 8)

    _drop_all(folders, reference / "inbox")
    proc = dp.start(reference)
    try:
        dp.wait(lambda: len(_jobs(reference)) == len(folders) and all(j.state == "done" for j in _jobs(reference)),
                900, "the uninterrupted run", proc)
    finally:
        assert dp.stop(proc)[0] == 0
    planned = len(set(_chunk_starts(reference)))

    _drop_all(folders, soak / "inbox")
    rng = random.Random(12)
    kills = []

    def progress() -> int:
        jobs = _jobs(soak)
        return sum(j.frames_total or 0 if j.state == "done" else j.frames_done for j in jobs)

    def finished() -> bool:
        jobs = _jobs(soak)
        return len(jobs) == len(folders) and all(j.state == "done" for j in jobs)

    furthest = 0
    while len(kills) < 20 and not finished():
        # a random moment: 1..8 frames past the furthest point any start reached (a chunk is 8), then a
        # random fraction of a second; kills land mid-chunk (that chunk is redone) and just past a checkpoint
        proc = dp.start(soak)
        target = max(furthest, progress()) + rng.randint(1, 8)
        try:
            dp.wait(lambda: progress() >= target or finished(), 300, f"{target} frames", proc)
        except AssertionError:
            proc.kill()
            raise
        time.sleep(rng.uniform(0.0, 0.4))
        running = [(j.name, j.frames_done) for j in _jobs(soak) if j.state == "running"]
        furthest = max(furthest, progress())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=scaled(60))
        kills.append(running)
    proc = dp.start(soak)
    try:
        dp.wait(lambda: _log(soak).count("INFO daemon.service: watching") == len(kills) + 1, 300, "the last start",
                proc)
        dp.wait(finished, 900, "every job to finish after the kills", proc)
    finally:
        assert dp.stop(proc)[0] == 0

    for name in folders:
        ref, got = _outputs(reference, name), _outputs(soak, name)
        assert len([k for k in got if k.endswith(".png")]) == len(list(folders[name].glob("*.jpg")))
        assert got.keys() == ref.keys() and all(got[k] == ref[k] for k in ref), f"{name} differs after the kills"
        manifest = json.loads((soak / "outbox" / name / "manifest.json").read_text())
        assert manifest["frames"] == len(list(folders[name].glob("*.jpg")))
    starts = _chunk_starts(soak)
    redone = len(starts) - len(set(starts))
    assert len(set(starts)) == planned and redone <= len(kills)  # a kill costs at most the chunk in flight
    print(f"\nkill -9 soak: {len(kills)} kills ({sum(1 for k in kills if k)} with a job running), "
          f"{len(folders)} jobs ({', '.join(folders)}), {planned} chunk passes planned, {len(starts)} started, "
          f"{redone} redone; kills at (job, frames done): {kills}")
    assert not list((soak / "work").iterdir()) and not list((soak / "outbox").glob(".*"))


@pytest.mark.slow
def test_a_lost_database_is_rebuilt_from_work_folders(tmp_path: Path):
    root = _root(tmp_path / "root", 10)
    clip = make_clip(tmp_path / "long", n=60, size=(96, 64), prompts={"objects": [point_prompt((96, 64))]})
    os.rename(clip, root / "inbox" / "long")
    (root / "inbox" / "long" / ".ready").write_text("")
    proc = dp.start(root)
    dp.wait(lambda: any(j.frames_done >= 25 for j in _jobs(root)), 300, "25 frames", proc)
    [job] = _jobs(root)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=scaled(60))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / 'reelmask.db'}{suffix}").unlink(missing_ok=True)

    proc = dp.start(root)
    try:
        dp.wait(lambda: [j.state for j in _jobs(root)] == ["done"], 300, "the adopted job to finish", proc)
    finally:
        assert dp.stop(proc)[0] == 0
    [again] = _jobs(root)
    assert again.id == job.id and again.resumed_from_frame is not None and again.resumed_from_frame >= 18
    out = root / "outbox" / "long"
    assert len(list((out / "masks").glob("*.png"))) == 60
    assert json.loads((out / "manifest.json").read_text())["resumed_from_frame"] == again.resumed_from_frame
    assert f"again as job {job.id}" in (root / "daemon.log").read_text()
    assert (root / "done" / "long").is_dir() and not list((root / "work").iterdir())
