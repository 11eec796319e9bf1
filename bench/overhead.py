"""What `reelmask run` costs beyond SAM2 itself.

Runs `reelmask run` (track mode, one point prompt) on N real frames as a user would, a child
process timed from start to exit, and compares that with
  - the seconds spent inside sam2 calls in the same run (from manifest.json), and
  - plain sam2 on the same frames: `init_state` + `propagate_in_video`, timed in-process
    (no interpreter start, no imports, no output files).
Goal: end-to-end overhead <= 10% at 256 px on CPU.

    .venv/bin/python bench/overhead.py --frames 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import clip_of, long_dog, plain_sam2, run_reelmask  # noqa: E402

GOAL = 0.10

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--preview", action="store_true", help="also write preview.mp4 (off: the masks only)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra reelmask config overrides")
    args = ap.parse_args()

    sets = ["models.sam2_weights=random", f"models.image_size={args.image_size}",
            f"chunking.chunk_size={args.chunk_size}", f"output.preview={'true' if args.preview else 'false'}", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        clip = clip_of(long_dog(), args.frames, Path(tmp) / "clip", point=(320, 180))
        run = run_reelmask(clip, Path(tmp) / "out", sets)
        plain = plain_sam2(clip, args.image_size)
        plain_load, plain_track = plain["load_s"], plain["track_s"]

    t = run.manifest["timings"]
    inside = t["sam2_seconds"]
    startup = run.seconds - t["total_seconds"]
    rows = [
        ("reelmask run, end to end (child process)", run.seconds),
        ("  interpreter start + imports + config", startup),
        ("  model build", t["model_load_seconds"]),
        ("  inside sam2 calls", inside),
        ("  waiting for frames", t["frame_wait_seconds"]),
        ("  everything else (handover, id maps, writing)", t["total_seconds"] - t["model_load_seconds"] - inside - t["frame_wait_seconds"]),
        ("plain sam2: init_state (loads all frames)", plain_load),
        ("plain sam2: prompt + propagate_in_video", plain_track),
    ]
    print(f"{args.frames} real frames, sam2.1 tiny random weights, {args.image_size} px, chunk_size {args.chunk_size}, "
          f"preview {'on' if args.preview else 'off'}")
    for name, secs in rows:
        print(f"{name:<50} {secs:>8.2f} s")
    over_inside = run.seconds / inside - 1
    over_plain = run.seconds / (plain_load + plain_track) - 1
    print(f"overhead of `run` over the time inside sam2 (same run): {over_inside:+.1%} (goal <= {GOAL:.0%}) "
          f"{'OK' if over_inside <= GOAL else 'OVER GOAL'}")
    print(f"`run` end to end vs plain sam2 in-process on the same frames: {over_plain:+.1%}")


if __name__ == "__main__":
    main()
