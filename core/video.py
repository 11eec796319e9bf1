"""Video files as frame sources: probing, a frame index, and lazy frame-accurate decoding (PyAV).

`probe_video` reads the container once without decoding pictures (packet timestamps only, so it is
cheap even for hours of footage) and builds the index every frame is found by: frame i is the i-th
picture in presentation order, whatever the frame rate does (variable rate is fine). Decoding
happens later, one frame at a time, on whichever thread asks (`VideoSource.rgb`): each thread gets
its own decoder, reads forward without seeking, and for a jump or a backward read seeks to the
keyframe before the frame and decodes up to it, keeping a bounded window of decoded frames so a
backward sweep does not decode each group of pictures again for every frame.

Rotation metadata is applied (a phone's portrait video comes out upright), 10-bit and 4:4:4
sources are converted to 8-bit RGB, and a damaged file either fails with the frame where decoding
stopped or, with `video.on_damage = "truncate"`, keeps the frames before it with a warning.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from core.errors import FrameFolderError

# The demuxer is chosen by the file's suffix, never by probing its content: FFmpeg's probing would also
# open playlists and concat scripts (a text file named clip.mp4), which read other files and URLs.
DEMUXERS = {".mp4": "mov", ".mov": "mov", ".m4v": "mov", ".mkv": "matroska", ".webm": "matroska", ".avi": "avi"}
VIDEO_SUFFIXES = set(DEMUXERS)
_KINDS = {"mov": "MP4/QuickTime", "matroska": "Matroska/WebM", "avi": "AVI"}
ON_DAMAGE = ("fail", "truncate")


def is_video_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in VIDEO_SUFFIXES


def output_names(count: int) -> tuple[str, ...]:
    """00000.png, 00001.png, ...: a video's frames are named by their index (wider past 99,999 frames)."""
    width = max(5, len(str(max(count - 1, 0))))
    return tuple(f"{i:0{width}d}.png" for i in range(count))


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency
        raise FrameFolderError("reading video files needs PyAV: pip install av") from e
    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own console chatter; our errors say what went wrong
    return av


def _open(path: Path):
    """The container of `path`, with the demuxer its suffix names and local files only."""
    return _av().open(str(path), format=DEMUXERS[path.suffix.lower()], metadata_errors="ignore",
                      options={"protocol_whitelist": "file"})


def _when(pts: int | None, time_base: Fraction) -> str:
    return f" (at {float(pts * time_base):.3f} s)" if pts is not None else ""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learnt about a video file: its picture stream and the frame index."""

    path: Path
    codec: str
    pix_fmt: str
    width: int  # as shown, after rotation
    height: int
    rotation: int  # degrees counter-clockwise the stored pictures are turned to be shown upright
    time_base: Fraction
    rate: Fraction | None  # average frames per second as the container states it
    pts: tuple[int, ...]  # presentation timestamp of each frame, in time_base units, ascending
    keyframes: tuple[int, ...]  # indices of the frames a decoder can start from
    variable_rate: bool
    damaged_at: int | None = None  # frames from here on were cut off (video.on_damage = "truncate")
    damage: str = ""
    warnings: tuple[str, ...] = field(default=())

    @property
    def frames(self) -> int:
        return len(self.pts)

    def seconds(self, index: int) -> float:
        return float((self.pts[index] - self.pts[0]) * self.time_base)

    def record(self) -> dict:
        """The manifest's `source` entry."""
        return {
            "kind": "video", "file": self.path.name, "codec": self.codec, "pixel_format": self.pix_fmt,
            "width": self.width, "height": self.height, "rotation": self.rotation, "frames": self.frames,
            "frame_rate": float(self.rate) if self.rate else None,
            "frame_rate_fraction": f"{self.rate.numerator}/{self.rate.denominator}" if self.rate else None,
            "variable_frame_rate": self.variable_rate,
            "time_base": f"{self.time_base.numerator}/{self.time_base.denominator}",
            "duration_seconds": round(self.seconds(self.frames - 1) + float(1 / self.rate if self.rate else 0), 6),
            "damaged_at_frame": self.damaged_at, "keyframes": len(self.keyframes),
        }


