from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core.engine.events import PromptUsed
from core.errors import OutputError
from core.frames import FrameFolder
from core.outputs.folder import check_target, open_staging, publish, staging_path
from core.outputs.masks import davis_palette, fill_small_holes, read_mask, write_palette_png
from core.outputs.writer import OutputWriter, PreviewSettings
from tests.conftest import make_clip


def test_palette_png_roundtrip(tmp_path: Path):
    ids = np.zeros((20, 30), np.uint8)
    ids[2:8, 3:9] = 1
    ids[10:15, 10:25] = 7
    write_palette_png(tmp_path / "m.png", ids)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and im.size == (30, 20)
        pal = np.array(im.getpalette()[:24]).reshape(-1, 3)
    assert np.array_equal(read_mask(tmp_path / "m.png"), ids)
    assert tuple(pal[1]) == (128, 0, 0) and tuple(pal[2]) == (0, 128, 0)  # the DAVIS colours
    assert tuple(davis_palette()[3]) == (128, 128, 0)


def test_fill_small_holes_only_fills_small_background_holes():
    ids = np.zeros((40, 40), np.uint8)
    ids[5:35, 5:35] = 1
    ids[10:12, 10:12] = 0      # 4-pixel hole -> filled
    ids[20:30, 20:30] = 0      # 100-pixel hole -> kept
    ids[15:17, 25:27] = 2      # another object's pixels are never taken
    out = fill_small_holes(ids, 8)
    assert out[10, 10] == 1 and out[25, 25] == 0 and out[15, 25] == 2
    assert fill_small_holes(ids, 0) is ids


def _fill_on_whole_frame(id_map: np.ndarray, max_area: int) -> np.ndarray:
    """The plain rule: per object, the small background components of everything that is not it."""
    out = id_map.copy()
    for obj in np.unique(id_map):
        if obj == 0:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats((id_map != obj).astype(np.uint8), connectivity=8)
        small = np.nonzero(stats[1:, cv2.CC_STAT_AREA] <= max_area)[0] + 1
        out[np.isin(labels, small) & (id_map == 0)] = obj
    return out


