"""A dropped folder is untrusted: what job.toml may set, the limits of everything a folder controls,
links and special files, and inputs that used to surface as internal errors. No model loads here."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import Config, job_keys, load_config, render_toml
from core.errors import ConfigError, FrameFolderError, PromptError, ReelmaskError
from core.pipeline import prepare_job
from tests.conftest import FAST, make_clip, point_prompt


def _cfg(*sets: str) -> Config:
    return load_config(None, list(FAST) + list(sets), use_default_path=False)


def _clip(tmp_path: Path, n: int = 4, **kw) -> Path:
    return make_clip(tmp_path / "clip", n=n, prompts=kw.pop("prompts", {"objects": [point_prompt()]}), **kw)


# ------------------------------------------------------------------ job.toml allow-list

OWNER_KEYS = ["models.yolo", "models.sam2", "models.sam2_weights", "models.sam2_decoder", "models.unet",
              "models.matting", "models.device", "models.dtype", "paths.cache", "paths.db", "paths.outbox",
              "paths.failed", "daemon.devices", "watch.polling", "train.out", "limits.max_frames",
              "output.overwrite", "detect.parallel_chunks"]


@pytest.mark.parametrize("key", OWNER_KEYS)
def test_job_toml_may_not_set_owner_keys(tmp_path: Path, key: str):
    clip = _clip(tmp_path)
    section, name = key.split(".")
    value = {"models.yolo": '".stash/x.pt"', "daemon.devices": '["cpu"]', "watch.polling": "true",
             "models.device": '"cpu"', "models.dtype": '"float32"',
             "limits.max_frames": "10000000", "output.overwrite": "true", "detect.parallel_chunks": "4"}.get(key, '"x"')
    (clip / "job.toml").write_text(f"[{section}]\n{name} = {value}\n")
    with pytest.raises(ConfigError) as e:
        prepare_job(clip, _cfg())
    msg = str(e.value)
    assert key in msg and "job.toml" in msg and "trusted" in msg
    # a trusted folder (an inbox marked trusted, or `run --trust-folder`) may set it
    if key not in ("models.yolo", "models.sam2_decoder", "models.unet", "models.matting", "models.sam2"):
        assert prepare_job(clip, _cfg(), trusted=True).config is not None


def test_job_toml_sets_job_scope_keys_and_the_allow_list_is_documented(tmp_path: Path):
    clip = _clip(tmp_path)
    (clip / "job.toml").write_text('mode = "track"\n[chunking]\nchunk_size = 7\nprefetch = 2\n'
                                   '[models]\nimage_size = 256\n[output]\npreview = false\n[detect]\nclasses = ["dog"]\n')
    cfg = prepare_job(clip, _cfg()).config
    assert (cfg.chunking.chunk_size, cfg.chunking.prefetch, cfg.detect.classes) == (7, 2, ("dog",))
    keys = set(job_keys())
    assert {"chunking.chunk_size", "promptless.points_per_side", "matting.band", "output.preview"} <= keys
    assert not any(k.startswith(("paths.", "daemon.", "watch.", "train.", "limits.")) for k in keys)
    assert not keys & {"models.yolo", "models.sam2", "models.device", "models.sam2_decoder", "models.unet"}
    shipped = render_toml()
    assert "(int, 2..2000, job) frames per SAM2 inference state" in shipped
    assert "trusted = false" in shipped


@pytest.mark.parametrize("line, words", [
    ("[chunking]\nprefetch = 1000000000", "chunking.prefetch in .*job.toml must be between 0 and 64"),
    ("[chunking]\nchunk_size = 100000000", "chunking.chunk_size .* between 2 and 2000"),
    ("[models]\nimage_size = 65536", "models.image_size .* between 64 and 2048"),
    ("[promptless]\npoints_per_side = 100000", "promptless.points_per_side .* between 1 and 64"),
    ("[detect]\nmin_confidence = nan", "detect.min_confidence .* finite"),
    ("[detect]\nmin_confidence = inf", "detect.min_confidence .* finite"),
    ("[chunking]\nprefetch = 1e9", "chunking.prefetch .* whole number"),
    ("[detect]\nclasses = [" + ", ".join(['"dog"'] * 101) + "]", "detect.classes .* 101 entries; at most 100"),
    ("[refine]\nmax_points = -1", "refine.max_points .* between 1 and 1000"),
])
def test_job_toml_values_are_bounded(tmp_path: Path, line: str, words: str):
    clip = _clip(tmp_path)
    (clip / "job.toml").write_text(line + "\n")
    with pytest.raises(ConfigError, match=words):
        prepare_job(clip, _cfg())


def test_trusted_inbox_is_read_from_config(tmp_path: Path):
    f = tmp_path / "config.toml"
    f.write_text('[paths]\ninboxes = ["plain"]\n[[paths.inbox]]\npath = "mine"\ntrusted = true\n')
    cfg = load_config(f)
    assert cfg.inbox_of(tmp_path / "mine" / "clip").trusted is True
    assert cfg.inbox_of(tmp_path / "plain" / "clip").trusted is False
    assert cfg.inbox_of(tmp_path / "elsewhere" / "clip") is None
    f.write_text('[[paths.inbox]]\npath = "mine"\ntrusted = "yes"\n')
    with pytest.raises(ConfigError, match="trusted"):
        load_config(f)


def test_oversized_or_odd_job_toml(tmp_path: Path):
    clip = _clip(tmp_path)
    (clip / "job.toml").write_text("# " + "x" * 70_000 + "\n")
    with pytest.raises(ConfigError, match="limits.max_job_toml_bytes"):
        prepare_job(clip, _cfg())
    (clip / "job.toml").write_bytes(b"\xef\xbb\xbf[chunking]\nchunk_size = 9\n")  # a BOM is fine
    assert prepare_job(clip, _cfg()).config.chunking.chunk_size == 9
    (clip / "job.toml").write_bytes(b"[chunking]\nchunk_size = 9 # \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        prepare_job(clip, _cfg())
    (clip / "job.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError):
        prepare_job(clip, _cfg())


# ------------------------------------------------------------------ prompts.json limits and oddities

def test_prompts_json_limits(tmp_path: Path):
    clip = _clip(tmp_path)
    many = {"objects": [{"id": 1, "frame": 0, "points": [[5, 5]] * 1001, "labels": [1] * 1001}]}
    (clip / "prompts.json").write_text(json.dumps(many))
    with pytest.raises(PromptError, match="1,001 points, more than limits.max_points_per_object"):
        prepare_job(clip, _cfg())
    spread = {"objects": [{"id": 1, "frame": f, "points": [[5, 5]] * 400} for f in range(3)]}
    (clip / "prompts.json").write_text(json.dumps(spread))
    with pytest.raises(PromptError, match="object 1 has more than 1,000 points"):
        prepare_job(clip, _cfg())
    (clip / "prompts.json").write_text(json.dumps({"objects": [point_prompt(obj=i) for i in range(1, 6)]}))
    with pytest.raises(PromptError, match="5 objects, more than limits.max_objects"):
        prepare_job(clip, _cfg("limits.max_objects=4"))
    (clip / "prompts.json").write_text(json.dumps({"objects": [point_prompt(frame=f % 4) for f in range(4)] * 3}))
    with pytest.raises(PromptError, match="12 prompts, more than limits.max_prompts"):
        prepare_job(clip, _cfg("limits.max_prompts=10"))
    (clip / "prompts.json").write_text(" " * 1_048_577)
    with pytest.raises(PromptError, match="limits.max_prompts_bytes"):
        prepare_job(clip, _cfg())


def test_deeply_nested_prompts_and_bom(tmp_path: Path):
    clip = _clip(tmp_path)
    (clip / "prompts.json").write_text('{"objects": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PromptError, match="nested too deeply"):
        prepare_job(clip, _cfg())
    (clip / "prompts.json").write_text('{"objects": [{"id": 1, "points": ' + "[" * 500 + "]" * 500 + "}]}")
    with pytest.raises(PromptError, match="'points' must be a non-empty list"):
        prepare_job(clip, _cfg())
    (clip / "prompts.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"objects": [point_prompt()]}).encode())
    assert prepare_job(clip, _cfg()).prompts.object_ids == [1]


def test_long_values_are_cut_short_in_messages(tmp_path: Path):
    clip = _clip(tmp_path)
    (clip / "prompts.json").write_text(json.dumps({"objects": [{"id": "x" * 100_000, "points": [[1, 1]]}]}))
    with pytest.raises(PromptError) as e:
        prepare_job(clip, _cfg())
    assert len(str(e.value)) < 400


def test_mask_prompt_in_the_folder_root_is_not_a_frame(tmp_path: Path):
    """The README's own example: "mask": "first_mask.png" beside the frames."""
    clip = _clip(tmp_path, n=4, prompts=None)
    mask = np.zeros((120, 160), np.uint8)
    mask[40:60, 20:40] = 255
    Image.fromarray(mask).save(clip / "first_mask.png")
    Image.fromarray(mask).save(clip / "mask_0003.png")  # a number in its name: still not a frame
    (clip / "prompts.json").write_text(json.dumps({"objects": [
        {"id": 3, "frame": "00002.jpg", "mask": "first_mask.png"}, {"id": 4, "frame": 3, "mask": "mask_0003.png"}]}))
    job = prepare_job(clip, _cfg())
    assert len(job.folder) == 4 and "first_mask.png" not in job.folder.names
    assert job.prompts.objects[0].load_mask(160, 120).sum() == 400
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(clip / "first_mask.png")
    with pytest.raises(PromptError, match="first_mask.png is 16x12 but the frames are 160x120"):
        prepare_job(clip, _cfg())
    (clip / "first_mask.png").unlink()
    (clip / "mask_0003.png").unlink()
    (clip / "prompts.json").write_text(json.dumps({"objects": [{"id": 3, "mask": "a\u0000b.png"}]}))
    with pytest.raises(PromptError, match="not a usable file name"):
        prepare_job(clip, _cfg())


