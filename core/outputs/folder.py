"""The output folder appears complete or not at all: jobs write into a hidden staging folder
beside it and rename it into place at the end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from core.errors import OutputError

MANIFEST = "manifest.json"
NAME_MAX = 255  # bytes of one path component on the file systems reelmask runs on


def fit_name(name: str, reserve: int = 0) -> str:
    """`name` shortened (at a character boundary) so that `reserve` more bytes still fit in a path component."""
    room = NAME_MAX - reserve
    encoded = os.fsencode(name)
    if len(encoded) <= room:
        return name
    text = os.fsdecode(encoded[:room])
    while text and "\udc80" <= text[-1] <= "\udcff":  # a character cut in half
        text = text[:-1]
    return text or "job"


def hidden_sibling(path: Path, tag: str) -> Path:
    """`.<name>.<tag>` beside `path`; a name too long for that is shortened and made unique by a hash."""
    plain = f".{path.name}.{tag}"
    if len(os.fsencode(plain)) <= NAME_MAX:
        return path.parent / plain
    digest = hashlib.sha1(os.fsencode(path.name)).hexdigest()[:8]
    return path.parent / f".{fit_name(path.name, len(tag) + 12)}~{digest}.{tag}"


def staging_path(out: Path) -> Path:
    return hidden_sibling(out, "partial")


def check_target(out: Path, overwrite: bool) -> None:
    """Fail before any work when the output folder exists and may not be replaced."""
    if out.exists() and not overwrite:
        raise OutputError(
            f"output folder {out} already exists; remove it, choose another --out, "
            "or pass --set output.overwrite=true to replace it"
        )


def open_staging(out: Path, keep: bool = False) -> Path:
    """Create (or, with keep, reuse) the staging folder for `out`."""
    stage = staging_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if stage.exists() and not keep:
            shutil.rmtree(stage)
        stage.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder next to {out}: {e.strerror or e}") from e
    return stage


def write_json(path: Path, data: dict) -> None:
    """`path` replaced whole or not at all: written under a name of its own (two processes may write the
    same file, as with the model cache's checksums), synced, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(stage: Path, out: Path, overwrite: bool) -> None:
    """Move the finished staging folder to `out` (replacing an old one only when allowed)."""
    old = None
    if out.exists():
        if not overwrite:
            raise OutputError(f"output folder {out} appeared while the job ran; the result is kept in {stage}")
        old = hidden_sibling(out, f"old-{int(time.time())}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
