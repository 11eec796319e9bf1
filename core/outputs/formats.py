"""Interchange formats written beside masks/ when a job ends (`output.formats`).

They are made from the finished palette masks on disk, in one pass over the frames, so a job that
resumed after a crash gets them whole like any other. masks/ (`png`) is always written: the job's
checkpoints and every other format are built on it.

- coco: coco.json with one image per frame, compressed RLE per object and frame, bbox, area and
  `track_id` (the object id); categories are the detector's classes where known, else "object".
- ytvis: ytvis.json, the YouTube-VIS video layout: one video (its frame names, size, length) and one
  annotation per object with a compressed RLE, bbox and area per frame (null where it is absent).
- yolo-seg: labels/<frame stem>.txt, one line per object (class index and the normalised polygon of
  its largest outer contour), and data.yaml naming the classes.
- keep-mask: keep/<frame stem>.png, 255 where no object is and 0 on every object (the static scene).
- mask-video: masks.mkv, lossless FFV1 in 8-bit grey, pixel value = object id, one video frame per
  frame on a video input's own timeline, else at output.preview_fps.

Matting jobs only:
- png16: alpha16/<frame stem>.png, 16-bit alpha from the unrounded matte; written per frame by the
  writer as the mattes come (the only format not made at the end: alpha/ keeps 8 bits).
- prores: alpha.mov, ProRes 4444 (prores_ks, yuva444p10le) with the estimated foreground colours
  (foreground/ when written, else the frame) and the alpha of alpha/, at output.preview_fps.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from core.errors import ConfigError
from core.frames import FrameFolder
from core.outputs.masks import read_mask
from core.outputs.video_file import VideoFile

FORMATS = ("png", "coco", "ytvis", "yolo-seg", "keep-mask", "mask-video", "png16", "prores")
MATTING_FORMATS = ("png16", "prores")
COCO_FILE = "coco.json"
YTVIS_FILE = "ytvis.json"
LABELS_DIR = "labels"
KEEP_DIR = "keep"
MASK_VIDEO = "masks.mkv"
ALPHA16_DIR = "alpha16"
PRORES = "alpha.mov"
UNKNOWN_CLASS = "object"


def check_formats(formats: tuple[str, ...] | list[str], mode: str | None = None,
                  where: str = "output.formats") -> None:
    """Refuse a format name this version cannot write, or a matting format for another mode, before any
    model loads."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"{where} lists {', '.join(repr(b) for b in bad)}, which reelmask cannot write; "
                          f"choose from {', '.join(FORMATS)}")
    matting = [f for f in formats if f in MATTING_FORMATS]
    if matting and mode is not None and mode != "matting":
        raise ConfigError(f"{where} asks for {', '.join(repr(f) for f in matting)}, which hold alpha mattes, but this "
                          f"job runs in {mode} mode; use them with matting mode (or leave them out)")
    if "coco" in formats or "ytvis" in formats:
        try:
            import pycocotools.mask  # noqa: F401
        except ImportError as e:
            raise ConfigError(f'{where} asks for "coco" or "ytvis", which need pycocotools: `.venv/bin/pip install '
                              'pycocotools`') from e
    if "mask-video" in formats or "prores" in formats:
        try:
            import av  # noqa: F401
        except ImportError as e:
            raise ConfigError(f'{where} asks for a video format, which needs PyAV: `.venv/bin/pip install av`') from e


def object_classes(prompts_used: Path) -> dict[int, str]:
    """Each object's class, by the most detector prompts that named one (prompts_used.jsonl "class")."""
    votes: dict[int, dict[str, int]] = {}
    if prompts_used.is_file():
        for line in prompts_used.read_text(encoding="utf-8").splitlines():
            try:
                p = json.loads(line)
            except ValueError:
                continue
            name = p.get("class")
            if isinstance(name, str):
                counts = votes.setdefault(int(p["object_id"]), {})
                counts[name] = counts.get(name, 0) + 1
    return {obj: max(counts, key=lambda n: (counts[n], n)) for obj, counts in votes.items()}


def write_formats(root: Path, folder: FrameFolder, formats: tuple[str, ...], classes: dict[int, str],
                  fps: float) -> list[str]:
    """Write every format of `formats` but png from root/masks; returns the files and folders made."""
    wanted = [f for f in dict.fromkeys(formats) if f not in ("png", "png16")]  # png16 is the writer's, per frame
    writers = []
    if "coco" in wanted:
        writers.append(_Coco(root, folder, classes))
    if "ytvis" in wanted:
        writers.append(_Ytvis(root, folder, classes))
    if "yolo-seg" in wanted:
        writers.append(_YoloSeg(root, folder, classes))
    if "keep-mask" in wanted:
        writers.append(_KeepMask(root, folder))
    if "mask-video" in wanted:
        writers.append(_MaskVideo(root, folder, fps))
    if "prores" in wanted:
        writers.append(_Prores(root, folder, fps))
    try:
        for i in range(len(folder)):
            id_map = read_mask(root / "masks" / f"{folder.stem(i)}.png")
            for w in writers:
                w.frame(i, id_map)
    finally:
        for w in writers:
            w.close()
    return [name for w in writers for name in w.made] + ([ALPHA16_DIR + "/"] if "png16" in formats else [])


