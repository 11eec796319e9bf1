"""prompts.json: typed parsing and validation against the frames it refers to.

Coordinates are pixels of the original frames. Every error names the file, the object and the
offending value, and says how to fix it.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import LimitsConfig, key_range
from core.errors import FrameFolderError, PromptError
from core.frames import FrameFolder, check_frame_sized
from core.intake import read_text

PROMPTS_FILE = "prompts.json"
MAX_OBJECT_ID = 255  # masks are 8-bit palette PNGs: 0 is background, 1..255 are objects
MAX_CLASSES = int(key_range("detect.classes")[1])  # as many as config.toml may list

_TOP_KEYS = ("objects", "detect", "mode")
_OBJECT_KEYS = ("id", "frame", "points", "labels", "box", "mask")
_DETECT_KEYS = ("classes", "min_confidence", "self_train")


@dataclass(frozen=True)
class ObjectPrompt:
    """One prompt for one object on one frame: points (+labels), a box, a mask, or points + box."""

    object_id: int
    frame: int
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    box: tuple[float, float, float, float] | None = None
    mask_path: Path | None = None

    @property
    def source(self) -> str:
        return "mask" if self.mask_path is not None else "user"

    def load_mask(self, width: int, height: int) -> np.ndarray:
        """The prompt mask as a bool HxW array (nonzero pixels are the object)."""
        from PIL import Image

        assert self.mask_path is not None
        check_mask_header(self.mask_path, width, height, f"object {self.object_id}")
        try:
            with Image.open(self.mask_path) as im:
                arr = np.asarray(im)
        except OSError as e:
            raise PromptError(f"mask {self.mask_path} for object {self.object_id} cannot be read: {e}") from e
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        mask = arr > 0
        if not mask.any():
            raise PromptError(f"mask {self.mask_path.name} for object {self.object_id} is empty (all zero)")
        return mask


def check_mask_header(path: Path, width: int, height: int, who: str) -> None:
    """A mask prompt must be an image of the frame size; read from its header, before any decoding."""
    try:
        check_frame_sized(path, width, height, "mask")
    except FrameFolderError as e:  # another size, or not an image at all
        raise PromptError(f"{who}: {e}; give a PNG of the frame size ({width}x{height})") from e


@dataclass(frozen=True)
class DetectRequest:
    classes: tuple[str, ...] | None = None
    min_confidence: float | None = None
    self_train: bool | None = None


@dataclass(frozen=True)
class Prompts:
    objects: tuple[ObjectPrompt, ...] = ()
    detect: DetectRequest | None = None
    mode: str | None = None
    source: Path | None = None

    @property
    def object_ids(self) -> list[int]:
        return sorted({p.object_id for p in self.objects})

    def first_frame(self, object_id: int) -> int:
        return min(p.frame for p in self.objects if p.object_id == object_id)

    def for_object(self, object_id: int) -> list[ObjectPrompt]:
        return sorted((p for p in self.objects if p.object_id == object_id), key=lambda p: p.frame)


def _hint(key: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key[:100], choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(choices)})"


def _is_number(v: Any) -> bool:
    """A JSON number usable as a coordinate or a score: finite, and not absurdly large."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return -1e9 <= v <= 1e9  # False for NaN too


def read_prompts_json(root: Path, limits: LimitsConfig | None = None) -> Any:
    """The parsed JSON of `<root>/prompts.json` (None when there is none), held to limits.max_prompts_bytes."""
    path = root / PROMPTS_FILE
    text = read_text(path, (limits or LimitsConfig()).max_prompts_bytes, "limits.max_prompts_bytes", PromptError)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptError(
            f"{path.name} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; "
            "fix the syntax (a JSON checker shows where)"
        ) from e
    except RecursionError as e:
        raise PromptError(f"{path.name} is nested too deeply to be prompts (lists inside lists ...); "
                          'give {"objects": [...]} as in the README') from e
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise PromptError(f"{path.name} holds a value JSON cannot hold here ({str(e)[:120]}); "
                          "use plain numbers") from e


