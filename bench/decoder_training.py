"""sam2-decoder training: what caching the frozen encoder's embeddings saves per epoch.

Trains the SAM2 decoder (the real trainer, SAM2 with random weights) on the first N frames of the
DAVIS clips in ../shared/data/vos for a few epochs and prints, per image size: the time to encode
each frame once (the cache fill), the time of an epoch on cached embeddings, what an epoch would
cost if every frame were encoded again (encode time of the frames it uses + the decoder epoch),
their ratio, the cache size and the peak RSS of this process.

    .venv/bin/python bench/decoder_training.py --frames 20 --epochs 3 --image-size 256
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DATA  # noqa: E402


def dataset(frames: int, dest: Path) -> Path:
    vos = DATA / "vos"
    if not vos.is_dir():
        sys.exit(f"needs the DAVIS clips at {vos} (set REELMASK_TEST_DATA)")
    for clip in sorted(p for p in vos.iterdir() if p.is_dir()):
        for sub in ("images", "masks"):
            (dest / clip.name / sub).mkdir(parents=True)
            for f in sorted((clip / sub).iterdir())[:frames]:
                (dest / clip.name / sub / f.name).symlink_to(f)
    return dest


def measure(data: Path, out: Path, size: int, epochs: int, sets: list[str]) -> dict:
    from core.config import load_config
    from core.training.events import EpochEnd, TrainPrepare
    from core.training.sam2_decoder import train

    cfg = load_config(None, ["models.sam2_weights=random", f"models.image_size={size}", f"train.epochs={epochs}",
                             "train.patience=0", *sets], use_default_path=False)
    encode_began = encoded = None
    epochs_seen = []
    for event in train(data, out, cfg):
        if isinstance(event, TrainPrepare):
            if event.done == 0:
                encode_began = time.perf_counter()
            if event.done == event.total:
                encoded = time.perf_counter() - encode_began, event.total
        elif isinstance(event, EpochEnd) and event.epoch > 0:
            epochs_seen.append(event.metrics)
    encode_seconds, frames = encoded
    epoch = sum(m["seconds"] for m in epochs_seen) / len(epochs_seen)
    per_frame = encode_seconds / frames
    uncached = epoch + per_frame * frames        # every frame of train and validation encoded again
    cache_mb = sum(p.stat().st_size for p in (out / "cache").glob("*.npz")) / 2**20
    return {"size": size, "frames": frames, "encode_per_frame": per_frame, "epoch": epoch, "uncached": uncached,
            "ratio": uncached / epoch, "cache_mb": cache_mb, "loss": (epochs_seen[0]["train_loss"],
                                                                     epochs_seen[-1]["train_loss"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20, help="frames per DAVIS clip (4 clips)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, nargs="+", default=[256])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra reelmask config overrides")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(args.frames, Path(tmp) / "data")
        for size in args.image_size:
            rows.append(measure(data, Path(tmp) / f"run{size}", size, args.epochs, args.set))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nsam2-decoder training, random SAM2 weights, {args.frames} frames x 4 clips, {args.epochs} epochs")
    print(f"{'size':>5} {'frames':>6} {'encode s/frame':>15} {'epoch (cached)':>15} {'epoch (re-encode)':>18} "
          f"{'ratio':>6} {'cache MB':>9} {'train_loss first->last':>24}")
    for r in rows:
        print(f"{r['size']:>5} {r['frames']:>6} {r['encode_per_frame']:>15.3f} {r['epoch']:>14.1f}s "
              f"{r['uncached']:>17.1f}s {r['ratio']:>5.1f}x {r['cache_mb']:>9.1f} "
              f"{r['loss'][0]:>11.4f} -> {r['loss'][1]:.4f}")
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