@pytest.mark.parametrize("seed", range(12))
def test_filling_holes_inside_each_box_equals_the_whole_frame_rule(seed: int):
    """Objects with holes, touching the frame's edges and each other, on frames from tiny to wide."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(6, 90)), int(rng.integers(6, 160))
    ids = np.zeros((h, w), np.uint8)
    for k in range(int(rng.integers(1, 9))):
        x, y = int(rng.integers(-5, w)), int(rng.integers(-5, h))
        cv2.rectangle(ids, (x, y), (x + int(rng.integers(2, w)), y + int(rng.integers(2, h))), k + 1, -1)
        cv2.circle(ids, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 12)), k + 1, -1)
    ids[rng.random((h, w)) < 0.08] = 0       # pinholes
    ids[rng.random((h, w)) < 0.01] = 9       # specks of another object
    for max_area in (1, 4, 30, h * w):
        assert np.array_equal(fill_small_holes(ids, max_area), _fill_on_whole_frame(ids, max_area)), max_area


def test_writer_masks_prompts_and_ordered_preview(tmp_path: Path):
    folder = FrameFolder.scan(make_clip(tmp_path / "clip", n=6, size=(64, 48), name="f_{i}.png"))
    out = tmp_path / "out"
    out.mkdir()
    writer = OutputWriter(out, folder, preview=PreviewSettings(10.0, 32, 0.5))
    for frame in [2, 1, 0, 3, 4, 5]:   # a backward sweep finishes frames out of order
        ids = np.zeros((48, 64), np.uint8)
        ids[:10, :10] = 1 + frame % 2
        writer.mask(frame, ids)
    writer.prompt(PromptUsed(0, 1, "user", 0, points=((3.0, 4.5),), labels=(1,)))
    writer.close()
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"f_{i}.png" for i in range(6)]
    line = json.loads((out / "prompts_used.jsonl").read_text().splitlines()[0])
    assert line == {"frame": 0, "frame_name": "f_0.png", "object_id": 1, "source": "user", "box": None,
                    "points": [[3, 4.5]], "labels": [1], "confidence": None, "chunk": 0}
    video = cv2.VideoCapture(str(out / "preview.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 32
    assert writer.object_frames == {1: 3, 2: 3}


def test_writer_errors_reach_the_job(tmp_path: Path):
    folder = FrameFolder.scan(make_clip(tmp_path / "clip", n=2, size=(32, 24)))
    out = tmp_path / "out"
    out.mkdir()
    writer = OutputWriter(out, folder)
    writer.mask(0, np.zeros((5, 5, 5, 5), np.uint8))  # not an image
    with pytest.raises(Exception):
        writer.flush()
    writer.close()


def test_output_folder_appears_only_when_complete(tmp_path: Path):
    out = tmp_path / "outbox" / "clip"
    stage = open_staging(out)
    (stage / "manifest.json").write_text("{}")
    assert not out.exists() and stage == staging_path(out) and stage.name.startswith(".")
    publish(stage, out, overwrite=False)
    assert (out / "manifest.json").exists() and not stage.exists()
    with pytest.raises(OutputError, match="already exists"):
        check_target(out, overwrite=False)
    stage = open_staging(out)
    (stage / "new").write_text("x")
    publish(stage, out, overwrite=True)
    assert (out / "new").exists() and not (out / "manifest.json").exists()


def test_preview_is_h264_with_ids_prompts_and_the_random_banner(tmp_path: Path):
    """preview.mp4 plays in browsers (H.264, yuv420p, index first) and shows where prompts were given."""
    import av

    size = (160, 120)
    folder = FrameFolder.scan(make_clip(tmp_path / "clip", n=4, size=size))
    out = tmp_path / "out"
    out.mkdir()
    writer = OutputWriter(out, folder, preview=PreviewSettings(10.0, 160, 0.0, "RANDOM"))
    writer.prompt(PromptUsed(1, 3, "user", 0, points=((30.0, 90.0), (130.0, 90.0)), labels=(1, 0)))
    writer.prompt(PromptUsed(2, 3, "detector", 0, box=(60.0, 40.0, 120.0, 100.0), confidence=0.8))
    for frame in range(4):
        ids = np.zeros((120, 160), np.uint8)
        ids[50:90, 70:110] = 3
        writer.mask(frame, ids)
    writer.close()
    data = (out / "preview.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while it downloads
    with av.open(str(out / "preview.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.format.name == "yuv420p"
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in video.decode(stream)]
    assert len(frames) == 4
    clean = cv2.cvtColor(cv2.imread(str(folder.path(1))), cv2.COLOR_BGR2RGB).astype(int)

    def red(px):
        return px[0] - (px[1] + px[2]) / 2

    assert red(frames[0][3, 80]) > 60 and red(clean[3, 80]) < 40  # the banner across the top
    r, g, b = frames[1][90, 30]
    assert g > r + 60 and g > b + 60  # the object point: a green dot on its frame
    r, g, b = frames[1][90, 130]
    assert r > g + 60  # the background point: red
    assert abs(frames[0][90, 30] - clean[90, 30]).max() < 40  # no dot on a frame without that prompt
    yellow = frames[2][40:44, 60:64].reshape(-1, 3).mean(0)  # the detector box's top-left bracket
    assert yellow[0] > 150 and yellow[1] > 150 and yellow[2] < 120
    label = frames[3][62:79, 82:99].reshape(-1, 3)  # the id: white on a black box at the object's centre
    assert (label.max(1) < 50).sum() > 20 and (label.min(1) > 200).sum() > 5
    assert (frames[3][5:40, 5:40].reshape(-1, 3).max(1) < 50).sum() < 5  # and nowhere else