def probe_video(path: Path, *, max_frames: int, max_pixels: int, on_damage: str = "fail") -> VideoInfo:
    """Open `path`, check it against the limits before decoding anything big, and index its frames."""
    if on_damage not in ON_DAMAGE:
        raise FrameFolderError(f'video.on_damage is "{on_damage}"; use "fail" or "truncate"')
    av = _av()
    name = path.name
    try:
        container = _open(path)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise FrameFolderError(
            f"video {name} cannot be opened ({_reason(e)}); it may be truncated (still being copied?), not a "
            f"video, or another container than its suffix says ({path.suffix} is read as "
            f"{_KINDS[DEMUXERS[path.suffix.lower()]]}): copy it again whole, rename it, or re-export it") from None
    try:
        if not container.streams.video:
            raise FrameFolderError(f"{name} holds no video stream; give a video file, or a folder of frames")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        coded_w, coded_h = ctx.width, ctx.height
        if coded_w <= 0 or coded_h <= 0:
            raise FrameFolderError(f"video {name} does not state its picture size; re-export it")
        if coded_w * coded_h > max_pixels:
            raise FrameFolderError(
                f"video {name} is {coded_w}x{coded_h} ({coded_w * coded_h:,} pixels a frame), more than "
                f"limits.max_frame_pixels ({max_pixels:,}); scale it down, or ask the daemon's owner to raise the limit")
        time_base = stream.time_base or Fraction(1, 90000)
        pts, keys, damage, expected = _index(container, stream, name, max_frames, time_base)
        if not pts:
            raise FrameFolderError(f"video {name} holds no frames{': ' + damage if damage else ''}; re-export it")
        first_index = stream.index
        codec = ctx.name
        rate = stream.average_rate or stream.guessed_rate
    finally:
        container.close()
    sorted_pts = sorted(pts)
    if len(set(sorted_pts)) != len(sorted_pts):
        raise FrameFolderError(f"video {name} has frames with the same timestamp; re-export it (remux with a "
                               "fresh timeline)")
    key_pts = {pts[i] for i in keys}
    if not damage and expected and expected > len(pts):
        damage = f"the container lists {expected} frames but only {len(pts)} are in the file"
    if on_damage == "truncate":  # what really decodes decides, damage in the middle included
        decoded, why = _decodable(path, first_index, name)
        if len(decoded) < len(sorted_pts) and not damage:
            damage = why or f"frame {len(decoded)} does not decode"
        sorted_pts = _before_gap(decoded) if damage else decoded
        if not sorted_pts:
            raise FrameFolderError(f"video {name}: no frame decodes ({damage}); re-export it")
    keyframes = tuple(i for i, p in enumerate(sorted_pts) if p in key_pts) or (0,)
    damaged_at = None
    warnings: list[str] = []
    if damage:
        damaged_at = len(sorted_pts)
        if on_damage == "fail":
            raise FrameFolderError(
                f"video {name} is damaged at frame {damaged_at}: {damage}; copy "
                f'it again or re-export it, or set video.on_damage = "truncate" to keep the {damaged_at} frames '
                "before it")
        warnings.append(f"video {name} is damaged at frame {damaged_at}: {damage}; only frames 0-{damaged_at - 1} "
                        "were processed (video.on_damage = \"truncate\")")
    first = _first_picture(path, first_index, name)
    steps = np.diff(np.asarray(sorted_pts, dtype=np.int64)) if len(sorted_pts) > 1 else np.zeros(0)
    variable = bool(steps.size and (steps.max() - steps.min()) > max(1, 0.02 * np.median(steps)))
    rotation, pix_fmt, (h, w) = first
    if rotation % 180:
        w, h = h, w
    return VideoInfo(path=path, codec=codec, pix_fmt=pix_fmt, width=w, height=h, rotation=rotation,
                     time_base=time_base, rate=Fraction(rate) if rate else None, pts=tuple(sorted_pts),
                     keyframes=keyframes, variable_rate=variable, damaged_at=damaged_at, damage=damage,
                     warnings=tuple(warnings))


def _before_gap(stamps: list[int], reorder: int = 16) -> list[int]:
    """The frames before the damage of a cut file: pictures whose neighbours were lost with the damaged
    packets (B-frames are stored after the frames they lean on) leave a gap near the end, and everything
    from the first gap on goes. Only the last `reorder` frames are looked at, so a variable frame rate's
    own pauses earlier in the video stay."""
    if len(stamps) < 3:
        return stamps
    step = float(np.median(np.diff(stamps)))
    for i in range(max(1, len(stamps) - reorder), len(stamps)):
        if stamps[i] - stamps[i - 1] > 1.5 * step:
            return stamps[:i]
    return stamps


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '")[0].strip() or type(e).__name__


