"""One daemon per state database: an exclusive lock file beside it that names the holder."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from core.errors import StateError
from core.store import utc_now

class DaemonLock:
    """An exclusive flock on `<db>.lock`, held for the daemon's life; the file names the holder.

    The kernel drops the lock when the holder's process ends, however it ends, so a lock is never
    left behind by a crash or `kill -9`.
    """

    def __init__(self, db: str | Path):
        self.db = Path(db)
        self.path = self.db.with_name(self.db.name + ".lock")
        self._file = None

    def acquire(self) -> None:
        """Take the lock, or raise StateError naming the daemon that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read()
            f.close()
            raise StateError(self._held_message(text)) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now()}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder) + "\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def _held_message(self, text: str) -> str:
        try:
            holder = json.loads(text)
            who = f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
            stop = f"stop it first (`kill {holder['pid']}` on {holder['host']}, or `systemctl stop reelmask`)"
        except (ValueError, KeyError, TypeError):
            who, stop = "starting up, pid not written yet", "stop it first"
        return (f"another reelmask daemon ({who}) already runs on the state database {self.db} "
                f"(lock {self.path}); {stop}, or give this daemon its own paths.db")
