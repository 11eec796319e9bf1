"""`reelmask eval`: DAVIS J and F on hand-made masks, a cross-check against an independent
transcription of the DAVIS 2017 definitions on real masks, matte scores, folder pairing, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import core.evaluate.cli  # importing registers `reelmask eval`
from core.cli import main
from core.evaluate.masks import boundary_measure, region_similarity, statistics, tolerance_radius
from core.evaluate.report import evaluate
from core.matting import metrics
from core.outputs.masks import write_palette_png
from tests.conftest import data_path


def square(shape=(100, 100), top=40, left=40, side=20) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top:top + side, left:left + side] = True
    return m


# ------------------------------------------------------------------------- an independent DAVIS transcription

def ref_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """db_eval_iou, written out: |A and B| / |A or B|, and 1 when nothing is in either."""
    inter = np.logical_and(gt, pred).sum()
    union = np.logical_or(gt, pred).sum()
    return 1.0 if union == 0 else float(inter) / float(union)


def ref_bmap(seg: np.ndarray) -> np.ndarray:
    """_seg2bmap as a loop over the three neighbour offsets, each compared only where it exists."""
    seg = seg.astype(bool)
    h, w = seg.shape
    b = np.zeros((h, w), bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        b[:h - dy, :w - dx] |= seg[:h - dy, :w - dx] != seg[dy:, dx:]
    return b


def ref_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """db_eval_boundary with the disk dilation replaced by its equivalent: a pixel is within the
    dilated boundary iff its exact Euclidean distance to the nearest boundary pixel is <= radius."""
    h, w = gt.shape
    radius = math.ceil(bound_th * math.sqrt(h * h + w * w))
    fg, gb = ref_bmap(pred), ref_bmap(gt)

    def near(b: np.ndarray) -> np.ndarray:
        if not b.any():
            return np.zeros_like(b)
        dist = cv2.distanceTransform((~b).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return dist <= radius + 1e-4

    n_fg, n_gt = fg.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        p, r = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, r = 1.0, 1.0
    else:
        p = (fg & near(gb)).sum() / n_fg
        r = (gb & near(fg)).sum() / n_gt
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def ref_stats(values: list[float]) -> tuple[float, float, float]:
    """db_statistics: mean, fraction > 0.5, first-quarter mean minus last-quarter mean."""
    v = np.array(values, float)
    edges = [int(round(x + 1e-10)) - 1 for x in np.linspace(1, len(v), 5)]
    return v.mean(), (v > 0.5).mean(), v[edges[0]:edges[1] + 1].mean() - v[edges[3]:edges[4] + 1].mean()


# ------------------------------------------------------------------------- J and F by hand

def test_identical_disjoint_and_empty_masks():
    a = square()
    assert region_similarity(a, a) == 1.0 and boundary_measure(a, a) == 1.0
    b = square(top=0, left=0, side=10)
    assert region_similarity(a, b) == 0.0 and boundary_measure(a, b) == 0.0
    empty = np.zeros_like(a)
    assert region_similarity(empty, empty) == 1.0 and boundary_measure(empty, empty) == 1.0
    # an empty prediction of a present object, and a prediction of an absent one
    assert region_similarity(empty, a) == 0.0 and boundary_measure(empty, a) == 0.0
    assert region_similarity(a, empty) == 0.0 and boundary_measure(a, empty) == 0.0


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_shifted_square(k):
    gt = square()
    pred = square(left=40 + k)
    assert region_similarity(pred, gt) == pytest.approx(20 * (20 - k) / (20 * (20 + k)))
    assert tolerance_radius(gt.shape) == 2  # ceil(0.008 * 141.4)
    f = boundary_measure(pred, gt)
    if k <= 2:
        assert f == 1.0
    else:
        assert 0 < f < 1
    assert f == pytest.approx(ref_f(gt, pred), abs=1e-12)


def test_boundary_map_of_a_square_follows_davis():
    from core.evaluate.masks import boundary_map

    b = boundary_map(square(side=4))
    rows, cols = np.nonzero(b)
    # left and top: the background pixel before the square; right and bottom: the square's own edge
    assert b[40, 39] and b[39, 40] and b[43, 43] and not b[41, 41] and not b[40, 44]
    assert rows.min() == 39 and cols.min() == 39 and rows.max() == 43 and cols.max() == 43
    assert np.array_equal(b, ref_bmap(square(side=4)))
    full = np.ones((5, 6), bool)
    assert not boundary_map(full).any()  # the image border is no boundary


def test_statistics_recall_and_decay():
    s = statistics([1.0, 0.8, 0.6, 0.6, 0.4, 0.2, 0.0, 0.0])
    # 8 frames -> bins [0..2], [2..4], [4..5], [5..7] (neighbouring bins share an edge frame)
    assert s.mean == pytest.approx(0.45)
    assert s.recall == pytest.approx(0.5)
    assert s.decay == pytest.approx(0.8 - 0.2 / 3)
    flat = statistics([0.7] * 5)
    assert (flat.mean, flat.recall, flat.decay) == (pytest.approx(0.7), 1.0, pytest.approx(0.0))
    long = np.linspace(1, 0, 300)  # past 255 frames (where DAVIS's uint8 indices wrap)
    assert statistics(long).decay == pytest.approx(ref_stats(list(long))[2])


# ------------------------------------------------------------------------- cross-check on real masks

def _perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    op = rng.integers(5)
    k = int(rng.integers(1, 8))
    if op == 0:
        return cv2.dilate(mask, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    if op == 1:
        return cv2.erode(mask, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    if op == 2:
        dy, dx = (int(v) for v in rng.integers(-25, 26, 2))
        return cv2.warpAffine(mask, np.float32([[1, 0, dx], [0, 1, dy]]), mask.shape[::-1], flags=cv2.INTER_NEAREST)
    if op == 3:
        return np.zeros_like(mask)
    noisy = mask.copy()
    noisy[rng.random(mask.shape) < 0.01] = 255
    return noisy


def test_matches_davis_definitions_on_perturbed_real_masks(tmp_path: Path):
    src = data_path("vos", "dog", "masks")
    files = sorted(src.glob("*.png"))[::2]
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred" / "masks"
    gt_dir.mkdir()
    pred_dir.mkdir(parents=True)
    js, fs = [], []
    for i, path in enumerate(files):
        gt = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(gt_dir / path.name), gt)
        if i == 3:  # a dropped frame: scored as an empty prediction
            pred = np.zeros_like(gt)
        else:
            pred = _perturb(gt, rng)
            cv2.imwrite(str(pred_dir / path.name), pred)
        g, p = gt > 127, pred > 127
        js.append(ref_iou(g, p))
        fs.append(ref_f(g, p))
        assert region_similarity(p, g) == pytest.approx(js[-1], abs=1e-6)
        assert boundary_measure(p, g) == pytest.approx(fs[-1], abs=1e-6), path.name
    assert any(0 < f < 1 for f in fs) and sum(j < 0.9 for j in js) >= 3  # the perturbations changed something

    doc = evaluate(tmp_path / "pred", gt_dir)
    seq = doc["sequences"]["gt"]
    assert seq["missing"] == [files[3].stem] and seq["frames"] == len(files)
    for key, values in (("J", js), ("F", fs)):
        mean, recall, decay = ref_stats(values)
        got = seq["objects"]["1"][key]
        assert (got["mean"], got["recall"], got["decay"]) == (
            pytest.approx(mean, abs=1e-6), pytest.approx(recall, abs=1e-6), pytest.approx(decay, abs=1e-6))
    assert doc["J&F"] == pytest.approx((np.mean(js) + np.mean(fs)) / 2, abs=1e-6)
    assert doc["mIoU"] == pytest.approx(np.mean(js), abs=1e-6)


# ------------------------------------------------------------------------- input formats, objects

def test_palette_and_grayscale_inputs_score_the_same(tmp_path: Path):
    gts = [square(top=30 + 3 * i) for i in range(4)]
    preds = [square(top=32 + 3 * i, left=43) for i in range(4)]
    for name, write in (("pal", lambda p, m: write_palette_png(p, m.astype(np.uint8))),
                        ("gray", lambda p, m: cv2.imwrite(str(p), m.astype(np.uint8) * 255))):
        for side, masks in (("gt", gts), ("pred", preds)):
            folder = tmp_path / name / side
            folder.mkdir(parents=True)
            for i, m in enumerate(masks):
                write(folder / f"{i:05d}.png", m)
    a = evaluate(tmp_path / "pal" / "pred", tmp_path / "pal" / "gt")
    b = evaluate(tmp_path / "gray" / "pred", tmp_path / "gray" / "gt")
    mixed = evaluate(tmp_path / "gray" / "pred", tmp_path / "pal" / "gt")
    assert a["J&F"] == b["J&F"] == mixed["J&F"] and a["J"] == b["J"] and a["F"] == mixed["F"]
    assert a["J"]["mean"] == pytest.approx(np.mean([ref_iou(g, p) for g, p in zip(gts, preds)]))


def test_multi_object_palette_masks_are_scored_per_object(tmp_path: Path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "out" / "masks").mkdir(parents=True)
    for i in range(3):
        gt = np.zeros((100, 100), np.uint8)
        gt[square()] = 1
        if i > 0:
            gt[square(top=5, left=5, side=10)] = 3  # object 3 appears on frame 1
        pred = np.zeros_like(gt)
        pred[square(left=45)] = 1
        pred[square(top=5, left=5, side=10)] = 3  # predicted already on frame 0, where GT has none
        pred[square(top=80, left=80, side=5)] = 7  # an id the GT never has: ignored
        write_palette_png(tmp_path / "gt" / f"{i:05d}.png", gt)
        write_palette_png(tmp_path / "out" / "masks" / f"{i:05d}.png", pred)
    doc = evaluate(tmp_path / "out", tmp_path / "gt")
    objs = doc["sequences"]["gt"]["objects"]
    assert sorted(objs) == ["1", "3"]
    assert objs["1"]["J"]["mean"] == pytest.approx(15 / 25)
    assert objs["3"]["J"]["mean"] == pytest.approx(2 / 3)  # 0 on frame 0 (false positive), then 1, 1
    assert objs["3"]["F"]["mean"] == pytest.approx(2 / 3)
    assert doc["J"]["mean"] == pytest.approx((15 / 25 + 2 / 3) / 2)
    assert doc["mIoU"] == pytest.approx((3 * 15 / 25 + 2) / 6)


def test_palette_void_is_left_out_and_first_last_can_be_skipped(tmp_path: Path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "out" / "masks").mkdir(parents=True)
    for i in range(4):
        gt = np.zeros((100, 100), np.uint8)
        gt[square()] = 1
        gt[square(top=40, left=60, side=10)] = 255      # DAVIS void beside the object: not annotated
        pred = np.zeros_like(gt)
        pred[square(side=30)] = 1                       # covers the void region too, and more
        if i in (0, 3):
            pred[:] = 0                                 # the first and last frames are missed
        write_palette_png(tmp_path / "gt" / f"{i:05d}.png", gt)
        write_palette_png(tmp_path / "out" / "masks" / f"{i:05d}.png", pred)
    void = np.zeros((100, 100), bool)
    void[square(top=40, left=60, side=10)] = True
    pred = square(side=30) & ~void
    expected_j = ref_iou(square(), pred)
    doc = evaluate(tmp_path / "out", tmp_path / "gt")
    objs = doc["sequences"]["gt"]["objects"]
    assert sorted(objs) == ["1"]                                          # 255 is not an object
    assert objs["1"]["J"]["mean"] == pytest.approx(expected_j / 2)        # frames 0 and 3 score 0
    assert objs["1"]["F"]["mean"] == pytest.approx(ref_f(square(), pred) / 2)
    davis = evaluate(tmp_path / "out", tmp_path / "gt", skip_first_last=True)
    assert davis["J"]["mean"] == pytest.approx(expected_j) and davis["sequences"]["gt"]["frames"] == 2
    assert davis["sequences"]["gt"]["skipped"] == ["00000", "00003"]
    assert main(["eval", str(tmp_path / "out"), str(tmp_path / "gt"), "--json", "--skip-first-last"]) == 0
    assert json.loads(capsys.readouterr().out)["J"]["mean"] == pytest.approx(expected_j)


def test_folder_of_sequences_missing_and_extra_frames(tmp_path: Path):
    for seq, shift in (("a", 0), ("b", 4)):
        for i in range(4):
            write_palette_png(_mkdir(tmp_path / "gt" / seq) / f"{i:05d}.png", square().astype(np.uint8))
            if not (seq == "b" and i == 2):
                write_palette_png(_mkdir(tmp_path / "pred" / seq / "masks") / f"{i:05d}.png",
                                  square(left=40 + shift).astype(np.uint8))
    write_palette_png(tmp_path / "pred" / "a" / "masks" / "00009.png", square().astype(np.uint8))
    doc = evaluate(tmp_path / "pred", tmp_path / "gt")
    a, b = doc["sequences"]["a"], doc["sequences"]["b"]
    assert a["J&F"] == 1.0 and a["extra"] == ["00009"] and a["missing"] == []
    assert b["missing"] == ["00002"]
    assert b["J"]["mean"] == pytest.approx(3 * (16 / 24) / 4)
    assert doc["J"]["mean"] == pytest.approx((1 + b["J"]["mean"]) / 2)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ------------------------------------------------------------------------- mattes

def test_matte_scores_equal_the_matting_metrics(tmp_path: Path):
    rng = np.random.default_rng(3)
    gts = [(cv2.GaussianBlur(square((40, 40), 10 + i, 12, 16).astype(np.float32), (7, 7), 2) * 255).astype(np.uint8)
           for i in range(3)]
    preds = [np.clip(g.astype(int) + rng.integers(-30, 30, g.shape), 0, 255).astype(np.uint8) for g in gts]
    for side, alphas in (("gt", gts), ("out", preds)):
        for i, a in enumerate(alphas):
            cv2.imwrite(str(_mkdir(tmp_path / side / "alpha") / f"{i:05d}.png"), a)
    doc = evaluate(tmp_path / "out", tmp_path / "gt")
    m = doc["mattes"]
    assert "J" not in doc and m["frames"] == 3
    for key, fn in (("SAD", metrics.sad), ("MSE", metrics.mse), ("Grad", metrics.gradient_error),
                    ("Conn", metrics.connectivity_error)):
        assert m[key] == pytest.approx(np.mean([fn(p, g) for p, g in zip(preds, gts)]), rel=1e-9), key
    assert m["dtSSD"] == pytest.approx(metrics.dtssd(preds, gts), rel=1e-9)
    assert doc["sequences"]["gt"]["mattes"]["SAD"] == m["SAD"]


# ------------------------------------------------------------------------- CLI

def test_cli_json_shape(tmp_path: Path, capsys):
    assert "example: reelmask eval" in core.evaluate.cli.cmd_eval.__doc__
    for side, left in (("gt", 40), ("out", 41)):
        for i in range(2):
            write_palette_png(_mkdir(tmp_path / side / "masks") / f"{i:05d}.png", square(left=left).astype(np.uint8))
    assert main(["eval", str(tmp_path / "out"), str(tmp_path / "gt" / "masks"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"sequences", "J", "F", "J&F", "mIoU"}
    seq = doc["sequences"]["gt"]
    assert set(seq) >= {"objects", "J", "F", "J&F", "mIoU", "frames", "missing", "extra"}
    assert set(seq["objects"]["1"]) == {"J", "F", "J&F"}
    assert set(seq["objects"]["1"]["J"]) == {"mean", "recall", "decay"}
    assert doc["J"]["mean"] == pytest.approx(19 / 21) and doc["F"]["mean"] == 1.0
    assert main(["eval", str(tmp_path / "out"), str(tmp_path / "gt")]) == 0  # the table
    assert "J&F" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path: Path, capsys):
    assert main(["eval", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert main(["eval", str(tmp_path), str(tmp_path / "nope")]) == 2
    _mkdir(tmp_path / "empty")
    assert main(["eval", str(tmp_path), str(tmp_path / "empty")]) == 2
    write_palette_png(_mkdir(tmp_path / "gt") / "00000.png", square().astype(np.uint8))
    write_palette_png(_mkdir(tmp_path / "pred") / "00000.png", square((50, 100)).astype(np.uint8))
    assert main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("reelmask: error: ") for line in lines)
    assert "does not exist" in lines[0] and "does not exist" in lines[1]
    assert "no ground-truth frames" in lines[2] and "100x50" in lines[3]
