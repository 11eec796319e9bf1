"""What only a CUDA device can show: the memory cost measured from the allocator against a real job's
peak, and the check's record in the manifest. Skipped without CUDA (CI has none); run where there is
one with `python -m pytest -q -s tests/test_gpu.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_the_measured_cost_bounds_a_real_jobs_peak(tmp_path: Path):
    from core.config import load_config
    from core.models.memory_cost import HEADROOM
    from core.pipeline import ModelPool, prepare_job, run_job
    from tests.conftest import make_clip

    objects, frames, size = 6, 60, 1024
    points = [{"id": k + 1, "frame": 0, "points": [[40 + 100 * (k % 6), 60 + 200 * (k // 6)]], "labels": [1]}
              for k in range(objects)]
    clip = make_clip(tmp_path / "clip", n=frames, size=(640, 360), prompts={"objects": points})
    cfg = load_config(None, [f"paths.cache={tmp_path / 'cache'}", "models.sam2_weights=random",
                             f"models.image_size={size}", "output.preview=false", f"chunking.chunk_size={frames}"],
                      use_default_path=False)
    pool = ModelPool()
    tracker = pool.sam2(cfg)
    cost = tracker.memory_cost()
    weights_mb = torch.cuda.memory_allocated(tracker.device) / 2**20
    manifest = list(run_job(prepare_job(clip, cfg, mode="track"), tmp_path / "out", models=pool))[-1].manifest
    memory = manifest["models"]["sam2"]["memory"]
    actual = memory["process_peak_mb"] - weights_mb
    print(f"\n{torch.cuda.get_device_name(tracker.device)}, {size} px, {tracker.dtype}: model {weights_mb:.0f} MiB; "
          f"cost {cost.record()}; job of {objects} objects x {frames} frames at 640x360: estimate "
          f"{memory['estimate_mb']:.0f} MiB, measured peak above the model {actual:.0f} MiB, "
          f"state peak {memory['job_state_peak_mb']:.0f} MiB")
    assert memory["checked"] and cost.per_object_frame_mb > 0
    assert actual <= memory["estimate_mb"] * HEADROOM            # a job the check lets through fits
    assert memory["estimate_mb"] <= 3 * actual                    # and it is not refused for a fraction of that