def mask_names(data: Any) -> frozenset[str]:
    """File names in the folder's top level that prompts.json gives as mask prompts: they are not frames."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        return frozenset()
    names = set()
    for obj in data["objects"]:
        mask = obj.get("mask") if isinstance(obj, dict) else None
        if isinstance(mask, str) and mask and len(Path(mask).parts) == 1:
            names.add(Path(mask).name)
    return frozenset(names)


def load_prompts(folder: FrameFolder, limits: LimitsConfig | None = None) -> Prompts:
    """Read `<folder>/prompts.json` when present; an absent file means no prompts."""
    data = read_prompts_json(folder.root, limits)
    return Prompts() if data is None else parse_prompts(data, folder, folder.root / PROMPTS_FILE, limits)


def parse_prompts(data: Any, folder: FrameFolder, path: Path, limits: LimitsConfig | None = None) -> Prompts:
    """Typed, checked prompts from prompts.json's parsed JSON, held to the `limits.*` of prompts."""
    limits = limits or LimitsConfig()
    name = path.name
    if not isinstance(data, dict):
        raise PromptError(f'{name} must hold a JSON object like {{"objects": [...]}}, got {type(data).__name__}')
    for key in data:
        if key not in _TOP_KEYS:
            raise PromptError(f"{name}: unknown key '{_cut(key)}'{_hint(key, _TOP_KEYS)}")
    objects = data.get("objects", [])
    if not isinstance(objects, list):
        raise PromptError(f"{name}: 'objects' must be a list of objects, got {_show(objects)}")
    if len(objects) > limits.max_prompts:
        raise PromptError(f"{name} lists {len(objects):,} prompts, more than limits.max_prompts "
                          f"({limits.max_prompts:,}); prompt each object on a few frames: SAM2 tracks it between them")
    parsed = [_parse_object(i, obj, folder, path, limits) for i, obj in enumerate(objects)]
    seen: dict[tuple[int, int], int] = {}
    points: dict[int, int] = {}
    for i, p in enumerate(parsed):
        key = (p.object_id, p.frame)
        if key in seen:
            raise PromptError(
                f"{name}: object {p.object_id} has two entries for frame {p.frame} (entries {seen[key]} and {i}); "
                "merge their points/box into one entry"
            )
        seen[key] = i
        points[p.object_id] = points.get(p.object_id, 0) + len(p.points or ())
        if points[p.object_id] > limits.max_points_per_object:
            raise PromptError(
                f"{name}: object {p.object_id} has more than {limits.max_points_per_object:,} points "
                "(limits.max_points_per_object); a few clicks, a box or a mask are what SAM2 needs")
    if len(points) > limits.max_objects:
        raise PromptError(f"{name} prompts {len(points)} objects, more than limits.max_objects ({limits.max_objects}); "
                          "split the work into several folders, or ask the daemon's owner to raise the limit")
    mode = data.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise PromptError(f"{name}: 'mode' must be a string such as \"track\", got {_show(mode)}")
    detect = _parse_detect(data["detect"], name) if "detect" in data else None
    return Prompts(objects=tuple(parsed), detect=detect, mode=mode, source=path)


def _show(value: Any, limit: int = 80) -> str:
    """A value from the file for a message, cut short (a file may hold huge or deeply nested values)."""
    try:
        text = repr(value)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= limit else text[:limit] + "..."


def _cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_detect(d: Any, name: str) -> DetectRequest:
    if not isinstance(d, dict):
        raise PromptError(f"{name}: 'detect' must be an object like {{\"classes\": [\"dog\"]}}, got {_show(d)}")
    for key in d:
        if key not in _DETECT_KEYS:
            raise PromptError(f"{name}: unknown key 'detect.{_cut(key)}'{_hint(key, _DETECT_KEYS)}")
    classes = d.get("classes")
    if classes is not None:
        if isinstance(classes, (str, int)) and not isinstance(classes, bool):
            classes = [classes]
        if not isinstance(classes, list) or not all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes
        ):
            raise PromptError(f"{name}: detect.classes must be a list of COCO names or ids, got {_show(classes)}")
        if len(classes) > MAX_CLASSES or any(len(str(c)) > 100 for c in classes):
            raise PromptError(f"{name}: detect.classes may list at most {MAX_CLASSES} names of up to 100 characters")
        classes = tuple(str(c) for c in classes)
    conf = d.get("min_confidence")
    if conf is not None and (not _is_number(conf) or not 0 <= conf <= 1):
        raise PromptError(f"{name}: detect.min_confidence must be a number between 0 and 1, got {_show(conf)}")
    self_train = d.get("self_train")
    if self_train is not None and not isinstance(self_train, bool):
        raise PromptError(f"{name}: detect.self_train must be true or false, got {_show(self_train)}")
    return DetectRequest(classes=classes, min_confidence=conf, self_train=self_train)


