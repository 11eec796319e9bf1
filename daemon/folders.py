"""Moving job folders between inbox, work/, done/ and failed/, and writing error.txt, safely.

A move is a rename where it can be; across file systems it copies into a hidden temporary name
and renames that into place, so a failure (a full disk) leaves no partial copy behind. Links are
moved as links, never followed. error.txt is written through a temporary file and a rename, so a
link planted under that name in a dropped folder is replaced, not written through.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from core.errors import ReelmaskError
from core.outputs.folder import fit_name, hidden_sibling

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"


class MoveError(ReelmaskError):
    """A job folder could not be moved (permissions, a read-only inbox, a full disk)."""


def safe_name(raw: str) -> str:
    """A printable form of a dropped name for messages, the database and new folders: undecodable bytes
    and control characters become `?`."""
    text = os.fsencode(raw).decode("utf-8", errors="replace").replace("\ufffd", "?")
    return "".join("?" if unicodedata.category(c)[0] == "C" else c for c in text) or "?"


def unique_path(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-2, name-3 ... whichever does not exist yet (never overwrite)."""
    candidate, n = parent / fit_name(name), 2
    while candidate.exists() or candidate.is_symlink():
        suffix = f"-{n}"
        candidate, n = parent / (fit_name(name, len(suffix)) + suffix), n + 1
    return candidate


def move_folder(src: Path, parent: Path, name: str) -> Path:
    """Move `src` (a folder, or a link, which is moved as a link) to a new name under `parent`."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MoveError(f"cannot create {parent} ({e.strerror or e}); check that the daemon may write there") from e
    dest = unique_path(parent, name)
    try:
        os.rename(src, dest)
        return dest
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise MoveError(f"cannot move {src} to {parent} ({e.strerror or e}); the daemon needs write access to "
                            "both folders") from e
    if not os.access(src.parent, os.W_OK):  # the copy could not be removed from there afterwards
        why = "a read-only file system" if os.statvfs(src.parent).f_flag & os.ST_RDONLY else "no write permission"
        raise MoveError(f"cannot move {src} to {parent}: {src.parent} is on {why}; the daemon needs write access "
                        "to both folders")
    tmp = hidden_sibling(dest, f"moving-{os.getpid()}")
    try:
        if src.is_symlink() or not src.is_dir():
            shutil.copy2(src, tmp, follow_symlinks=False)
        else:
            shutil.copytree(src, tmp, symlinks=True)
        os.rename(tmp, dest)
    except OSError as e:
        _remove(tmp)
        raise MoveError(f"cannot copy {src} to {parent} ({_why(e)}); nothing was left half-copied") from e
    entries = _count(src)
    try:
        _remove(src)
    except OSError as e:  # keep exactly one whole copy
        if _count(src) == entries:  # nothing was removed: undo the copy
            _remove(dest)
            raise MoveError(f"cannot move {src} to {parent}: the original cannot be removed "
                            f"({e.strerror or e})") from e
        raise MoveError(f"{src} was copied whole to {dest}, but removing the original failed part way "
                        f"({e.strerror or e}); delete what is left of it") from e
    return dest


def park_failed(current: Path, failed: Path, name: str) -> Path:
    """Move a failed input into failed/ and return the real folder its error.txt belongs in: the moved
    folder itself, or, for a link or a lone file, a new folder that holds it (a link is never entered)."""
    if current.is_symlink() or not current.is_dir():
        holder = unique_path(failed, name)
        holder.mkdir(parents=True)
        # a lone file (a bare video) keeps its own name, suffix included; a link goes in under the job's name
        move_folder(current, holder, name if current.is_symlink() else safe_name(current.name))
        return holder
    return move_folder(current, failed, name)


@dataclass(frozen=True)
class Filed:
    """What `file_failure` did: where the input went in failed/ (None: not moved), and the reason and
    details as recorded, each with what went wrong on the way added."""

    moved_to: Path | None
    reason: str
    detail: str
    error_file: Path | None = None


def file_failure(failed: Path, name: str, reason: str, detail: str, folder: Path | None = None) -> Filed:
    """Move `folder` (when given) into failed/ and write error.txt for the job, never raising: a move or a
    write that fails (a read-only inbox, a full disk) is told in the reason or the details instead."""
    moved = None
    if folder is not None:
        try:
            moved = park_failed(folder, failed, name)
        except MoveError as e:
            reason += f" The folder could not be moved to failed/ ({e}); it is still at {folder}."
    target = moved or unique_path(failed, name)
    written = None
    try:
        written = write_error(target, reason, detail)
    except OSError as e:
        log.error("cannot write %s: %s", target / ERROR_FILE, e)
        detail += f"\n\nerror.txt could not be written into {target}: {e}"
    return Filed(moved, reason, detail, written)


def record_error_file(store, job_id: str, filed: Filed) -> None:
    """Keep where error.txt went on the job, so a retry can take it away."""
    if filed.error_file is None:
        return
    import json

    job = store.job(job_id)
    options = {**(job.option_values if job else {}), "error_file": str(filed.error_file)}
    store.update_job(job_id, options=json.dumps(options))


def remove_error_file(path: str | None, failed: Path) -> None:
    """On retry: the error.txt an earlier failure left under failed/ goes, and its folder with it when
    nothing else is in it (a submitted job's failed/<name>/). Never raises; never leaves failed/."""
    if not path:
        return
    file = Path(path)
    try:
        if file.name != ERROR_FILE or not file.resolve().is_relative_to(failed.resolve()) or file.is_symlink():
            return
        file.unlink(missing_ok=True)
        holder = file.parent
        if holder.resolve() != failed.resolve() and holder.is_dir() and not any(holder.iterdir()):
            holder.rmdir()
    except OSError as e:
        log.warning("could not remove the earlier %s: %s", file, e)


def write_error(folder: Path, reason: str, detail: str = "") -> Path:
    """error.txt in `folder` (a folder under paths.failed): the reason in plain words first, the details after."""
    if folder.is_symlink():
        raise MoveError(f"{folder} is a link; error.txt is only written into real folders")
    folder.mkdir(parents=True, exist_ok=True)
    text = reason.strip() + "\n"
    if detail.strip():
        text += "\n--- details ---\n" + detail.strip() + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".error-", dir=folder)
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        os.replace(tmp, folder / ERROR_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / ERROR_FILE


def _count(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return int(path.exists() or path.is_symlink())
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(path))


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC or "No space left" in str(e):
        return "the disk is full"
    if isinstance(e, shutil.Error):
        return "some files could not be copied"
    return e.strerror or str(e)
