from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import FrameFolderError
from core.frames import FrameFolder, FrameReader, FrameWindow, natural_key, to_model_input
from tests.conftest import make_clip


def _img(path: Path, w=32, h=24, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def test_natural_order_any_case_and_sidecars_ignored(tmp_path: Path):
    for name in ["frame_10.png", "frame_7.PNG", "frame_2.JPG", "Frame_1.jpeg"]:
        _img(tmp_path / name)
    (tmp_path / "prompts.json").write_text("{}")
    (tmp_path / "job.toml").write_text("")
    (tmp_path / ".ready").write_text("")
    _img(tmp_path / "masks" / "frame_1.png")
    _img(tmp_path / ".hidden_3.jpg")
    folder = FrameFolder.scan(tmp_path)
    assert folder.names == ("Frame_1.jpeg", "frame_2.JPG", "frame_7.PNG", "frame_10.png")
    assert (folder.width, folder.height) == (32, 24)
    assert folder.stem(3) == "frame_10"


def test_natural_key_orders_numbers_by_value():
    names = ["f100.jpg", "f9.jpg", "f10.jpg", "f0009b.jpg"]
    assert sorted(names, key=natural_key)[:3] == ["f9.jpg", "f0009b.jpg", "f10.jpg"]


def test_odd_size_names_first_odd_frame(tmp_path: Path):
    for i in range(5):
        _img(tmp_path / f"{i:03d}.jpg", w=40 if i in (3, 4) else 32)
    with pytest.raises(FrameFolderError, match=r"frame 003.jpg is 40x24 but 000.jpg is 32x24"):
        FrameFolder.scan(tmp_path)


@pytest.mark.parametrize("setup, words", [
    (lambda d: None, "the folder is empty"),
    (lambda d: (d / "notes.txt").write_text("x"), "found: notes.txt"),
    (lambda d: (_img(d / "000.jpg"), (d / "001.jpg").write_bytes(b"")), r"001.jpg is an empty \(0-byte\) file"),
    (lambda d: (_img(d / "000.jpg"), (d / "001.jpg").write_bytes(b"\xff\xd8garbage")), "001.jpg cannot be read"),
    (lambda d: (_img(d / "000.jpg"), _img(d / "cover.jpg")), "cover.jpg in"),
    (lambda d: (_img(d / "1.jpg"), _img(d / "01.jpg")), "have the same number"),
])
def test_bad_folders_have_clear_errors(tmp_path: Path, setup, words):
    d = tmp_path / "clip"
    d.mkdir()
    setup(d)
    with pytest.raises(FrameFolderError, match=words):
        FrameFolder.scan(d)


def test_not_a_folder(tmp_path: Path):
    with pytest.raises(FrameFolderError, match="is not a folder"):
        FrameFolder.scan(tmp_path / "missing")


def test_symlink_leading_outside_is_refused_when_confined(tmp_path: Path):
    from core.config import LimitsConfig
    from core.intake import check_tree

    inbox = tmp_path / "inbox"
    clip = inbox / "clip"
    _img(clip / "000.jpg")
    _img(tmp_path / "secret" / "001.jpg")
    os.symlink(tmp_path / "secret" / "001.jpg", clip / "001.jpg")
    os.symlink("000.jpg", clip / "002.jpg")  # a link inside the folder is fine
    check_tree(clip, LimitsConfig(), confined=False)
    assert len(FrameFolder.scan(clip)) == 3  # the CLI follows links the user made
    with pytest.raises(FrameFolderError, match="001.jpg .*outside"):
        check_tree(clip, LimitsConfig(), confined=True)


def test_reader_prefetches_both_directions_and_stays_bounded(tmp_path: Path):
    clip = make_clip(tmp_path / "c", n=20, size=(48, 32))
    folder = FrameFolder.scan(clip)
    decoded: list[int] = []

    def prepare(rgb):
        return rgb

    reader = FrameReader(folder, prepare, prefetch=3)
    original = reader._load

    def counting(i):
        decoded.append(i)
        return original(i)

    reader._load = counting  # type: ignore[method-assign]
    for i in range(10):
        frame = reader.get(i)
        ref = cv2.cvtColor(cv2.imread(str(folder.path(i))), cv2.COLOR_BGR2RGB)
        assert np.array_equal(frame, ref)
        assert len(reader._pending) <= 3
    for i in range(9, -1, -1):   # backward: recent frames and read-ahead serve it
        reader.get(i)
    reader.close()
    # every frame decoded a bounded number of times, not once per access pattern explosion
    assert max(decoded.count(i) for i in set(decoded)) <= 2
    assert set(range(10)) <= set(decoded)


def test_window_maps_local_to_global(tmp_path: Path):
    folder = FrameFolder.scan(make_clip(tmp_path / "c", n=8, size=(48, 32)))
    reader = FrameReader(folder, lambda rgb: rgb.mean(), prefetch=0)
    window = FrameWindow(reader, [0, 5, 6, 7], 5, 8)
    assert len(window) == 4
    assert window[1] == pytest.approx(float(cv2.imread(str(folder.path(5)))[..., ::-1].mean()))
    reader.close()


def test_model_input_shape_and_normalisation():
    rgb = np.full((30, 50, 3), 124, np.uint8)
    x = to_model_input(rgb, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert abs(float(x[0].mean()) - (124 - 0.485 * 255) / (0.229 * 255)) < 1e-3
