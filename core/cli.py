"""The `reelmask` command: a thin adapter over the Python API.

Each command's docstring is its --help text, with an example. Core's commands are this module's and
those of core/training/cli.py (`train`) and core/evaluate/cli.py (`eval`), imported here; daemon/ and
tui/ add theirs through the `reelmask.commands` entry point group, as core never imports them. Every
command module registers through core/commands.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Callable

from core import __version__
from core.commands import (COMMANDS, PluginError, command, config_from_args, load_plugins, open_store,
                           stderr_console)
from core.config import render_toml
from core.errors import Cancelled, ReelmaskError

log = logging.getLogger("reelmask")

# ------------------------------------------------------------------------- run

def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames_dir", metavar="INPUT", help="folder of numbered JPEG/PNG frames (or holding one video "
                   "file), or a video file (.mp4, .mov, .mkv, .avi, .webm)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <outbox>/<folder name>)")
    p.add_argument("--mode", help="track, detect, promptless, refine, matting or unet (default: chosen from the folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _trust_arg(p)


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-folder", action="store_true",
                   help="the folder is your own: its job.toml may set any key, model files included "
                        "(without this, only job-scope keys; see README, Security)")


class _LiveBar:
    """`run`'s progress on a terminal: one live bar with frames/s and ETA."""

    def __init__(self, console, label: str, total: int, quiet: bool):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console, self.label = console, label
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("frames {task.fields[fps]} fps"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn()]
        self.bar = Progress(*columns, console=console, transient=False, disable=quiet)
        self.task = self.bar.add_task(label, total=total, fps="-")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def say(self, text: str) -> None:
        self.console.print(text)

    def frame(self) -> None:
        self.bar.advance(self.task)
        t = self.bar.tasks[0]
        speed = t.finished_speed or t.speed
        self.bar.update(self.task, fps=f"{speed:.1f}" if speed else "-")

    def stage(self, what: str) -> None:
        self.bar.update(self.task, description=f"{self.label} · {what}")


class _PlainLines:
    """`run`'s progress when stderr is a pipe or a file: a plain line at every stage and every 10% of the
    frames, as they happen (a live bar would only draw at the end)."""

    def __init__(self, console, label: str, total: int, quiet: bool):
        self.console, self.label, self.total, self.quiet = console, label, total, quiet
        self.done, self.next_tenth, self.t0 = 0, 1, time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)

    def frame(self) -> None:
        self.done += 1
        if self.quiet or self.done * 10 < self.next_tenth * self.total:
            return
        while self.done * 10 >= self.next_tenth * self.total:
            self.next_tenth += 1
        fps = self.done / max(time.monotonic() - self.t0, 1e-9)
        self.console.print(f"{self.label}: {self.done}/{self.total} frames ({fps:.1f} frames/s)", soft_wrap=True)

    def stage(self, what: str) -> None:
        if not self.quiet:
            self.console.print(f"{self.label}: {what}", soft_wrap=True)


def _job_name(src: Path) -> str:
    """A folder's name, or a video file's stem."""
    src = src.resolve()
    return src.stem if src.is_file() else src.name


@command(_run_args)
def cmd_run(args: argparse.Namespace) -> int:
    """Run one frame folder or video file now and write its outputs.

    Writes masks/, prompts_used.jsonl, manifest.json and preview.mp4 into --out
    (default: the configured outbox / the folder's name). The mode comes from --mode, else
    from the folder's sidecar files (see README, "Modes").

    example: reelmask run clips/dog --out results/dog --mode track --set models.image_size=512
    """
    from core.engine.events import ChunkStarted, EngineWarning, FrameResult, Phase
    from core.pipeline import JobFinished, JobStarted, prepare_job, run_job

    cfg = config_from_args(args)
    src = Path(args.frames_dir)
    out = Path(args.out) if args.out else cfg.path(cfg.paths.outbox) / _job_name(src)
    job = prepare_job(src, cfg, mode=args.mode, trusted=args.trust_folder)
    console = stderr_console()
    label = f"{job.choice.mode.value} {src.name}"
    show = _LiveBar(console, label, len(job.folder), args.quiet) if console.is_terminal else \
        _PlainLines(console, label, len(job.folder), args.quiet)
    finished = None
    said: set[str] = set()
    with show:
        for event in run_job(job, out):
            if isinstance(event, JobStarted):
                show.say(f"[dim]{event.frames_total} frames, {event.chunks} chunk(s), "
                         f"mode {event.mode.value} ({job.choice.reason})")
            elif isinstance(event, FrameResult):
                show.frame()
            elif isinstance(event, ChunkStarted):
                show.stage(f"chunk {event.chunk} {event.sweep}")
            elif isinstance(event, EngineWarning):
                show.say(f"[yellow]warning:[/] {event.message}")
                said.add(event.message)
            elif isinstance(event, Phase):
                show.say(f"[cyan]{event.name}[/]")
                show.stage(event.name.split(" (")[0])
            elif isinstance(event, JobFinished):
                finished = event
    if finished is None:
        return 1
    m = finished.manifest
    for w in (w for w in m["warnings"] if w not in said):
        console.print(f"[bold yellow]warning:[/] {w}", soft_wrap=not console.is_terminal)
    print(f"{m['frames']} masks written to {finished.output} "
          f"({m['mode']}, {m['timings']['frames_per_second']} frames/s)")
    return 0


