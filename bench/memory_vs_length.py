"""Peak memory of `reelmask run` on a short and a long stretch of the same real video.

Goal: the long run peaks at most 1.15x the short one at the same chunk size (memory does not grow
with video length). For contrast, --baseline also measures plain sam2 (`init_state` on the whole
folder, then `propagate_in_video`), whose memory grows with every frame.

    .venv/bin/python bench/memory_vs_length.py --short 100 --long 1000 --chunk-size 50

--video runs the same frames encoded into one H.264 mp4 (encoded here with PyAV, default x264
settings: groups of up to 250 frames with B-frames) and also prints how fast reelmask decodes it:
straight through, and backward (as a backward sweep reads, one chunk at a time).

    .venv/bin/python bench/memory_vs_length.py --video
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import clip_of, long_dog, plain_sam2, run_reelmask  # noqa: E402

GOAL = 1.15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=int, default=100)
    ap.add_argument("--long", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=50)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--weights", default="random", help='models.sam2_weights ("random" here: no download)')
    ap.add_argument("--baseline", action="store_true", help="also measure plain sam2 init_state (slow)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra reelmask config overrides")
    ap.add_argument("--video", action="store_true", help="run an H.264 mp4 of the frames instead of the folder")
    args = ap.parse_args()

    src = long_dog()
    sets = [f"models.sam2_weights={args.weights}", f"models.image_size={args.image_size}",
            f"chunking.chunk_size={args.chunk_size}", *args.set]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in (args.short, args.long):
            clip = clip_of(src, n, tmp / f"clip{n}", point=(320, 180))
            if args.video:
                clip = as_video(clip, n)
            r = run_reelmask(clip, tmp / f"out{n}", sets)
            plain = plain_sam2(clip, args.image_size)["peak_mb"] if args.baseline else None
            rows.append((n, r.peak_rss_mb, r.seconds, r.manifest["timings"]["sam2_seconds"], plain))

        decode = decode_speed(clip, args.chunk_size) if args.video else None
    what = "an H.264 mp4 of the real frames of" if args.video else "real frames of"
    print(f"reelmask run, track mode, sam2.1 tiny ({args.weights} weights), {args.image_size} px, "
          f"chunk_size {args.chunk_size}, {what} {src}")
    print(f"{'frames':>7} {'peak RSS MB':>12} {'wall s':>8} {'sam2 s':>8} {'plain sam2 peak MB':>19}")
    for n, rss, secs, sam2s, plain in rows:
        plain_s = f"{plain:19.0f}" if plain is not None else f"{'-':>19}"
        print(f"{n:>7} {rss:>12.0f} {secs:>8.1f} {sam2s:>8.1f} {plain_s}")
    ratio = rows[1][1] / rows[0][1]
    print(f"peak RSS ratio long/short: {ratio:.3f} (goal <= {GOAL})  {'OK' if ratio <= GOAL else 'OVER GOAL'}")
    if decode:
        print(f"decoding the {args.long}-frame mp4 ({decode['size']}): straight {decode['forward']:.0f} frames/s, "
              f"backward by chunks of {args.chunk_size} {decode['backward']:.0f} frames/s")
    if args.baseline:
        pr = rows[1][4] / rows[0][4]
        grow = (rows[1][4] - rows[0][4]) / (rows[1][0] - rows[0][0])
        print(f"plain sam2 ratio: {pr:.3f}, grows {grow:.2f} MB per frame at {args.image_size} px")


def as_video(clip: Path, n: int) -> Path:
    """The folder's frames as one H.264 mp4 in a folder of its own, with the same prompts.json."""
    import av
    import cv2

    folder = clip.with_name(clip.name + "-mp4")
    folder.mkdir()
    (folder / "prompts.json").write_text((clip / "prompts.json").read_text())
    frames = sorted(p for p in clip.iterdir() if p.suffix == ".jpg")[:n]
    with av.open(str(folder / "clip.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        first = cv2.imread(str(frames[0]))
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return folder


def decode_speed(folder: Path, chunk: int) -> dict:
    """Frames/s of reelmask's own video reader, straight through and backward chunk by chunk."""
    import time

    from core.frames import FrameFolder

    video = FrameFolder.scan(folder)
    n = len(video)
    t0 = time.perf_counter()
    for i in range(n):
        video.read_rgb(i)
    forward = n / (time.perf_counter() - t0)
    video.close()
    video = FrameFolder.scan(folder)
    t0 = time.perf_counter()
    for end in range(n, 0, -chunk):
        for i in range(end - 1, max(0, end - chunk) - 1, -1):
            video.read_rgb(i)
    backward = n / (time.perf_counter() - t0)
    video.close()
    return {"forward": forward, "backward": backward, "size": f"{video.width}x{video.height}"}


if __name__ == "__main__":
    main()