# ------------------------------------------------------------------ frames: bombs, counts, special files

def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but whose data is tiny (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(50_000, 50_000), (20_000, 10_000)])
def test_png_bomb_is_refused_from_its_header(tmp_path: Path, size):
    clip = _clip(tmp_path)
    (clip / "00001.jpg").unlink()
    _png_header_only(clip / "00001.png", *size)
    with pytest.raises(FrameFolderError) as e:
        prepare_job(clip, _cfg())
    assert "00001.png" in str(e.value) and ("limits.max_frame_pixels" in str(e.value) or "safely" in str(e.value))


def test_mask_bomb_in_masks_folder_is_refused_before_decoding(tmp_path: Path):
    clip = _clip(tmp_path, prompts=None)
    (clip / "masks").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((120, 160), np.uint8)).save(clip / "masks" / f"{i:05d}.png")
    _png_header_only(clip / "masks" / "00002.png", 40_000, 40_000)
    with pytest.raises(FrameFolderError, match="00002.png"):
        prepare_job(clip, _cfg())


def test_frame_count_and_tree_size_limits(tmp_path: Path):
    clip = _clip(tmp_path, n=6)
    with pytest.raises(FrameFolderError, match="more than 5 frames .*limits.max_frames"):
        prepare_job(clip, _cfg("limits.max_frames=5"))
    for i in range(30):
        (clip / f"note{i}.txt").write_text("x")
    with pytest.raises(FrameFolderError, match="limits.max_files"):
        prepare_job(clip, _cfg("limits.max_files=20"))


