"""Pair predicted and ground-truth frames by folder layout and file stem, score them, summarise.

PRED and GT are each an output folder (holding masks/ and/or alpha/ or pha/), a folder of PNGs
directly, or a folder of such sequences (one sub-folder per sequence). What is scored follows
GT: masks -> J, F, J&F and mIoU per object; alpha mattes -> SAD, MSE, Grad, Conn and dtSSD.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.errors import EvaluationError
from core.evaluate.masks import BOUND_TH, ObjectScores, Statistics, mean_statistics, score_frame, statistics
from core.evaluate.mattes import MatteScores, combine
from core.frames import natural_key
from core.outputs.masks import davis_palette

VOID = 255           # DAVIS palette index of pixels that are not annotated
MASK_DIRS = ("masks",)
ALPHA_DIRS = ("alpha", "pha")
_LAYER_DIRS = MASK_DIRS + ALPHA_DIRS


@dataclass(frozen=True)
class SequencePair:
    """Where one sequence's ground truth and predictions are (None: that layer is absent)."""

    name: str
    gt_masks: Path | None
    gt_alpha: Path | None
    pred_masks: Path | None
    pred_alpha: Path | None


@dataclass
class SequenceResult:
    """Scores of one sequence plus the frames that could not be paired."""

    name: str
    frames: int = 0
    skipped: list[str] = field(default_factory=list)  # GT frames left out (first and last, when asked)
    missing: list[str] = field(default_factory=list)  # GT frames with no prediction (scored as empty)
    extra: list[str] = field(default_factory=list)  # predicted frames with no GT (ignored)
    objects: dict[int, ObjectScores] | None = None
    mattes: MatteScores | None = None


# ------------------------------------------------------------------------- reading

def _pngs(folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in folder.iterdir()
            if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()}


