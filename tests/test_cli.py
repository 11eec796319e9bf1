from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "example: reelmask " + name in text
    assert "--config" in text and "--set" in text


def test_every_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in COMMANDS:
        assert f"reelmask {name}" in readme, name


def test_config_defaults_prints_shipped_file(capsys):
    assert main(["config", "--defaults"]) == 0
    assert capsys.readouterr().out == (ROOT / "config.toml").read_text()


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
