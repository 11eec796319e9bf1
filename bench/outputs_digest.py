"""Run every mode on the shared clips and print one digest per mode: a check that a change to the code
left every output byte the same.

    .venv/bin/python bench/outputs_digest.py --work /tmp/digest-a > a.txt
    (change the code)
    .venv/bin/python bench/outputs_digest.py --work /tmp/digest-b --models /tmp/digest-a/models > b.txt
    diff a.txt b.txt

Each job runs through `reelmask run` in a child process with random SAM2 weights at 256 px. The digest
covers every file the job wrote (masks, alpha mattes, foreground cut-outs, prompts_used.jsonl, the
self-trained detector's weights) byte for byte, and manifest.json with what differs between any two
runs left out (times, paths, versions, job id, the checksum of a self-trained detector file). The
trained models the unet and refiner modes need are trained once into WORK/models; pass --models to
use the same files for a second digest. The table goes to stdout, each job's time to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import DATA, ROOT  # noqa: E402

FAST = ["models.sam2_weights=random", "models.image_size=256", "output.preview=false"]
YOLO = DATA / "models" / "yolo11n-coco-dequant.pt"

# manifest keys whose values differ between two runs of the same job
VOLATILE = {"job_id", "input", "output", "timings", "versions", "started_at", "finished_at", "path",
            "checkpoint", "seconds",
            "job_state_peak_mb", "process_peak_mb"}   # memory read once a second: when depends on the clock


def reelmask(*args: str) -> None:
    code = "import sys; from core.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"reelmask {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def frames_of(src: Path, n: int, dest: Path, step: int = 1) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    frames = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".png"))[: n * step: step]
    for i, f in enumerate(frames):
        shutil.copyfile(f, dest / f"{i:05d}{f.suffix.lower()}")
    return dest


def masks_of(src: Path, n: int, dest: Path, step: int = 1, threshold: int = 127) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(src.iterdir())[: n * step: step]
    for i, f in enumerate(files):
        m = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(dest / f"{i:05d}.png"), (m > threshold).astype(np.uint8))
    return dest


def prompts(folder: Path, data: dict) -> Path:
    (folder / "prompts.json").write_text(json.dumps(data))
    return folder


def clean(value):
    if isinstance(value, dict):
        return {k: clean(v) for k, v in sorted(value.items()) if k not in VOLATILE and not k.endswith("seconds")}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def weights_digest(path: Path) -> str:
    import torch

    from core.models.safe_load import load_checkpoint

    ckpt = load_checkpoint(path)
    model = ckpt.get("ema") or ckpt["model"]
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


def digest(out: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    files = sorted(p for p in out.rglob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(out).as_posix()
        h.update(rel.encode())
        if rel == "manifest.json":
            manifest = json.loads(p.read_text())
            if "yolo_self_trained" in manifest.get("models", {}):
                manifest["weights"].pop("yolo", None)  # the checksum of detector.pt, whose bytes hold a date
            h.update(json.dumps(clean(manifest), sort_keys=True).encode())
        elif p.suffix == ".pt":  # an Ultralytics file records when it was written: digest its weights
            h.update(weights_digest(p).encode())
        else:
            h.update(p.read_bytes())
    return len(files), h.hexdigest()[:16]


def train_models(models: Path, scratch: Path) -> None:
    """A one-epoch U-Net and matting refiner: real checkpoints for the modes that need one."""
    models.mkdir(parents=True, exist_ok=True)
    seg = scratch / "seg-data"
    for name in ("dog", "blackswan"):
        frames_of(DATA / "vos" / name / "images", 6, seg / "train" / name / "images", step=5)
        masks_of(DATA / "vos" / name / "masks", 6, seg / "train" / name / "masks", step=5)
    reelmask("train", "unet", "--data", str(seg), "--out", str(scratch / "unet-run"), "--set", "train.epochs=1",
             "--set", "train.img_size=64", "--set", "train.workers=0")
    shutil.copyfile(scratch / "unet-run" / "best.pt", models / "unet.pt")
    mat = scratch / "mat-data" / "train" / "lemur"
    src = DATA / "matting" / "video" / "lemur_over_blackswan"
    frames_of(src / "fgr", 8, mat / "fgr")
    frames_of(src / "pha", 8, mat / "pha")
    frames_of(DATA / "vos" / "car-shadow" / "images", 3, scratch / "mat-data" / "backgrounds", step=10)
    reelmask("train", "matting", "--data", str(scratch / "mat-data"), "--out", str(scratch / "mat-run"),
             "--set", "train.epochs=1", "--set", "train.img_size=64", "--set", "train.workers=0",
             "--set", "train.frame_every=1", *[a for s in FAST for a in ("--set", s)])
    shutil.copyfile(scratch / "mat-run" / "best.pt", models / "refiner.pt")


def jobs(inputs: Path, models: Path) -> list[tuple[str, Path, list[str]]]:
    vos = DATA / "vos"
    track = prompts(frames_of(vos / "dog" / "images", 14, inputs / "track"),
                    {"objects": [{"id": 1, "frame": 0, "points": [[420, 260]], "labels": [1]},
                                 {"id": 2, "frame": 3, "box": [100, 100, 300, 300]}]})
    detect = prompts(frames_of(vos / "car-shadow" / "images", 14, inputs / "detect"),
                     {"detect": {"classes": ["car"], "min_confidence": 0.3}})
    selftrain = prompts(frames_of(vos / "dog" / "images", 10, inputs / "selftrain"),
                        {"objects": [{"id": 1, "frame": 0, "points": [[420, 260]], "labels": [1]}],
                         "detect": {"self_train": True}})
    refine = frames_of(vos / "blackswan" / "images", 10, inputs / "refine")
    masks_of(vos / "blackswan" / "masks", 10, refine / "masks")
    promptless = frames_of(vos / "bmx-trees" / "images", 8, inputs / "promptless")
    unet = frames_of(vos / "dog" / "images", 6, inputs / "unet")
    src = DATA / "matting" / "video" / "lemur_over_blackswan"
    matting = frames_of(src / "images", 6, inputs / "matting")
    masks_of(src / "pha", 6, matting / "masks")
    matting_sam2 = prompts(frames_of(src / "images", 6, inputs / "matting-sam2"),
                           {"objects": [{"id": 1, "frame": 0, "box": [300, 100, 560, 440]}]})
    chunks = ["chunking.chunk_size=6", "chunking.overlap=2"]
    yolo = [f"models.yolo={YOLO}"]
    return [
        ("track", track, [*chunks, "--mode", "track"]),
        ("detect", detect, [*chunks, *yolo, "--mode", "detect"]),
        ("detect-parallel", detect, [*chunks, *yolo, "detect.parallel_chunks=2", "--mode", "detect"]),
        ("detect-selftrain", selftrain, [*chunks, *yolo, "detect.train_frames=6", "detect.train_epochs=1",
                                         "detect.train_imgsz=64", "detect.train_batch=2", "--mode", "detect"]),
        ("refine", refine, [*chunks, "--mode", "refine"]),
        ("promptless", promptless, ["promptless.points_per_side=4", "promptless.keyframe_every=4", "--mode", "promptless"]),
        ("unet", unet, [f"models.unet={models / 'unet.pt'}", "--mode", "unet"]),
        ("matting-masks", matting, ["matting.foreground=true", "--mode", "matting"]),
        ("matting-sam2", matting_sam2, ["--mode", "matting"]),
        ("matting-refiner", matting, [f"models.matting={models / 'refiner.pt'}", "--mode", "matting"]),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    ap.add_argument("--models", type=Path, help="trained checkpoints from an earlier digest's WORK/models")
    ap.add_argument("--only", nargs="*", help="modes to run (default all)")
    args = ap.parse_args()
    if not (DATA / "vos").is_dir():
        sys.exit(f"needs the shared clips at {DATA} (set REELMASK_TEST_DATA)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    models = args.models or args.work / "models"
    if args.models is None:
        train_models(models, args.work / "scratch")
    print(f"{'mode':<18}{'files':>6}  digest")
    for name, folder, extra in jobs(args.work / "inputs", models):
        if args.only and name not in args.only:
            continue
        sets, flags = [], []
        it = iter(extra)
        for item in it:
            if item.startswith("--"):
                flags += [item, next(it)]
            else:
                sets += ["--set", item]
        out = args.work / "out" / name
        start = time.perf_counter()
        reelmask("run", str(folder), "--out", str(out), "--quiet", *flags,
                 *[a for s in FAST for a in ("--set", s)], *sets)
        n, d = digest(out)
        print(f"{name:<18}{n:>6}  {d}", flush=True)
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