def test_fifo_never_blocks(tmp_path: Path):
    clip = _clip(tmp_path)
    os.mkfifo(clip / "00009.jpg")
    with pytest.raises(FrameFolderError, match="00009.jpg .*not a regular file"):
        prepare_job(clip, _cfg())
    os.unlink(clip / "00009.jpg")
    os.mkfifo(clip / "prompts.json.fifo")
    os.replace(clip / "prompts.json.fifo", clip / "prompts.json")
    with pytest.raises(ReelmaskError, match="not a regular file"):
        prepare_job(clip, _cfg())


# ------------------------------------------------------------------ links

def _secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    make_clip(outside / "frames", n=2)
    (outside / "notes.txt").write_text("TOP-SECRET-CONTENT")
    (outside / "masks").mkdir()
    return outside


@pytest.mark.parametrize("what", ["frame", "masks", "diffs", "prompts", "job_toml", "mask_prompt"])
def test_links_leading_outside_are_refused_for_daemon_jobs(tmp_path: Path, what: str):
    outside = _secret(tmp_path)
    clip = _clip(tmp_path)
    if what == "frame":
        (clip / "00009.jpg").symlink_to(outside / "frames" / "00000.jpg")
    elif what in ("masks", "diffs"):
        (clip / what).symlink_to(outside / "masks")
    elif what == "prompts":
        (clip / "prompts.json").unlink()
        (clip / "prompts.json").symlink_to(outside / "notes.txt")
    elif what == "job_toml":
        (clip / "job.toml").symlink_to(outside / "notes.txt")
    else:
        (clip / "m.png").symlink_to(outside / "frames" / "00000.jpg")
        (clip / "prompts.json").write_text(json.dumps({"objects": [{"id": 1, "mask": "m.png"}]}))
    with pytest.raises(FrameFolderError) as e:
        prepare_job(clip, _cfg(), confined=True)
    assert "outside the folder" in str(e.value) and "TOP-SECRET" not in str(e.value)


def test_a_linked_job_folder_is_refused_when_confined(tmp_path: Path):
    clip = _clip(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(clip)
    with pytest.raises(FrameFolderError, match="symbolic link"):
        prepare_job(link, _cfg(), confined=True)
