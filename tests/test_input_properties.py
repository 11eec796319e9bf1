"""Property-based tests of the readers of a dropped folder: prompts.json, job.toml and the frames.

Thousands of generated inputs, valid, nearly valid and garbage. Each is either accepted or refused
with a reelmask error that names the file; no other exception ever escapes."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.config import SECTIONS, Config, all_keys, with_overrides
from core.errors import ConfigError, FrameFolderError, PromptError, ReelmaskError
from core.frames import FrameFolder
from core.intake import check_tree
from core.pipeline import read_job_toml
from core.prompts import Prompts, parse_prompts, read_prompts_json
from tests.conftest import make_clip

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    root = make_clip(tmp_path_factory.mktemp("props") / "clip", n=5, size=(64, 48))
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(root / "m.png")
    return root


# ------------------------------------------------------------------ prompts.json

numbers = st.one_of(st.integers(-10, 300), st.floats(allow_nan=True, allow_infinity=True), st.integers())
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
points = st.lists(st.one_of(st.lists(numbers, min_size=2, max_size=2), json_values), max_size=4)
object_entries = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(-2, 260), json_values),
    "frame": st.one_of(st.integers(-2, 7), st.sampled_from(["00000.jpg", "00004.jpg", "nope.jpg", "m.png"]),
                       json_values),
    "points": st.one_of(points, json_values),
    "labels": st.one_of(st.lists(st.integers(-1, 2), max_size=4), json_values),
    "box": st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values),
    "mask": st.one_of(st.sampled_from(["m.png", "00001.jpg", "../x.png", "/etc/passwd", "nope.png", "", "a\x00b",
                                       "x" * 300]), json_values),
    "extra": json_values,
})
valid_entries = st.fixed_dictionaries(
    {"id": st.integers(1, 255), "frame": st.one_of(st.integers(0, 4), st.sampled_from(["00000.jpg", "00003.jpg"]))},
    optional={"points": st.lists(st.tuples(st.integers(0, 63), st.integers(0, 47)).map(list), min_size=1, max_size=3),
              "box": st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(30, 64),
                               st.integers(30, 48)).map(list)},
).map(lambda e: e if "points" in e or "box" in e else {**e, "mask": "m.png"})
prompt_documents = st.one_of(
    json_values,
    st.fixed_dictionaries({"objects": st.lists(valid_entries, max_size=4,
                                               unique_by=lambda e: (e["id"], str(e["frame"])[:1]))}),
    st.fixed_dictionaries({}, optional={
        "objects": st.one_of(st.lists(st.one_of(valid_entries, valid_entries, object_entries), max_size=5),
                             json_values),
        "detect": st.one_of(st.fixed_dictionaries({}, optional={
            "classes": st.one_of(st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=3), json_values),
            "min_confidence": numbers, "self_train": json_values}), json_values),
        "mode": st.one_of(st.sampled_from(["track", "detect", "bogus"]), json_values),
        "other": json_values,
    }))


@pytest.mark.slow
@settings(max_examples=3000, **SETTINGS)
@given(doc=prompt_documents)
def test_prompts_json_documents(clip: Path, doc):
    folder = FrameFolder.scan(clip, exclude=frozenset({"m.png"}))
    try:
        prompts = parse_prompts(doc, folder, clip / "prompts.json")
    except PromptError as e:
        assert "prompts.json" in str(e)
        event("refused")
        return
    event(f"accepted with {len(prompts.objects)} prompt(s)")
    assert isinstance(prompts, Prompts)
    for p in prompts.objects:  # what is accepted is usable as it stands
        assert 1 <= p.object_id <= 255 and 0 <= p.frame < len(folder)
        assert p.points is not None or p.box is not None or p.mask_path is not None
        for x, y in p.points or ():
            assert 0 <= x < folder.width and 0 <= y < folder.height and math.isfinite(x + y)


@settings(max_examples=1500, **SETTINGS)
@given(data=st.one_of(st.binary(max_size=300),
                      prompt_documents.map(lambda d: json.dumps(d).encode()),
                      prompt_documents.map(lambda d: b"\xef\xbb\xbf" + json.dumps(d).encode()),
                      st.integers(1, 5000).map(lambda n: b'{"objects": ' + b"[" * n + b"]" * n + b"}"),
                      st.integers(1, 6000).map(lambda n: b'{"detect": {"min_confidence": ' + b"9" * n + b"}}")))
@pytest.mark.slow
def test_prompts_json_bytes(tmp_path_factory, data: bytes):
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        (root / "prompts.json").write_bytes(data)
        try:
            read_prompts_json(root)
        except PromptError as e:
            assert "prompts.json" in str(e)
    finally:
        shutil.rmtree(root)


# ------------------------------------------------------------------ job.toml

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf
                                                 else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a basic TOML string


toml_values = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                        st.lists(st.one_of(st.text(max_size=6), st.integers(0, 99)), max_size=4))
key_names = st.one_of(st.sampled_from(all_keys() + ["mode"]), st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,12}", fullmatch=True))


def _declared(key: str):
    """Values of a key's own type, mostly inside its declared range, sometimes just outside."""
    section, name = key.split(".")
    cls = SECTIONS[section]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp, lo, hi = typing.get_type_hints(cls)[name], f.metadata["lo"], f.metadata["hi"]
    if tp is bool:
        return st.booleans()
    if tp in (int, float):
        lo, hi = -1 if lo is None else lo, 10**6 if hi is None else hi
        inside = st.integers(int(math.ceil(lo)), int(hi)) if tp is int else st.floats(lo, hi)
        return st.one_of(inside, inside, st.sampled_from([lo - 1, hi + 1]))
    if tp is str:
        return st.sampled_from(["cf", "lkm", "points", "mask", "x", ""])
    return st.lists(st.sampled_from(["dog", "person", "0", "box"]), max_size=4)


