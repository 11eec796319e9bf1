"""A job whose worker dies under it goes back to the queue; one that keeps killing its workers fails."""

from __future__ import annotations

import threading
from pathlib import Path

from core.config import load_config
from core.store import Store
from daemon.worker import MAX_WORKERS_LOST, Worker, WorkerLost
from tests.conftest import make_clip, point_prompt
import pytest


class DyingWorker(Worker):
    """A worker whose runner dies after the first events of every job (as a killed Ray actor does)."""

    deaths = 0

    def _events(self, request, should_stop):
        from daemon.worker import job_events

        for event in job_events(request, self.models, should_stop):
            yield event
            if type(event).__name__ == "ChunkFinished":
                DyingWorker.deaths += 1
                raise WorkerLost(f"{self.name} was lost while running this job (test)")


@pytest.mark.slow
def test_a_lost_worker_requeues_then_gives_up(tmp_path: Path):
    cfg = load_config(None, ["models.sam2_weights=random", "models.image_size=256", "output.preview=false",
                             "chunking.chunk_size=4", "limits.min_free_mb=0", f"paths.db={tmp_path / 'state.db'}",
                             f"paths.work={tmp_path / 'work'}", f"paths.outbox={tmp_path / 'outbox'}",
                             f"paths.failed={tmp_path / 'failed'}", f"paths.done={tmp_path / 'done'}"],
                      use_default_path=False)
    clip = make_clip(tmp_path / "clip", n=12, size=(96, 64), prompts={"objects": [point_prompt((96, 64))]})
    store = Store(tmp_path / "state.db")
    job_id = store.add_job("clip", clip, source="submit")
    worker = DyingWorker(cfg, "w", "cpu", threading.Event())
    for attempt in range(1, MAX_WORKERS_LOST):
        assert worker.step() is True
        job = store.job(job_id)
        assert job.state == "queued" and job.option_values["workers_lost"] == attempt
        assert any("queued again" in e["message"] for e in store.events(job_id=job_id))
    assert worker.step() is True
    job = store.job(job_id)
    assert job.state == "failed" and f"died under this job {MAX_WORKERS_LOST} times" in job.error
    assert "reelmask retry" in job.error and (tmp_path / "failed" / "clip" / "error.txt").is_file()
    assert clip.is_dir()  # a submitted folder stays where it is
    # each attempt resumed where the last one stopped: one chunk per attempt, none done twice
    chunks = [c for c in store.chunks(job_id) if c["state"] == "done"]
    assert len(chunks) == MAX_WORKERS_LOST, store.chunks(job_id)


def test_an_output_this_job_already_published_is_not_made_again(tmp_path: Path):
    """Ray may report an error for a call that finished: the requeued job finds its own manifest in its
    output folder and is done without running again; another job's output is never taken for it."""
    import json

    cfg = load_config(None, [f"paths.db={tmp_path / 'state.db'}", "limits.min_free_mb=0"], use_default_path=False)
    clip = make_clip(tmp_path / "clip", n=3, size=(96, 64), prompts={"objects": [point_prompt((96, 64))]})
    store = Store(tmp_path / "state.db")
    job_id = store.add_job("clip", clip, source="submit")
    out = tmp_path / "outbox" / "clip"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"job_id": job_id, "frames": 3}))
    store.update_job(job_id, output_path=str(out))

    class NeverRuns(Worker):
        def _events(self, request, should_stop):
            raise AssertionError("the job ran again")

    assert NeverRuns(cfg, "w", "cpu", threading.Event()).step() is True
    assert store.job(job_id).state == "done"
    assert any("already complete" in e["message"] for e in store.events(job_id=job_id))

    other = store.add_job("clip2", clip, source="submit")
    store.update_job(other, output_path=str(out))  # a folder holding another job's output
    assert NeverRuns(cfg, "w", "cpu", threading.Event()).step() is True
    assert store.job(other).state == "failed" and "internal error" in store.job(other).error
