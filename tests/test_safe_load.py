"""Ultralytics weights are unpickled only under reelmask's policy: crafted .pt files are refused before any of
their code runs, damaged ones are a ModelError, and real (official or Ultralytics-trained) ones still work."""

from __future__ import annotations

import importlib
import os
import shlex
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pytest
import torch

from core.errors import ModelError, TrainingError
from core.models.safe_load import load_checkpoint, verified_copy
from core.models.yolo import Detector
from tests.conftest import data_path, make_seg_dataset

YOLO_FILE = ("models", "yolo11n-coco-dequant.pt")
SYSTEM = f"{os.system.__module__}.system"          # how a pickle names os.system (posix.system on Linux)


class Call:
    """Pickles as func(*args); callable itself, so it can stand for a function computed while unpickling."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __call__(self, *args):
        raise AssertionError("only its pickle is used")

    def __reduce__(self):
        return self.func, self.args


def touch(marker: Path) -> Call:
    return Call(os.system, f"touch {shlex.quote(str(marker))}")


def tiny_detection_model(**yaml_changes):
    """A real Ultralytics DetectionModel, two convs and a Detect head, its architecture changed as asked."""
    from ultralytics.nn.tasks import DetectionModel

    spec = {"nc": 1, "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
            "head": [[[0, 1], 1, "Detect", ["nc"]]]}
    model = DetectionModel(dict(spec), verbose=False)
    model.yaml = {**spec, **yaml_changes}
    return model


# ------------------------------------------------------------------ crafted files run nothing

@pytest.mark.parametrize("case", ["zip", "legacy", "nested", "eval"])
def test_code_in_a_pickle_is_refused_before_it_runs(case, tmp_path: Path):
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pt"
    payload, names = touch(marker), SYSTEM
    if case == "eval":
        payload, names = Call(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"
    ckpt = {"model": {"backbone": {"0": [payload]}}, "epoch": 3} if case == "nested" else {"model": payload}
    torch.save(ckpt, path, _use_new_zipfile_serialization=case != "legacy")

    with pytest.raises(ModelError) as refused:
        Detector(path)
    message = str(refused.value)
    assert str(path) in message and names in message and "not part of an Ultralytics model" in message
    assert "reelmask train yolo" in message
    assert not marker.exists()

    torch.load(path, weights_only=False)                # the control: an unrestricted load does run the payload
    assert marker.exists()


@pytest.mark.parametrize("case", ["os.system", "__globals__", "dunder"])
def test_getattr_cannot_reach_beyond_layer_methods(case, tmp_path: Path):
    from ultralytics.nn.modules.head import Detect

    marker = tmp_path / "ran"
    path = tmp_path / "weights.pt"
    if case == "os.system":                             # getattr(import_module("os"), "system")("touch ...")
        system = Call(getattr, Call(importlib.import_module, "os"), "system")
        payload, named = Call(system, f"touch {shlex.quote(str(marker))}"), "importlib.import_module"
    elif case == "__globals__":                         # only allowed globals: getattr is the one to stop it
        payload, named = Call(getattr, Call(getattr, Detect, "forward"), "__globals__"), "'__globals__' from a function"
    else:
        payload, named = Call(getattr, Detect, "__init__"), "'__init__' from Detect"
    torch.save({"model": payload}, path)

    with pytest.raises(ModelError, match="not part of an Ultralytics model") as refused:
        Detector(path)
    assert named in str(refused.value)
    assert not marker.exists()


def test_a_layer_class_is_rebuilt_never_called(tmp_path: Path):
    """DetectionModel's constructor evals its config's activation: a pickle that calls it must not get there."""
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "ran"
    config = {"nc": 1, "activation": f"__import__('os').system('touch {marker}')",
              "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": [[[0], 1, "Detect", ["nc"]]]}
    path = tmp_path / "weights.pt"
    torch.save({"model": Call(DetectionModel, config)}, path)
    with pytest.raises(ModelError, match="ultralytics.nn.tasks.DetectionModel to run its constructor"):
        Detector(path)
    assert not marker.exists()


def test_an_architecture_that_would_run_code_in_training_is_refused(tmp_path: Path):
    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_detection_model(activation="nn.LeakyReLU(0.1)")}, path)
    assert Detector(path, imgsz=64).names == {0: "0"}                 # the control: a plain one loads

    torch.save({"model": tiny_detection_model(activation="__import__('os').system('id')")}, path)
    with pytest.raises(ModelError, match="would run as Python code when it trains"):
        Detector(path)
    model = tiny_detection_model()
    model.yaml["head"] = [[-1, 1, "DetectionModel", [{"nc": 1}]]]       # a whole model, built from its own config
    torch.save({"model": model}, path)
    with pytest.raises(ModelError, match="layer 'DetectionModel', which is not a torch or Ultralytics layer"):
        Detector(path)


def test_resume_refuses_a_crafted_last_pt(tmp_path: Path):
    from core.config import load_config
    from core.training.yolo import train

    marker = tmp_path / "ran"
    out = tmp_path / "run"
    last = out / "ultralytics" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "optimizer": touch(marker)}, last)
    cfg = load_config(None, ["train.workers=0", "models.device=cpu"], use_default_path=False)
    with pytest.raises(TrainingError, match=f"cannot resume from .*{SYSTEM}"):
        list(train(make_seg_dataset(tmp_path / "data"), out, cfg, resume=True))
    assert not marker.exists()


# ------------------------------------------------------------------ files that are no checkpoint

def _torchscript(path: Path) -> None:
    torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)).save(str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
@pytest.mark.parametrize("name, make, expected", [
    ("empty.pt", lambda p: p.write_bytes(b""), "empty file"),
    ("garbage.pt", lambda p: p.write_bytes(os.urandom(64) + b"\x00not a pickle\n" * 20), "not a torch checkpoint"),
    ("truncated.pt", lambda p: (torch.save({"w": torch.zeros(4096)}, p), p.write_bytes(p.read_bytes()[:3000])),
     "damaged or truncated"),
    ("scripted.pt", _torchscript, "TorchScript archive"),
    ("weights.onnx", lambda p: torch.save({"w": torch.zeros(2)}, p), "do not end in .pt"),
    ("weights.torchscript", _torchscript, "do not end in .pt"),
    ("no-model.pt", lambda p: torch.save({"w": torch.zeros(2)}, p), "hold no Ultralytics network"),
])
def test_what_is_not_an_ultralytics_checkpoint_is_a_model_error(name, make, expected, tmp_path: Path):
    path = tmp_path / name
    make(path)
    with pytest.raises(ModelError, match=expected) as refused:
        Detector(path)
    assert str(path) in str(refused.value)


# ------------------------------------------------------------------ real weights

def test_real_weights_load_through_the_safe_path_and_detect():
    weights = data_path(*YOLO_FILE)
    frame = cv2.cvtColor(cv2.imread(str(data_path("vos", "dog", "images", "00010.jpg"))), cv2.COLOR_BGR2RGB)
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    detector = Detector(weights)
    assert detector.path == weights and len(detector.names) == 80
    assert not Path(detector.model.ckpt_path).exists()           # Ultralytics read a private copy, now deleted
    dogs = detector.detect([(10, frame)], detector.class_ids(["dog"]), 0.5)
    assert [d.class_name for d in dogs] == ["dog"] and dogs[0].confidence == pytest.approx(0.79, abs=0.03)
    # Ultralytics sets both for the whole process; SAM2 beside it must keep its threads
    assert (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")) == (threads, omp)


def test_ultralytics_is_given_the_checked_bytes(tmp_path: Path):
    """Replacing the file after the check changes nothing: the copy holds what was verified, only we can read it."""
    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_detection_model()}, path)
    checked = path.read_bytes()
    with verified_copy(path) as copy:
        torch.save({"model": touch(tmp_path / "ran")}, path)
        assert copy.read_bytes() == checked and copy.name == "tiny.pt"
        assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    assert not copy.parent.exists()
    with pytest.raises(ModelError, match=SYSTEM):
        load_checkpoint(path)


def test_loads_on_several_threads_leave_torch_allow_list_as_it_was():
    weights = data_path(*YOLO_FILE)
    before = torch.serialization.get_safe_globals()
    with ThreadPoolExecutor(4) as pool:
        ckpts = list(pool.map(load_checkpoint, [weights] * 4))
    assert all(c["model"].__dict__["yaml"]["nc"] == 80 for c in ckpts)
    assert set(torch.serialization.get_safe_globals()) == set(before)  # no stand-in left for other loads
