"""`reelmask train KIND`: in the foreground with a progress bar, or queued for the daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.commands import command, config_from_args, open_store, stderr_console
from core.training.registry import TRAINERS


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", metavar="KIND", choices=list(TRAINERS), help=", ".join(TRAINERS))
    p.add_argument("--data", metavar="DIR", required=True, help="dataset folder (layout in the README, Training)")
    p.add_argument("--out", metavar="DIR", help="run folder for best.pt, last.pt, metrics.jsonl "
                                                "(default: <train.out>/<KIND>-<dataset name>)")
    p.add_argument("--queue", action="store_true", help="hand the run to the daemon instead of training now")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")


@command(_train_args)
def cmd_train(args: argparse.Namespace) -> int:
    """Train a model: unet, matting, sam2-decoder or yolo.

    unet is the direct segmenter (models.unet), matting the alpha refiner (models.matting),
    sam2-decoder SAM2's mask decoder fine-tuned on your masks (models.sam2_decoder), yolo the
    detector of detect mode (models.yolo).

    Runs in the foreground with a progress bar (Ctrl-C stops; --resume continues from last.pt),
    or with --queue as a daemon job whose epochs, loss and metrics show in `reelmask tui`.
    Hyper-parameters are train.* keys: --set train.epochs=3 --set train.img_size=128; left at 0,
    epochs, lr, batch_size and img_size take the kind's own defaults.

    example: reelmask train sam2-decoder --data dataset --out models/decoder --set train.epochs=5
    """
    from core.training.registry import check_dataset, default_out, queue_training

    cfg = config_from_args(args)
    data = Path(args.data).expanduser().resolve()
    if args.queue:
        job_id = queue_training(open_store(cfg), cfg, args.kind, data, args.out, args.set or ())
        print(job_id)
        return 0
    summary = check_dataset(args.kind, data)
    out = Path(args.out).expanduser().resolve() if args.out else default_out(cfg, args.kind, data)
    return _foreground(args.kind, data, out, cfg, summary, args.resume)


def _foreground(kind: str, data: Path, out: Path, cfg, summary: str, resume: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from core.training.events import (EpochEnd, TrainFinished, TrainPrepare, TrainStarted, TrainStep,
                                       format_metrics)
    from core.training.registry import trainer

    console = stderr_console()
    console.print(f"[dim]{kind} on {data}: {summary}")
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    finished = None
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"train {kind}", total=None, loss="-")
        for event in trainer(kind)(data, out, cfg, resume=resume):
            if isinstance(event, TrainStarted):
                bar.update(task, total=event.steps_per_epoch * (event.epochs - event.start_epoch + 1), completed=0,
                           description=f"train {kind}")
                console.print(f"[dim]{event.train_items} training / {event.val_items} validation samples, "
                              f"{event.epochs} epochs from {event.start_epoch}, on {event.device}")
                for warning in event.warnings:
                    console.print(f"[yellow]warning:[/] {warning}")
            elif isinstance(event, TrainPrepare):
                bar.update(task, total=event.total, completed=event.done, description=f"{kind} · {event.what}")
                if event.done == 0:
                    console.print(f"[dim]{event.what}: {event.total} to do, {event.reused} reused from the cache")
            elif isinstance(event, TrainStep):
                bar.update(task, advance=1, loss=f"{event.loss:.4f}", description=f"train {kind} · epoch {event.epoch}")
            elif isinstance(event, EpochEnd):
                shown = format_metrics(event.metrics)
                when = "before training" if event.epoch == 0 else f"epoch {event.epoch}"
                console.print(f"{when}: {shown}{'  [green]best' if event.best else ''}")
            elif isinstance(event, TrainFinished):
                finished = event
                if event.stopped_early:
                    console.print(f"stopped early: no better validation loss for {cfg.train.patience} epochs")
    if finished is None:
        return 1
    print(f"best {finished.best} (epoch {finished.metrics.get('epoch', '?')}), last {finished.last}, "
          f"metrics {finished.out / 'metrics.jsonl'}")
    return 0
