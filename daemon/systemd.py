"""`reelmask service install`: a systemd unit that runs the daemon headless."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from core.errors import ReelmaskError

UNIT_NAME = "reelmask.service"


def reelmask_script() -> Path:
    """The installed `reelmask` console script: beside this Python (its venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "reelmask"
    if beside.is_file():
        return beside
    found = shutil.which("reelmask")
    if found:
        return Path(found).absolute()
    raise ReelmaskError(f"no `reelmask` script beside {sys.executable} or on PATH for the unit to run; "
                        "install reelmask as the README says (pip install ... -e .) and run this again")


def unit_text(config: Path, workdir: Path, user: bool) -> str:
    exec_start = " ".join(shlex.quote(str(p)) for p in (reelmask_script(), "daemon", "--config", config))
    lines = [
        "[Unit]",
        "Description=reelmask watch-folder daemon (frame folders in, masks out)",
        "After=network-online.target local-fs.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={workdir}",
        f"ExecStart={exec_start}",
        "Environment=PYTHONUNBUFFERED=1",
        "Environment=YOLO_OFFLINE=1",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=20",
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
    ]
    return "\n".join(lines) + "\n"


def unit_path(user: bool) -> Path:
    if user:
        return Path.home() / ".config" / "systemd" / "user" / UNIT_NAME
    return Path("/etc/systemd/system") / UNIT_NAME


def install(config: Path, workdir: Path, user: bool, output: Path | None = None) -> Path:
    path = output or unit_path(user)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text(config, workdir, user))
    return path
