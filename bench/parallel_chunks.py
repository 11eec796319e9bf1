"""detect mode: chunks one after another vs chunks with their own detections run independently.

Runs `reelmask run --mode detect` (real YOLO11n from ../shared/data, SAM2 with random weights) on
the first N frames of the long dog clip, once per `detect.parallel_chunks` value, and prints the
wall time, the time inside sam2 calls, how many chunks needed a continuation pass, and the speed-up
against 1. The gain needs spare compute: a GPU that one SAM2 state does not fill, or free CPU cores.
On a 2-core CPU the solo passes only compete for the same cores.

    .venv/bin/python bench/parallel_chunks.py --frames 120 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DATA, clip_of, long_dog, run_reelmask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--chunk-size", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra reelmask config overrides")
    args = ap.parse_args()
    yolo = DATA / "models" / "yolo11n-coco-dequant.pt"
    if not yolo.is_file():
        sys.exit(f"needs the YOLO weights at {yolo} (set REELMASK_TEST_DATA)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = clip_of(long_dog(), args.frames, Path(tmp) / "clip")
        (clip / "prompts.json").write_text(json.dumps({"detect": {"classes": ["dog"]}}))
        for n in args.workers:
            out = Path(tmp) / f"out-{n}"
            sets = ["models.sam2_weights=random", f"models.image_size={args.image_size}", f"models.yolo={yolo}",
                    f"chunking.chunk_size={args.chunk_size}", "output.preview=false", f"detect.parallel_chunks={n}",
                    *args.set]
            run = run_reelmask(clip, out, sets, mode="detect")
            used = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
            carried = len({u["chunk"] for u in used if u["source"] == "handover"})
            rows.append((n, run.seconds, run.manifest["timings"]["sam2_seconds"], carried, run.peak_rss_mb))

    print(f"{args.frames} frames of long/dog, detect 'dog', chunk_size {args.chunk_size}, {args.image_size} px, "
          "sam2.1 tiny random weights")
    print(f"{'parallel_chunks':>15} {'wall s':>8} {'in sam2 s':>10} {'carried chunks':>15} {'peak MB':>8} {'speed-up':>9}")
    base = rows[0][1]
    for n, wall, sam2_s, carried, rss in rows:
        print(f"{n:>15} {wall:>8.1f} {sam2_s:>10.1f} {carried:>15} {rss:>8.0f} {base / wall:>8.2f}x")


if __name__ == "__main__":
    main()
