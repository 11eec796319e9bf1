"""Hostile folders dropped into a real daemon subprocess: pickles aimed at every model key, links out of
the inbox, resources without bound, odd names, a read-only inbox and a full disk.

Each folder must fail on its own with a plain error (or, where it is harmless, succeed); nothing it
points at is read, written or executed, and the daemon goes on with the next folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import daemon_process as dp
from tests.conftest import make_clip, point_prompt
from tests.test_untrusted_input import _png_header_only

def _config(root: Path, min_free: int = 0) -> None:
    dp.write_config(root, {"paths": {"inboxes": ["inbox"]}, "limits": {"max_files": 500, "min_free_mb": min_free}},
                    '[[paths.inbox]]\npath = "trusted"\ntrusted = true\n')
    for d in ("inbox", "trusted"):
        (root / d).mkdir(exist_ok=True)


def _payload(path: Path, marker: Path) -> Path:
    """A torch checkpoint whose unpickling writes the unpickling process's PID into `marker`."""
    import torch

    class Payload:
        def __reduce__(self):
            return exec, (f"import os; open({str(marker)!r}, 'a').write(str(os.getpid()) + chr(10))",)

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload(), "kind": "unet"}, path)
    return path


def _clip(parent: Path, name: str, n: int = 3, prompts: dict | None = None, job: str | None = None) -> Path:
    clip = make_clip(parent / ".staging" / name, n=n, prompts=prompts if prompts is not None
                     else {"objects": [point_prompt()]})
    if job is not None:
        (clip / "job.toml").write_text(job)
    return clip


