from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import Config, all_keys, load_config, parse_sets, render_toml
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_equals_builtin_defaults():
    shipped = ROOT / "config.toml"
    assert shipped.read_text() == render_toml(), "config.toml is stale: run `reelmask config --defaults > config.toml`"
    assert load_config(shipped) == Config()


def test_every_key_is_commented_with_type_and_meaning():
    text = render_toml().splitlines()
    for key in all_keys():
        name = key.split(".")[1]
        idx = next((i for i, line in enumerate(text) if line.startswith(f"{name} = ")), None)
        if key == "paths.inbox":
            assert any("[[paths.inbox]]" in line for line in text)
            continue
        assert idx is not None, key
        assert text[idx - 1].startswith("# (") and ") " in text[idx - 1], f"{key} lacks a '# (type) meaning' line"


def test_precedence_defaults_file_jobtoml_set(tmp_path: Path):
    cfg_file = tmp_path / "conf" / "config.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('[chunking]\nchunk_size = 40\noverlap = 2\n[paths]\noutbox = "results"\n')
    job = tmp_path / "job.toml"
    job.write_text("[chunking]\nchunk_size = 30\n")
    cfg = load_config(cfg_file, ["chunking.overlap=3"], job_toml=job)
    assert cfg.chunking.chunk_size == 30          # job.toml beats the file
    assert cfg.chunking.overlap == 3              # --set beats both
    assert cfg.models.image_size == 1024          # default untouched
    assert cfg.path(cfg.paths.outbox) == cfg_file.parent / "results"  # relative to the config's folder


def test_set_values_are_typed():
    cfg = load_config(None, ["models.image_size=256", "output.preview=false", "detect.classes=[\"dog\", 16]",
                             "watch.settle_seconds=2", "models.sam2=sam2.1_hiera_small"], use_default_path=False)
    assert cfg.models.image_size == 256 and isinstance(cfg.models.image_size, int)
    assert cfg.output.preview is False
    assert cfg.detect.classes == ("dog", "16")
    assert cfg.watch.settle_seconds == 2.0 and isinstance(cfg.watch.settle_seconds, float)
    assert cfg.models.sam2 == "sam2.1_hiera_small"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.models.image_size = 3  # type: ignore[misc]


@pytest.mark.parametrize("pair, words", [
    ("models.image_sise=256", "did you mean 'models.image_size'"),
    ("chunking.chunksize=5", "did you mean 'chunking.chunk_size'"),
    ("modles.sam2=x", "did you mean"),
    ("models.image_size=big", "must be a int"),
    ("output.preview=maybe", "must be a bool"),
    ("models.image_size=250", "multiple of 32"),
    ("chunking.overlap=100", "chunking.overlap"),
    ("justakey", "section.key=value"),
])
def test_bad_overrides_name_the_key_and_fix(pair, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [pair], use_default_path=False)
    assert words in str(e.value)


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path: Path):
    f = tmp_path / "config.toml"
    f.write_text("[watch]\nsettle_second = 3\n")
    with pytest.raises(ConfigError, match=r"watch.settle_second.*config.toml.*did you mean 'watch.settle_seconds'"):
        load_config(f)


def test_inbox_tables(tmp_path: Path):
    f = tmp_path / "config.toml"
    f.write_text('[paths]\ninboxes = ["a"]\n[[paths.inbox]]\npath = "m"\nmode = "matting"\n')
    cfg = load_config(f)
    assert [(i.path, i.mode) for i in cfg.inbox_specs()] == [("a", ""), ("m", "matting")]


def test_parse_sets_falls_back_to_strings():
    assert parse_sets(["models.device=cuda:1"]) == {"models": {"device": "cuda:1"}}
    assert parse_sets(["paths.outbox=/data/out"]) == {"paths": {"outbox": "/data/out"}}
