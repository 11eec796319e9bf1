"""End-to-end throughput of `reelmask run` against raw SAM2 on the same frames and device.

Raw SAM2 is run the official way: build_sam2_video_predictor, init_state on a JPEG folder (it loads
every frame), one point per object on frame 0, propagate_in_video, bfloat16 autocast on CUDA, the
masks thresholded on the device and nothing written. reelmask runs a track job over the same
folder end to end (frame decode, SAM2, mask PNGs, prompts_used, the manifest), with preview.mp4
off and on. Both use the same SAM2 variant and weights (random weights by default: no download;
timing does not depend on what the weights learned), the same image size and device, with one,
four and sixteen objects. Model build and any compile warm-up happen before the clock starts.

Prints frames/s for each, the ratio reelmask / raw, what each extra object costs relative to the
first (per frame), peak device memory on CUDA, and ends with `ratio R`: reelmask / raw for one
object with the preview off (goal: at least 0.9).

    .venv/bin/python bench/gpu_throughput.py                     # CPU: 256 px, 40 frames of long/dog
    .venv/bin/python bench/gpu_throughput.py --frames 300 --set models.compile=vos   # on a GPU: 1024 px
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")   # sam2's frame-loading bar
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import long_dog  # noqa: E402

GOAL = 0.9


def object_points(n: int, width: int, height: int) -> list[tuple[float, float]]:
    """n prompt points spread on a grid over the frame (one per object)."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    return [((c + 0.5) * width / cols, (r + 0.5) * height / rows) for r in range(rows) for c in range(cols)][:n]


