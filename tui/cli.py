"""`reelmask tui`, added to the CLI through an entry point."""

from __future__ import annotations

import argparse

from core.commands import command, config_from_args, open_store


def _tui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS", help="how often to re-read the state (default 1)")
    p.add_argument("--graphics", choices=("auto", "halfblock", "kitty", "sixel"), default="auto",
                   help="how the preview pane draws pictures: auto asks the terminal for Sixel or Kitty graphics "
                        "and uses half-block characters otherwise (default auto)")


@command(_tui_args)
def cmd_tui(args: argparse.Namespace) -> int:
    """Open the dashboard: queue, job progress, GPU memory, events; cancel, retry, pause, train.

    Works over SSH in 80x24 with the keyboard only: arrows select a job; c cancel, r retry,
    p pause/resume the queue, t train, f filter by state, v preview, e events, q quit; ctrl+p opens
    the command palette.
    It reads the same database as `reelmask daemon` (paths.db), read-only, and never loads a model;
    the database must exist (start `reelmask daemon` once).

    example: ssh gpu-box -t reelmask tui --config /srv/reelmask/config.toml
    """
    from core.errors import StateError
    from tui.app import ReelmaskApp
    from tui.preview import pick_graphics

    cfg = config_from_args(args)
    try:  # a wrong path or schema is an error now; a busy database is shown by the dashboard until it frees
        open_store(cfg, "read").close()
    except StateError as e:
        if not e.busy:
            raise
    graphics, how = pick_graphics(args.graphics)  # asks the terminal before the dashboard takes it over
    ReelmaskApp(cfg, refresh_seconds=max(0.2, args.refresh), graphics=graphics, graphics_note=how).run()
    return 0
