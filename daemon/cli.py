"""`reelmask daemon` and `reelmask service install`, added to the CLI through an entry point."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from core.commands import command, config_from_args
from core.config import default_config_path

log = logging.getLogger("daemon.service")


def _daemon_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(log_level="info")  # a daemon's log is how a headless service is followed: jobs at info


@command(_daemon_args)
def cmd_daemon(args: argparse.Namespace) -> int:
    """Watch the inboxes and run every complete folder, until SIGTERM or Ctrl-C.

    Folders dropped into paths.inboxes become jobs once they hold .ready or have been quiet for
    watch.settle_seconds. Results go to paths.outbox, inputs to paths.done or paths.failed
    (with error.txt). A stop (SIGTERM/SIGINT) lets the running job checkpoint and exits 0; the
    job resumes from its last finished chunk on the next start.

    Logs at info by default: a line per job claimed, started, each chunk (or 10%), done or failed.

    example: reelmask daemon --config /srv/reelmask/config.toml
    """
    stopping = threading.Event()

    def on_signal(signum, _frame):  # only sets the flag; the main loop does the rest
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    # before the heavy imports: a stop that arrives while the daemon starts still ends with exit 0
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from daemon.service import Daemon

    if os.environ.get("JOURNAL_STREAM"):  # under systemd: journald adds the time itself
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return Daemon(config_from_args(args), stopping=stopping).run()


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["install"])
    p.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user) instead of a system one")
    p.add_argument("--output", metavar="FILE", help="write the unit here instead of the systemd folder")


@command(_service_args)
def cmd_service(args: argparse.Namespace) -> int:
    """Write a systemd unit that runs `reelmask daemon` with this config, headless.

    example: reelmask service install --user --config ~/reelmask/config.toml
    """
    from daemon.systemd import install

    config = Path(args.config).resolve() if args.config else default_config_path()
    if config is None:
        config = Path.cwd() / "config.toml"
        if not config.exists():
            from core.config import render_toml

            config.write_text(render_toml())
    config = config.resolve()
    config_from_args(args)  # validate before installing
    path = install(config, config.parent, args.user, Path(args.output) if args.output else None)
    scope = "--user " if args.user else ""
    print(f"wrote {path}")
    print(f"enable and start it with:\n  systemctl {scope}daemon-reload\n  systemctl {scope}enable --now reelmask")
    print(f"follow its log with:\n  journalctl {'--user ' if args.user else ''}-u reelmask -f")
    return 0
