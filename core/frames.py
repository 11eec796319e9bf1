"""Frame folders: discovery, natural order, size checks, and lazy decoding with prefetch.

A frame folder holds JPEG/PNG images whose names carry a frame number. Sidecar files
(prompts.json, job.toml, .ready) and sub-folders (masks/, diffs/) are never frames.
Frames are decoded one at a time from disk; nothing copies the video or holds it in memory.
"""

from __future__ import annotations

import re
import stat
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.config import LimitsConfig, VideoConfig
from core.errors import FrameFolderError
from core.video import VideoSource, is_video_name, output_names, probe_video

if TYPE_CHECKING:
    from core.video import VideoInfo

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders frame_7.png before frame_10.png (case-insensitive text parts)."""
    parts = _NUMBER.split(name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))


def is_frame_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class FrameFolder:
    """The ordered frames of one input: numbered images checked to be readable and of one size, or the
    pictures of one video file (then `names` are the output names 00000.png, ... and `video` decodes)."""

    root: Path
    names: tuple[str, ...]
    width: int
    height: int
    video: VideoSource | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        """The image file of frame `index` (frame folders only: a video's frames are not files)."""
        if self.video is not None:
            raise ValueError(f"frame {index} of {self.video.info.path.name} is a video picture, not a file; "
                             "use read_rgb")
        return self.root / self.names[index]

    def frame_file(self, index: int) -> Path | None:
        """The image file of frame `index`, None for a video."""
        return None if self.video is not None else self.root / self.names[index]

    def read_rgb(self, index: int) -> np.ndarray:
        """Frame `index` decoded to HxWx3 uint8 RGB (from its file, or from the video)."""
        return self.video.rgb(index) if self.video is not None else decode_rgb(self.root / self.names[index])

    @property
    def source(self) -> "VideoInfo | None":
        return self.video.info if self.video is not None else None

    def close(self) -> None:
        """Let go of open video decoders (a later read opens them again)."""
        if self.video is not None:
            self.video.close()

    @classmethod
    def open_video(cls, file: str | Path, *, limits: LimitsConfig | None = None,
                   video: VideoConfig | None = None) -> "FrameFolder":
        """The frames of one video file, indexed (not decoded) and checked against `limits`."""
        file = Path(file)
        limits, video = limits or LimitsConfig(), video or VideoConfig()
        info = probe_video(file, max_frames=limits.max_frames, max_pixels=limits.max_frame_pixels,
                           on_damage=video.on_damage)
        return cls(root=file.parent, names=output_names(info.frames), width=info.width, height=info.height,
                   video=VideoSource(info, cache_bytes=video.cache_mb * 2**20))

    def stem(self, index: int) -> str:
        return Path(self.names[index]).stem

    def index_of(self, name: str) -> int | None:
        try:
            return self.names.index(name)
        except ValueError:
            return None

    @classmethod
    def scan(cls, root: str | Path, *, exclude: frozenset[str] = frozenset(),
             limits: LimitsConfig | None = None, video: VideoConfig | None = None) -> "FrameFolder":
        """List, order and check the frames of `root`; files named in `exclude` (prompts.json's mask
        prompts) are not frames. Frame count and pixel size are held to `limits` before decoding. A folder
        with no frame images but exactly one video file is that video's frames."""
        root = Path(root)
        limits = limits or LimitsConfig()
        if not root.is_dir():
            raise FrameFolderError(f"{root} is not a folder; give a folder of numbered JPEG or PNG frames, or a "
                                   "video file")
        names = []
        videos = []
        for entry in root.iterdir():
            if is_video_name(entry.name) and entry.is_file():
                videos.append(entry)
                continue
            if not is_frame_name(entry.name) or entry.name in exclude:
                continue
            if entry.is_dir():
                continue
            if not _NUMBER.search(Path(entry.name).stem):
                raise FrameFolderError(
                    f"image {entry.name} in {root} has no frame number in its name; "
                    "rename it (for example 00000.jpg) or move it out of the folder"
                )
            names.append(entry.name)
            if len(names) > limits.max_frames:
                raise FrameFolderError(
                    f"{root} holds more than {limits.max_frames:,} frames (limits.max_frames); split the video "
                    "into several folders, or ask the daemon's owner to raise the limit"
                )
        if not names and len(videos) == 1:
            return cls.open_video(videos[0], limits=limits, video=video)
        if not names and videos:
            shown = ", ".join(sorted(v.name for v in videos)[:5])
            raise FrameFolderError(f"{root} holds {len(videos)} video files ({shown}); a folder is one video: put "
                                   "each file in a folder of its own, or drop the files into the inbox by themselves")
        if not names:
            others = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:5]
            seen = f" (found: {', '.join(others)})" if others else " (the folder is empty)"
            raise FrameFolderError(
                f"no frames in {root}{seen}; add numbered .jpg/.jpeg/.png images such as 00000.jpg, or one video "
                "file (.mp4, .mov, .mkv, .avi, .webm)"
            )
        names.sort(key=natural_key)
        for a, b in zip(names, names[1:]):
            if natural_key(a) == natural_key(b):
                raise FrameFolderError(
                    f"frames {a} and {b} in {root} have the same number; remove one of them"
                )
        width, height = image_size(root / names[0], limits.max_frame_pixels, "frame")
        for name in names[1:]:
            size = image_size(root / name, limits.max_frame_pixels, "frame")
            if size != (width, height):
                raise FrameFolderError(
                    f"frame {name} is {size[0]}x{size[1]} but {names[0]} is {width}x{height}; "
                    "all frames of a folder must have one size (resize or remove the odd frame)"
                )
        return cls(root=root, names=tuple(names), width=width, height=height)