def _index(container, stream, name: str, max_frames: int, time_base: Fraction):
    """Packet timestamps and keyframes of the picture stream, read without decoding."""
    av = _av()
    pts: list[int] = []
    keys: list[int] = []
    damage = ""
    expected = stream.frames or 0  # samples the container's index lists (hidden ones included)
    hidden = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                continue  # the demuxer's end-of-stream marker
            if getattr(packet, "is_discard", False):
                hidden += 1  # outside the container's edit list: decoded for reference, never shown
                if hidden > max_frames:
                    raise FrameFolderError(f"video {name} holds more than {max_frames:,} hidden pictures "
                                           "(limits.max_frames); re-export it")
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                raise FrameFolderError(
                    f"video {name} has pictures without timestamps (frame {len(pts)}); remux it into mp4 or mkv "
                    "(for example with ffmpeg -i IN -c copy OUT.mkv)")
            if packet.is_corrupt:
                damage = f"picture data of frame {len(pts)} is marked corrupt"
                break
            if packet.is_keyframe:
                keys.append(len(pts))
            pts.append(int(stamp))
            if len(pts) > max_frames:
                raise FrameFolderError(
                    f"video {name} holds more than {max_frames:,} frames (limits.max_frames); cut it into shorter "
                    "files, or ask the daemon's owner to raise the limit")
    except av.error.FFmpegError as e:
        damage = f"reading stopped after {len(pts)} frames{_when(pts[-1] if pts else None, time_base)} ({_reason(e)})"
    return pts, keys, damage, max(0, expected - hidden)


def _pictures(container, stream):
    """Decoded pictures of `stream`; when reading or decoding fails, what the decoder still holds comes out
    first, then a _DecodeError says why."""
    av = _av()
    try:
        for packet in container.demux(stream):
            yield from packet.decode()  # the demuxer's last, empty packet flushes the decoder
        return
    except av.error.FFmpegError as e:
        why = _reason(e)
    try:
        yield from stream.codec_context.decode(None)
    except av.error.FFmpegError:
        pass
    raise _DecodeError(why)


def _first_picture(path: Path, index: int, name: str) -> tuple[int, str, tuple[int, int]]:
    """Rotation, pixel format and stored size of the first decodable picture (the decoder must exist)."""
    av = _av()
    why = "the file holds no decodable picture"
    try:
        with _open(path) as c:
            for frame in _pictures(c, c.streams[index]):
                return int(round(frame.rotation or 0)) % 360, frame.format.name, (frame.height, frame.width)
    except (av.error.FFmpegError, _DecodeError) as e:
        why = _reason(e)
    raise FrameFolderError(f"video {name}: the first frame cannot be decoded ({why}); the codec may be "
                           "unsupported or the file damaged: re-export it (H.264, ProRes or FFV1 work)")


def _decodable(path: Path, index: int, name: str) -> tuple[list[int], str]:
    """Timestamps of the frames that decode, in order, up to the first that does not (and why)."""
    av = _av()
    stamps: list[int] = []
    try:
        with _open(path) as c:
            stream = c.streams[index]  # no frame threading: after an error it would lose the frames it held
            for frame in _pictures(c, stream):
                stamp = frame.pts if frame.pts is not None else frame.dts
                if stamp is None or (stamps and stamp <= stamps[-1]):
                    return stamps, f"frame {len(stamps)} has no usable timestamp"
                stamps.append(int(stamp))
    except (av.error.FFmpegError, _DecodeError) as e:
        return stamps, f"decoding stopped at frame {len(stamps)} ({_reason(e)})"
    return stamps, ""


class VideoSource:
    """Decoded RGB frames of one probed video, on demand, from any thread (each thread has its own decoder)."""

    def __init__(self, info: VideoInfo, *, cache_bytes: int = 64 * 2**20):
        self.info = info
        self.cache_bytes = cache_bytes
        self._local = threading.local()
        self._lock = threading.Lock()
        self._decoders: list[_Decoder] = []

    def __len__(self) -> int:
        return self.info.frames

    def rgb(self, index: int) -> np.ndarray:
        """Frame `index` as an HxWx3 uint8 RGB array, upright."""
        if not 0 <= index < self.info.frames:
            raise IndexError(f"frame {index} is outside the video's {self.info.frames} frames")
        decoder = getattr(self._local, "decoder", None)
        if decoder is None or decoder.closed:
            decoder = _Decoder(self.info, self.cache_bytes)
            self._local.decoder = decoder
            with self._lock:
                self._decoders = [d for d in self._decoders if not d.closed] + [decoder]
        return decoder.get(index)

    def __getstate__(self) -> dict:  # crosses to other workers as its index, never with open decoders
        return {"info": self.info, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["info"], cache_bytes=state["cache_bytes"])

    def close(self) -> None:
        """Close every thread's decoder (a later read opens a new one)."""
        with self._lock:
            decoders, self._decoders = self._decoders, []
        for d in decoders:
            d.close()


