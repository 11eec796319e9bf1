"""Many small folders dropped into a running daemon at once.

Drops N tiny frame folders (each with .ready) into the inbox of a real `reelmask daemon`
(random SAM2 weights, 256 px) and waits until every job is finished. Prints jobs per second, the
per-job cost beyond the time spent inside SAM2 (watching, queueing, claiming, moving folders,
validation, writing outputs, SQLite), and checks that every folder was processed exactly once.

    .venv/bin/python bench/queue_throughput.py --folders 500
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT  # noqa: E402
from core.store import Store  # noqa: E402

CONFIG = """
[watch]
settle_seconds = 1.0
[models]
sam2_weights = "random"
image_size = 256
[output]
preview = false
[daemon]
tick_seconds = 0.05
progress_seconds = 1.0
"""


def make_folders(root: Path, n: int, frames: int) -> None:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"clip_{i:04d}"
        d.mkdir(parents=True)
        for f in range(frames):
            img = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{f:05d}.jpg"), img)
        (d / "prompts.json").write_text(json.dumps({"objects": [{"id": 1, "frame": 0, "points": [[32, 24]]}]}))
        (d / ".ready").write_text("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", type=int, default=500)
    ap.add_argument("--frames", type=int, default=2, help="frames per folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.toml").write_text(CONFIG)
        make_folders(tmp / "prepared", args.folders, args.frames)
        (tmp / "inbox").mkdir()
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "reelmask"), "daemon", "--config", str(tmp / "config.toml")],
                                  cwd=ROOT, stderr=open(tmp / "daemon.log", "w"), env={**os.environ, "YOLO_OFFLINE": "1"})
        store = Store(tmp / "reelmask.db")
        time.sleep(3)  # let it start
        t0 = time.perf_counter()
        for d in sorted((tmp / "prepared").iterdir()):
            os.rename(d, tmp / "inbox" / d.name)
        while True:
            jobs = store.jobs()
            finished = [j for j in jobs if j.state in ("done", "failed", "cancelled")]
            if len(finished) >= args.folders or daemon.poll() is not None:
                break
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=30)

        jobs = store.jobs()
        done = [j for j in jobs if j.state == "done"]
        manifests = [json.loads(p.read_text()) for p in (tmp / "outbox").glob("*/manifest.json")]
        sam2 = sum(m["timings"]["sam2_seconds"] for m in manifests)
        inside_job = sum(m["timings"]["total_seconds"] for m in manifests)
        origins = [j.origin_path for j in jobs]
        once = (len(jobs) == args.folders and len(set(origins)) == args.folders and len(done) == args.folders
                and len(manifests) == args.folders
                and sorted(p.name for p in (tmp / "done").iterdir()) == sorted(Path(o).name for o in origins)
                and not list((tmp / "inbox").iterdir()))

    n = args.folders
    print(f"{n} folders x {args.frames} frames (64x48), sam2.1 tiny random weights at 256 px, one CPU worker")
    print(f"{'wall time, drop to last job finished':<46} {wall:9.1f} s")
    print(f"{'jobs per second':<46} {n / wall:9.2f}")
    print(f"{'time inside sam2, all jobs':<46} {sam2:9.1f} s")
    print(f"{'time inside run_job, all jobs':<46} {inside_job:9.1f} s")
    print(f"{'per-job overhead beyond sam2 (wall)':<46} {(wall - sam2) / n * 1000:9.0f} ms")
    print(f"{'  of which inside run_job (outputs, checkpoints)':<46} {(inside_job - sam2) / n * 1000:9.0f} ms")
    print(f"{'  of which daemon (watch, queue, claim, move)':<46} {(wall - inside_job) / n * 1000:9.0f} ms")
    print(f"each folder processed exactly once: {'yes' if once else 'NO'}  (daemon exit code {rc})")
    print(f"ratio sam2 time / wall time: {sam2 / wall:.2f}")


if __name__ == "__main__":
    main()
