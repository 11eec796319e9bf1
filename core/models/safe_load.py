"""Reading Ultralytics .pt files without letting them run code.

Ultralytics opens weights with torch.load(weights_only=False), so a crafted file's pickle can call anything.
Here a checkpoint is first unpickled by torch's own restricted (weights_only) unpickler under reelmask's
allow-list, and Ultralytics is then given exactly the bytes that passed, as a private copy.

What a checkpoint may contain, besides the tensors and containers torch allows by itself:
- layer classes: torch.nn.Module subclasses defined in torch.nn.modules.* or ultralytics.nn.*. They are rebuilt
  from their pickled state only; a pickle that calls one (which would run its constructor) is refused;
- the plain data Ultralytics checkpoints carry: its IterableSimpleNamespace, numpy scalars and dtypes (never
  object ones) and pathlib paths;
- getattr, but only to fetch a method of a layer class (Ultralytics pickles e.g. Detect.forward that way).
Every other global (os.system, builtins.eval, subprocess.Popen, ...) is refused before unpickling starts.
The model's architecture (its `yaml`), which Ultralytics turns into code when it trains (it evals the
activation and calls the layer names it finds), must name torch/Ultralytics layers with literal arguments.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import os
import pickletools
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from core.errors import ModelError

_LAYER_PACKAGES = ("torch.nn.modules.", "ultralytics.nn.")
# Globals left to torch's restricted unpickler, which allows its own tensor machinery (rebuild functions,
# storages, dtypes, OrderedDict, ...) and refuses the rest of these
_TORCH_OWN = ("torch.", "collections.OrderedDict", "collections.Counter", "_codecs.encode", "builtins.set",
              "builtins.bytearray", "builtins.complex")
_LEGACY_PICKLES = 5  # torch's pre-1.6 format: magic number, protocol, system info, the object, storage keys
_HOW_TO_FIX = "use an official Ultralytics .pt file, or one trained with `reelmask train yolo`"

# torch's allow-list is one process-wide set, rebound on every change: reelmask's entries are in it only
# while one of its loads runs, and its loads run one at a time
_lock = threading.Lock()


class _Refused(Exception):
    """Raised inside unpickling by a stand-in asked to do something outside the policy."""

    def __init__(self, name: str, detail: str):
        super().__init__(f"{name}: {detail}")
        self.name, self.detail = name, detail


def _read_once(path: Path) -> bytes:
    """The bytes of an Ultralytics .pt file, read once; ModelError for another suffix or an empty file."""
    path = Path(path)
    if path.suffix.lower() != ".pt":
        raise ModelError(f"YOLO weights {path} do not end in .pt; reelmask loads only Ultralytics PyTorch "
                         "checkpoints (Ultralytics would hand other suffixes, e.g. TorchScript or ONNX, to other "
                         f"loaders); {_HOW_TO_FIX}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read YOLO weights {path}: {e.strerror or e}; check the path and permissions") from e
    if not data:
        raise ModelError(f"YOLO weights {path} are an empty file; {_HOW_TO_FIX}")
    return data


def load_checkpoint(path: Path) -> dict:
    """The checkpoint dict at `path`, unpickled under the policy above; ModelError when the file is refused."""
    path = Path(path)
    return _verify(path, _read_once(path))


def _verify(path: Path, data: bytes) -> dict:
    """Unpickle `data` (the bytes of `path`) under the policy; the checkpoint dict, or ModelError."""
    import torch

    _import_ultralytics()
    makers = _makers(path, _globals_in(path, data))
    with _lock:
        entries = [entry for make in makers for entry in make()]
        try:
            with torch.serialization.safe_globals(entries):
                ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except _Refused as e:
            raise _refusal(path, e.name, e.detail) from None
        except Exception as e:  # a damaged or crafted pickle can fail in any way; none of it is the caller's bug
            raise ModelError(f"YOLO weights {path} cannot be read safely ({_first_line(e)}); {_HOW_TO_FIX}") from None
    if type(ckpt) is not dict:
        raise ModelError(f"YOLO weights {path} hold a {type(ckpt).__name__}, not an Ultralytics checkpoint; "
                         f"{_HOW_TO_FIX}")
    _check_architecture(path, ckpt)
    return ckpt


def _import_ultralytics() -> None:
    """Ultralytics' layer classes must be loaded: names in a file are looked up, never imported, here."""
    # a service must not pip-install or download at run time; users may still override these
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics.nn.tasks  # noqa: F401  (imports every ultralytics.nn.modules layer)


