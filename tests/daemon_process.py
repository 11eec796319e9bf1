"""A real `reelmask daemon` subprocess for tests: start it, wait on it, read its status, stop it.

Waits poll with generous deadlines: they end as soon as the condition holds, so a busy machine
makes a test slower, not red."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

from tests.conftest import reelmask_command

T = TypeVar("T")

def patience() -> float:
    """How many times longer than on an idle machine a test may wait: REELMASK_TEST_PATIENCE when set
    (one factor for the whole run), else 1 plus the load per CPU right now (a busy machine gets longer)."""
    fixed = os.environ.get("REELMASK_TEST_PATIENCE")
    if fixed:
        return max(0.1, float(fixed))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return 1.0 + os.getloadavg()[0] / cpus


def scaled(seconds: float) -> float:
    """A test's time limit on this machine now (see patience)."""
    return seconds * patience()

# a daemon that reacts fast and runs SAM2's real code with random weights at 256 px
FAST = {"watch": {"settle_seconds": 0.5}, "models": {"sam2_weights": "random", "image_size": 256},
        "output": {"preview": False}, "daemon": {"tick_seconds": 0.1, "progress_seconds": 0.1},
        "limits": {"min_free_mb": 0}}


def write_config(root: Path, sections: dict | None = None, tables: str = "") -> Path:
    """root/config.toml: FAST with `sections` merged over it, then `tables` ([[paths.inbox]] ...) as written."""
    merged = {name: dict(keys) for name, keys in FAST.items()}
    for name, keys in (sections or {}).items():
        merged.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]  # JSON scalars and lists are TOML
    path = root / "config.toml"
    path.write_text("\n".join(lines) + "\n" + tables)
    return path


def start(root: Path, config: str = "config.toml", log: str = "daemon.log") -> subprocess.Popen:
    return subprocess.Popen([*reelmask_command(), "daemon", "--config", config, "--log-level", "info"],
                            cwd=root, stdout=subprocess.PIPE, stderr=open(root / log, "a"),
                            env={**os.environ, "YOLO_OFFLINE": "1"})


def wait(cond: Callable[[], T], timeout: float, what: str, proc: subprocess.Popen | None = None) -> T:
    """Poll `cond` until it returns something true; fail after `timeout` seconds, scaled by patience()."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def cli(root: Path, *args: str, config: str = "config.toml") -> subprocess.CompletedProcess:
    return subprocess.run([*reelmask_command(), *args, "--config", config], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"})


def status(root: Path, config: str = "config.toml") -> dict:
    """`reelmask status --json`; no jobs yet while a starting daemon has not made its database."""
    out = cli(root, "status", "--json", config=config)
    if out.returncode == 2 and ("there is no state database" in out.stderr or "schema version 0" in out.stderr):
        return {"jobs": []}  # the daemon has not made it yet, or is making it right now
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def stop(proc: subprocess.Popen) -> tuple[int, float]:
    """SIGTERM, then the exit code and how long the daemon took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=scaled(60))
    return rc, time.monotonic() - t0