# ------------------------------------------------------------------------- models

def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "pull", "import"])
    p.add_argument("target", nargs="?", metavar="NAME|PATH", help="model name for pull, file for import")
    p.add_argument("--name", help="with import: which model the file is, when its checksum is not pinned")


@command(_models_args)
def cmd_models(args: argparse.Namespace) -> int:
    """List, download or import SAM2 checkpoints in the model cache.

    list            every known variant, whether its checksum is pinned and whether it is cached
    pull NAME       download the official checkpoint and verify its size and sha256
    import PATH     copy a checkpoint downloaded elsewhere into the cache (offline machines)

    example: reelmask models import ~/Downloads/sam2.1_hiera_tiny.pt
    """
    from core.models import weights as W
    from core.models.registry import SAM2_VARIANTS, find_variant

    cfg = config_from_args(args)
    if args.action == "list":
        from rich.table import Table

        table = Table(title=f"SAM2 checkpoints (cache: {W.sam2_dir(cfg)})")
        for col in ("name", "size", "sha256 pinned", "cached"):
            table.add_column(col)
        for v in SAM2_VARIANTS.values():
            size, sha = W.pinned(v, cfg)
            path = W.cached_path(v, cfg)
            table.add_row(v.name, f"{size:,}" if size else "?", "yes" if sha else "on first download",
                          str(path) if path.is_file() else "-")
        from rich.console import Console

        Console().print(table)
        print(f"models.sam2 = {cfg.models.sam2}, models.sam2_weights = {cfg.models.sam2_weights}")
        return 0
    if not args.target:
        raise ReelmaskError(f"`reelmask models {args.action}` needs a {'NAME' if args.action == 'pull' else 'PATH'}")
    if args.action == "pull":
        variant = find_variant(args.target)
        if variant is None:
            raise ReelmaskError(f"unknown model '{args.target}'; choose one of {', '.join(SAM2_VARIANTS)}")
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                      console=stderr_console()) as bar:
            task = bar.add_task(f"pull {variant.name}", total=None)
            path = W.pull(variant, cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
        print(f"{variant.name} verified at {path}")
        return 0
    variant, path = W.import_checkpoint(Path(args.target).expanduser(), args.name, cfg)
    print(f"imported {variant.name} to {path}")
    return 0


# ------------------------------------------------------------------------- config

def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defaults", action="store_true", help="print the built-in defaults as config.toml, with comments")
    p.add_argument("--json", action="store_true", help="print the effective configuration as plain JSON")


@command(_config_args)
def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective configuration as TOML (--json: plain JSON; --defaults: the shipped config.toml).

    The TOML output is a valid config file (its first line, a comment, says where the values came from).

    example: reelmask config --set chunking.chunk_size=50 > my-config.toml
    """
    from core.config import render_effective

    if args.defaults:
        sys.stdout.write(render_toml())
        return 0
    cfg = config_from_args(args)
    if args.json:
        import json

        sys.stdout.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(render_effective(cfg))
    return 0


# ------------------------------------------------------------------------- queue

def _job(store, ident: str):
    job = store.find_job(ident)
    if job is None:
        raise ReelmaskError(f"no job matches '{ident}'; `reelmask status` lists the job ids")
    return job


def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames_dir", metavar="INPUT", help="folder of numbered JPEG/PNG frames (or holding one video "
                   "file), or a video file (.mp4, .mov, .mkv, .avi, .webm)")
    p.add_argument("--mode", help="force a mode instead of choosing it from the folder")
    _trust_arg(p)


@command(_submit_args)
def cmd_submit(args: argparse.Namespace) -> int:
    """Queue a frame folder or video file for the daemon without putting it in an inbox.

    The folder is checked now (frames, prompts.json, job.toml, mode) and stays where it is; the
    daemon writes the results to the outbox. --set values given here apply to this job only.

    example: reelmask submit /data/clips/dog --mode track
    """
    from core.pipeline import prepare_job

    cfg = config_from_args(args)
    src = Path(args.frames_dir).resolve()
    prepare_job(src, cfg, mode=args.mode, trusted=args.trust_folder, confined=True)  # fail now, not in the daemon
    store = open_store(cfg)
    options = {k: v for k, v in (("sets", list(args.set or ())), ("trusted", args.trust_folder)) if v} or None
    job_id = store.add_job_once(_job_name(src), src, source="submit", mode=args.mode, options=options)
    if job_id is None:
        raise ReelmaskError(f"{src} is already queued or running; `reelmask status` shows it")
    store.log("info", f"submitted {src}", job_id)
    print(job_id)
    return 0


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", nargs="?", metavar="ID", help="show this one job whole (an id or a unique prefix)")
    p.add_argument("--json", action="store_true", help='machine-readable: {"jobs": [...]}')
    p.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    p.add_argument("--wide", action="store_true", help="every column, whole ids and names, however wide")


@command(_status_args)
def cmd_status(args: argparse.Namespace) -> int:
    """Show the job queue (one line per job, errors in full below it), or one job whole.

    Ids are shown with 8 characters (any unique prefix works in cancel, retry and status ID). Reads the
    state database (paths.db) read-only: it never creates or upgrades it, so a daemon must have started
    once with this config; a daemon's locks never block it.

    example: reelmask status --state failed      reelmask status 3f2a9c1d      reelmask status --json
    """
    import json
    import shutil
    import sqlite3

    cfg = config_from_args(args)
    store = open_store(cfg, "read")
    try:
        if args.job_id:
            from core.store import since_retry

            job = _job(store, args.job_id)
            events = since_retry(store.events(limit=200, job_id=job.id))
        else:
            jobs, paused = store.jobs(args.state), store.setting("paused") == "1"
    except sqlite3.Error as e:
        raise store.explain(e) from e
    finally:
        store.close()
    if args.job_id:
        if args.json:
            print(json.dumps({**job.status(), "origin": job.origin_path, "error_detail": job.error_detail,
                              "events": events}, indent=2))
        else:
            sys.stdout.write(_job_whole(job, events))
        return 0
    if args.json:
        print(json.dumps({"jobs": [j.status() for j in jobs], "paused": paused}, indent=2))
        return 0
    width = 10_000 if args.wide else max(60, shutil.get_terminal_size((80, 24)).columns)
    sys.stdout.write(_queue_text(jobs, paused, str(cfg.path(cfg.paths.db)), width, args.wide))
    return 0


def _queue_text(jobs: list, paused: bool, db: str, width: int, wide: bool) -> str:
    """One line per job within `width` columns; an error on its own indented lines, in full."""
    title = f"reelmask queue: {len(jobs)} job{'s' if len(jobs) != 1 else ''}" + (" (PAUSED)" if paused else "")
    lines = [title + ("" if wide else f"  [{db}]" if len(title) + len(db) + 4 <= width else "")]
    cols = ["id", "state", "mode", "frames", "fps"] + (["kind", "worker", "node", "tries"] if wide else []) + ["name"]
    rows = []
    for j in jobs:
        frames = f"{j.frames_done}/{j.frames_total}" if j.frames_total else "-"
        row = [j.id if wide else j.id[:8], j.state, j.mode or (j.kind if j.kind != "segment" else "-"), frames,
               f"{j.fps:.1f}" if j.fps else "-"]
        if wide:
            row += [j.kind, j.worker or "-", j.node or "-", str(j.attempts)]
        rows.append((row + [j.name], j))
    sizes = [max([len(c)] + [len(r[i]) for r, _ in rows]) for i, c in enumerate(cols[:-1])]
    fmt = "  ".join(f"{{:<{n}}}" for n in sizes)
    fixed = sum(sizes) + 2 * len(sizes)
    room = max(8, width - fixed)

    def fit(name: str) -> str:
        return name if wide or len(name) <= room else name[: room - 1] + "\u2026"

    lines.append(fmt.format(*cols[:-1]) + "  " + cols[-1])
    for row, j in rows:
        lines.append(fmt.format(*row[:-1]) + "  " + fit(row[-1]))
        if j.error:
            wrapped = textwrap.wrap(" ".join(j.error.split()), width=max(20, width - 4)) if not wide else [j.error]
            lines += ["    " + w for w in wrapped]
    return "\n".join(lines) + "\n"


def _job_whole(job, events: list[dict]) -> str:
    """`reelmask status ID`: every field of one job, its error with details, and its log lines."""
    fields = [("id", job.id), ("name", job.name), ("kind", job.kind), ("mode", job.mode or "-"),
              ("state", job.state), ("frames", f"{job.frames_done}/{job.frames_total}" if job.frames_total else "-"),
              ("frames/s", f"{job.fps:.2f}" if job.fps else "-"), ("attempts", str(job.attempts)),
              ("resumed from frame", "-" if job.resumed_from_frame is None else str(job.resumed_from_frame)),
              ("worker", job.worker or "-"), ("node", job.node or "-"), ("source", job.source),
              ("dropped at", job.origin_path), ("input now", job.input_path), ("output", job.output_path or "-"),
              ("created", job.created_at), ("started", job.started_at or "-"), ("finished", job.finished_at or "-")]
    sets = job.option_values.get("sets")
    if sets:
        fields.append(("settings", " ".join(sets)))
    out = [f"{k + ':':<20}{v}" for k, v in fields]
    if job.error:
        out += ["", "error:", textwrap.indent(job.error.strip(), "  ")]
    if job.error_detail:
        out += ["", "details:", textwrap.indent(job.error_detail.strip(), "  ")]
    warned = [e for e in events if e["level"] == "warning"]
    if warned:
        out += ["", "warnings:"] + [f"  {e['message']}" for e in warned]
    if events:
        out += ["", "log:"] + [f"  {e['ts']}  {e['level']:<7} {e['message']}" for e in events]
    return "\n".join(out) + "\n"


def _id_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="ID", help="job id (or a unique prefix of it)")


def _request(args: argparse.Namespace, kind: str, payload: dict | None = None) -> int:
    """Queue a command about one job for the daemon."""
    import sqlite3

    store = open_store(config_from_args(args), "write")
    try:
        job = _job(store, args.job_id)
        store.add_command(kind, job.id, payload)
    except sqlite3.Error as e:
        raise store.explain(e) from e
    finally:
        store.close()
    print(f"{kind} requested for {job.id} ({job.name}, {job.state})")
    return 0


@command(_id_args)
def cmd_cancel(args: argparse.Namespace) -> int:
    """Ask the daemon to cancel a job (a running job stops within a frame).

    example: reelmask cancel 3f2a
    """
    return _request(args, "cancel")


@command(_id_args)
def cmd_retry(args: argparse.Namespace) -> int:
    """Ask the daemon to queue a failed or cancelled job again, optionally with other settings.

    --set key=value (repeatable) changes settings for this job from now on: they are recorded on the job
    (`reelmask status ID` shows them) and apply to every later run of it, over its folder's job.toml.

    example: reelmask retry 3f2a --set models.image_size=512 --set 'output.formats=["png","coco"]'
    """
    sets = list(args.set or ())
    if sets:
        from core.config import parse_sets, with_overrides

        with_overrides(config_from_args(args), parse_sets(sets), "reelmask retry --set")  # a typo fails here
    return _request(args, "retry", {"sets": sets} if sets else None)


# ------------------------------------------------------------------------- parser

def _doc(fn: Callable) -> tuple[str, str]:
    doc = textwrap.dedent(fn.__doc__ or "").strip()
    first, _, rest = doc.partition("\n")
    return first, textwrap.dedent(rest).strip()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="config.toml to use (default: $REELMASK_CONFIG or ./config.toml)")
    common.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config key, e.g. --set models.image_size=256 (repeatable)")
    common.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="log detail on stderr (default: warning)")

    parser = argparse.ArgumentParser(
        prog="reelmask", description="Frame folders in, object masks and alpha mattes out.",
        epilog="Every command takes --config FILE and --set key=value. `reelmask COMMAND --help` for details.")
    parser.add_argument("--version", action="version", version=f"reelmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # core's own commands in other modules (they register through core.commands when imported)
    import core.evaluate.cli  # reelmask eval
    import core.training.cli  # noqa: F401  reelmask train

    load_plugins()
    for name, (fn, configure) in COMMANDS.items():
        summary, details = _doc(fn)
        p = sub.add_parser(name, parents=[common], help=summary, description=f"{summary}\n\n{details}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except PluginError as e:
        print(f"reelmask: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="sam2")
    try:
        return COMMANDS[args.command][0](args)
    except BrokenPipeError:  # `reelmask ... | head`: the reader has gone, which is not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except Cancelled:
        print("reelmask: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("reelmask: interrupted", file=sys.stderr)
        return 130
    except ReelmaskError as e:
        print(f"reelmask: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or an environment problem: one line, details with --log-level debug
        log.debug("unexpected error", exc_info=True)
        print(f"reelmask: internal error: {type(e).__name__}: {e} (rerun with --log-level debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # the commands register on the imported module; `python -m` would run a copy
    sys.exit("reelmask: run the `reelmask` script (installed beside python), not `python -m core.cli`")