_FORWARD_KEEP = 3


class _Decoder:
    """One open container with a bounded window of decoded frames; used by one thread only. Reading
    forward keeps the last few frames; a seek (a jump, a backward read) keeps the frames from the
    keyframe up to the one asked for, at most `capacity`, for the backward reads that follow."""

    def __init__(self, info: VideoInfo, cache_bytes: int):
        self.info = info
        frame_bytes = info.width * info.height * 3
        self.capacity = int(min(256, max(4, cache_bytes // max(1, frame_bytes))))
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.container = None
        self.frames = None  # the decode generator
        self.next_index: int | None = None  # what the generator yields next (None: position unknown)
        self.closed = False
        self._by_pts = {p: i for i, p in enumerate(info.pts)}

    def close(self) -> None:
        self.closed = True
        self.frames = None
        self.cache.clear()
        if self.container is not None:
            self.container.close()
            self.container = None

    def get(self, index: int) -> np.ndarray:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        ahead = self.next_index is not None and self.next_index <= index < self.next_index + self.capacity
        if ahead:  # keep reading forward; a forward read keeps only the last few frames (re-reads at overlaps)
            return self._decode_to(index, keep_from=index - _FORWARD_KEEP + 1)
        # a jump or a backward read: start at the keyframe before the frame and keep the window that ends at it
        return self._seek_to(index)

    def _seek_to(self, index: int) -> np.ndarray:
        av = _av()
        info = self.info
        at = bisect.bisect_right(info.keyframes, index) - 1
        # before the first shown keyframe (a file cut without re-encoding: its keyframe is hidden by the
        # edit list): seek to the start, which lands on that hidden keyframe
        key = info.keyframes[at] if at >= 0 else 0
        if self.container is None:
            try:
                self.container = _open(info.path)
            except (av.error.FFmpegError, OSError) as e:
                raise FrameFolderError(f"video {info.path.name} cannot be opened any more ({_reason(e)}); was it "
                                       "moved or changed while the job ran?") from None
            if info.damaged_at is None:  # frame threading loses the frames it holds when a packet is bad
                self.container.streams.video[0].thread_type = "AUTO"
        stream = self.container.streams.video[0]
        try:
            self.container.seek(info.pts[key], stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            self.container.seek(0, stream=stream)  # containers without an index: from the start
        self.frames = _pictures(self.container, stream)
        self.next_index = None
        # pictures before the keyframe may lean on references the seek skipped: never keep those
        return self._decode_to(index, keep_from=max(key, index - self.capacity + 1))

    def _decode_to(self, index: int, keep_from: int) -> np.ndarray:
        while True:
            try:
                frame = next(self.frames)
            except StopIteration:
                raise self._damaged(index, "the file ends before it") from None
            except _DecodeError as e:
                raise self._damaged(index, str(e)) from None
            stamp = frame.pts if frame.pts is not None else frame.dts
            i = self._by_pts.get(stamp)
            if i is None:
                continue  # a picture the index does not know (before a seek target, or a discarded one)
            self.next_index = i + 1
            if i < keep_from:
                continue
            if i > index:  # the frame itself never came out of the decoder
                raise self._damaged(index, "the decoder skipped it")
            rgb = self._upright(frame.to_ndarray(format="rgb24"))
            self.cache[i] = rgb
            self.cache.move_to_end(i)
            while len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
            if i == index:
                return rgb

    def _upright(self, rgb: np.ndarray) -> np.ndarray:
        turns = (self.info.rotation // 90) % 4
        return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb

    def _damaged(self, index: int, why: str) -> FrameFolderError:
        info = self.info
        self.frames, self.next_index = None, None
        return FrameFolderError(
            f"video {info.path.name}: frame {index}{_when(info.pts[index], info.time_base)} cannot be decoded "
            f"({why}); the file is damaged: copy it again or re-export it, or set video.on_damage = \"truncate\" "
            "(a damaged tail is then cut off when the job starts)")


class _DecodeError(Exception):
    pass
