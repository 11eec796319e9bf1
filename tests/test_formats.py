"""output.formats: coco.json, yolo-seg labels, keep masks and the FFV1 mask video, each read back with
the tool that consumes it (pycocotools, Ultralytics' label reader, PyAV) and compared with masks/."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.frames import FrameFolder
from core.outputs.formats import object_classes, write_formats
from core.outputs.masks import read_mask, write_palette_png
from tests.conftest import FAST, data_path, make_clip, point_prompt, reelmask_command

ALL = ("png", "coco", "yolo-seg", "keep-mask", "mask-video")
FAST_ARGS = [a for s in FAST for a in ("--set", s)]


def _masks(root: Path, n: int = 5, size: tuple[int, int] = (80, 60)) -> FrameFolder:
    """A frame folder and a masks/ of palette PNGs: object 1 a moving box, object 7 a disc from frame 2
    (with a one-pixel speck beside it on frame 3), frame 4 empty."""
    clip = make_clip(root / "clip", n=n, size=size)
    (root / "out" / "masks").mkdir(parents=True)
    folder = FrameFolder.scan(clip)
    w, h = size
    for i in range(n):
        ids = np.zeros((h, w), np.uint8)
        if i < 4:
            ids[10:30, 5 + 5 * i:25 + 5 * i] = 1
        if 2 <= i < 4:
            cv2.circle(ids, (60, 40), 9, 7, -1)
        if i == 3:
            ids[2, 78] = 7
        write_palette_png(root / "out" / "masks" / f"{folder.stem(i)}.png", ids)
    return folder


def test_every_format_reads_back_as_the_masks(tmp_path: Path):
    from pycocotools import mask as rle

    folder = _masks(tmp_path)
    out = tmp_path / "out"
    made = write_formats(out, folder, ALL, {1: "dog"}, fps=12.5)
    assert made == ["coco.json", "labels/", "data.yaml", "keep/", "masks.mkv"]
    masks = [read_mask(out / "masks" / f"{folder.stem(i)}.png") for i in range(len(folder))]

    coco = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == list(folder.names)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert sorted(names.values()) == ["dog", "object"]
    present = {(i + 1, int(o)) for i, m in enumerate(masks) for o in np.unique(m) if o}
    assert {(a["image_id"], a["track_id"]) for a in coco["annotations"]} == present
    for a in coco["annotations"]:
        m = masks[a["image_id"] - 1] == a["track_id"]
        decoded = rle.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), m)
        assert a["area"] == int(m.sum()) and names[a["category_id"]] == ("dog" if a["track_id"] == 1 else "object")
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

    for i, m in enumerate(masks):
        keep = cv2.imread(str(out / "keep" / f"{folder.stem(i)}.png"), cv2.IMREAD_UNCHANGED)
        assert keep.dtype == np.uint8 and np.array_equal(keep == 255, m == 0) and set(np.unique(keep)) <= {0, 255}

    import av

    with av.open(str(out / "masks.mkv")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "ffv1" and float(stream.average_rate) == 12.5
        frames = [f.to_ndarray(format="gray") for f in video.decode(stream)]
    assert len(frames) == len(masks) and all(np.array_equal(f, m) for f, m in zip(frames, masks))


def test_ytvis_holds_each_object_over_every_frame(tmp_path: Path):
    from pycocotools import mask as rle

    folder = _masks(tmp_path)
    out = tmp_path / "out"
    assert write_formats(out, folder, ("ytvis",), {7: "ball"}, fps=25) == ["ytvis.json"]
    data = json.loads((out / "ytvis.json").read_text())
    assert data["videos"] == [{"id": 1, "width": 80, "height": 60, "length": 5, "file_names": list(folder.names)}]
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert sorted(names.values()) == ["ball", "object"]
    masks = [read_mask(out / "masks" / f"{folder.stem(i)}.png") for i in range(len(folder))]
    assert [a["track_id"] for a in data["annotations"]] == [1, 7]
    for a in data["annotations"]:
        assert names[a["category_id"]] == ("ball" if a["track_id"] == 7 else "object")
        assert len(a["segmentations"]) == len(a["bboxes"]) == len(a["areas"]) == 5
        for i, seg in enumerate(a["segmentations"]):
            m = masks[i] == a["track_id"]
            if not m.any():
                assert seg is None and a["areas"][i] is None
                continue
            decoded = rle.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            assert np.array_equal(decoded.astype(bool), m) and a["areas"][i] == int(m.sum())


def test_yolo_seg_labels_load_in_ultralytics(tmp_path: Path):
    from ultralytics.data.utils import verify_image_label

    folder = _masks(tmp_path)
    out = tmp_path / "out"
    write_formats(out, folder, ("yolo-seg",), {1: "dog", 7: "cat"}, fps=25)
    images = out / "images"
    images.mkdir()
    for i in range(len(folder)):
        shutil.copyfile(folder.path(i), images / folder.names[i])
    assert "nc: 2" in (out / "data.yaml").read_text() and '0: "cat"' in (out / "data.yaml").read_text()
    for i in range(len(folder)):
        label = out / "labels" / f"{folder.stem(i)}.txt"
        im_file, lb, shape, segments, *_rest, msg = verify_image_label(
            (str(images / folder.names[i]), str(label), "", False, 2, 0, 0, False))
        assert im_file is not None, msg
        ids = read_mask(out / "masks" / f"{folder.stem(i)}.png")
        want = sorted(0 if o == 7 else 1 for o in np.unique(ids) if o)  # class index: cat 0, dog 1
        assert sorted(int(c) for c in lb[:, 0]) == want and len(segments) == len(want)
        for cls, seg in zip(lb[:, 0], segments):  # each polygon covers its object's largest part
            poly = np.zeros(ids.shape, np.uint8)
            cv2.fillPoly(poly, [np.round(seg * [ids.shape[1], ids.shape[0]]).astype(np.int32)], 1)
            obj = ids == (7 if cls == 0 else 1)
            assert (poly.astype(bool) & obj).sum() >= 0.8 * obj.sum() - 1


def test_object_classes_take_the_detector_class_most_prompts_named(tmp_path: Path):
    lines = [{"object_id": 1, "class": "dog"}, {"object_id": 1, "class": "cat"}, {"object_id": 1, "class": "dog"},
             {"object_id": 2, "source": "user"}, {"object_id": 3, "class": "person"}]
    path = tmp_path / "prompts_used.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{half a line")
    assert object_classes(path) == {1: "dog", 3: "person"}


@pytest.mark.slow
def test_a_job_writes_its_formats_and_refuses_one_it_cannot(tmp_path: Path):
    clip = make_clip(tmp_path / "clip", n=4, size=(96, 64), prompts={"objects": [point_prompt((96, 64))]})
    sets = [a for s in (*FAST, f"output.formats={json.dumps(list(ALL))}") for a in ("--set", s)]
    r = subprocess.run([*reelmask_command(), "run", str(clip), "--out", str(tmp_path / "out"), *sets],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["formats"] == list(ALL)
    for name in manifest["format_files"]:
        assert (tmp_path / "out" / name.rstrip("/")).exists(), name
    (clip / "job.toml").write_text('[output]\nformats = ["png", "gif"]\n')
    r = subprocess.run([*reelmask_command(), "run", str(clip), "--out", str(tmp_path / "out2"), *FAST_ARGS],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "'gif'" in r.stderr and "coco" in r.stderr, r.stderr
    assert "RANDOM weights" not in r.stderr  # refused before SAM2 was built


@pytest.mark.slow
def test_detector_classes_name_the_coco_categories(tmp_path: Path):
    frames = sorted(data_path("vos", "dog", "images").glob("*.jpg"))[:10]
    yolo = data_path("models", "yolo11n-coco-dequant.pt")
    clip = tmp_path / "dog"
    clip.mkdir()
    for f in frames:
        shutil.copyfile(f, clip / f.name)
    (clip / "prompts.json").write_text(json.dumps({"detect": {"classes": ["dog"]}}))
    sets = [*FAST, f"models.yolo={yolo}", 'output.formats=["coco"]', "chunking.chunk_size=10"]
    r = subprocess.run([*reelmask_command(), "run", str(clip), "--out", str(tmp_path / "out"),
                        *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "prompts_used.jsonl").read_text().splitlines()]
    assert any(x.get("class") == "dog" for x in lines if x["source"] == "detector")
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    if not coco["annotations"]:
        pytest.skip("random SAM2 weights gave no mask pixels on this clip")
    assert "dog" in {c["name"] for c in coco["categories"]}


def test_matting_formats_png16_and_prores_read_back(tmp_path: Path):
    """16-bit mattes hold the unrounded alpha; alpha.mov (ProRes 4444) read back with PyAV has the
    foreground colours and the alpha of alpha/ within 10-bit quantisation."""
    import av

    from core.config import load_config
    from core.errors import ConfigError
    from core.pipeline import prepare_job, run_job
    from tests.test_matting_mode import soft_clip

    clip, _ = soft_clip(tmp_path / "clip", n=3)
    cfg = load_config(None, [*FAST, "matting.foreground=true", 'output.formats=["png16", "prores"]'],
                      use_default_path=False)
    out = tmp_path / "out"
    manifest = list(run_job(prepare_job(clip, cfg, mode="matting"), out))[-1].manifest
    assert manifest["format_files"] == ["alpha.mov", "alpha16/"]
    stems = [f"{i:05d}" for i in range(3)]
    for stem in stems:
        a16 = cv2.imread(str(out / "alpha16" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        a8 = cv2.imread(str(out / "alpha" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert a16.dtype == np.uint16 and np.abs(a16 / 65535.0 - a8 / 255.0).max() <= 0.5 / 255 + 1e-6
        assert len(np.unique(a16)) > len(np.unique(a8))  # more levels than 8 bits hold
    with av.open(str(out / "alpha.mov")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "prores" and stream.codec_context.format.name.startswith("yuva444p")
        frames = list(video.decode(stream))
    bits = int(frames[0].format.name.removeprefix("yuva444p").removesuffix("le"))  # FFmpeg decodes to 12 bits
    assert len(frames) == 3
    for stem, frame in zip(stems, frames):
        plane = frame.planes[3]
        alpha = np.frombuffer(bytes(plane), np.uint16).reshape(-1, plane.line_size // 2)[:frame.height, :frame.width]
        a8 = cv2.imread(str(out / "alpha" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert np.abs(alpha / (2 ** bits - 1) - a8 / 255.0).max() <= 1.5 / 1023
        rgb = frame.to_ndarray(format="rgb24")
        cut = cv2.cvtColor(cv2.imread(str(out / "foreground" / f"{stem}.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGB)
        inside = a8 > 128  # colours where the matte is solid (ProRes and 4:4:4 to RGB round a little)
        assert np.abs(rgb[inside].astype(int) - cut[inside].astype(int)).mean() < 3

    with pytest.raises(ConfigError, match="matting mode"):  # a matting format on a mask job: refused up front
        prepare_job(make_clip(tmp_path / "plain", n=2, prompts={"objects": [point_prompt()]}), cfg)
