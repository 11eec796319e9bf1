"""The SQLite state: migrations, claiming across processes, commands, status JSON."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from core.store import JobState, Store
from tests.daemon_process import scaled


def test_schema_is_versioned_and_wal(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    assert store.schema_version() == 4
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"jobs", "progress", "chunks", "events", "samples", "commands", "train_metrics",
            "migrations"} <= {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    Store(tmp_path / "state.db")  # opening again applies nothing twice
    assert store.conn.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == 4


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path):
    from core import store as store_module

    old = store_module._MIGRATIONS
    store_module._MIGRATIONS = old[:1]
    try:
        first = Store(tmp_path / "state.db")
        job = first.add_job("clip", tmp_path / "clip")
        first.close()
    finally:
        store_module._MIGRATIONS = old
    store = Store(tmp_path / "state.db")
    assert store.schema_version() == 4 and store.job(job).name == "clip"
    assert store.job(job).mem_job_mb is None  # the progress columns added by version 4
    store.add_train_metric(job, 1, step=3, loss=0.5)
    store.add_train_metric(job, 1, metrics={"epoch": 1, "train_loss": 0.4})
    rows = store.train_metrics(job)
    assert [(r["step"], r["loss"], r["metrics"]) for r in rows] == [(3, 0.5, None), (None, None, {"epoch": 1, "train_loss": 0.4})]
    assert [r["metrics"]["train_loss"] for r in store.train_metrics(job, epochs_only=True)] == [0.4]



def _claimer(db: str, name: str, out) -> None:
    store = Store(db)
    got = []
    while (job := store.claim(name)) is not None:
        got.append(job.id)
    out.put(got)


def test_two_processes_never_claim_the_same_job(tmp_path: Path):
    db = str(tmp_path / "state.db")
    store = Store(db)
    ids = {store.add_job(f"clip{i}", tmp_path / f"clip{i}") for i in range(200)}
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db, f"w{i}", q)) for i in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=scaled(120)) for _ in procs]
    for p in procs:
        p.join(timeout=scaled(30))
    claimed = [i for r in results for i in r]
    assert sorted(claimed) == sorted(ids)          # every job once, none twice
    assert all(j.state == JobState.RUNNING.value and j.attempts == 1 for j in store.jobs())


def test_one_active_job_per_folder(tmp_path: Path):
    store = Store(tmp_path / "s.db")
    assert store.add_job_once("a", tmp_path / "a")
    assert store.add_job_once("a", tmp_path / "a") is None
    job = store.claim("w")
    store.finish_job(job.id, JobState.DONE)
    assert store.add_job_once("a", tmp_path / "a")  # a new folder at the same place later is a new job


def test_orphans_requeue_and_progress_status(tmp_path: Path):
    store = Store(tmp_path / "s.db")
    job_id = store.add_job("clip", tmp_path / "clip", mode="track")
    store.claim("w")
    store.update_job(job_id, frames_total=40)
    store.set_progress(job_id, 12, 40, 3.5, 1)
    store.set_chunk(job_id, "forward", 1, 9, 17, "running")
    assert store.requeue_orphans() == [job_id]
    status = store.job(job_id).status()
    assert status["state"] == "queued" and status["frames_done"] == 12 and status["frames_total"] == 40
    assert set(status) >= {"id", "name", "kind", "mode", "state", "frames_done", "frames_total", "error"}
    json.dumps(status)
    assert store.chunks(job_id)[0]["state"] == "running"


def test_commands_events_samples(tmp_path: Path):
    store = Store(tmp_path / "s.db")
    job_id = store.add_job("clip", tmp_path / "clip")
    cid = store.add_command("cancel", job_id)
    assert store.has_pending_cancel(job_id)
    store.finish_command(cid, "done")
    assert not store.has_pending_cancel(job_id) and store.pending_commands() == []
    store.log("info", "hello", job_id)
    assert store.events(job_id=job_id)[-1]["message"] == "hello"
    for i in range(10):
        store.add_sample("cpu", "no NVIDIA GPU", 100.0 + i, 1000.0, None, 50.0, keep=5)
    samples = store.samples()
    assert len(samples) <= 6 and samples[-1]["mem_used_mb"] == 109.0
