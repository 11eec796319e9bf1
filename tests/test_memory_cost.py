"""Device memory per job: the cost model measured from SAM2 runs, the check that refuses a job that
would not fit before it starts, and the memory a running job reports (events, progress row,
dashboard). The allocator measurement itself needs CUDA: tests/test_gpu.py runs it where there is one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import load_config
from core.errors import DeviceMemoryError
from core.models.memory_cost import CALIBRATION, HEADROOM, MemoryCost, check_fits, solve, tensor_mb
from tests.conftest import FAST, make_clip


def _cfg(tmp_path: Path, *sets: str):
    return load_config(None, [f"paths.cache={tmp_path / 'cache'}", *FAST, *sets], use_default_path=False)


def test_the_four_runs_give_back_the_cost_terms():
    a, b, c, d = 300.0, 12.0, 3.0, 0.75
    peaks = {(o, f): a + b * o + c * f + d * o * f for o, f in CALIBRATION}
    assert solve(peaks) == pytest.approx((a, b, c, d))
    # allocator rounding that makes a term negative counts as nothing, not as a saving
    peaks = {(o, f): 100.0 - 0.01 * f for o, f in CALIBRATION}
    fixed, per_object, per_frame, per_object_frame = solve(peaks)
    assert per_frame == 0.0 and per_object >= 0 and per_object_frame >= 0 and fixed > 0


def test_need_grows_with_objects_frames_video_size_and_chunks_at_once():
    cost = MemoryCost("cuda:0", 1024, 400.0, 20.0, 2.0, 0.8, 12.0)
    base = cost.need_mb(1, 100, 720, 1280)
    assert cost.need_mb(2, 100, 720, 1280) - base == pytest.approx(20 + 0.8 * 100 + 720 * 1280 * 8 / 2**20)
    assert cost.need_mb(1, 101, 720, 1280) - base == pytest.approx(2.0 + 0.8)
    assert cost.need_mb(1, 100, 720, 1280, prefetch=4) - base == pytest.approx(48.0)
    assert cost.need_mb(1, 100, 720, 1280, states=2) == pytest.approx(2 * base)
    fit = cost.objects_that_fit(5000.0, 100, 720, 1280)
    assert cost.need_mb(fit, 100, 720, 1280) * HEADROOM <= 5000 < cost.need_mb(fit + 1, 100, 720, 1280) * HEADROOM


class _Tracker:
    """What check_fits reads of a tracker: its device and its measured cost."""

    def __init__(self, cost: MemoryCost | None, device: str = "cuda:0"):
        import torch

        self.device, self._cost = torch.device(device), cost

    def memory_cost(self):
        return self._cost


def test_a_job_that_would_not_fit_is_told_what_to_change():
    cost = MemoryCost("cuda:0", 1024, 400.0, 20.0, 2.0, 0.8, 12.0)
    tracker = _Tracker(cost)
    ok = check_fits(tracker, 4, 100, 480, 854, prefetch=2, free=10_000.0)
    assert ok["checked"] and ok["estimate_mb"] < 10_000 and ok["cost"]["per_object_frame_mb"] == 0.8
    with pytest.raises(DeviceMemoryError) as e:
        check_fits(tracker, 16, 100, 480, 854, prefetch=2, free=1500.0)
    said = str(e.value)
    assert "would not fit on cuda:0" in said and "16 object(s), 100 frames a chunk" in said and "1500 MiB" in said
    assert "chunking.chunk_size" in said and "models.image_size (now 1024)" in said and "split the objects" in said
    # the chunk length it proposes does fit
    proposed = int(said.split("chunking.chunk_size to ")[1].split()[0])
    assert cost.need_mb(16, proposed, 480, 854, 2) * HEADROOM <= 1500 < cost.need_mb(16, 100, 480, 854, 2) * HEADROOM
    with pytest.raises(DeviceMemoryError, match="detect.parallel_chunks"):
        check_fits(tracker, 1, 100, 480, 854, prefetch=2, states=8, free=1000.0)
    assert check_fits(_Tracker(None, "cpu"), 4, 100, 480, 854, prefetch=2) == {
        "checked": False, "reason": "no allocator statistics on cpu"}


def test_tensor_mb_counts_each_storage_once():
    import torch

    t = torch.zeros(1024, 256)          # 1 MiB
    state = {"a": t, "b": [t[:10], {"c": torch.zeros(512, 256)}], "n": 3}
    assert tensor_mb(state) == pytest.approx(1.5)


@pytest.mark.slow
def test_the_cost_model_predicts_what_sam2_states_hold(tmp_path: Path):
    """Measured on SAM2's real states (CPU: what the states hold, no allocator): the four calibration
    runs predict the state of a longer run with more objects."""
    import torch

    from core.models.memory_cost import _BlankFrames, measure_cost
    from core.models.sam2_model import Sam2Tracker
    from core.models.weights import resolve_sam2

    cfg = _cfg(tmp_path)
    tracker = Sam2Tracker(cfg, resolve_sam2(cfg))
    assert measure_cost(tracker) is None          # a CPU: no allocator statistics
    cost = measure_cost(tracker, states_only=True)
    assert cost.per_object_frame_mb > 0 and tracker.seconds == 0.0
    objects, frames = 3, 26
    state = tracker.new_state(_BlankFrames(frames, 256, torch.device("cpu")), 256, 256)
    for k in range(objects):
        tracker.add_points(state, 0, k + 1, box=[20 + 60 * k, 30, 70 + 60 * k, 90])
    for _ in tracker.propagate(state, 0, frames, reverse=False):
        pass
    held = tracker.live.held_mb()
    assert held == pytest.approx(cost.need_mb(objects, frames, 0, 0), rel=0.1)
    del state
    assert tracker.live.held_mb() == 0.0


@pytest.mark.slow
def test_a_running_job_reports_the_memory_it_holds(tmp_path: Path, model_pool):
    """A real track job: DeviceMemory events with the state it holds (growing within a chunk), and the
    manifest's record of the check (not made on a CPU) and the peak."""
    from core.pipeline import DeviceMemory, prepare_job, run_job

    clip = make_clip(tmp_path / "clip", n=8, objects=2, prompts={"objects": [
        {"id": 1, "frame": 0, "points": [[24, 42]], "labels": [1]},
        {"id": 2, "frame": 0, "points": [[136, 78]], "labels": [1]}]})
    cfg = _cfg(tmp_path, "chunking.chunk_size=5")
    events = list(run_job(prepare_job(clip, cfg, mode="track"), tmp_path / "out", models=model_pool))
    readings = [e for e in events if isinstance(e, DeviceMemory)]
    assert readings and all(r.device == "cpu" and r.used_mb is None for r in readings)
    assert max(r.job_mb for r in readings) > 0
    memory = events[-1].manifest["models"]["sam2"]["memory"]
    assert memory["checked"] is False and "cpu" in memory["reason"]
    assert memory["job_state_peak_mb"] == pytest.approx(max(r.job_mb for r in readings), abs=0.2)
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["models"]["sam2"]["memory"] == memory