def _drop(clip: Path, inbox: Path, name: str | bytes | None = None) -> None:
    """Move a finished folder into an inbox in one rename (as a careful copier does)."""
    dest = os.path.join(os.fsencode(inbox), name) if isinstance(name, bytes) else inbox / (name or clip.name)
    os.rename(clip, dest)


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime: 'left untouched' means this is unchanged."""
    return {str(p.relative_to(path)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def _finished(root: Path, count: int, proc) -> list[dict]:
    def done():
        jobs = dp.status(root)["jobs"]
        return jobs if len(jobs) >= count and all(j["state"] in ("done", "failed") for j in jobs) else None
    return dp.wait(done, 600, f"{count} jobs to finish", proc)


@pytest.mark.slow
def test_hostile_folders_in_a_running_daemon(tmp_path: Path):
    _config(tmp_path)
    inbox, trusted = tmp_path / "inbox", tmp_path / "trusted"
    marker = tmp_path / "PWNED"
    evil = _payload(tmp_path / "payload" / "evil.pt", marker)
    hidden = _payload(inbox / ".stash" / "x.pt", marker)            # hidden in the inbox itself
    _payload(inbox / ".stash" / "yolo" / "yolo11n.pt", marker)      # a model cache planted there
    outside = tmp_path / "outside"
    make_clip(outside / "clip", n=3, prompts={"objects": [point_prompt()]})
    (outside / "secret.txt").write_text('TOP-SECRET = "x"\n')
    (outside / "victim.txt").write_text("the owner's file\n")
    (outside / "masks").mkdir()
    before = _tree(outside)
    detect = {"detect": {"classes": ["dog"]}}
    matting_masks = lambda clip: [Image.fromarray(np.full((120, 160), 255, np.uint8)).save(  # noqa: E731
        clip / "masks" / f"{i:05d}.png") for i in range(3) if (clip / "masks").mkdir(exist_ok=True) or True]

    expected: dict[str, tuple[str, str]] = {}  # name -> (state, words in the error)

    # every model key, from an ordinary inbox: refused by the allow-list before anything loads
    for key, value, extra in [("models.yolo", hidden, detect), ("models.sam2", evil, None),
                              ("models.sam2_decoder", evil, None), ("models.unet", evil, {"mode": "unet"}),
                              ("models.matting", evil, {"mode": "matting"}),
                              ("paths.cache", inbox / ".stash", detect)]:
        section, name = key.split(".")
        folder = f"key_{name}"
        _drop(_clip(tmp_path, folder, prompts=extra, job=f'[{section}]\n{name} = "{value}"\n'), inbox)
        expected[folder] = ("failed", key)
    # the same files through a trusted inbox: the keys are accepted, the loaders refuse the pickles
    for key, value, extra in [("models.yolo", evil, detect), ("models.sam2", evil, None),
                              ("models.sam2_decoder", evil, None), ("models.unet", evil, {"mode": "unet"}),
                              ("models.matting", evil, None), ("paths.cache", inbox / ".stash", detect)]:
        section, name = key.split(".")
        folder = f"trusted_{name}"
        job = f'[{section}]\n{name} = "{value}"\n' + ('mode = "matting"\n' if name == "matting" else "")
        job = job if not job.startswith("[") or "mode" not in job else 'mode = "matting"\n' + job.replace(
            'mode = "matting"\n', "")
        clip = _clip(tmp_path, folder, prompts=extra, job=job)
        if name == "matting":
            matting_masks(clip)
        _drop(clip, trusted)
        expected[folder] = ("failed", "")

    # links
    os.symlink(outside / "clip", inbox / "link_folder")
    expected["link_folder"] = ("failed", "symbolic link")
    clip = _clip(tmp_path, "link_frame")
    os.symlink(outside / "clip" / "00000.jpg", clip / "00003.jpg")
    _drop(clip, inbox)
    clip = _clip(tmp_path, "link_masks")
    os.symlink(outside / "masks", clip / "masks")
    _drop(clip, inbox)
    clip = _clip(tmp_path, "link_prompts")
    (clip / "prompts.json").unlink()
    os.symlink(outside / "secret.txt", clip / "prompts.json")
    _drop(clip, inbox)
    clip = _clip(tmp_path, "link_job_toml")
    os.symlink(outside / "secret.txt", clip / "job.toml")
    _drop(clip, inbox)
    for name in ("link_frame", "link_masks", "link_prompts", "link_job_toml"):
        expected[name] = ("failed", "outside the folder")
    clip = _clip(tmp_path, "planted_error")
    (clip / "prompts.json").write_text("{not json")
    os.symlink(outside / "victim.txt", clip / "error.txt")
    _drop(clip, inbox)
    expected["planted_error"] = ("failed", "error.txt in")

    # resources and odd input
    _drop(_clip(tmp_path, "prefetch", job="[chunking]\nprefetch = 1000000000\n"), inbox)
    expected["prefetch"] = ("failed", "chunking.prefetch")
    clip = _clip(tmp_path, "bomb")
    _png_header_only(clip / "00003.png", 60_000, 60_000)
    _drop(clip, inbox)
    expected["bomb"] = ("failed", "00003.png")
    clip = _clip(tmp_path, "nested")
    (clip / "prompts.json").write_text('{"objects": ' + "[" * 50_000 + "]" * 50_000 + "}")
    _drop(clip, inbox)
    expected["nested"] = ("failed", "nested too deeply")
    clip = _clip(tmp_path, "many_files")
    for i in range(600):
        (clip / f"note{i}.txt").write_bytes(b"")
    _drop(clip, inbox)
    expected["many_files"] = ("failed", "limits.max_files")
    clip = _clip(tmp_path, "fifo")
    os.mkfifo(clip / "00007.jpg")
    _drop(clip, inbox)
    expected["fifo"] = ("failed", "not a regular file")
    os.mkdir(os.path.join(os.fsencode(inbox), b"bad\xffname"))
    expected["bad?name"] = ("failed", "not printable UTF-8")

    # harmless ones that used to fail
    clip = _clip(tmp_path, "bom", prompts=None)
    (clip / "prompts.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"objects": [point_prompt()]}).encode())
    _drop(clip, inbox)
    clip = _clip(tmp_path, "readme_mask", prompts=None)
    mask = np.zeros((120, 160), np.uint8)
    mask[30:50, 15:35] = 255
    Image.fromarray(mask).save(clip / "first_mask.png")
    (clip / "prompts.json").write_text(json.dumps({"objects": [{"id": 3, "frame": "00001.jpg",
                                                                "mask": "first_mask.png"}]}))
    _drop(clip, inbox)
    long_name = "L" * 250
    _drop(_clip(tmp_path, "long"), inbox, long_name)
    for name in ("bom", "readme_mask", long_name):
        expected[name] = ("done", "")

    proc = dp.start(tmp_path)
    try:
        jobs = _finished(tmp_path, len(expected), proc)
        assert proc.poll() is None, "the daemon died"
    finally:
        rc, _ = dp.stop(proc)
    assert rc == 0
    got = {j["name"]: j for j in jobs}
    assert set(got) == set(expected), set(got) ^ set(expected)
    for name, (state, words) in expected.items():
        job = got[name]
        assert job["state"] == state, (name, job["error"])
        if state == "failed":
            assert words in job["error"], (name, job["error"])
            assert "internal error" not in job["error"], (name, job["error"])
            text = (Path(job["input"]) / "error.txt").read_text()
            assert text.startswith(job["error"].split("\n")[0][:40]) and "TOP-SECRET" not in text
            assert Path(job["input"]).resolve().is_relative_to((tmp_path / "failed").resolve())

    assert not marker.exists(), f"a pickle ran in process {marker.read_text()}"
    assert _tree(outside) == before, "something outside the inboxes changed"
    assert os.path.islink(tmp_path / "failed" / "link_folder" / "link_folder")
    assert not (tmp_path / "failed" / "planted_error" / "error.txt").is_symlink()
    assert (tmp_path / "outbox" / long_name / "manifest.json").is_file()
    assert len(list((tmp_path / "outbox" / "readme_mask" / "masks").glob("*.png"))) == 3
    assert hidden.is_file() and not (tmp_path / "outbox" / ".stash").exists()  # hidden folders are not jobs
    assert not list((tmp_path / "work").iterdir()) and not list((tmp_path / "outbox").glob(".*"))


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"reelmask-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root with mount (tmpfs, bind) for a read-only "
                                                          "folder or a full disk")


@pytest.fixture
def mounts():
    done: list[Path] = []

    def mount(*args: str, target: Path) -> None:
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        done.append(target)

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.mark.slow
@needs_mount
def test_read_only_inbox_fails_the_job_and_loses_nothing(tmp_path: Path, mounts):
    _config(tmp_path)
    inbox = tmp_path / "inbox"
    _drop(_clip(tmp_path, "clip"), inbox)
    mounts("--bind", str(inbox), target=inbox)
    mounts("-o", "remount,ro,bind", target=inbox)
    before = _tree(inbox)
    proc = dp.start(tmp_path)
    try:
        [job] = _finished(tmp_path, 1, proc)
    finally:
        assert dp.stop(proc)[0] == 0
    assert job["state"] == "failed" and "read-only file system" in job["error"].lower(), job["error"]
    assert _tree(inbox) == before                                        # the folder is where it was
    assert (tmp_path / "failed" / "clip" / "error.txt").read_text().startswith("cannot move")
    assert not list((tmp_path / "work").iterdir())                       # no partial copy
    proc = dp.start(tmp_path)  # a restart does not fail the unchanged folder once more
    try:
        dp.wait(lambda: (tmp_path / "daemon.log").read_text().count("watching") == 2, 120, "the second start", proc)
        time.sleep(1.5)  # a few settle windows and ticks
        assert [j["state"] for j in dp.status(tmp_path)["jobs"]] == ["failed"]
    finally:
        assert dp.stop(proc)[0] == 0


@needs_mount
def test_full_disk_under_failed_leaves_no_partial_copy(tmp_path: Path, mounts):
    _config(tmp_path)
    (tmp_path / "failed").mkdir()
    mounts("-t", "tmpfs", "-o", "size=256k", "tmpfs", target=tmp_path / "failed")
    clip = _clip(tmp_path, "big", n=3, prompts={"objects": [{"id": 1, "frame": 9, "points": [[1, 1]]}]})
    for i in range(3):  # frames that do not compress: the folder is larger than the disk under failed/
        noise = np.random.default_rng(i).integers(0, 255, (300, 400, 3), np.uint8)
        Image.fromarray(noise).save(clip / f"{i:05d}.png")
        (clip / f"{i:05d}.jpg").unlink()
    _drop(clip, tmp_path / "inbox")
    proc = dp.start(tmp_path)
    try:
        [job] = _finished(tmp_path, 1, proc)
    finally:
        assert dp.stop(proc)[0] == 0
    assert job["state"] == "failed" and "frame 9 does not exist" in job["error"]
    assert "disk is full" in job["error"]
    left = [p.name for p in (tmp_path / "failed").iterdir()]
    assert not [n for n in left if n.startswith(".")], left             # no half-copied folder
    assert (tmp_path / "failed" / "big" / "error.txt").is_file()
    assert len(list(Path(job["input"]).glob("*.png"))) == 3              # the input is whole in work/


@needs_mount
def test_low_free_space_holds_the_queue(tmp_path: Path, mounts):
    _config(tmp_path, min_free=1)
    (tmp_path / "outbox").mkdir()
    mounts("-t", "tmpfs", "-o", "size=512k", "tmpfs", target=tmp_path / "outbox")
    _drop(_clip(tmp_path, "clip"), tmp_path / "inbox")
    proc = dp.start(tmp_path)
    try:
        dp.wait(lambda: dp.status(tmp_path)["jobs"], 120, "the folder to be queued", proc)
        dp.wait(lambda: "not starting jobs" in (tmp_path / "daemon.log").read_text(), 120, "the warning", proc)
        for _ in range(10):  # several ticks later, still not claimed
            assert [j["state"] for j in dp.status(tmp_path)["jobs"]] == ["queued"]
        assert (tmp_path / "inbox" / "clip").is_dir()
    finally:
        assert dp.stop(proc)[0] == 0