def _pil_open(path: Path):
    """PIL's own Image.open. Ultralytics replaces Image.open process-wide with a version that tries
    to pip-install a HEIF plugin whenever a file is not an image; a corrupt frame must just fail."""
    opener = Image.open
    if getattr(opener, "__module__", "").startswith("ultralytics"):
        import sys

        opener = getattr(sys.modules[opener.__module__], "_image_open", opener)
    return opener(path)


def image_size(path: Path, max_pixels: int, what: str = "image", *, error: type[Exception] = FrameFolderError,
               shown: str | None = None) -> tuple[int, int]:
    """Width and height from the image header, checked against `max_pixels` before any decoding, with a
    clear error for unreadable files. `what` names the file's role (frame, mask, ...), `shown` how the
    file is named in errors (default its name), `error` the exception type raised (a TrainingError for
    training data)."""
    name = shown or path.name
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {name} is not a regular file (a pipe, socket or device); remove it")
        if st.st_size == 0:
            raise error(f"{what} {name} is an empty (0-byte) file; re-export or remove it")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            with _pil_open(path) as im:
                size = im.size
                w, h = size
                if w * h > max_pixels:
                    raise error(f"{what} {name} is {w}x{h} ({w * h:,} pixels), more than limits.max_frame_pixels "
                                f"({max_pixels:,}); scale the video down, or ask the daemon's owner to raise the limit")
                im.verify()
                fmt = im.format
        if fmt == "JPEG" and not _ends_like_jpeg(path):
            with _pil_open(path) as im:  # a truncated JPEG decodes to grey; make sure it is whole
                im.load()
        return size
    except error:
        raise
    except Image.DecompressionBombError:  # PIL's own ceiling, far above any sane limit
        raise error(
            f"{what} {name} declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, more than "
            f"limits.max_frame_pixels ({max_pixels:,}); nothing was decoded: re-export it at a normal size") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError, EOFError) as e:
        raise error(f"{what} {name} cannot be read as an image ({e}); re-export or remove it") from e