@contextlib.contextmanager
def verified_copy(path: Path) -> Iterator[Path]:
    """A private copy of `path` whose bytes passed _verify, deleted on exit. Give it to Ultralytics
    instead of `path`: what Ultralytics then unpickles is exactly what was checked, whatever happens to `path`."""
    path = Path(path)
    data = _read_once(path)
    _verify(path, data)
    folder = Path(tempfile.mkdtemp(prefix="reelmask-weights-"))  # mode 0700: only this user can reach the copy
    try:
        copy = folder / f"{path.stem}.pt"
        with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ which globals a file names

def _globals_in(path: Path, data: bytes) -> list[str]:
    """Every global the pickles in `data` name, read without unpickling, less torch's tensor machinery (which
    torch's unpickler judges itself). Checked against reelmask's policy whatever else torch has been told to
    allow: torch itself pre-registers e.g. builtin exception classes for its weights_only loads."""
    if data[:4] == b"PK\x03\x04":  # torch's own test for its zip format; anything else is the legacy format
        pickles, count = io.BytesIO(_zip_record(path, data)), 1
    else:
        pickles, count = io.BytesIO(data), _LEGACY_PICKLES
    names = []
    try:
        for _ in range(count):
            for op, arg, _pos in pickletools.genops(pickles):
                if op.name == "GLOBAL":
                    names.append(_modern_name(*arg.split(" ", 1)))
                elif op.name in ("STACK_GLOBAL", "INST", "OBJ"):  # torch's unpickler has no such instruction
                    raise ModelError(f"YOLO weights {path} use the pickle instruction {op.name}, which torch "
                                     f"checkpoints never contain, so reelmask will not load them; {_HOW_TO_FIX}")
    except ModelError:
        raise
    except Exception as e:  # pickletools reports malformed bytes as ValueError, struct.error, UnicodeError...
        raise ModelError(f"YOLO weights {path} are not a torch checkpoint ({_first_line(e)}); {_HOW_TO_FIX}") from None
    return sorted({n for n in names if not (n.startswith(_TORCH_OWN) and not n.startswith(_LAYER_PACKAGES))})


def _modern_name(module: str, name: str) -> str:
    """A global as unpicklers resolve it: protocol-2 pickles (torch's) may use Python 2 names, e.g. __builtin__.set."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _zip_record(path: Path, data: bytes) -> bytes:
    """The pickle of a zip-format checkpoint: <folder>/data.pkl, the folder named by the first entry, as torch
    reads it. An archive whose entry names repeat is refused: readers may disagree on which one counts."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            folder = names[0].split("/", 1)[0] if names else ""
            if len(set(names)) != len(names):
                raise ModelError(f"YOLO weights {path} repeat a name inside their zip archive, which torch never "
                                 f"writes; {_HOW_TO_FIX}")
            if f"{folder}/constants.pkl" in names:
                raise ModelError(f"YOLO weights {path} are a TorchScript archive, not an Ultralytics checkpoint; "
                                 f"{_HOW_TO_FIX}")
            return archive.read(f"{folder}/data.pkl")
    except ModelError:
        raise
    except Exception as e:  # BadZipFile, KeyError (no data.pkl), EOFError, zlib.error, ... for damaged archives
        raise ModelError(f"YOLO weights {path} are not a readable torch checkpoint (damaged or truncated: "
                         f"{_first_line(e)}); {_HOW_TO_FIX}") from None


def _refusal(path: Path, name: str, detail: str = "") -> ModelError:
    what = f"use {name} to {detail}" if detail else f"refer to {name}"
    return ModelError(f"YOLO weights {path} {what}, which is not part of an Ultralytics model, so reelmask will "
                      f"not load them (unpickling them could run code from the file); {_HOW_TO_FIX}")


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    own = [x for x in lines if "WeightsUnpickler error" in x]  # torch wraps its reason in a long explanation
    return (own or lines or [type(e).__name__])[0][:300]


