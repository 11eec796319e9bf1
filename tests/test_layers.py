"""Layers point one way: a table of import edges that must not exist, checked on every import
statement of the tree (module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the files a segmentation or matting job runs through
INFERENCE = ("core/pipeline.py", "core/modes.py", "core/frames.py", "core/prompts.py", "core/intake.py",
             "core/engine/", "core/models/", "core/matting/", "core/outputs/")

# (files, by path prefix) -> modules they must never import, with why
FORBIDDEN: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("core/",), ("daemon", "tui"), "core is the engine; the daemon and the dashboard use it, never the reverse"),
    (("daemon/",), ("tui",), "the daemon and the dashboard meet only in the state database"),
    (("tui/",), ("daemon", "torch", "sam2", "ultralytics"), "the dashboard starts in a moment and loads no model"),
    (("daemon/",), ("core.engine",), "the daemon reaches a job only through core.pipeline"),
    (("core/outputs/",), ("core.pipeline",), "outputs are written for the pipeline, not by asking it"),
    (INFERENCE, ("core.training",), "inference never leans on the trainers: model files live in core/models, "
                                     "which the trainers import"),
    (("core/models/",), ("core.pipeline", "core.engine", "core.matting", "core.training"),
     "core/models is the bottom layer: model files and how to load them, used by everything above"),
]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_forbidden_import_edges():
    offences = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for files, modules, why in FORBIDDEN:
            if not rel.startswith(files):
                continue
            for line, module in _imports(path):
                if any(_under(module, m) for m in modules):
                    offences.append(f"{rel}:{line} imports {module} ({why})")
    assert not offences, "\n".join(offences)


def test_the_table_catches_an_edge(tmp_path: Path):
    bad = tmp_path / "worker.py"
    bad.write_text("def f():\n    from core.engine.chunks import plan_chunks\n")
    assert (2, "core.engine.chunks") in _imports(bad) and _under("core.engine.chunks", "core.engine")
