"""The command registry of `reelmask` and the helpers command modules share.

core/cli.py builds the parser from COMMANDS. A command module (core's own `train` and `eval`, and the
plugins of daemon/ and tui/, named in the `reelmask.commands` entry point group) registers each
`cmd_<name>` function with `command` and may use `config_from_args`, `open_store` and
`stderr_console`. Living apart from core/cli.py, this module lets core's command modules be imported
by the CLI without an import cycle.
"""

from __future__ import annotations

import argparse
from typing import Callable

from core.config import Config, load_config
from core.errors import ReelmaskError

PLUGIN_GROUP = "reelmask.commands"  # daemon/ and tui/ add their commands here: core never imports them

Configure = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Configure]] = {}


def command(configure: Configure = lambda p: None):
    """Register `cmd_<name>` as `reelmask <name>`; its docstring is the help, `configure` adds arguments."""
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = (fn, configure)
        return fn
    return register


class PluginError(ReelmaskError):
    """A `reelmask.commands` entry point that does not load: the CLI stops instead of losing its commands."""


def load_plugins() -> None:
    """Import every module of the `reelmask.commands` entry point group; each registers with `command`."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise PluginError(
                f"command plugin '{ep.name}' (entry point {ep.value}) failed to load: {type(e).__name__}: {e}; "
                "reinstall reelmask as the README says (`.venv/bin/pip install --no-build-isolation -e .`) "
                "or fix that module") from e


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration that --config FILE and --set KEY=VALUE of a command select."""
    return load_config(args.config, args.set or ())


def stderr_console():
    """A rich Console on stderr, for progress bars and warnings that must not mix with stdout."""
    from rich.console import Console

    return Console(stderr=True)


def open_store(cfg: Config, access: str = "create"):
    """The state database of `cfg`: "create" (queue work for a daemon that may start later), "write"
    (requests about existing jobs) or "read"; only "create" makes or migrates the file."""
    from core.store import Access, Store

    return Store(cfg.path(cfg.paths.db), Access(access), config_source=cfg.source)