def test_progress_rows_keep_a_jobs_device_memory(tmp_path: Path):
    from core.store import Store
    from tui.state import _devices

    store = Store(tmp_path / "state.db")
    job_id = store.add_job("dog", tmp_path / "dog")
    store.claim("w0", "here")
    store.set_progress(job_id, 3, 10, 2.0, 0)
    store.set_device_memory(job_id, "cuda:0", 812.5, 2048.0)
    job = store.job(job_id)
    assert (job.mem_device, job.mem_job_mb, job.mem_peak_mb) == ("cuda:0", 812.5, 2048.0)
    assert job.status()["device_memory"] == {"device": "cuda:0", "job_mb": 812.5, "peak_mb": 2048.0}
    store.add_sample("cuda:0", "NVIDIA H200", 4096.0, 143771.0, 50.0, 900.0)
    (row,) = _devices(store.samples(), store.jobs())
    assert row.running == ("dog (w0, holds 812 MiB)",)


def test_a_job_that_would_not_fit_fails_before_its_first_frame(tmp_path: Path, model_pool, monkeypatch):
    """The pipeline asks before the start with the job's own objects and chunk length; the refusal
    publishes nothing. The device is a CPU here, so its measured cost and free memory are given."""
    from core.pipeline import FrameResult, prepare_job, run_job

    cfg = _cfg(tmp_path, "chunking.chunk_size=6")
    tracker = model_pool.sam2(cfg)
    cost = MemoryCost("cuda:0", 256, 100.0, 5.0, 1.0, 2.0, 0.75)
    monkeypatch.setattr(tracker, "memory_cost", lambda: cost)
    monkeypatch.setattr("core.models.memory_cost.free_mb", lambda device: 150.0)
    clip = make_clip(tmp_path / "clip", n=8, objects=2, prompts={"objects": [
        {"id": k, "frame": 0, "points": [[20 * k, 40]], "labels": [1]} for k in (1, 2, 3)]})
    events = []
    with pytest.raises(DeviceMemoryError) as e:
        for event in run_job(prepare_job(clip, cfg, mode="track"), tmp_path / "out", models=model_pool):
            events.append(event)
    assert "3 object(s), 6 frames a chunk" in str(e.value) and "150 MiB are free" in str(e.value)
    assert not any(isinstance(x, FrameResult) for x in events) and not (tmp_path / "out").exists()
    # with room for it, the same job runs and records the check
    monkeypatch.setattr("core.models.memory_cost.free_mb", lambda device: 10_000.0)
    manifest = list(run_job(prepare_job(clip, cfg, mode="track"), tmp_path / "out", models=model_pool))[-1].manifest
    memory = manifest["models"]["sam2"]["memory"]
    assert memory["checked"] and memory["objects"] == 3 and memory["chunk_frames"] == 6
    assert memory["estimate_mb"] == pytest.approx(cost.need_mb(3, 6, 120, 160, cfg.chunking.prefetch), abs=0.1)
    monkeypatch.setattr("core.models.memory_cost.free_mb", lambda device: 1.0)
    off = load_config(None, [f"paths.cache={tmp_path / 'cache'}", *FAST, "chunking.chunk_size=6",
                             "models.memory_check=false"], use_default_path=False)
    manifest = list(run_job(prepare_job(clip, off, mode="track"), tmp_path / "out2", models=model_pool))[-1].manifest
    assert manifest["models"]["sam2"]["memory"]["checked"] is False
