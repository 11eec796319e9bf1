"""Training as a daemon job and from the CLI, with the real U-Net trainer on a tiny dataset."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from core.config import load_config
from core.store import Store
from core.training.events import EpochEnd
from tests.conftest import make_seg_dataset, reelmask_command

TINY = ["train.epochs=2", "train.img_size=32", "train.batch_size=2", "train.workers=0"]


def _daemon(tmp_path: Path):
    from daemon.service import Daemon

    (tmp_path / "config.toml").write_text('[daemon]\ntick_seconds = 0.1\nprogress_seconds = 0.01\n[models]\ndevice = "cpu"\n')
    cfg = load_config(tmp_path / "config.toml")
    return cfg, Daemon(cfg)


def test_a_train_command_becomes_a_job_with_progress_curves_and_epochs(tmp_path: Path):
    from daemon.worker import Worker

    data = make_seg_dataset(tmp_path / "dataset")
    cfg, daemon = _daemon(tmp_path)
    store = daemon.store
    store.add_command("train", payload={"kind": "unet", "data": str(data), "out": None, "sets": TINY})
    daemon.handle_commands()
    [cmd] = store.conn.execute("SELECT state, result FROM commands").fetchall()
    assert cmd[0] == "done"
    job = store.job(cmd[1])
    assert (job.kind, job.mode, job.state) == ("train", "unet", "queued")
    assert job.output_path == str(tmp_path / "runs" / "unet-dataset")
    assert Worker(cfg, "w", "cpu", daemon.workers_stop).step() is True
    job = store.job(job.id)
    assert job.state == "done", job.error
    assert job.frames_total and job.frames_done == job.frames_total           # steps done / total
    epochs = store.chunks(job.id)
    assert [(c["sweep"], c["idx"], c["state"]) for c in epochs] == [("epoch", 1, "done"), ("epoch", 2, "done")]
    lines = store.train_metrics(job.id, epochs_only=True)
    assert [r["metrics"]["epoch"] for r in lines] == [1, 2]
    assert all({"train_loss", "val_loss", "val_iou"} <= set(r["metrics"]) for r in lines)
    assert [r["loss"] for r in store.train_metrics(job.id) if r["loss"] is not None]  # the step-loss curve
    out = Path(job.output_path)
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert any("epoch 2/2" in e["message"] for e in store.events(job_id=job.id))


def test_cancel_and_shutdown_of_a_training_job(tmp_path: Path, monkeypatch):
    from daemon.training import TrainingRun
    from daemon.worker import Worker

    data = make_seg_dataset(tmp_path / "dataset")
    cfg, daemon = _daemon(tmp_path)
    store = daemon.store
    from core.training.registry import queue_training

    cancelled = queue_training(store, cfg, "unet", data, tmp_path / "runs" / "a", TINY)
    store.add_command("cancel", cancelled)
    worker = Worker(cfg, "w", "cpu", daemon.workers_stop)
    assert worker.step() is True
    assert store.job(cancelled).state == "cancelled"
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())  # datasets never move

    # shutdown after the first epoch: interrupted, then requeued and continued from last.pt
    interrupted = queue_training(store, cfg, "unet", data, tmp_path / "runs" / "b", ["train.epochs=3", *TINY[1:]])
    original = TrainingRun.on_event

    def stop_after_first_epoch(self, event):
        result = original(self, event)
        if isinstance(event, EpochEnd) and event.epoch == 1:
            daemon.workers_stop.set()
        return result

    monkeypatch.setattr(TrainingRun, "on_event", stop_after_first_epoch)
    assert worker.step() is True
    assert store.job(interrupted).state == "interrupted"
    monkeypatch.setattr(TrainingRun, "on_event", original)
    daemon.workers_stop.clear()
    assert store.requeue_orphans() == [interrupted]
    assert worker.step() is True
    job = store.job(interrupted)
    assert job.state == "done", job.error
    lines = [json.loads(x) for x in (tmp_path / "runs" / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert any("from 2" in e["message"] for e in store.events(job_id=interrupted))


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*reelmask_command(), *args], cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_train_in_the_foreground_and_queued(tmp_path: Path):
    data = make_seg_dataset(tmp_path / "dataset")
    sets = [a for s in TINY for a in ("--set", s)]
    r = _cli(tmp_path, "train", "unet", "--data", str(data), "--out", "model", *sets)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "model" / "best.pt").is_file() and "best " in r.stdout
    assert len((tmp_path / "model" / "metrics.jsonl").read_text().splitlines()) == 2
    again = _cli(tmp_path, "train", "unet", "--data", str(data), "--out", "model", *sets)
    assert again.returncode == 2 and "--out" in again.stderr                   # a finished run is not overwritten

    r = _cli(tmp_path, "train", "unet", "--data", str(data), "--queue", *sets)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    status = json.loads(_cli(tmp_path, "status", "--json").stdout)
    [job] = [j for j in status["jobs"] if j["id"] == job_id]
    assert (job["kind"], job["mode"], job["state"]) == ("train", "unet", "queued")
    assert Store(tmp_path / "reelmask.db").job(job_id).option_values["sets"] == TINY


@pytest.mark.parametrize("args, words", [
    (["unet", "--data", "nowhere"], "does not exist"),
    (["sam2-decoder", "--data", "."], "no image+mask pairs"),
    (["sam2-decoder", "--data", ".", "--set", "train.prompts=['lasso']"], "train.prompts"),
    (["matting", "--data", "nowhere"], "does not exist"),
    (["unet", "--data", ".", "--set", "train.img_size=100"], "multiple of 32"),
])
def test_cli_train_errors_are_one_line(tmp_path: Path, args, words):
    r = _cli(tmp_path, "train", *args)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_one_optimisation_step_and_a_loss_that_is_no_longer_finite():
    import torch

    from core.errors import TrainingError
    from core.training.runs import optimise

    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    assert optimise((weight * 2).sum(), optimizer, None, 1, 0.5) == 2.0
    assert weight.item() == 0.0                                   # 1 - 0.5 * d(2w)/dw
    scaler = torch.amp.GradScaler("cuda", enabled=False)          # the CPU path of the AMP trainers
    optimise((weight * 2).sum() + 1, optimizer, scaler, 1, 0.5)
    assert weight.item() == -1.0
    with pytest.raises(TrainingError, match=r"loss became nan in epoch 3; lower train.lr \(now 0.5\)"):
        optimise(weight.sum() * float("nan"), optimizer, None, 3, 0.5)
    assert weight.item() == -1.0                                  # nothing stepped


def test_a_resumed_training_shows_its_earlier_epochs_and_curve(tmp_path):
    """A training that continues from last.pt after a retry (which clears the database's curve): the epoch
    strip counts the epochs already done and the curve comes back from the run's metrics.jsonl."""
    import json
    import threading

    from core.config import load_config
    from core.store import Store
    from core.training.events import EpochEnd, TrainStarted, TrainStep
    from daemon.training import TrainingRun

    cfg = load_config(None, [f"paths.db={tmp_path / 'state.db'}"], use_default_path=False)
    store = Store(tmp_path / "state.db")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e}) + "\n"
                                               for e in range(1, 7)))
    job_id = store.add_job("unet-data", tmp_path, kind="train", mode="unet", output_path=str(run))

    def events(kind, data, out, cfg, should_stop):
        yield TrainStarted("unet", 8, 3, 12, 3, "cpu", start_epoch=7)
        for step in range(3):
            yield TrainStep(7, step + 1, 6, 0.1)
        yield EpochEnd(7, {"epoch": 7, "train_loss": 0.1, "val_loss": 0.2}, True, 1.0)

    TrainingRun(store, cfg, store.job(job_id), threading.Event(), events).execute()
    epochs = {c["idx"]: c["state"] for c in store.chunks(job_id)}
    assert [epochs[e] for e in range(1, 8)] == ["done"] * 7  # 7 of 8 epochs done, as the queue counts
    curve = store.train_metrics(job_id)
    assert [r["epoch"] for r in curve if r["metrics"]][:6] == [1, 2, 3, 4, 5, 6]
    assert len([r for r in curve if r["loss"] is not None]) >= 7