def write_alpha16(root: Path, stem: str, fine: np.ndarray) -> None:
    """alpha16/<stem>.png from a matte in [0, 1]."""
    (root / ALPHA16_DIR).mkdir(exist_ok=True)
    path = root / ALPHA16_DIR / f"{stem}.png"
    if not cv2.imwrite(str(path), np.clip(np.rint(fine * 65535.0), 0, 65535).astype(np.uint16)):
        raise OSError(f"could not write {path}")


def _class_table(classes: dict[int, str]) -> list[str]:
    """Category names in a fixed order: the known classes sorted, "object" last if some object has none."""
    return sorted(set(classes.values()))


class _Coco:
    def __init__(self, root: Path, folder: FrameFolder, classes: dict[int, str]):
        from pycocotools import mask as rle

        self.rle, self.root, self.folder, self.classes = rle, root, folder, classes
        self.names = _class_table(classes)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.unknown = False
        self.made = [COCO_FILE]

    def frame(self, i: int, id_map: np.ndarray) -> None:
        self.images.append({"id": i + 1, "file_name": self.folder.names[i], "frame_index": i,
                            "width": int(id_map.shape[1]), "height": int(id_map.shape[0])})
        for obj in np.unique(id_map):
            if obj == 0:
                continue
            encoded = self.rle.encode(np.asfortranarray((id_map == obj).astype(np.uint8)))
            name = self.classes.get(int(obj))
            self.unknown |= name is None
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": i + 1, "track_id": int(obj),
                "category": name or UNKNOWN_CLASS, "iscrowd": 0,
                "segmentation": {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")},
                "area": int(self.rle.area(encoded)), "bbox": [float(v) for v in self.rle.toBbox(encoded)],
            })

    def close(self) -> None:
        names = self.names + ([UNKNOWN_CLASS] if self.unknown and UNKNOWN_CLASS not in self.names else [])
        ids = {name: k + 1 for k, name in enumerate(names)}
        for a in self.annotations:
            a["category_id"] = ids[a.pop("category")]
        data = {"info": {"description": "reelmask masks", "version": "1.0"},
                "images": self.images, "annotations": self.annotations,
                "categories": [{"id": ids[n], "name": n} for n in names]}
        (self.root / COCO_FILE).write_text(json.dumps(data), encoding="utf-8")


def _rle(rle, mask: np.ndarray) -> tuple[dict, int, list[float]]:
    """Compressed COCO RLE of a binary mask (counts as text), its area and bbox."""
    encoded = rle.encode(np.asfortranarray(mask.astype(np.uint8)))
    seg = {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}
    return seg, int(rle.area(encoded)), [float(v) for v in rle.toBbox(encoded)]


class _Ytvis:
    """ytvis.json: one video and, per object, its masks over every frame (YouTube-VIS / SA-V style)."""

    def __init__(self, root: Path, folder: FrameFolder, classes: dict[int, str]):
        from pycocotools import mask as rle

        self.rle, self.root, self.folder, self.classes = rle, root, folder, classes
        self.tracks: dict[int, dict[int, tuple]] = {}
        self.made = [YTVIS_FILE]

    def frame(self, i: int, id_map: np.ndarray) -> None:
        for obj in np.unique(id_map):
            if obj != 0:
                self.tracks.setdefault(int(obj), {})[i] = _rle(self.rle, id_map == obj)

    def close(self) -> None:
        n = len(self.folder)
        names = sorted({self.classes.get(o, UNKNOWN_CLASS) for o in self.tracks}) or [UNKNOWN_CLASS]
        ids = {name: k + 1 for k, name in enumerate(names)}
        annotations = []
        for obj in sorted(self.tracks):
            per = self.tracks[obj]
            annotations.append({
                "id": obj, "video_id": 1, "track_id": obj, "iscrowd": 0,
                "category_id": ids[self.classes.get(obj, UNKNOWN_CLASS)],
                "segmentations": [per[i][0] if i in per else None for i in range(n)],
                "areas": [per[i][1] if i in per else None for i in range(n)],
                "bboxes": [per[i][2] if i in per else None for i in range(n)],
            })
        video = {"id": 1, "width": self.folder.width, "height": self.folder.height, "length": n,
                 "file_names": list(self.folder.names)}
        data = {"info": {"description": "reelmask masks", "version": "1.0"}, "videos": [video],
                "annotations": annotations, "categories": [{"id": ids[n], "name": n} for n in names]}
        (self.root / YTVIS_FILE).write_text(json.dumps(data), encoding="utf-8")