# ------------------------------------------------------------------ the allow-list

def _makers(path: Path, names: list[str]) -> list[Callable[[], list]]:
    """For each of `names`, how to make its allow-list entries; ModelError for the first one refused."""
    makers = {name: _policy(name) for name in names}
    refused = [name for name, make in makers.items() if make is None]
    if refused:
        raise _refusal(path, refused[0])
    return list(makers.values())


def _policy(name: str) -> Callable[[], list] | None:
    """How to make the allow-list entries for a global named in a checkpoint; None when it is refused."""
    if name in _DATA_TYPES:
        return _DATA_TYPES[name]
    module, _, attr = name.rpartition(".")
    if not (module + ".").startswith(_LAYER_PACKAGES):
        return None
    cls = getattr(sys.modules.get(module), attr, None)  # never import a module because a file named it
    return (lambda: [(_uncallable(cls), name)]) if _is_layer(cls) else None


def _is_layer(cls) -> bool:
    import torch

    return (isinstance(cls, type) and issubclass(cls, torch.nn.Module)
            and (cls.__module__ + ".").startswith(_LAYER_PACKAGES))


_stand_ins: dict[type, type] = {}


def _uncallable(cls: type) -> type:
    """A subclass of `cls` that unpickling can rebuild from state (__new__, then __setstate__) but not call:
    calling a class runs its constructor, and e.g. DetectionModel's evals parts of its config. Made under _lock."""
    if cls not in _stand_ins:
        def refuse(self, *args, **kwargs):
            raise _Refused(f"{cls.__module__}.{cls.__qualname__}", "run its constructor on arguments from the file")

        meta = type(cls)
        no_call = type(f"Uncallable{meta.__name__}", (meta,), {"__call__": refuse})
        _stand_ins[cls] = no_call(cls.__name__, (cls,), {"__module__": cls.__module__,
                                                          "__qualname__": cls.__qualname__})
    return _stand_ins[cls]


def _namespace_entries() -> list:
    from ultralytics.utils import IterableSimpleNamespace

    # named, unlike Ultralytics' own entry for it: leaving the allow-list, ours must not take theirs along
    return [(IterableSimpleNamespace, "ultralytics.utils.IterableSimpleNamespace")]


def _numpy_dtype_entries() -> list:
    import numpy as np

    # a dtype pickles as a call to numpy.dtype, then sets its state on the result: its class is needed too
    kinds = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}
    return [(_numpy_dtype, "numpy.dtype"), *((k, f"numpy.dtypes.{k.__name__}") for k in kinds)]


def _numpy_dtype(spec, align=False, copy=False):
    import numpy as np

    dtype = np.dtype(spec, bool(align), bool(copy)) if isinstance(spec, str) else None
    if dtype is None or dtype.hasobject:
        raise _Refused("numpy.dtype", f"make the dtype {str(spec)[:40]!r}, not a plain numeric one")
    return dtype


def _numpy_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise _Refused("numpy.core.multiarray.scalar", "make something other than a number from its bytes")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _pure_path(*parts):
    import pathlib

    if not all(isinstance(p, str) for p in parts):
        raise _Refused("pathlib.Path", "make a path from something other than strings")
    return pathlib.PurePath(*parts)


def _layer_method(owner, name):
    """getattr limited to fetching a plain method of a layer class (e.g. Detect.forward)."""
    if isinstance(name, str) and not name.startswith("__") and _is_layer(owner):
        value = inspect.getattr_static(owner, name, None)
        if inspect.isfunction(value):
            return value
    shown = owner.__qualname__ if isinstance(owner, type) else f"a {type(owner).__name__}"
    raise _Refused("builtins.getattr", f"fetch {str(name)[:40]!r} from {shown} (only methods of layer classes "
                                       "may be fetched)")


def _entries_for(name: str, obj) -> Callable[[], list]:
    return lambda: [(obj, name)]