def read_gt(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A ground-truth mask: its id map and its void pixels (palette index 255, DAVIS's "not
    annotated"; None for other masks, where 255 is the object of a 0/255 mask)."""
    ids = read_ids(path)
    with Image.open(path) as im:
        palette = im.mode == "P"
    if not palette or not (ids == VOID).any():
        return ids, None
    void = ids == VOID
    return np.where(void, 0, ids).astype(np.uint8), void


def read_ids(path: Path) -> np.ndarray:
    """Object-id map of a mask PNG: palette indices as they are; a grayscale 0/255 (or 0/1)
    mask is object 1; other grayscale values are ids; RGB colours of the DAVIS palette map
    back to their index (any other colour counts as object 1)."""
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                return np.asarray(im, dtype=np.uint8)
            if im.mode in ("RGB", "RGBA"):
                return _rgb_ids(np.asarray(im.convert("RGB")))
            ids = np.asarray(im.convert("L"), dtype=np.uint8)
    except OSError as e:
        raise EvaluationError(f"cannot read mask {path}: {e}; re-export it as a PNG") from e
    if not np.isin(ids, (0, 255)).all():
        return ids
    return (ids > 0).astype(np.uint8)


def _rgb_ids(rgb: np.ndarray) -> np.ndarray:
    pal = davis_palette().astype(np.int64)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_codes)
    pos = np.clip(np.searchsorted(pal_codes[order], codes), 0, 255)
    found = pal_codes[order][pos] == codes
    return np.where(found, order[pos], 1).astype(np.uint8)


def read_alpha(path: Path) -> np.ndarray:
    alpha = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if alpha is None:
        raise EvaluationError(f"cannot read alpha matte {path}; re-export it as an 8-bit grayscale PNG")
    return alpha


# ------------------------------------------------------------------------- pairing

def _layers(folder: Path) -> tuple[Path | None, Path | None]:
    """(masks folder, alpha folder) of a sequence folder, or (None, None) if it is none."""
    masks = next((folder / n for n in MASK_DIRS if _pngs(folder / n)), None)
    alpha = next((folder / n for n in ALPHA_DIRS if _pngs(folder / n)), None)
    if masks is None and alpha is None and _pngs(folder):
        if folder.name in ALPHA_DIRS:
            alpha = folder
        else:
            masks = folder
    return masks, alpha


def _pred_layer(folder: Path, names: tuple[str, ...], only: bool) -> Path | None:
    """The prediction folder of one layer: <folder>/<name>, or <folder> itself when it holds the
    PNGs directly and is named for that layer, is the only layer GT asks for, or is a mask
    folder not named like an alpha folder."""
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    if not _pngs(folder):
        return None
    if folder.name in names or only or (names == MASK_DIRS and folder.name not in ALPHA_DIRS):
        return folder
    return None


def _pair(name: str, gt: Path, pred: Path) -> SequencePair:
    gt_masks, gt_alpha = _layers(gt)
    both = gt_masks is not None and gt_alpha is not None
    return SequencePair(
        name, gt_masks, gt_alpha,
        _pred_layer(pred, MASK_DIRS, not both) if gt_masks is not None else None,
        _pred_layer(pred, ALPHA_DIRS, not both) if gt_alpha is not None else None)


def find_pairs(pred: Path, gt: Path) -> list[SequencePair]:
    """The sequences of GT, each with the matching prediction folders."""
    pred, gt = Path(pred), Path(gt)
    if not gt.is_dir():
        raise EvaluationError(f"ground-truth folder {gt} does not exist; pass the folder of GT masks "
                              "(or alpha mattes) as the second argument")
    if not pred.is_dir():
        raise EvaluationError(f"prediction folder {pred} does not exist; pass the output folder of "
                              "`reelmask run` (or a folder of mask PNGs) as the first argument")
    if any(_layers(gt)):
        name = gt.parent.name if gt.name in _LAYER_DIRS else gt.name
        return [_pair(name, gt, pred)]
    subs = sorted((d for d in gt.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: natural_key(d.name))
    pairs = [_pair(d.name, d, pred / d.name) for d in subs if any(_layers(d))]
    if not pairs:
        raise EvaluationError(f"no ground-truth frames in {gt}: expected PNG masks in it or in its masks/, "
                              "alpha/ or pha/ folder, or one such folder per sequence")
    return pairs


# ------------------------------------------------------------------------- scoring

def _check_shape(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> None:
    if pred.shape[:2] != gt.shape[:2]:
        raise EvaluationError(
            f"{pred_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth {gt_path} is "
            f"{gt.shape[1]}x{gt.shape[0]}; predict at the ground truth's resolution (or resize the masks)")


def _score_masks(pair: SequencePair, result: SequenceResult, bound_th: float, skip_first_last: bool) -> None:
    gt_frames, pred_frames = _pngs(pair.gt_masks), _pngs(pair.pred_masks)
    stems = sorted(gt_frames, key=natural_key)
    if skip_first_last and len(stems) > 2:  # DAVIS semi-supervised: frame 0 is the given mask
        result.skipped = [stems[0], stems[-1]]
        stems = stems[1:-1]
    per_frame: list[dict[int, tuple[float, float]]] = []
    objects: set[int] = set()
    for stem in stems:
        gt, void = read_gt(gt_frames[stem])
        present = set(np.unique(gt).tolist()) - {0}
        objects |= present
        if stem in pred_frames:
            pred = read_ids(pred_frames[stem])
            _check_shape(pred, gt, pred_frames[stem], gt_frames[stem])
        else:
            pred = np.zeros_like(gt)
            result.missing.append(stem)
        # ids in neither map score J = F = 1 on this frame; they are filled in below
        predicted = set(np.unique(pred if void is None else pred[~void]).tolist()) - {0}
        per_frame.append(score_frame(pred, gt, sorted(present | predicted), bound_th, void))
    result.frames = len(stems)
    result.extra = sorted(set(pred_frames) - set(gt_frames), key=natural_key)
    result.objects = {}
    for obj in sorted(objects):
        scores = [frame.get(obj, (1.0, 1.0)) for frame in per_frame]
        result.objects[obj] = ObjectScores(obj, [j for j, _ in scores], [f for _, f in scores])


def _score_mattes(pair: SequencePair, result: SequenceResult) -> None:
    gt_frames, pred_frames = _pngs(pair.gt_alpha), _pngs(pair.pred_alpha)
    scores = MatteScores()
    for stem in sorted(gt_frames, key=natural_key):
        gt = read_alpha(gt_frames[stem])
        if stem in pred_frames:
            pred = read_alpha(pred_frames[stem])
            _check_shape(pred, gt, pred_frames[stem], gt_frames[stem])
        else:
            pred = np.zeros_like(gt)
            if stem not in result.missing:
                result.missing.append(stem)
        scores.add(pred, gt)
    extra = set(pred_frames) - set(gt_frames)
    result.extra = sorted(set(result.extra) | extra, key=natural_key)
    result.frames = max(result.frames, scores.frames)
    result.mattes = scores


def evaluate_sequences(pred: Path, gt: Path, bound_th: float = BOUND_TH,
                       skip_first_last: bool = False) -> Iterator[SequenceResult]:
    """Score every sequence of GT against PRED, yielding one result per sequence in order.
    `skip_first_last` leaves each sequence's first and last mask frames out, as the DAVIS
    semi-supervised benchmark does (mattes are always scored on every frame)."""
    for pair in find_pairs(pred, gt):
        result = SequenceResult(pair.name)
        if pair.gt_masks is not None:
            _score_masks(pair, result, bound_th, skip_first_last)
        if pair.gt_alpha is not None:
            _score_mattes(pair, result)
        if result.frames == 0:
            raise EvaluationError(f"no ground-truth frames for sequence {pair.name} under {gt}")
        yield result


# ------------------------------------------------------------------------- summaries

def _num(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (nothing to average) -> JSON null


def _stats(s: Statistics) -> dict[str, float | None]:
    return {k: _num(v) for k, v in s.to_dict().items()}


def _masks_summary(objs: list[ObjectScores]) -> dict:
    j = mean_statistics([statistics(o.j) for o in objs])
    f = mean_statistics([statistics(o.f) for o in objs])
    ious = [v for o in objs for v in o.j]
    return {"J": _stats(j), "F": _stats(f), "J&F": _num((j.mean + f.mean) / 2),
            "mIoU": _num(float(np.mean(ious)) if ious else float("nan"))}


def _mattes_summary(summary: dict[str, float]) -> dict:
    return {k: (v if k == "frames" else _num(v)) for k, v in summary.items()}


def summarise(results: list[SequenceResult]) -> dict:
    """The JSON document of `reelmask eval --json`: per sequence (and per object) and overall.

    Overall J, F and J&F average over all objects of all sequences (as the DAVIS benchmark does),
    mIoU over all object-frames; matte errors average over all frames, dtSSD over sequences.
    """
    doc: dict = {"sequences": {}}
    all_objects: list[ObjectScores] = []
    mattes: list[MatteScores] = []
    for r in results:
        seq: dict = {"frames": r.frames, "skipped": r.skipped, "missing": r.missing, "extra": r.extra}
        if r.objects is not None:
            seq["objects"] = {str(obj): {**{k: _stats(statistics(getattr(o, k.lower()))) for k in ("J", "F")},
                                         "J&F": _num((statistics(o.j).mean + statistics(o.f).mean) / 2)}
                              for obj, o in r.objects.items()}
            seq.update(_masks_summary(list(r.objects.values())))
            all_objects.extend(r.objects.values())
        if r.mattes is not None:
            seq["mattes"] = _mattes_summary(r.mattes.summary())
            mattes.append(r.mattes)
        doc["sequences"][r.name] = seq
    if any(r.objects is not None for r in results):
        doc.update(_masks_summary(all_objects))
    if mattes:
        doc["mattes"] = _mattes_summary(combine(mattes))
    return doc


def evaluate(pred: Path, gt: Path, bound_th: float = BOUND_TH, skip_first_last: bool = False) -> dict:
    """Score PRED against GT and return the summary document (see `summarise`)."""
    return summarise(list(evaluate_sequences(Path(pred), Path(gt), bound_th, skip_first_last)))