typed_entries = st.sampled_from([k for k in all_keys() if k != "paths.inbox"]).flatmap(
    lambda k: _declared(k).map(lambda v: (k, v)))


@st.composite
def job_tomls(draw) -> str:
    entries = draw(st.dictionaries(key_names, toml_values, max_size=3))
    entries.update(draw(st.lists(typed_entries, max_size=5)))
    lines, sections = [], {}
    for key, value in entries.items():
        if key == "mode":
            lines.append(f"mode = {_toml(value)}")
        else:
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"{name} = {_toml(value)}")
    for section, body in sections.items():
        lines += [f"[{section}]"] + body
    return "\n".join(lines) + "\n"


@settings(max_examples=2500, **SETTINGS)
@given(text=st.one_of(job_tomls(), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                     st.integers(1, 6000).map(lambda n: "[chunking]\nprefetch = " + "9" * n + "\n")))
@pytest.mark.slow
def test_job_toml(tmp_path_factory, text: str):
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        (root / "job.toml").write_bytes(text.encode("utf-8", "surrogateescape"))
        try:
            mode, data = read_job_toml(root)
            cfg = with_overrides(Config(), data, str(root / "job.toml"), job_scope=True)
        except ConfigError as e:
            assert "job.toml" in str(e)
            event("refused")
            return
        event("accepted")
        assert mode is None or isinstance(mode, str)
        assert cfg.chunking.overlap < cfg.chunking.chunk_size <= 2000 and cfg.chunking.prefetch <= 64
        assert cfg.models.yolo == Config().models.yolo and cfg.paths == Config().paths  # owner keys untouched
    finally:
        shutil.rmtree(root)


# ------------------------------------------------------------------ frame folders

def _image(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


GOOD = {(fmt, size): _image(fmt, size) for fmt in ("JPEG", "PNG") for size in ((16, 12), (12, 16))}
contents = st.one_of(
    st.sampled_from(list(GOOD.values())),
    st.sampled_from(list(GOOD.values())).flatmap(lambda b: st.integers(1, len(b) - 1).map(lambda n: b[:n])),
    st.binary(max_size=64),
    st.just(b""),
)
file_names = st.one_of(
    st.integers(0, 30).map(lambda i: f"{i:05d}.jpg"),
    st.integers(0, 30).map(lambda i: f"frame_{i}.PNG"),
    st.sampled_from(["notes.txt", ".hidden.jpg", "no_number.jpg", "prompts.json", "x.jpeg", "7.JPG"]),
    st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=20),
)


@settings(max_examples=400, **SETTINGS)
@given(files=st.dictionaries(file_names, contents, max_size=6))
def test_frame_folders(tmp_path_factory, files: dict[str, bytes]):
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        for name, data in files.items():
            if name in (".", ".."):
                continue
            try:
                (root / name).write_bytes(data)
            except OSError:  # a name this file system cannot hold
                continue
        try:
            check_tree(root, Config().limits, confined=True)
            folder = FrameFolder.scan(root)
        except FrameFolderError as e:
            assert str(root) in str(e) or any(name in str(e) for name in files)
            event("refused")
            return
        except ReelmaskError as e:  # pragma: no cover - a reader must say FrameFolderError
            pytest.fail(f"unexpected {type(e).__name__}: {e}")
        assert len(folder) >= 1 and (folder.width, folder.height) in ((16, 12), (12, 16))
        event("accepted")
    finally:
        shutil.rmtree(root)
