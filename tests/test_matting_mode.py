"""matting mode end to end: given masks (no SAM2), SAM2 from prompts, detect "person", resume, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.errors import Cancelled, FrameFolderError
from core.matting.metrics import sad
from core.pipeline import prepare_job, run_job
from tests.conftest import FAST, data_path, make_clip, point_prompt


def _cfg(*sets: str):
    return load_config(None, [*FAST, *sets], use_default_path=False)


def soft_clip(root: Path, n: int = 4, size=(240, 180)) -> tuple[Path, list[np.ndarray]]:
    """Frames of a textured foreground over a different background with an exact alpha: a disc with a
    soft edge, a semi-transparent halo and thin strands leaving it; masks/ holds the coarse masks
    (alpha > 0.5), as a segmentation model would give."""
    w, h = size
    rng = np.random.default_rng(3)
    smooth = lambda a: cv2.GaussianBlur(a.astype(np.float32), (0, 0), 3)  # noqa: E731 - textures, not pixel noise
    bg = smooth(rng.random((h, w, 3)) * 120) + np.array([0, 60, 120], np.float32)
    fg = smooth(rng.random((h, w, 3)) * 90) + np.array([190, 140, 30], np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    (root / "masks").mkdir(parents=True)
    alphas = []
    for i in range(n):
        cx, cy = 90 + 8 * i, 90
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        alpha = np.clip((52 - d) / 8.0, 0, 1)                                  # soft edge
        alpha = np.maximum(alpha, np.where((d >= 44) & (d < 52), 0.35, 0.0))   # semi-transparent halo
        for k in range(3):                                                     # strands leaving the disc
            x = cx + 50 + 4 * k
            alpha[cy - 30:cy + 30, x] = np.maximum(alpha[cy - 30:cy + 30, x], 0.8)
        rgb = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
        cv2.imwrite(str(root / f"{i:05d}.png"), cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i:05d}.png"), ((alpha > 0.5) * 255).astype(np.uint8))
        alphas.append(alpha)
    return root, alphas


def _alpha(out: Path, stem: str) -> np.ndarray:
    return cv2.imread(str(out / "alpha" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


def test_matting_given_masks_beats_the_mask_as_alpha_without_sam2(tmp_path: Path):
    clip, gts = soft_clip(tmp_path / "clip")
    job = prepare_job(clip, _cfg("output.preview=true", "matting.foreground=true"), mode="matting")
    out = tmp_path / "out"
    manifest = list(run_job(job, out))[-1].manifest
    assert manifest["mode"] == "matting" and manifest["segmentation"] == "masks/"
    assert "sam2" not in manifest["models"] and manifest["models"]["matting"]["method"] == "classical"
    counts = manifest["models"]["matting"]["masks"]             # every frame's mask judged once
    assert counts["frames"] == 4 and counts["on_edge"] + counts["recentred"] <= 4
    assert sorted(p.name for p in (out / "alpha").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert len(list((out / "masks").iterdir())) == 4 and (out / "preview.mp4").stat().st_size > 0
    for i, gt in enumerate(gts):
        coarse = (gt > 0.5).astype(np.float32)
        alpha = _alpha(out, f"{i:05d}")
        assert alpha.shape == gt.shape
        assert sad(alpha, gt) <= 0.5 * sad(coarse, gt), i
        rgba = np.asarray(Image.open(out / "foreground" / f"{i:05d}.png"))
        assert rgba.shape == (*gt.shape, 4) and np.array_equal(rgba[..., 3], (alpha * 255).round().astype(np.uint8))


def test_matting_on_the_real_composite_video(tmp_path: Path):
    """lemur_over_blackswan: exact alpha; coarse masks = alpha > 0.5, dilated by 3 px."""
    src = data_path("matting", "video", "lemur_over_blackswan")
    clip = tmp_path / "lemur"
    (clip / "masks").mkdir(parents=True)
    frames = sorted((src / "images").iterdir())[:6]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for f in frames:
        os.symlink(f, clip / f.name)
        gt = cv2.imread(str(src / "pha" / f"{f.stem}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(clip / "masks" / f"{f.stem}.png"), cv2.dilate(((gt > 127) * 255).astype(np.uint8), kernel))
    out = tmp_path / "out"
    list(run_job(prepare_job(clip, _cfg(), mode="matting"), out))
    ratios = []
    for f in frames:
        gt = cv2.imread(str(src / "pha" / f"{f.stem}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        coarse = cv2.imread(str(clip / "masks" / f"{f.stem}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        ratios.append(sad(_alpha(out, f.stem), gt) / sad(coarse, gt))
    # 0.5 held for the band trimap this was tuned on; the default chosen by the matting suite (colour
    # trimap) trades a little here (0.42-0.51 measured) for much better hair (bench/matting_quality.py --suite)
    assert max(ratios) <= 0.6, ratios


def test_matting_with_sam2_from_prompts(tmp_path: Path, model_pool):
    clip = make_clip(tmp_path / "clip", n=5, prompts={"objects": [point_prompt()], "mode": "matting"})
    out = tmp_path / "out"
    job = prepare_job(clip, _cfg("chunking.chunk_size=3"))
    assert job.choice.mode.value == "matting"
    manifest = list(run_job(job, out, models=model_pool))[-1].manifest
    assert manifest["segmentation"] == "sam2" and "sam2" in manifest["weights"]
    assert len(list((out / "alpha").iterdir())) == 5 and len(list((out / "masks").iterdir())) == 5
    used = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
    assert any(u["source"] == "user" for u in used)


@pytest.mark.slow
def test_matting_without_prompts_detects_people(tmp_path: Path, model_pool):
    images = data_path("vos", "bmx-trees", "images")
    yolo = data_path("models", "yolo11n-coco-dequant.pt")
    clip = tmp_path / "bmx"
    clip.mkdir()
    for f in sorted(images.iterdir())[:6]:
        os.symlink(f, clip / f.name)
    out = tmp_path / "out"
    job = prepare_job(clip, _cfg(f"models.yolo={yolo}", "chunking.chunk_size=3", "matting.band=0.01"), mode="matting")
    manifest = list(run_job(job, out, models=model_pool))[-1].manifest
    assert manifest["models"]["yolo"]["classes"] == ["person"]
    used = [json.loads(x) for x in (out / "prompts_used.jsonl").read_text().splitlines()]
    assert any(u["source"] == "detector" for u in used)
    assert len(list((out / "alpha").iterdir())) == 6


def test_matting_resumes_to_the_same_mattes(tmp_path: Path):
    clip, _ = soft_clip(tmp_path / "clip", n=6)
    cfg = _cfg("chunking.chunk_size=2")
    whole = tmp_path / "whole"
    list(run_job(prepare_job(clip, cfg, mode="matting"), whole))
    out, seen = tmp_path / "resumed", []
    job = prepare_job(clip, cfg, mode="matting", job_id="m1")
    with pytest.raises(Cancelled):
        for event in run_job(job, out, keep_partial=True, should_stop=lambda: len(seen) >= 3):
            if type(event).__name__ == "FrameResult":
                seen.append(event.frame)
    manifest = list(run_job(job, out, resume=True))[-1].manifest
    assert manifest["resumed_from_frame"] in (1, 2, 3)
    for f in sorted((whole / "alpha").iterdir()):
        assert np.array_equal(cv2.imread(str(f)), cv2.imread(str(out / "alpha" / f.name))), f.name


def test_matting_needs_a_mask_for_every_frame(tmp_path: Path):
    clip, _ = soft_clip(tmp_path / "clip", n=3)
    (clip / "masks" / "00001.png").unlink()
    with pytest.raises(FrameFolderError, match=r"1 of 3 have none .*first: 00001.png"):
        prepare_job(clip, _cfg(), mode="matting")
