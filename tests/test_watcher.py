"""Inbox readiness with real watchdog events: a folder still being copied is never taken early."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.watcher import Inbox, InboxWatcher
from tests.daemon_process import scaled
import pytest


def _watcher(tmp_path: Path, settle=1.0, polling=False) -> tuple[InboxWatcher, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir(parents=True)
    return InboxWatcher([Inbox(inbox, None)], settle, polling=polling, poll_interval=0.2), inbox


@pytest.mark.slow
def test_copy_in_progress_is_not_ready_until_quiet(tmp_path: Path):
    w, inbox = _watcher(tmp_path, settle=1.5)
    w.start()
    try:
        clip = inbox / "clip"
        clip.mkdir()
        t0 = time.monotonic()
        for i in range(8):                      # a slow copy: a file every 0.3 s, for 2.4 s
            (clip / f"{i:05d}.jpg").write_bytes(b"x" * 100)
            time.sleep(0.3)
            assert w.ready() == [], f"taken early after {time.monotonic() - t0:.1f}s"
        last_write = time.monotonic() - 0.3
        deadline = time.monotonic() + scaled(6)
        while not w.ready():
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        assert time.monotonic() - last_write >= 1.5 - 0.05
    finally:
        w.stop()


def test_ready_marker_partial_files_and_ignored_names(tmp_path: Path):
    w, inbox = _watcher(tmp_path, settle=60.0)
    (inbox / "marked").mkdir()
    (inbox / "marked" / "0.jpg").write_bytes(b"x")
    (inbox / "marked" / ".ready").write_text("")
    (inbox / ".hidden").mkdir()
    (inbox / "copying.part").mkdir()
    (inbox / "backup~").mkdir()
    assert [f.name for f, _ in w.ready()] == ["marked"]

    w2, inbox2 = _watcher(tmp_path / "b", settle=0.0)
    (inbox2 / "clip").mkdir()
    (inbox2 / "clip" / "00001.jpg.part").write_bytes(b"x")
    w2.ready()
    assert w2.ready() == []                      # a partial file means still copying
    (inbox2 / "clip" / "00001.jpg.part").rename(inbox2 / "clip" / "00001.jpg")
    time.sleep(0.01)
    assert [f.name for f, _ in w2.ready()] == ["clip"]


def test_change_deep_in_the_tree_resets_the_clock(tmp_path: Path):
    w, inbox = _watcher(tmp_path, settle=0.5, polling=True)
    w.start()
    try:
        (inbox / "clip" / "masks").mkdir(parents=True)
        (inbox / "clip" / "0.jpg").write_bytes(b"x")
        w.ready()
        time.sleep(0.4)
        (inbox / "clip" / "masks" / "0.png").write_bytes(b"y")  # sidecar still arriving
        time.sleep(0.3)
        assert w.ready() == []
        time.sleep(0.7)
        assert [f.name for f, _ in w.ready()] == ["clip"]
    finally:
        w.stop()


def test_folders_present_at_start_are_picked_up(tmp_path: Path):
    w, inbox = _watcher(tmp_path, settle=0.2)
    (inbox / "old").mkdir()
    (inbox / "old" / "1.jpg").write_bytes(b"x")
    w.ready()
    time.sleep(0.3)
    assert [f.name for f, _ in w.ready()] == ["old"]
