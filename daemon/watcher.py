"""Inbox watching: which folders (and bare video files) are complete and may become jobs.

A folder is ready when it holds `.ready`, or when nothing in its whole tree has changed for
`watch.settle_seconds` and no partial file (`*.part`, `*~`) is left in it. A video file dropped by
itself is ready when `NAME.ready` or `STEM.ready` appears beside it, or when its size and mtime have
not changed for `watch.settle_seconds`. watchdog events (or a
polling observer, for network shares) mark activity; a cheap tree signature (file count, sizes,
newest mtime) confirms quiet, so a missed event cannot make a half-copied folder look finished.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from core.video import is_video_name

log = logging.getLogger(__name__)

READY_MARKER = ".ready"


def is_ignored_name(name: str) -> bool:
    """Hidden and partial names never become jobs."""
    return name.startswith(".") or name.endswith(".part") or name.endswith("~")


def file_markers(file: Path) -> list[Path]:
    """The ready markers of a bare video file: clip.mp4.ready or clip.ready beside it."""
    return [file.with_name(file.name + READY_MARKER), file.with_name(file.stem + READY_MARKER)]


def is_job_entry(entry: Path) -> bool:
    """What in an inbox becomes a job: a folder, a link (refused), or a video file by itself."""
    if is_ignored_name(entry.name):
        return False
    return entry.is_symlink() or entry.is_dir() or (is_video_name(entry.name) and entry.is_file())


def entry_signature(entry: Path, max_entries: int = 250_000) -> "Signature":
    """tree_signature for a folder; size and mtime for a file."""
    if entry.is_dir() and not entry.is_symlink():
        return tree_signature(entry, max_entries)
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return Signature(0, 0, 0, False)
    return Signature(1, st.st_size, st.st_mtime_ns, False)


@dataclass(frozen=True)
class Inbox:
    path: Path
    mode: str | None


@dataclass(frozen=True)
class Signature:
    files: int
    bytes: int
    newest_ns: int
    partial: bool


def tree_signature(folder: Path, max_entries: int = 250_000) -> Signature:
    """What changes while a folder is being copied; the walk stops after `max_entries` (such a folder
    fails on limits.max_files anyway) and never follows links."""
    files = size = newest = seen = 0
    partial = False
    stack = [folder]
    while stack and seen <= max_entries:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for e in entries:
            seen += 1
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            newest = max(newest, st.st_mtime_ns)
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
                continue
            files += 1
            size += st.st_size
            if e.name.endswith(".part") or e.name.endswith("~"):
                partial = True
    return Signature(files, size, newest, partial)


class _Activity(FileSystemEventHandler):
    """Remembers when each top-level folder of an inbox last saw a file-system event."""

    def __init__(self, inbox: Path, seen: dict[Path, float], lock: threading.Lock):
        self.inbox = inbox
        self.seen = seen
        self.lock = lock

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            try:
                rel = Path(os.fsdecode(raw)).relative_to(self.inbox)
            except ValueError:
                continue
            if rel.parts:
                with self.lock:
                    self.seen[self.inbox / rel.parts[0]] = time.monotonic()


class InboxWatcher:
    """Finds complete folders in the inboxes. Call `ready()` periodically."""

    def __init__(self, inboxes: list[Inbox], settle_seconds: float, polling: bool = False,
                 poll_interval: float = 1.0, max_entries: int = 250_000):
        self.inboxes = inboxes
        self.max_entries = max_entries
        self.settle = settle_seconds
        self.polling = polling
        self.poll_interval = poll_interval
        self._activity: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._state: dict[Path, tuple[Signature, float]] = {}  # folder -> (signature, when it last changed)
        self._observer = None

    def start(self) -> None:
        self._observer = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
        for inbox in self.inboxes:
            inbox.path.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(_Activity(inbox.path, self._activity, self._lock), str(inbox.path), recursive=True)
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def ready(self, now: float | None = None) -> list[tuple[Path, Inbox]]:
        """Folders that are complete now, with the inbox each one is in. A link is reported at once and
        never entered: the daemon refuses it."""
        now = time.monotonic() if now is None else now
        found: list[tuple[Path, Inbox]] = []
        present: set[Path] = set()
        for inbox in self.inboxes:
            try:
                entries = sorted(p for p in inbox.path.iterdir() if is_job_entry(p))
            except OSError as e:
                log.warning("cannot list inbox %s: %s", inbox.path, e)
                continue
            for folder in entries:
                present.add(folder)
                if self._is_ready(folder, now):
                    found.append((folder, inbox))
        for gone in set(self._state) - present:
            del self._state[gone]
        with self._lock:  # events of folders that left the inboxes (claimed, moved away)
            for gone in set(self._activity) - present:
                del self._activity[gone]
        return found

    def _is_ready(self, folder: Path, now: float) -> bool:
        if folder.is_symlink():
            return True
        is_file = not folder.is_dir()
        if any(m.exists() for m in file_markers(folder)) if is_file else (folder / READY_MARKER).exists():
            return True
        sig = entry_signature(folder, self.max_entries)
        with self._lock:
            event_at = self._activity.get(folder, 0.0)
        previous = self._state.get(folder)
        changed_at = now if previous is None or previous[0] != sig else previous[1]
        changed_at = max(changed_at, min(event_at, now))
        self._state[folder] = (sig, changed_at)
        # an empty folder becomes a job too, and fails with a clear error.txt
        return not sig.partial and now - changed_at >= self.settle
