"""`reelmask tui` in a real pseudo-terminal at 80x24: it starts, asks the terminal about graphics
before taking it over, draws the preview (half blocks, or Kitty's graphics when chosen) and quits on q."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from core.outputs.masks import write_palette_png
from core.store import Store
from tests.conftest import make_clip, reelmask_command
from tests.daemon_process import scaled

pty = pytest.importorskip("pty")


def _state(tmp_path: Path) -> Path:
    """A database holding one running job whose newest mask is written."""
    clip = make_clip(tmp_path / "clip", n=2, size=(160, 120))
    out = tmp_path / "outbox" / "clip"
    (out / "masks").mkdir(parents=True)
    ids = np.zeros((120, 160), np.uint8)
    ids[30:90, 40:120] = 2
    write_palette_png(out / "masks" / "00001.png", ids)
    store = Store(tmp_path / "state.db")
    job = store.add_job("clip", clip)
    store.update_job(job, output_path=str(out), state="running")
    store.close()
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndb = "{tmp_path / "state.db"}"\n')
    return config


def _drive(config: Path, graphics: str, answers: dict[bytes, bytes] | None = None) -> tuple[int, bytes]:
    """Run the dashboard in a pty of 80x24 (answering the terminal queries in `answers`), wait for the
    queue, press v, wait for the picture, press q; the exit status and everything it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the dashboard, with this pty as its terminal
        os.environ["TERM"] = "xterm-256color"
        os.environ.pop("NO_COLOR", None)
        command = reelmask_command()
        os.execv(command[0], [*command, "tui", "--config", str(config), "--graphics", graphics, "--refresh", "0.3"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 24 * 16, 80 * 8))  # 8x16-pixel cells
    out, pressed, quit_at = b"", None, None
    deadline = time.monotonic() + scaled(90)
    answered: set[bytes] = set()
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
            for query, answer in (answers or {}).items():
                if query in out and query not in answered:
                    os.write(fd, answer)
                    answered.add(query)
        if pressed is None and b"queue" in out and b"clip" in out:
            os.write(fd, b"v")
            pressed = time.monotonic()
        if pressed is not None and quit_at is None and (b"frame 00001" in out[-200000:] or
                                                          time.monotonic() - pressed > scaled(20)):
            time.sleep(0.5)
            os.write(fd, b"q")
            quit_at = time.monotonic()
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    else:
        os.kill(pid, 9)
    if status is None or not os.WIFEXITED(status):
        _, status = os.waitpid(pid, 0)
    try:
        while True:  # what is left in the pty
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                break
            data = os.read(fd, 1 << 16)
            if not data:
                break
            out += data
    except OSError:
        pass
    os.close(fd)
    return (os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1), out


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_dashboard_in_a_real_terminal_draws_half_blocks_when_the_terminal_has_no_graphics(tmp_path: Path):
    code, out = _drive(_state(tmp_path), "auto")   # nothing answers the graphics queries: half blocks
    text = out.decode("utf-8", errors="replace")
    assert code == 0, text[-2000:]
    assert "frame 00001" in text and "\u2580" in text
    assert "half blocks: no graphics" in text
    assert "\x1b_Ga=T" not in text and "\x1b_Gi=" not in text.split("\x1b[?1049h", 1)[-1]   # no picture sent as Kitty graphics


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_dashboard_in_a_real_terminal_sends_kitty_graphics_when_chosen(tmp_path: Path):
    code, out = _drive(_state(tmp_path), "kitty")
    text = out.decode("utf-8", errors="replace")
    assert code == 0, text[-2000:]
    assert "frame 00001" in text
    after_start = text.split("\x1b[?1049h", 1)[-1]     # what the dashboard drew once it had the screen
    assert "\x1b_G" in after_start and "f=100" in after_start   # a PNG sent with Kitty's graphics protocol
    assert "\U0010eeee" in after_start                 # and the cells that place it