def frames_folder(src: Path, n: int, dest: Path) -> Path:
    """A JPEG folder with the first n frames of src (repeated from the start when src is shorter)."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.symlink(files[i % len(files)].resolve(), dest / f"{i:05d}.jpg")
    return dest


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def raw_sam2(tracker, folder: Path, points: list[tuple[float, float]]) -> tuple[float, float | None]:
    """Seconds for init_state + prompts + propagate_in_video with the tracker's own predictor (so the
    same weights and compiled parts), the official way; peak device MB."""
    import torch

    predictor, device = tracker.predictor, tracker.device
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if tracker.dtype == "bfloat16" else None
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        if amp is not None:
            amp.__enter__()
        try:
            state = predictor.init_state(video_path=str(folder))
            for k, (x, y) in enumerate(points, start=1):
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=k, points=np.array([[x, y]], np.float32),
                                                labels=np.array([1], np.int32))
            for _, _, logits in predictor.propagate_in_video(state):
                _ = logits > 0.0          # the masks, on the device; nothing copied or written
            sync(device)
        finally:
            if amp is not None:
                amp.__exit__(None, None, None)
    seconds = time.perf_counter() - start
    predictor.reset_state(state)
    del state
    return seconds, peak_mb(device)


def reelmask_run(pool, cfg, folder: Path, points, out: Path) -> tuple[float, float | None, dict]:
    from core.pipeline import prepare_job, run_job

    (folder / "prompts.json").write_text(json.dumps({"objects": [
        {"id": k, "frame": 0, "points": [[x, y]], "labels": [1]} for k, (x, y) in enumerate(points, start=1)]}))
    tracker = pool.sam2(cfg)
    reset_peak(tracker.device)
    sync(tracker.device)
    start = time.perf_counter()
    manifest = list(run_job(prepare_job(folder, cfg, mode="track"), out, models=pool))[-1].manifest
    sync(tracker.device)
    seconds = time.perf_counter() - start
    (folder / "prompts.json").unlink()
    return seconds, peak_mb(tracker.device), manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40, help="frames of long/dog (default 40)")
    ap.add_argument("--objects", default="1,4,16", help="object counts (default 1,4,16)")
    ap.add_argument("--image-size", type=int, default=0, help="models.image_size (default 1024 on CUDA, 256 on a CPU)")
    ap.add_argument("--weights", default="random", help='models.sam2_weights ("random": no download)')
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra reelmask config overrides")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the fastest counts")
    args = ap.parse_args()

    import torch

    from core.config import load_config
    from core.models.devices import pick_device
    from core.pipeline import ModelPool

    device = pick_device("auto")
    size = args.image_size or (1024 if device.type == "cuda" else 256)
    sets = [f"models.sam2_weights={args.weights}", f"models.image_size={size}", *args.set]
    cfg = load_config(None, [*sets, "output.preview=false"], use_default_path=False)
    with_preview = load_config(None, [*sets, "output.preview=true"], use_default_path=False)
    pool = ModelPool()
    began = time.perf_counter()
    tracker = pool.sam2(cfg)
    build = time.perf_counter() - began
    began = time.perf_counter()
    cost = tracker.memory_cost()      # what a job's memory check measures once per worker (CUDA only)
    measured = time.perf_counter() - began
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    counts = [int(c) for c in args.objects.split(",") if c]
    f = args.frames
    compiled = tracker.compiled
    print(f"{name}, {tracker.weights.variant.name} ({args.weights} weights), {size} px, dtype {tracker.dtype}, "
          f"compile {compiled.get('mode')}{' (asked vos: ' + compiled['reason'] + ')' if compiled.get('asked') else ''}; "
          f"{f} frames of long/dog (640x360); model build {build:.1f} s"
          f"{', compile warm-up ' + str(compiled['warmup_seconds']) + ' s' if 'warmup_seconds' in compiled else ''}"
          " (not in any frames/s)", flush=True)
    if cost is not None:
        print(f"memory cost at {size} px, measured in {measured:.1f} s (not in any frames/s): {cost.fixed_mb:.0f} MiB "
              f"fixed, {cost.per_object_mb:.1f} per object, {cost.per_frame_mb:.2f} per frame, "
              f"{cost.per_object_frame_mb:.2f} per object and frame of a chunk", flush=True)
    print(f"{'objects':>7} {'raw fps':>8} {'reelmask fps':>13} {'ratio':>6} {'+preview fps':>13} {'ratio':>6} "
          f"{'raw +obj':>9} {'reelmask +obj':>14} {'peak MB raw':>12} {'peak MB reelmask':>17}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = frames_folder(long_dog(), args.frames, Path(tmp) / "clip")
        h, w = 360, 640
        for n in counts:
            points = object_points(n, w, h)
            raw = min((raw_sam2(tracker, folder, points) for _ in range(args.repeat)), key=lambda r: r[0])
            off = min((reelmask_run(pool, cfg, folder, points, Path(tmp) / f"off{n}-{k}")
                       for k in range(args.repeat)), key=lambda r: r[0])
            on = min((reelmask_run(pool, with_preview, folder, points, Path(tmp) / f"on{n}-{k}")
                      for k in range(args.repeat)), key=lambda r: r[0])
            rows.append((n, raw, off, on))
            first = rows[0]
            extra_raw = extra_rm = "-"
            if n != first[0]:
                # per extra object: the time it adds per frame, relative to the first object's time per frame
                extra_raw = f"{((raw[0] - first[1][0]) / (n - first[0])) / first[1][0]:.2f}x"
                extra_rm = f"{((off[0] - first[2][0]) / (n - first[0])) / first[2][0]:.2f}x"
            mb = lambda v: f"{v:.0f}" if v is not None else "n/a"   # noqa: E731
            print(f"{n:7d} {f / raw[0]:8.2f} {f / off[0]:13.2f} {raw[0] / off[0]:6.2f} {f / on[0]:13.2f} "
                  f"{raw[0] / on[0]:6.2f} {extra_raw:>9} {extra_rm:>14} {mb(raw[1]):>12} {mb(off[1]):>17}", flush=True)
    one = next(r for r in rows if r[0] == 1) if any(r[0] == 1 for r in rows) else rows[0]
    ratio = one[1][0] / one[2][0]
    print(f"goal: reelmask / raw for one object, preview off, at least {GOAL}")
    print(f"ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