def _parse_object(i: int, obj: Any, folder: FrameFolder, path: Path, limits: LimitsConfig) -> ObjectPrompt:
    name = path.name
    if not isinstance(obj, dict):
        raise PromptError(f"{name}: objects[{i}] must be an object with an id, got {_show(obj)}")
    for key in obj:
        if key not in _OBJECT_KEYS:
            raise PromptError(f"{name}: objects[{i}] has unknown key '{_cut(key)}'{_hint(key, _OBJECT_KEYS)}")
    oid = obj.get("id")
    if not isinstance(oid, int) or isinstance(oid, bool) or not 1 <= oid <= MAX_OBJECT_ID:
        raise PromptError(
            f"{name}: objects[{i}] needs an integer 'id' from 1 to {MAX_OBJECT_ID} (0 is background), got {_show(oid)}"
        )
    who = f"{name}: object {oid} (objects[{i}])"
    frame = _parse_frame(obj.get("frame", 0), folder, who)
    w, h = folder.width, folder.height

    points = labels = box = mask_path = None
    if "points" in obj:
        pts = obj["points"]
        if isinstance(pts, list) and len(pts) > limits.max_points_per_object:
            raise PromptError(f"{who}: {len(pts):,} points, more than limits.max_points_per_object "
                              f"({limits.max_points_per_object:,}); a few clicks are what SAM2 needs")
        if not isinstance(pts, list) or not pts or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in pts
        ):
            raise PromptError(f"{who}: 'points' must be a non-empty list of [x, y] pairs, got {_show(pts)}")
        for x, y in pts:
            if not (0 <= x < w and 0 <= y < h):
                raise PromptError(
                    f"{who}: point [{x}, {y}] on frame {frame} is outside the {w}x{h} frame; "
                    f"x must be in 0..{w - 1} and y in 0..{h - 1} (pixel coordinates of the original frame)"
                )
        points = tuple((float(x), float(y)) for x, y in pts)
        lbl = obj.get("labels", [1] * len(pts))
        if not isinstance(lbl, list) or not all(v in (0, 1) and not isinstance(v, bool) for v in lbl):
            raise PromptError(f"{who}: 'labels' must be a list of 0 (background) or 1 (object), got {_show(lbl)}")
        if len(lbl) != len(pts):
            raise PromptError(
                f"{who}: {len(pts)} points but {len(lbl)} labels; give one label (1 object, 0 background) per point"
            )
        if not any(lbl) and "box" not in obj:
            raise PromptError(f"{who}: every label is 0 (background); add at least one point labelled 1 or a box")
        labels = tuple(int(v) for v in lbl)
    elif "labels" in obj:
        raise PromptError(f"{who}: 'labels' without 'points'; add the points they label or remove them")

    if "box" in obj:
        b = obj["box"]
        if not isinstance(b, list) or len(b) != 4 or not all(_is_number(v) for v in b):
            raise PromptError(f"{who}: 'box' must be [x1, y1, x2, y2] in pixels, got {_show(b)}")
        x1, y1, x2, y2 = b
        if not (x1 < x2 and y1 < y2):
            raise PromptError(f"{who}: box {b} must have x1 < x2 and y1 < y2 (top-left, then bottom-right corner)")
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise PromptError(f"{who}: box {b} on frame {frame} reaches outside the {w}x{h} frame; clip it to 0..{w}, 0..{h}")
        box = (float(x1), float(y1), float(x2), float(y2))

    if "mask" in obj:
        m = obj["mask"]
        if not isinstance(m, str) or not m:
            raise PromptError(f"{who}: 'mask' must be the path of a PNG inside the folder, got {_show(m)}")
        if points is not None or box is not None:
            raise PromptError(f"{who}: give either a mask or points/box on one frame, not both")
        try:
            mask_path = (folder.root / m).resolve()
            inside = mask_path.is_relative_to(folder.root.resolve())
            found = inside and mask_path.is_file()
        except (OSError, ValueError):  # a NUL byte, a name too long for the file system
            raise PromptError(f"{who}: mask {_show(m)} is not a usable file name; give the name of a PNG in the "
                              "folder, such as \"first_mask.png\"") from None
        if not inside:
            raise PromptError(f"{who}: mask path {_show(m)} leaves the input folder; keep masks inside it")
        if not found:
            raise PromptError(f"{who}: mask file {_cut(m)} does not exist in {folder.root}")
        check_mask_header(mask_path, w, h, who)

    if points is None and box is None and mask_path is None:
        raise PromptError(f"{who}: give 'points' (with 'labels'), a 'box' or a 'mask' to say where the object is")
    return ObjectPrompt(oid, frame, points, labels, box, mask_path)


def _parse_frame(value: Any, folder: FrameFolder, who: str) -> int:
    """A frame is an index (0-based) or a frame file name."""
    n = len(folder)
    if isinstance(value, str):
        idx = folder.index_of(value)
        if idx is None:
            raise PromptError(f"{who}: frame {_show(value)} is not a frame of this folder ({n} frames, {folder.names[0]} .. {folder.names[-1]})")
        return idx
    if not isinstance(value, int) or isinstance(value, bool):
        raise PromptError(f"{who}: 'frame' must be a frame index (0-based) or a file name, got {_show(value)}")
    if not 0 <= value < n:
        raise PromptError(
            f"{who}: frame {value} does not exist; this folder has {n} frames (indices 0..{n - 1})"
        )
    return value
