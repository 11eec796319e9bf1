"""The same jobs on the local executor and on Ray with 1 and 2 workers.

Drops N copies of a short real clip (track mode, one point, random SAM2 weights at 256 px) into
the inbox of a real `reelmask daemon` three times: `daemon.executor = "local"` with one CPU worker,
then `"ray"` (a private Ray instance) with `ray.workers` = 1 and 2 (CPU actors, one CPU each).
Throughput counts from the first job's start to the last job's end, so the start of the daemon
(and of Ray, shown apart as the time from spawning the daemon to its first claimed job) is left out. Every run uses one torch thread per worker
(Ray gives each 1-CPU actor one thread; the local run is given OMP_NUM_THREADS=1 to match), so
the local/Ray-1 gap is Ray's cost, not a thread count.

Prints jobs/s, Ray's per-job overhead in ms against local, and the scaling efficiency of 2
workers over 1 (1.0 = twice the jobs per second). On this 2-core machine two workers share the
two cores with the daemon itself, so efficiency below 1 is expected here; a cluster with one GPU
per worker is where the number means most.

    .venv/bin/python bench/scale_out.py --jobs 6 --frames 24
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import long_dog  # noqa: E402

CONFIG = """
[watch]
settle_seconds = 0.5
[models]
sam2_weights = "random"
image_size = 256
[output]
preview = false
[chunking]
chunk_size = 12
[daemon]
tick_seconds = 0.05
progress_seconds = 0.5
devices = ["cpu"]
executor = "{executor}"
[ray]
address = ""
workers = {workers}
num_gpus = 0
num_cpus = 1
[limits]
min_free_mb = 0
"""


def reelmask(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "reelmask"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, **kw)


def run(executor: str, workers: int, jobs: int, frames: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "config.toml").write_text(CONFIG.format(executor=executor, workers=workers))
        src = sorted(long_dog().glob("*.jpg"))[:frames]
        (root / "inbox").mkdir()
        for i in range(jobs):
            clip = root / "staging" / f"clip_{i:02d}"
            clip.mkdir(parents=True)
            for f in src:
                shutil.copyfile(f, clip / f.name)
            (clip / "prompts.json").write_text(json.dumps({"objects": [{"id": 1, "frame": 0, "points": [[320, 180]]}]}))
            (clip / ".ready").write_text("")
        env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        spawned = datetime.now(timezone.utc)
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "reelmask"), "daemon", "--config", "config.toml"],
                                  cwd=root, stderr=open(root / "daemon.log", "w"), env=env)
        for clip in sorted((root / "staging").iterdir()):
            os.rename(clip, root / "inbox" / clip.name)
        state: list[dict] = []
        while daemon.poll() is None:
            out = reelmask("status", "--json", "--config", "config.toml", cwd=root)
            state = json.loads(out.stdout)["jobs"] if out.returncode == 0 else []
            if len(state) == jobs and all(j["state"] in ("done", "failed", "cancelled") for j in state):
                break
            time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        if daemon.returncode != 0 or any(j["state"] != "done" for j in state):
            sys.exit(f"{executor} x{workers}: the daemon exited {daemon.returncode} or a job did not finish; "
                     f"see {root / 'daemon.log'}:\n{(root / 'daemon.log').read_text()[-3000:]}")
        first = min(datetime.fromisoformat(j["started_at"]) for j in state)
        last = max(datetime.fromisoformat(j["finished_at"]) for j in state)
        wall = (last - first).total_seconds()
        return {"wall": wall, "start": (first - spawned).total_seconds(), "workers": len({j["worker"] for j in state})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--frames", type=int, default=24, help="frames per job (real frames of long/dog)")
    args = ap.parse_args()

    rows = [("local, 1 worker", run("local", 0, args.jobs, args.frames)),
            ("ray, 1 worker", run("ray", 1, args.jobs, args.frames)),
            ("ray, 2 workers", run("ray", 2, args.jobs, args.frames))]
    print(f"{args.jobs} jobs x {args.frames} real frames, track mode, sam2.1 tiny random weights at 256 px, "
          f"CPU workers with one thread each, {os.cpu_count()} cores")
    print(f"{'executor':<18} {'jobs/s':>8} {'first start -> last end':>24} {'daemon start -> first job':>26} "
          f"{'used workers':>13}")
    for name, r in rows:
        print(f"{name:<18} {args.jobs / r['wall']:8.3f} {r['wall']:22.1f} s {r['start']:24.1f} s {r['workers']:13d}")
    local, ray1, ray2 = (r["wall"] for _, r in rows)
    print(f"Ray's per-job overhead against local (1 worker each): {(ray1 - local) / args.jobs * 1000:+.0f} ms per job "
          f"({ray1 / local:.3f}x the local time)")
    print(f"scaling efficiency, 2 Ray workers over 1: {(ray1 / ray2) / 2:.2f} (speed-up {ray1 / ray2:.2f}x)")


if __name__ == "__main__":
    main()
