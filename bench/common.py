"""Helpers shared by the benchmark scripts: the data folder, clip folders, child peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REELMASK_TEST_DATA", ROOT.parent / "shared" / "data"))


def long_dog() -> Path:
    path = DATA / "long" / "dog"
    if not path.is_dir():
        sys.exit(f"needs the 1302-frame clip at {path} (set REELMASK_TEST_DATA)")
    return path


def clip_of(src: Path, n: int, dest: Path, point: tuple[int, int] | None = None) -> Path:
    """A frame folder with the first n frames of src (symlinks, nothing copied) and a point prompt."""
    frames = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(frames) < n:
        sys.exit(f"{src} has {len(frames)} frames, {n} asked for")
    dest.mkdir(parents=True, exist_ok=True)
    for f in frames[:n]:
        link = dest / f.name
        if not link.exists():
            os.symlink(f.resolve(), link)
    if point is None:
        from PIL import Image

        with Image.open(frames[0]) as im:
            point = (im.width // 2, im.height // 2)
    (dest / "prompts.json").write_text(json.dumps(
        {"objects": [{"id": 1, "frame": 0, "points": [list(point)], "labels": [1]}]}))
    return dest


@dataclass
class RunResult:
    seconds: float
    peak_rss_mb: float
    manifest: dict


def run_reelmask(clip: Path, out: Path, sets: list[str], mode: str = "track") -> RunResult:
    """`reelmask run` in a child process; its own peak RSS comes from wait4."""
    script = Path(sys.executable).parent / "reelmask"  # the installed console script, as a user runs it
    cli = [str(script)] if script.is_file() else [sys.executable, "-c", "import sys; from core.cli import main; sys.exit(main())"]
    cmd = [*cli, "run", str(clip), "--out", str(out), "--mode", mode, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "YOLO_OFFLINE": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"reelmask run failed:\n{err}")
    manifest = json.loads((out / "manifest.json").read_text())
    return RunResult(seconds, usage.ru_maxrss / 1024, manifest)


_PLAIN = r"""
import json, resource, sys, time, torch
from sam2.build_sam import build_sam2_video_predictor
size = int(sys.argv[2]); f = size // 16
torch.manual_seed(0)
p = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=[
    f"++model.image_size={size}",
    f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
    f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]",
    "++model.fill_hole_area=0"], apply_postprocessing=False)
t0 = time.perf_counter()
with torch.inference_mode():
    state = p.init_state(sys.argv[1])
    t1 = time.perf_counter()
    p.add_new_points_or_box(state, 0, 1, points=[[320, 180]], labels=[1])
    for _ in p.propagate_in_video(state):
        pass
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "track_s": t2 - t1,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def plain_sam2(clip: Path, size: int) -> dict:
    """Plain sam2 on a frame folder, the way its notebooks do it: init_state loads every frame,
    then one point prompt and propagate_in_video. Returns load_s, track_s and peak_mb."""
    import tempfile

    out = subprocess.run([sys.executable, "-c", _PLAIN, str(clip), str(size)], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode != 0:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])
