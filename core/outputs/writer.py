"""A background writer: masks, prompt log lines and preview frames leave the SAM2 loop at once.

The queue is bounded, so a slow disk slows the job down instead of filling memory.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.engine.events import PromptUsed
from core.frames import FrameFolder
from core.outputs.masks import fill_small_holes, overlay, read_mask, write_palette_png
from core.outputs.preview import annotate, preview_video
from core.outputs.video_file import VideoFile

PROMPTS_USED = "prompts_used.jsonl"
PREVIEW = "preview.mp4"
ALPHA_DIR = "alpha"
FOREGROUND_DIR = "foreground"
_STOP = object()


@dataclass(frozen=True)
class PreviewSettings:
    fps: float
    max_side: int
    opacity: float
    banner: str | None = None  # drawn across the top of every frame (random weights)


def prompt_record(p: PromptUsed, folder: FrameFolder) -> dict:
    """One prompts_used.jsonl line, keys as DESIGN.md lists them (plus the chunk)."""
    def num(v: float) -> float | int:
        return int(v) if float(v).is_integer() else round(float(v), 2)

    return {
        "frame": p.frame,
        "frame_name": folder.names[p.frame],
        "object_id": p.object_id,
        "source": p.source,
        "box": [num(v) for v in p.box] if p.box is not None else None,
        "points": [[num(x), num(y)] for x, y in p.points] if p.points is not None else None,
        "labels": list(p.labels) if p.labels is not None else None,
        "confidence": round(p.confidence, 4) if p.confidence is not None else None,
        "chunk": p.chunk,
        **({"class": p.class_name} if p.class_name is not None else {}),
    }


class OutputWriter:
    """Owns every file of a job's staging folder while the job runs."""

    def __init__(self, root: Path, folder: FrameFolder, *, fill_hole_area: int = 0,
                 preview: PreviewSettings | None = None, queue_size: int = 16,
                 append_prompts: bool = False, png16: bool = False):
        self.root = root
        self.folder = folder
        self.masks_dir = root / "masks"
        self.masks_dir.mkdir(parents=True, exist_ok=True)
        self._fill = fill_hole_area
        self.png16 = png16  # matting: also 16-bit mattes in alpha16/
        self._preview = preview
        self._video: VideoFile | None = None
        self._frame_prompts: dict[int, list[dict]] = {}  # prompts of frames not in preview.mp4 yet
        self._next_preview = 0
        self._written: set[int] = set()
        self._prompts = open(root / PROMPTS_USED, "a" if append_prompts else "w", encoding="utf-8")
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self.object_frames: dict[int, int] = {}   # object id -> frames where it has pixels
        self.frames_written = 0
        self.prompt_lines = 0
        self.formats_made: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="output-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ called from the job

    def mask(self, frame: int, id_map: np.ndarray) -> None:
        self._put(("mask", frame, id_map))

    def prompt(self, p: PromptUsed) -> None:
        self._put(("prompt", p))

    def alpha(self, frame: int, alpha: np.ndarray, rgba: np.ndarray | None = None,
              fine: np.ndarray | None = None) -> None:
        """alpha/<stem>.png (8-bit), with `rgba` foreground/<stem>.png (an RGBA cut-out), and with
        output.formats "png16" alpha16/<stem>.png from `fine` (the matte before rounding)."""
        self._put(("alpha", frame, alpha, rgba, fine if self.png16 else None))

    def formats(self, formats: tuple[str, ...], fps: float) -> list[str]:
        """Write the interchange formats (core.outputs.formats) from the finished masks, on the writer
        thread; returns the files and folders made."""
        self._put(("formats", tuple(formats), fps))
        self.flush()
        return self.formats_made

    def flush(self) -> None:
        """Block until everything queued so far is on disk."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._prompts.close()
        if self._video is not None:
            self._video.close()
            self._video = None
        self._raise()

    def _put(self, item) -> None:
        self._raise()
        self._queue.put(item)

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # ------------------------------------------------------------ writer thread

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    self._handle(item)
            except BaseException as e:  # surfaced to the job on its next call
                self._error = e
            finally:
                self._queue.task_done()

    def _handle(self, item) -> None:
        kind = item[0]
        if kind == "prompt":
            record = prompt_record(item[1], self.folder)
            self._prompts.write(json.dumps(record) + "\n")
            self._prompts.flush()
            self.prompt_lines += 1
            if self._preview is not None and record["frame"] >= self._next_preview:
                self._frame_prompts.setdefault(record["frame"], []).append(record)
            return
        if kind == "formats":
            from core.outputs.formats import object_classes, write_formats

            self._prompts.flush()
            classes = object_classes(self.root / PROMPTS_USED)
            self.formats_made = write_formats(self.root, self.folder, item[1], classes, item[2])
            return
        if kind == "alpha":
            _, frame, alpha, rgba, fine = item
            stem = self.folder.stem(frame)
            if fine is not None:
                from core.outputs.formats import write_alpha16

                write_alpha16(self.root, stem, fine)
            (self.root / ALPHA_DIR).mkdir(exist_ok=True)
            if not cv2.imwrite(str(self.root / ALPHA_DIR / f"{stem}.png"), alpha):
                raise OSError(f"could not write {self.root / ALPHA_DIR / stem}.png")
            if rgba is not None:
                (self.root / FOREGROUND_DIR).mkdir(exist_ok=True)
                cv2.imwrite(str(self.root / FOREGROUND_DIR / f"{stem}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
            return
        _, frame, id_map = item
        id_map = fill_small_holes(id_map, self._fill)
        write_palette_png(self.masks_dir / f"{self.folder.stem(frame)}.png", id_map)
        counts = np.bincount(id_map.ravel(), minlength=1)
        for obj in np.nonzero(counts[1:])[0] + 1:
            self.object_frames[int(obj)] = self.object_frames.get(int(obj), 0) + 1
        self.frames_written += 1
        if self._preview is not None:
            self._written.add(frame)
            self._advance_preview(frame, id_map)

    def _advance_preview(self, frame: int, id_map: np.ndarray) -> None:
        """Frames may finish out of order (backward sweep); the video takes them in order."""
        while self._next_preview in self._written:
            i = self._next_preview
            ids = id_map if i == frame else read_mask(self.masks_dir / f"{self.folder.stem(i)}.png")
            self._preview_frame(i, ids)
            self._written.discard(i)
            self._next_preview += 1

    def rebuild_preview(self, settings: PreviewSettings) -> None:
        """Render preview.mp4 from the masks on disk (after a resumed job, whose video was cut)."""
        self.flush()
        self._preview = settings
        (self.root / PREVIEW).unlink(missing_ok=True)
        self._prompts.flush()
        self._frame_prompts = {}
        for line in (self.root / PROMPTS_USED).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            self._frame_prompts.setdefault(int(record["frame"]), []).append(record)
        for i in range(len(self.folder)):
            self._preview_frame(i, read_mask(self.masks_dir / f"{self.folder.stem(i)}.png"))

    def _preview_frame(self, index: int, id_map: np.ndarray) -> None:
        p = self._preview
        assert p is not None
        rgb = self.folder.read_rgb(index)
        h, w = rgb.shape[:2]
        scale = min(1.0, p.max_side / max(h, w))
        size = (max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2))
        if (w, h) != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            id_map = cv2.resize(id_map, size, interpolation=cv2.INTER_NEAREST)
        source = self.folder.source
        if self._video is None:
            self._video = preview_video(self.root / PREVIEW, size, p.fps, source)
        alpha_path = self.root / ALPHA_DIR / f"{self.folder.stem(index)}.png"
        if alpha_path.is_file():  # matting: the cut-out over a checkerboard shows the matte itself
            alpha = cv2.imread(str(alpha_path), cv2.IMREAD_GRAYSCALE)
            if alpha.shape[:2] != rgb.shape[:2]:
                alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
            frame = over_checkerboard(rgb, alpha)
        else:
            frame = overlay(rgb, id_map, p.opacity)
        frame = annotate(frame, id_map, self._frame_prompts.pop(index, []), scale, p.banner)
        self._video.encode(frame)  # frames come in order: a video input's own timestamps follow


def over_checkerboard(rgb: np.ndarray, alpha: np.ndarray, cell: int = 16) -> np.ndarray:
    """The frame composited by its alpha over a grey checkerboard (how matting tools show a matte)."""
    h, w = alpha.shape
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // cell + xx // cell) % 2)[..., None] == 0, 200, 120).astype(np.float32)
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.clip(rgb.astype(np.float32) * a + board * (1.0 - a), 0, 255).astype(np.uint8)
