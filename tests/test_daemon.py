"""The daemon end to end: real watchdog, real SQLite, real SAM2 (random weights, 256 px), real
subprocesses killed with SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np

from core.config import load_config
from core.store import Store
from tests.conftest import make_clip, point_prompt, reelmask_command
from tests.daemon_process import start as _start, scaled
from tests.daemon_process import status as _status
from tests.daemon_process import stop as _stop
from tests.daemon_process import wait as _wait
from tests.daemon_process import write_config
import pytest

def _setup(tmp_path: Path, chunk: int = 50) -> Path:
    (tmp_path / "inbox").mkdir()
    return write_config(tmp_path, {"paths": {"inboxes": ["inbox"]}, "watch": {"settle_seconds": 1.0},
                                   "chunking": {"chunk_size": chunk}})


def _bad_folders(inbox: Path, outside: Path) -> list[str]:
    good = {"objects": [point_prompt()]}
    make = lambda name, **kw: make_clip(inbox / name, n=kw.pop("n", 3), **kw)  # noqa: E731
    (inbox / "empty").mkdir()
    make("corrupt", prompts=good)
    (inbox / "corrupt" / "00001.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    make("zero_byte", prompts=good)
    (inbox / "zero_byte" / "00002.jpg").write_bytes(b"")
    make("bad_json")
    (inbox / "bad_json" / "prompts.json").write_text('{"objects": [{"id": 1,, }]}')
    make("point_outside", prompts={"objects": [{"id": 1, "frame": 0, "points": [[900, 10]], "labels": [1]}]})
    make("mixed_sizes", prompts=good)
    cv2.imwrite(str(inbox / "mixed_sizes" / "00001.jpg"), np.zeros((50, 70, 3), np.uint8))
    make("missing_frame", prompts={"objects": [{"id": 1, "frame": 99, "points": [[5, 5]], "labels": [1]}]})
    make("symlink_out", prompts=good)
    make_clip(outside, n=1)
    (inbox / "symlink_out" / "00002.jpg").unlink()
    os.symlink(outside / "00000.jpg", inbox / "symlink_out" / "00002.jpg")
    (inbox / "no_images").mkdir()
    (inbox / "no_images" / "notes.txt").write_text("frames come later")
    (inbox / "no_images" / "prompts.json").write_text(json.dumps(good))
    return ["empty", "corrupt", "zero_byte", "bad_json", "point_outside", "mixed_sizes", "missing_frame",
            "symlink_out", "no_images"]


def test_bad_folders_fail_alone_and_the_good_one_is_done(tmp_path: Path):
    _setup(tmp_path)
    inbox = tmp_path / "inbox"
    bad = _bad_folders(inbox, tmp_path / "elsewhere")
    make_clip(inbox / "good", n=6, prompts={"objects": [point_prompt()]})
    proc = _start(tmp_path)
    try:
        def finished():
            jobs = _status(tmp_path)["jobs"]
            return jobs if len(jobs) == len(bad) + 1 and all(j["state"] in ("done", "failed") for j in jobs) else None
        jobs = _wait(finished, 120, "all jobs to finish", proc)
    finally:
        rc, took = _stop(proc)
    assert rc == 0 and took < 10
    states = {j["name"]: j["state"] for j in jobs}
    assert states.pop("good") == "done"
    assert states == {name: "failed" for name in bad}
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == sorted(bad)
    for name in bad:
        text = (tmp_path / "failed" / name / "error.txt").read_text()
        first = text.splitlines()[0]
        assert "Traceback" not in first and len(first) > 20, (name, first)
        assert "details" in text
    words = {j["name"]: j["error"] for j in jobs}
    assert "empty" in words["empty"] and "00001.jpg" in words["corrupt"] and "0-byte" in words["zero_byte"]
    assert "not valid JSON" in words["bad_json"] and "outside the 160x120 frame" in words["point_outside"]
    assert "00001.jpg is 70x50" in words["mixed_sizes"] and "frame 99 does not exist" in words["missing_frame"]
    assert "outside" in words["symlink_out"] and "notes.txt" in words["no_images"]
    assert str(inbox / "empty") in words["empty"]  # names the folder the user dropped
    assert (tmp_path / "done" / "good").is_dir() and not list(inbox.iterdir())
    assert len(list((tmp_path / "outbox" / "good" / "masks").glob("*.png"))) == 6


@pytest.mark.slow
def test_sigterm_then_kill9_then_resume_to_the_end(tmp_path: Path):
    _setup(tmp_path, chunk=10)
    clip = make_clip(tmp_path / "staging" / "long", n=60, size=(96, 64), prompts={"objects": [point_prompt((96, 64))]})
    os.rename(clip, tmp_path / "inbox" / "long")
    (tmp_path / "inbox" / "long" / ".ready").write_text("")
    store = Store(tmp_path / "reelmask.db")
    progress = lambda: (store.jobs() or [None])[0]  # noqa: E731

    proc = _start(tmp_path)
    _wait(lambda: progress() and progress().frames_done >= 15, 120, "15 frames", proc)
    rc, took = _stop(proc)
    assert rc == 0 and took < 10, (rc, took)
    job = progress()
    assert job.state == "interrupted" and job.frames_done < 60

    proc = _start(tmp_path)
    _wait(lambda: progress().state == "running" and progress().frames_done >= 35, 120, "35 frames", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=scaled(10))
    assert progress().state == "running"  # what a crash leaves behind

    proc = _start(tmp_path)
    try:
        _wait(lambda: progress().state == "done", 120, "the job to finish", proc)
    finally:
        assert _stop(proc)[0] == 0
    out = tmp_path / "outbox" / "long"
    assert len(list((out / "masks").glob("*.png"))) == 60
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"] == 60 and manifest["resumed_from_frame"] is not None
    assert 27 <= manifest["resumed_from_frame"] <= 45  # the chunk in flight at the kill, not frame 0
    lines = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
    keys = [(x["chunk"], x["source"], x["object_id"]) for x in lines]
    assert len(keys) == len(set(keys)), "a chunk's prompts were logged twice"
    assert (tmp_path / "done" / "long").is_dir() and not list((tmp_path / "work").iterdir())
    assert not list((tmp_path / "outbox").glob(".*"))
    assert _status(tmp_path)["jobs"][0]["state"] == "done"


def test_commands_step_by_step(tmp_path: Path):
    """cancel, retry and pause applied by one daemon tick at a time, the worker stepped by hand."""
    from daemon.service import Daemon
    from daemon.worker import Worker

    cfg = load_config(_setup(tmp_path))
    daemon = Daemon(cfg)
    clip = make_clip(tmp_path / "inbox" / "clip", n=5, prompts={"objects": [point_prompt()]})
    (clip / ".ready").write_text("")
    [job_id] = daemon.submit_ready()
    assert daemon.submit_ready() == []                         # one folder, one job
    store = daemon.store
    store.add_command("cancel", job_id)
    daemon.handle_commands()
    assert store.job(job_id).state == "cancelled"
    assert "cancelled" in (tmp_path / "failed" / "clip" / "error.txt").read_text()

    store.add_command("retry", job_id)
    store.add_command("pause")
    daemon.handle_commands()
    assert store.job(job_id).state == "queued" and not (tmp_path / "failed" / "clip").exists()
    worker = Worker(cfg, "w", "cpu", daemon.workers_stop)
    assert worker.step() is False                              # paused: nothing claimed
    store.add_command("resume")
    daemon.handle_commands()
    assert worker.step() is True
    job = store.job(job_id)
    assert job.state == "done" and job.attempts == 1 and job.frames_done == 5
    assert (tmp_path / "done" / "clip").is_dir()
    assert {c["state"] for c in store.chunks(job_id)} == {"done"}
    store.add_command("train", payload={"kind": "unet"})
    store.add_command("train", payload={"kind": "sam2-decoder", "data": str(tmp_path)})
    daemon.handle_commands()
    rows = store.conn.execute("SELECT state, result FROM commands ORDER BY id DESC LIMIT 2").fetchall()
    assert rows[1][0] == "rejected" and "needs a kind and a dataset folder" in rows[1][1]
    assert rows[0][0] == "rejected" and "no image+mask pairs" in rows[0][1]


def test_submit_status_and_service_unit(tmp_path: Path):
    _setup(tmp_path)
    clip = make_clip(tmp_path / "elsewhere" / "clip", n=3, prompts={"objects": [point_prompt()]})
    run = lambda *a: subprocess.run([*reelmask_command(), *a, "--config", "config.toml"],  # noqa: E731
                                    cwd=tmp_path, capture_output=True, text=True)
    r = run("submit", str(clip))
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    again = run("submit", str(clip))
    assert again.returncode == 2 and "already queued" in again.stderr
    bad = make_clip(tmp_path / "elsewhere" / "bad", n=2, prompts={"objects": [{"id": 1, "frame": 5, "points": [[1, 1]]}]})
    r = run("submit", str(bad))
    assert r.returncode == 2 and "frame 5 does not exist" in r.stderr
    jobs = _status(tmp_path)["jobs"]
    assert [(j["id"], j["state"], j["name"]) for j in jobs] == [(job_id, "queued", "clip")]
    assert run("cancel", job_id[:6]).returncode == 0
    assert run("cancel", "zzz").returncode == 2

    r = run("service", "install", "--user", "--output", str(tmp_path / "reelmask.service"))
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "reelmask.service").read_text()
    assert "ExecStart=" in unit and "daemon --config" in unit and str(tmp_path / "config.toml") in unit
    assert "KillSignal=SIGTERM" in unit and "WantedBy=default.target" in unit
