"""A dropped folder is untrusted input: what it may hold, checked before anything in it is read.

`check_tree` walks the folder without following links and refuses what could make the daemon read
outside it or hang (links leading out, pipes and devices) or work without bound (too many files).
`read_text` reads a sidecar (prompts.json, job.toml) with a size limit, tolerating a UTF-8 BOM.
Every refusal names the file, the limit (a `limits.*` key of the daemon's owner) and the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.config import LimitsConfig
from core.errors import FrameFolderError, ReelmaskError


def check_tree(root: Path, limits: LimitsConfig, *, confined: bool) -> None:
    """Refuse special files and trees over `limits.max_files`; with `confined` (daemon jobs) also a
    root that is a link and any link whose target lies outside `root`. No file is opened."""
    if confined and root.is_symlink():
        raise FrameFolderError(f"{root} is a symbolic link; the daemon does not follow links out of its "
                               "folders: copy or move the real folder in instead")
    real_root = root.resolve()
    count, pending = 0, [root]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as e:
            raise FrameFolderError(f"cannot list {current} ({e.strerror or e}); check its permissions") from e
        for entry in entries:
            count += 1
            if count > limits.max_files:
                raise FrameFolderError(
                    f"{root} holds more than {limits.max_files:,} files and folders (limits.max_files); "
                    "split the video into several folders or remove what is not a frame")
            where = Path(entry.path).relative_to(root)
            if entry.is_symlink():
                # the link's own path is resolved, its target is never opened
                if confined and not Path(os.path.realpath(entry.path)).is_relative_to(real_root):
                    raise FrameFolderError(
                        f"{where} in {root} is a link leading outside the folder; the daemon reads only files "
                        "inside a dropped folder: copy the real file in instead of linking to it")
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as e:
                raise FrameFolderError(f"cannot read {where} in {root} ({e.strerror or e})") from e
            if stat.S_ISDIR(mode):
                pending.append(Path(entry.path))
            elif not stat.S_ISREG(mode):
                raise FrameFolderError(
                    f"{where} in {root} is not a regular file (a pipe, socket or device); remove it from the folder")


def read_text(path: Path, max_bytes: int, limit_key: str, error: type[ReelmaskError]) -> str | None:
    """The UTF-8 text of a sidecar file, None when there is none; a leading BOM is dropped."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(f"{path.name} cannot be read ({e.strerror or e}); check its permissions") from e
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path.name} in {path.parent} is a folder; it must be a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path.name} in {path.parent} is not a regular file (a pipe, socket or device); replace it "
                    "with a plain file")
    too_big = (f"{path.name} is larger than {max_bytes:,} bytes ({limit_key}); keep it small: it lists prompts "
               "and settings, not data")
    if st.st_size > max_bytes:
        raise error(too_big)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as e:
        raise error(f"{path.name} cannot be read ({e.strerror or e})") from e
    if len(data) > max_bytes:
        raise error(too_big)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path.name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                    "save it as UTF-8") from e