class _YoloSeg:
    def __init__(self, root: Path, folder: FrameFolder, classes: dict[int, str]):
        self.root, self.folder, self.classes = root, folder, classes
        self.names = _class_table(classes)
        self.unknown = False
        (root / LABELS_DIR).mkdir(exist_ok=True)
        self.made = [LABELS_DIR + "/", "data.yaml"]
        self.lines: dict[int, list[tuple[str | None, str]]] = {}

    def frame(self, i: int, id_map: np.ndarray) -> None:
        h, w = id_map.shape
        rows = []
        for obj in np.unique(id_map):
            if obj == 0:
                continue
            contours, _ = cv2.findContours((id_map == obj).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            contours = [c for c in contours if len(c) >= 3]
            if not contours:
                continue  # a few scattered pixels: no polygon to give
            poly = max(contours, key=cv2.contourArea).reshape(-1, 2)
            coords = " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in poly)
            name = self.classes.get(int(obj))
            self.unknown |= name is None
            rows.append((name, coords))
        # class indices are known only once every object is seen: the lines wait until close
        self.lines[i] = rows

    def close(self) -> None:
        names = self.names + ([UNKNOWN_CLASS] if self.unknown and UNKNOWN_CLASS not in self.names else [])
        index = {name: k for k, name in enumerate(names)}
        for i, rows in self.lines.items():
            text = "".join(f"{index[name or UNKNOWN_CLASS]} {coords}\n" for name, coords in rows)
            (self.root / LABELS_DIR / f"{self.folder.stem(i)}.txt").write_text(text, encoding="utf-8")
        yaml = ["# labels/ holds one .txt per frame, named after it; put the frames in images/ beside it to train",
                "path: .", "train: images", "val: images", f"nc: {len(names)}", "names:"]
        yaml += [f"  {k}: {json.dumps(n)}" for k, n in enumerate(names)]
        (self.root / "data.yaml").write_text("\n".join(yaml) + "\n", encoding="utf-8")


class _KeepMask:
    def __init__(self, root: Path, folder: FrameFolder):
        self.root, self.folder = root, folder
        (root / KEEP_DIR).mkdir(exist_ok=True)
        self.made = [KEEP_DIR + "/"]

    def frame(self, i: int, id_map: np.ndarray) -> None:
        path = self.root / KEEP_DIR / f"{self.folder.stem(i)}.png"
        if not cv2.imwrite(str(path), np.where(id_map == 0, 255, 0).astype(np.uint8)):
            raise OSError(f"could not write {path}")

    def close(self) -> None:
        pass


class _VideoFile(VideoFile):
    """A format's video at the frames' size, on a video input's own timeline."""

    def __init__(self, path: Path, folder: FrameFolder, fps: float, codec: str, pix_fmt: str,
                 options: dict[str, str] | None = None):
        super().__init__(path, (folder.width, folder.height), codec, pix_fmt, fps, folder.source, options)


class _MaskVideo(_VideoFile):
    def __init__(self, root: Path, folder: FrameFolder, fps: float):
        super().__init__(root / MASK_VIDEO, folder, fps, "ffv1", "gray")

    def frame(self, i: int, id_map: np.ndarray) -> None:
        self.encode(id_map.astype(np.uint8, copy=False), "gray")


class _Prores(_VideoFile):
    """alpha.mov: the foreground colours and the matte as ProRes 4444 with alpha (10-bit)."""

    def __init__(self, root: Path, folder: FrameFolder, fps: float):
        super().__init__(root / PRORES, folder, fps, "prores_ks", "yuva444p10le", {"profile": "4"})  # 4 = 4444
        self.root, self.folder = root, folder

    def frame(self, i: int, id_map: np.ndarray) -> None:

        stem = self.folder.stem(i)
        alpha = cv2.imread(str(self.root / "alpha" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        if alpha is None:
            raise OSError(f"prores: the matte {self.root / 'alpha' / stem}.png is missing")
        cut = cv2.imread(str(self.root / "foreground" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        rgb = cv2.cvtColor(cut, cv2.COLOR_BGRA2RGB) if cut is not None else self.folder.read_rgb(i)
        self.encode(np.dstack([rgb, alpha]).astype(np.uint16) * 257, "rgba64le")  # 8 to 16 bits; ProRes keeps 10