_DATA_TYPES: dict[str, Callable[[], list]] = {
    "ultralytics.utils.IterableSimpleNamespace": _namespace_entries,
    "numpy.dtype": _numpy_dtype_entries,
    "numpy.core.multiarray.scalar": _entries_for("numpy.core.multiarray.scalar", _numpy_scalar),
    "numpy._core.multiarray.scalar": _entries_for("numpy._core.multiarray.scalar", _numpy_scalar),
    "builtins.getattr": _entries_for("builtins.getattr", _layer_method),
    **{f"{m}.{c}": _entries_for(f"{m}.{c}", _pure_path)
       for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "WindowsPath")},
}


# ------------------------------------------------------------------ the architecture Ultralytics rebuilds

def _check_architecture(path: Path, ckpt: dict) -> None:
    """The networks' `yaml` must be data Ultralytics' model builder can read without running code from it."""
    import torch

    nets = [ckpt.get(k) for k in ("model", "ema") if isinstance(ckpt.get(k), torch.nn.Module)]
    if not nets:
        raise ModelError(f"YOLO weights {path} hold no Ultralytics network (no 'model' or 'ema' entry); "
                         f"{_HOW_TO_FIX}")
    for net in nets:
        spec = net.__dict__.get("yaml")  # the instance's own data: no attribute hooks of the class run
        if spec is None:
            continue
        if type(spec) is not dict:
            raise ModelError(f"YOLO weights {path} describe their architecture as a {type(spec).__name__}, "
                             f"not the dict Ultralytics writes; {_HOW_TO_FIX}")
        act = spec.get("activation")
        if act is not None and not _is_plain_activation(act):
            raise ModelError(f"YOLO weights {path} set their activation to {str(act)[:80]!r}, which Ultralytics "
                             "would run as Python code when it trains; only a torch.nn layer with literal arguments "
                             f"(e.g. 'nn.SiLU()') is accepted; {_HOW_TO_FIX}")
        backbone, head = spec.get("backbone", []), spec.get("head", [])
        if type(backbone) is not list or type(head) is not list:
            raise ModelError(f"YOLO weights {path} describe their layers as something other than the lists "
                             f"Ultralytics writes; {_HOW_TO_FIX}")
        for layer in backbone + head:
            module = layer[2] if isinstance(layer, (list, tuple)) and len(layer) == 4 else None
            if not _is_known_layer_name(module):
                raise ModelError(f"YOLO weights {path} build a layer {str(module)[:80]!r}, which is not a torch or "
                                 "Ultralytics layer class (Ultralytics would call it when it trains); "
                                 f"{_HOW_TO_FIX}")


def _is_plain_activation(text) -> bool:
    """`nn.Name(...)` or `torch.nn.Name(...)` with literal arguments, Name a torch.nn layer class."""
    try:
        call = ast.parse(str(text).strip(), mode="eval").body
        if not isinstance(call, ast.Call) or any(k.arg is None for k in call.keywords):
            return False
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            ast.literal_eval(arg)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):  # what ast reports for non-literals
        return False
    *owner, layer = ast.unparse(call.func).split(".")
    return owner in (["nn"], ["torch", "nn"]) and _is_known_layer_name(f"nn.{layer}")


def _is_known_layer_name(module) -> bool:
    """A layer name as Ultralytics' model builder resolves it (nn.X, torchvision.ops.X, or a name its module
    imports), naming a layer class of torch.nn, torchvision.ops or ultralytics.nn.modules (never a whole model,
    which would build itself from a config of its own)."""
    import torch

    if not isinstance(module, str) or not module.replace(".", "_").isidentifier():
        return False
    if module.startswith("nn."):
        cls = getattr(torch.nn, module[3:], None)
    elif module.startswith("torchvision.ops."):
        try:
            import torchvision.ops
        except ImportError:
            return False
        cls = getattr(torchvision.ops, module[16:], None)
    else:
        cls = vars(sys.modules["ultralytics.nn.tasks"]).get(module)
    return (isinstance(cls, type) and issubclass(cls, torch.nn.Module)
            and cls.__module__.startswith(("torch.nn.modules.", "torchvision.ops.", "ultralytics.nn.modules.")))