def check_frame_sized(path: Path, width: int, height: int, what: str) -> None:
    """`path` (a mask, a difference image) must be an image of the frames' size, read from its header, so a
    file that would decode to gigabytes is refused without decoding it."""
    size = image_size(path, width * height, what)
    if size != (width, height):
        raise FrameFolderError(f"{what} {path.name} is {size[0]}x{size[1]} but the frames are {width}x{height}; "
                               "it must match its frame")


def _ends_like_jpeg(path: Path) -> bool:
    """JPEG files end with the EOI marker (some cameras append data; those get a full decode)."""
    with open(path, "rb") as f:
        f.seek(-2, 2)
        return f.read(2) == b"\xff\xd9"


def decode_rgb(path: Path) -> np.ndarray:
    """Decode a frame to an HxWx3 uint8 RGB array."""
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise FrameFolderError(f"frame {path.name} cannot be decoded (corrupt or truncated); re-export or remove it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ImageNet statistics SAM2 normalises with.
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size and normalise as SAM2 expects; returns a 3xSxS float32 array."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_CUBIC
    resized = cv2.resize(rgb, (size, size), interpolation=interp).astype(np.float32)
    resized -= _MEAN
    resized /= _STD
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


class FrameReader:
    """Decodes frames on demand with a small read-ahead window on a background thread.

    `get(i)` returns frame i prepared by `prepare` (for SAM2: a normalised tensor). Reads
    ahead in the direction of the last two accesses, so backward propagation is prefetched
    too. Memory held is at most `prefetch` frames ahead plus `keep` recent ones.
    """

    def __init__(self, folder: FrameFolder, prepare: Callable[[np.ndarray], object],
                 prefetch: int = 6, keep: int = 2):
        self.folder = folder
        self._prepare = prepare
        self._prefetch = prefetch
        self._keep = max(1, keep)
        self._pending: dict[int, Future] = {}
        self._recent: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frame-prefetch") if prefetch else None
        self._last: int | None = None
        self.wait_seconds = 0.0  # time callers spent blocked on decoding

    def _load(self, index: int) -> object:
        return self._prepare(self.folder.read_rgb(index))

    def get(self, index: int, lo: int = 0, hi: int | None = None) -> object:
        """Frame `index`; read-ahead stays inside [lo, hi)."""
        hi = len(self.folder) if hi is None else hi
        with self._lock:
            if index in self._recent:
                self._recent.move_to_end(index)
                value = self._recent[index]
                self._schedule(index, lo, hi)
                return value
            future = self._pending.pop(index, None)
        start = time.perf_counter()
        value = future.result() if future is not None else self._load(index)
        self.wait_seconds += time.perf_counter() - start
        with self._lock:
            self._recent[index] = value
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
            self._schedule(index, lo, hi)
        return value

    def _schedule(self, index: int, lo: int, hi: int) -> None:
        step = -1 if self._last is not None and index < self._last else 1
        self._last = index
        if self._pool is None:
            return
        wanted = {index + step * k for k in range(1, self._prefetch + 1)}
        wanted = {i for i in wanted if lo <= i < hi and i not in self._recent}
        for i in list(self._pending):
            if i not in wanted:
                self._pending.pop(i).cancel()
        for i in sorted(wanted, key=lambda i: abs(i - index)):
            if i not in self._pending:
                self._pending[i] = self._pool.submit(self._load, i)

    def close(self) -> None:
        with self._lock:
            for f in self._pending.values():
                f.cancel()
            self._pending.clear()
            self._recent.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class FrameWindow(Sequence):
    """A list-like view of chosen frames for one SAM2 inference state (local index -> frame)."""

    def __init__(self, reader: FrameReader, frames: Sequence[int], lo: int, hi: int):
        self._reader = reader
        self._frames = list(frames)
        self._lo, self._hi = lo, hi

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, local: int):  # type: ignore[override]
        return self._reader.get(self._frames[local], self._lo, self._hi)
