"""Video files as input: the frame index, frame-accurate random access, odd sources, damaged files."""

from __future__ import annotations

import json
import pickle
import threading
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.config import LimitsConfig, VideoConfig
from core.errors import FrameFolderError
from core.frames import FrameFolder
from core.video import VideoSource, output_names, probe_video
from tests.conftest import data_path
from tests.video_files import decode_all, encode, read_rgb_frames

LIMITS = dict(max_frames=100_000, max_pixels=40_000_000)


def synthetic(n: int, size=(96, 64), seed: int = 3) -> list[np.ndarray]:
    """Frames that all differ (a moving bar and a frame-number stripe), so a frame off by one shows."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur((rng.random((h, w, 3)) * 160 + 40).astype(np.uint8), (0, 0), 2)
    out = []
    for i in range(n):
        f = base.copy()
        x = (i * 7) % (w - 10)
        f[:, x:x + 10] = (240, 30 + 4 * i % 200, 20)
        f[: h // 8, :] = (i * 37) % 256
        out.append(f)
    return out


@pytest.fixture(scope="module")
def dog_frames() -> list[np.ndarray]:
    files = sorted(data_path("vos", "dog", "images").glob("*.jpg"))[:24]
    return read_rgb_frames(files)


def test_random_access_matches_a_straight_decode(tmp_path: Path, dog_frames):
    """H.264 with B-frames and short groups of pictures: backward sweeps, jumps and random order each return
    exactly the picture a straight decode gives at that index, also with a window of only 4 frames."""
    path = encode(tmp_path / "dog.mp4", dog_frames)
    reference = decode_all(path)
    info = probe_video(path, **LIMITS)
    assert info.frames == len(dog_frames) == len(reference)
    assert len(info.keyframes) >= 3 and info.keyframes[0] == 0
    assert not info.variable_rate and info.rate == 25
    source = VideoSource(info, cache_bytes=4 * 854 * 480 * 3)
    rng = np.random.default_rng(0)
    order = [*range(len(reference) - 1, -1, -1), *rng.integers(0, len(reference), 60).tolist(), 0, 23, 1, 22]
    for i in order:
        assert np.array_equal(source.rgb(i), reference[i]), f"frame {i}"
    source.close()
    assert np.array_equal(source.rgb(5), reference[5])  # a closed source opens its decoder again
    source.close()


def test_threads_read_independently(tmp_path: Path):
    frames = synthetic(30)
    path = encode(tmp_path / "s.mp4", frames, options={"g": "5"})
    reference = decode_all(path)
    source = VideoSource(probe_video(path, **LIMITS))
    errors = []

    def sweep(order):
        try:
            for i in order:
                assert np.array_equal(source.rgb(i), reference[i]), i
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=sweep, args=(o,)) for o in (range(30), range(29, -1, -1), range(0, 30, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    source.close()
    assert not errors


@pytest.mark.parametrize("suffix,codec,pix_fmt", [(".mkv", "ffv1", "bgr0"), (".mov", "png", "rgb24"),
                                                  (".avi", "ffv1", "bgr0")])
def test_lossless_sources_give_the_exact_frames(tmp_path: Path, suffix, codec, pix_fmt):
    frames = synthetic(12)
    folder = FrameFolder.scan(_only(tmp_path / "v", encode(tmp_path / f"clip{suffix}", frames, codec=codec,
                                                            pix_fmt=pix_fmt)))
    assert folder.video is not None and len(folder) == 12 and (folder.width, folder.height) == (96, 64)
    assert folder.names[0] == "00000.png" and folder.stem(11) == "00011"
    for i in (11, 0, 6, 5, 7):
        assert np.array_equal(folder.read_rgb(i), frames[i])
    folder.close()


def test_variable_frame_rate_keeps_every_picture_and_its_time(tmp_path: Path):
    times_ms = [0, 40, 80, 200, 210, 220, 500, 540, 1000, 1033]
    frames = synthetic(len(times_ms))
    path = encode(tmp_path / "vfr.mkv", frames, codec="ffv1", pix_fmt="bgr0", pts=times_ms, time_base=Fraction(1, 1000))
    info = probe_video(path, **LIMITS)
    assert info.frames == len(times_ms) and info.variable_rate
    assert [round(float(p * info.time_base) * 1000) for p in info.pts] == times_ms
    source = VideoSource(info)
    for i in (9, 3, 0, 6):
        assert np.array_equal(source.rgb(i), frames[i])
    source.close()


@pytest.mark.parametrize("rotation,turns", [(90, 1), (-90, 3), (180, 2)])
def test_rotation_metadata_is_applied(tmp_path: Path, rotation, turns):
    """The display matrix says how a player turns the stored picture (FFmpeg: counter-clockwise degrees);
    frames come out turned that way, so a portrait phone video is upright and its size is the shown one."""
    frames = synthetic(4, size=(96, 64))
    path = encode(tmp_path / "r.mp4", frames, codec="libx264", pix_fmt="yuv444p", rotation=rotation,
                  options={"qp": "0"})
    info = probe_video(path, **LIMITS)
    assert info.rotation == rotation % 360
    folder = FrameFolder.open_video(path)
    shown = (64, 96) if turns % 2 else (96, 64)
    assert (folder.width, folder.height) == shown
    stored = decode_all(path)[2]
    assert np.array_equal(folder.read_rgb(2), np.rot90(stored, k=turns))
    assert folder.read_rgb(2).shape == (shown[1], shown[0], 3)
    folder.close()


@pytest.mark.parametrize("pix_fmt,size", [("yuv420p10le", (96, 64)), ("yuv444p", (97, 61)), ("yuv444p10le", (65, 33))])
def test_ten_bit_yuv444_and_odd_sizes(tmp_path: Path, pix_fmt, size):
    frames = synthetic(6, size=size)
    path = encode(tmp_path / "x.mkv", frames, codec="libx264", pix_fmt=pix_fmt, options={"crf": "4"})
    folder = FrameFolder.open_video(path)
    assert folder.source.pix_fmt == pix_fmt and (folder.width, folder.height) == size
    for i in range(6):
        rgb = folder.read_rgb(i)
        assert rgb.dtype == np.uint8 and rgb.shape == (size[1], size[0], 3)
        scores = [cv2.PSNR(rgb, f) for f in frames]  # lossy, but the right picture: closest to its own frame
        assert scores[i] > 25 and int(np.argmax(scores)) == i, (i, scores)
    folder.close()


def test_truncated_file_fails_naming_the_frame_or_keeps_the_good_part(tmp_path: Path):
    frames = synthetic(40)
    whole = encode(tmp_path / "whole.mp4", frames, faststart=True, options={"g": "10"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(FrameFolderError, match=r"cut\.mp4 is damaged at frame \d+.*video\.on_damage = \"truncate\""):
        FrameFolder.open_video(cut)
    folder = FrameFolder.open_video(cut, video=VideoConfig(on_damage="truncate"))
    n = len(folder)
    assert 0 < n < 40 and folder.source.damaged_at == n
    assert "damaged at frame" in folder.source.warnings[0] and f"0-{n - 1}" in folder.source.warnings[0]
    reference = decode_all(whole)
    for i in (n - 1, 0):
        assert np.array_equal(folder.read_rgb(i), reference[i])
    folder.close()

    at_end = encode(tmp_path / "moov_at_end.mp4", frames)  # the index comes last: a cut file has none
    cut2 = tmp_path / "cut2.mp4"
    cut2.write_bytes(at_end.read_bytes()[:-2000])
    with pytest.raises(FrameFolderError, match=r"video cut2\.mp4 cannot be opened .*truncated"):
        FrameFolder.open_video(cut2)


def test_not_a_video_and_limits(tmp_path: Path):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(FrameFolderError, match="noise.mp4 cannot be opened"):
        FrameFolder.open_video(bad)
    path = encode(tmp_path / "s.mkv", synthetic(20), codec="ffv1", pix_fmt="bgr0")
    with pytest.raises(FrameFolderError, match=r"more than 10 frames \(limits.max_frames\)"):
        FrameFolder.open_video(path, limits=LimitsConfig(max_frames=10))
    with pytest.raises(FrameFolderError, match=r"96x64 .* more than\s+limits.max_frame_pixels"):
        FrameFolder.open_video(path, limits=LimitsConfig(max_frame_pixels=5000))


def test_the_suffix_chooses_the_demuxer_never_the_content(tmp_path: Path):
    """FFmpeg's content probing would open a concat script or a playlist named clip.mp4, which read other
    files; reelmask opens .mp4 only as MP4, so such a file is refused and nothing it names is read."""
    encode(tmp_path / "secret.mkv", synthetic(3), codec="ffv1", pix_fmt="bgr0")
    (tmp_path / "concat.mp4").write_text("ffconcat version 1.0\nfile secret.mkv\n")
    (tmp_path / "list.mp4").write_text(f"#EXTM3U\n#EXTINF:1,\nfile://{tmp_path / 'secret.mkv'}\n#EXT-X-ENDLIST\n")
    for name in ("concat.mp4", "list.mp4"):
        with pytest.raises(FrameFolderError, match=rf"{name} cannot be opened .*\.mp4 is read as MP4/QuickTime"):
            FrameFolder.open_video(tmp_path / name)
    mkv_named_mp4 = tmp_path / "wrong.mp4"
    (tmp_path / "secret.mkv").rename(mkv_named_mp4)
    with pytest.raises(FrameFolderError, match="another container than its suffix says"):
        FrameFolder.open_video(mkv_named_mp4)


def test_what_a_folder_with_videos_is(tmp_path: Path):
    two = tmp_path / "two"
    two.mkdir()
    encode(two / "a.mkv", synthetic(3), codec="ffv1", pix_fmt="bgr0")
    encode(two / "b.MP4", synthetic(3))
    with pytest.raises(FrameFolderError, match=r"holds 2 video files \(a.mkv, b.MP4\); a folder is one video"):
        FrameFolder.scan(two)
    (two / "b.MP4").unlink()
    assert FrameFolder.scan(two).video is not None  # one file: the video
    cv2.imwrite(str(two / "00000.png"), synthetic(1)[0])
    framed = FrameFolder.scan(two)  # frame images win: the video beside them is not the input
    assert framed.video is None and framed.names == ("00000.png",)


def test_sources_cross_to_other_workers_without_their_decoders(tmp_path: Path):
    frames = synthetic(8)
    folder = FrameFolder.open_video(encode(tmp_path / "s.mkv", frames, codec="ffv1", pix_fmt="bgr0"))
    folder.read_rgb(3)
    copy = pickle.loads(pickle.dumps(folder))
    assert np.array_equal(copy.read_rgb(6), frames[6]) and copy.names == folder.names
    folder.close()
    copy.close()


def test_output_names_widen_past_five_digits():
    assert output_names(3) == ("00000.png", "00001.png", "00002.png")
    assert output_names(100_001)[-1] == "100000.png" and output_names(100_001)[0] == "000000.png"


def _only(folder: Path, file: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file.rename(folder / file.name)
    return folder


def frames_jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
