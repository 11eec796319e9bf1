"""Model registry, weight cache and the SAM2 build (real sam2 code, random weights, 256 px)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

from core.config import load_config
from core.errors import ModelError
from core.models import weights as W
from core.models.registry import SAM2_VARIANTS, find_variant, variant_from_state_dict


def _cfg(tmp_path: Path, *sets: str):
    return load_config(None, [f"paths.cache={tmp_path / 'cache'}", "models.image_size=256", *sets],
                       use_default_path=False)


def test_names_and_aliases():
    assert find_variant("tiny").name == "sam2.1_hiera_tiny"
    assert find_variant("sam2-large").name == "sam2_hiera_large"
    assert find_variant("facebook/sam2.1-hiera-base-plus").name == "sam2.1_hiera_base_plus"
    assert find_variant("SAM2.1_HIERA_SMALL").config == "configs/sam2.1/sam2.1_hiera_s.yaml"
    assert find_variant("huge") is None
    tiny = SAM2_VARIANTS["sam2.1_hiera_tiny"]
    assert tiny.size == 156_008_466 and tiny.sha256.startswith("7402e0d8")


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    """A real SAM2.1 tiny built with random weights, saved as a checkpoint file."""
    import torch

    from core.models.sam2_model import Sam2Tracker

    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = _cfg(tmp, "models.sam2_weights=random")
    tracker = Sam2Tracker(cfg, W.resolve_sam2(cfg))
    path = tmp / "my_finetune.pt"
    torch.save({"model": tracker.predictor.state_dict()}, path)
    return tracker, path


def test_random_weights_build_the_real_architecture(random_tiny):
    tracker, _ = random_tiny
    assert tracker.weights.sha256 == "random" and tracker.weights.is_random
    assert type(tracker.predictor).__name__ == "SAM2VideoPredictor"
    assert tracker.predictor.image_size == 256
    # memory attention follows the image size (stride 16 features)
    rope = tracker.predictor.memory_attention.layers[0].self_attn
    assert rope.freqs_cis.shape[0] == (256 // 16) ** 2


def test_architecture_is_read_from_the_weights(random_tiny):
    from core.models.checkpoints import read_state_dict

    _, path = random_tiny
    assert variant_from_state_dict(read_state_dict(path)).name == "sam2.1_hiera_tiny"


def test_checkpoint_by_path_loads_and_is_hashed(random_tiny, tmp_path: Path):
    from core.models.sam2_model import Sam2Tracker

    _, path = random_tiny
    cfg = _cfg(tmp_path, f"models.sam2={path}")
    weights = W.resolve_sam2(cfg)
    assert weights.variant.name == "sam2.1_hiera_tiny" and weights.checkpoint == path
    assert len(weights.sha256) == 64
    Sam2Tracker(cfg, weights)  # loads strictly into the architecture


def test_wrong_architecture_is_refused(random_tiny, tmp_path: Path):
    from core.models.sam2_model import Sam2Tracker

    _, path = random_tiny
    cfg = _cfg(tmp_path, f"models.sam2={path}", "models.sam2_arch=sam2.1_hiera_small")
    with pytest.raises(ModelError, match="does not fit sam2.1_hiera_small"):
        Sam2Tracker(cfg, W.resolve_sam2(cfg))


def test_offline_download_names_models_import(tmp_path: Path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(W.urllib.request, "urlopen", offline)
    with pytest.raises(ModelError, match=r"cannot download sam2.1_hiera_tiny .*reelmask models import"):
        W.resolve_sam2(_cfg(tmp_path))
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_damaged_cached_checkpoint_is_refused(tmp_path: Path):
    cfg = _cfg(tmp_path)
    path = W.cached_path(SAM2_VARIANTS["sam2.1_hiera_tiny"], cfg)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 100)
    with pytest.raises(ModelError, match=r"is 100 bytes but the official sam2.1_hiera_tiny checkpoint is 156,008,466"):
        W.resolve_sam2(cfg)


def test_import_checks_identity(random_tiny, tmp_path: Path):
    _, path = random_tiny
    cfg = _cfg(tmp_path)
    with pytest.raises(ModelError, match="say which model it is with --name"):
        W.import_checkpoint(path, None, cfg)
    with pytest.raises(ModelError, match="should have 7402e0d8"):
        W.import_checkpoint(path, "sam2.1_hiera_tiny", cfg)
    with pytest.raises(ModelError, match="holds sam2.1_hiera_tiny, not sam2.1_hiera_small"):
        W.import_checkpoint(path, "sam2.1_hiera_small", cfg)


def test_bad_model_name(tmp_path: Path):
    with pytest.raises(ModelError, match="neither a known model"):
        W.resolve_sam2(_cfg(tmp_path, "models.sam2=sam3_giant"))


def test_compile_vos_falls_back_cleanly_where_it_cannot_be_used(tmp_path: Path, monkeypatch):
    """models.compile = "vos" on a CPU: SAM2 runs uncompiled, the same masks as with "off", and the
    manifest says why (in models.sam2.compile and in warnings)."""
    import types

    import numpy as np
    import torch
    from PIL import Image

    from core.models import sam2_model
    from core.pipeline import prepare_job, run_job
    from tests.conftest import make_clip

    assert "CUDA" in sam2_model.compile_blocker(torch.device("cpu"), torch)
    cuda = torch.device("cuda")
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: False)
    assert "Triton" in sam2_model.compile_blocker(cuda, torch)
    no_compile = types.SimpleNamespace(**{k: getattr(torch, k) for k in ("device",)})
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: True)
    assert "torch.compile" in sam2_model.compile_blocker(cuda, no_compile)

    clip = make_clip(tmp_path / "clip", n=4, prompts={"objects": [{"id": 1, "frame": 0, "points": [[40, 60]],
                                                                    "labels": [1]}]})
    manifests, masks = {}, {}
    for mode in ("off", "vos"):
        cfg = _cfg(tmp_path, "models.sam2_weights=random", f"models.compile={mode}", "output.preview=false")
        out = tmp_path / mode
        manifests[mode] = list(run_job(prepare_job(clip, cfg, mode="track"), out))[-1].manifest
        masks[mode] = [np.asarray(Image.open(p)) for p in sorted((out / "masks").iterdir())]
    assert manifests["off"]["models"]["sam2"]["compile"] == {"mode": "off"}
    said = manifests["vos"]["models"]["sam2"]["compile"]
    assert said["mode"] == "off" and said["asked"] == "vos" and "CUDA" in said["reason"]
    assert any('models.compile = "vos" not used' in w for w in manifests["vos"]["warnings"])
    assert len(masks["vos"]) == 4 and all(np.array_equal(a, b) for a, b in zip(masks["off"], masks["vos"]))
    with pytest.raises(Exception, match="models.compile"):
        _cfg(tmp_path, "models.compile=max")


def test_the_compile_warm_up_runs_every_part_once(tmp_path: Path):
    """The warm-up that the compiled predictor gets (two blank frames, one box) runs on the plain one."""
    from core.models.sam2_model import Sam2Tracker
    from core.models.weights import resolve_sam2

    cfg = _cfg(tmp_path, "models.sam2_weights=random")
    tracker = Sam2Tracker(cfg, resolve_sam2(cfg))
    tracker._warm_up(tracker.predictor)
    assert tracker.seconds == 0.0 and tracker.compiled == {"mode": "off"}


def test_frame_logits_id_map_takes_the_highest_allowed_object():
    """Overlaps go to the highest logit, objects left out never appear, and the per-object constants
    kept on the device for a set of objects give the same map the next frame."""
    import numpy as np
    import torch

    from core.models.sam2_model import FrameLogits

    logits = torch.full((3, 4, 5), -5.0)
    logits[0, :, :2] = 2.0         # object 4 on the left
    logits[1, :, 1:4] = 3.0        # object 7 overlaps it on column 1 and wins there
    logits[2, 0, :] = 9.0          # object 9 on the top row
    frame = FrameLogits([4, 7, 9], logits)
    for _ in range(2):
        ids = frame.id_map()
        assert ids.dtype == np.uint8 and ids.shape == (4, 5)
        assert ids[0].tolist() == [9, 9, 9, 9, 9] and ids[1].tolist() == [4, 7, 7, 7, 0]
    without_7 = frame.id_map({4, 9})
    assert without_7[1].tolist() == [4, 4, 0, 0, 0] and 7 not in without_7
    assert not frame.id_map({5}).any()
    assert frame.mask(7)[1].tolist() == [False, True, True, True, False]
