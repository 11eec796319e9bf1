from __future__ import annotations

import ast
import json
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from core.cli import build_parser, main
from core.commands import COMMANDS, PLUGIN_GROUP
from core.errors import ReelmaskError

ROOT = Path(__file__).resolve().parents[1]
build_parser()  # registers train and eval (core) and the entry points' daemon, service and tui, so every test sees them


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert re.search(r"example: (ssh \S+ -t )?reelmask " + re.escape(name) + r"\b", text), text
    assert "--config" in text and "--set" in text


def test_every_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in COMMANDS:
        assert f"reelmask {name}" in readme, name


def test_help_lists_core_and_plugin_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    listed = set(re.findall(r"^ {4}(\S+)", capsys.readouterr().out, re.MULTILINE))
    assert {"run", "train", "eval", "daemon", "service", "tui"} <= listed


class _Raises:
    """An entry point whose module raises on import."""

    def __init__(self, error: Exception):
        self.name, self.value, self.group, self.error = "broken", "broken_plugin.cli", PLUGIN_GROUP, error

    def load(self):
        raise self.error


@pytest.mark.parametrize("error", [ModuleNotFoundError("No module named 'broken_plugin'"),
                                   RuntimeError("bad at import time")])
def test_a_plugin_that_fails_to_load_stops_the_cli(error, monkeypatch, capsys):
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return [*real(**kw), _Raises(error)] if kw.get("group") == PLUGIN_GROUP else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert main(["config", "--defaults"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    line = lines[0]
    assert line.startswith("reelmask: error: command plugin 'broken' (entry point broken_plugin.cli) failed to load")
    assert f"{type(error).__name__}: {error}" in line and "reinstall" in line and "pip install" in line


def test_service_unit_runs_the_reelmask_script(tmp_path: Path, monkeypatch):
    from daemon import systemd

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ReelmaskError, match="no `reelmask` script"):
        systemd.unit_text(tmp_path / "config.toml", tmp_path, user=True)

    on_path = tmp_path / "bin" / "reelmask"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    unit = systemd.unit_text(tmp_path / "my config.toml", tmp_path, user=True)
    assert f"ExecStart={on_path} daemon --config '{tmp_path / 'my config.toml'}'\n" in unit

    (venv / "reelmask").write_text("#!/bin/sh\n")  # the script beside the interpreter wins
    assert f"ExecStart={venv / 'reelmask'} daemon --config" in systemd.unit_text(tmp_path / "c.toml", tmp_path, True)


def test_config_defaults_prints_shipped_file(capsys):
    assert main(["config", "--defaults"]) == 0
    assert capsys.readouterr().out == (ROOT / "config.toml").read_text()


def test_config_prints_a_config_file_or_plain_json(capsys, tmp_path):
    import tomllib

    from core.config import load_config

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[chunking]\nchunk_size = 40\n[[paths.inbox]]\npath = "in/m"\nmode = "matting"\n')
    assert main(["config", "--config", str(cfg_file), "--set", "detect.classes=[\"dog\"]"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# effective reelmask configuration, from: {cfg_file}")
    (tmp_path / "again.toml").write_text(text)  # what it prints is a config file that gives the same config
    again = load_config(tmp_path / "again.toml", [], use_default_path=False)
    assert again.chunking.chunk_size == 40 and again.detect.classes == ("dog",)
    assert again.paths.inbox[0].mode == "matting" and tomllib.loads(text)["paths"]["inbox"][0]["path"] == "in/m"
    assert main(["config", "--config", str(cfg_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunking"]["chunk_size"] == 40  # plain JSON, no comment line


@pytest.mark.slow
def test_piped_config_and_run_output(tmp_path):
    """Output to a reader that has gone ends quietly (no BrokenPipeError); a `run` whose stderr is a pipe
    reports each stage and every 10% of the frames as plain lines instead of a live bar."""
    import os
    import subprocess

    from tests.conftest import FAST, make_clip, point_prompt, reelmask_command

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    r = subprocess.run([*reelmask_command(), "config", "--defaults"], stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert r.returncode == 141 and r.stderr == ""
    clip = make_clip(tmp_path / "clip", n=10, prompts={"objects": [point_prompt()]})
    r = subprocess.run([*reelmask_command(), "run", str(clip), "--out", str(tmp_path / "out"),
                        *[f"--set={s}" for s in FAST], "--set=chunking.chunk_size=5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "track clip: chunk 0 forward" in lines and "track clip: chunk 1 forward" in lines
    progress = [line for line in lines if re.fullmatch(r"track clip: \d+/10 frames \([\d.]+ frames/s\)", line)]
    assert len(progress) == 10 and progress[-1].startswith("track clip: 10/10")
    assert not any(line.startswith(" ") for line in lines)  # long lines are not wrapped at 80 columns


def test_models_list_runs_offline(capsys, tmp_path):
    assert main(["models", "list", "--set", f"paths.cache={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny" in out and "sam2_hiera_large" in out


def test_engine_never_imports_daemon_or_tui():
    for path in (ROOT / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert not re.match(r"(daemon|tui)(\.|$)", n), f"{path} imports {n}"


def test_importing_core_is_cheap():
    import subprocess
    import sys

    code = ("import sys, core.config, core.frames, core.prompts, core.modes, core.cli, core.pipeline;"
            "print(','.join(m for m in ('torch', 'sam2', 'ultralytics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_ci_installs_exactly_as_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert install in readme
    assert ".venv/bin/python -m pytest -q" in readme and ".venv/bin/python -m pytest -q" in ci


def test_status_fits_80_columns_with_errors_in_full(tmp_path, capsys, monkeypatch):
    from core.store import JobState, Store

    db = tmp_path / "state.db"
    store = Store(db)
    long_name = "a-very-long-folder-name-from-someone-elses-camera-2026-12-04-take-7"
    failed = store.add_job(long_name, "/inbox/x")
    error = ("prompts.json: object 2 (objects[1]): point [900, 20] on frame 0 is outside the 854x480 frame; "
             "fix the point, then run `reelmask retry` to run the folder again")
    store.finish_job(failed, JobState.FAILED, error=error, detail="Traceback: the details")
    running = store.add_job("dog", "/inbox/dog", mode="track")
    store.log("warning", "dog: SAM2 runs with RANDOM weights", running)
    store.close()
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["status", "--set", f"paths.db={db}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    rows = [line for line in lines if line.startswith((failed[:8], running[:8]))]
    assert len(rows) == 2 and all(not line.startswith(failed) for line in rows)  # 8-character ids
    assert rows[0].split()[0] == running[:8] or rows[1].split()[0] == running[:8]
    shown = " ".join(line.strip() for line in lines if line.startswith("    "))
    assert shown == error  # the whole error, on its own indented lines
    assert main(["status", "--wide", "--set", f"paths.db={db}"]) == 0
    wide = capsys.readouterr().out
    assert failed in wide and long_name in wide and error in wide
    assert main(["status", failed[:6], "--set", f"paths.db={db}"]) == 0
    whole = capsys.readouterr().out
    assert f"id:                 {failed}" in whole and "Traceback: the details" in whole and error in whole
    assert main(["status", running, "--set", f"paths.db={db}"]) == 0
    assert "warnings:\n  dog: SAM2 runs with RANDOM weights" in capsys.readouterr().out
