"""U-Net checkpoint files (best.pt, last.pt): writing them atomically, reading them back, and
telling a reelmask U-Net checkpoint from any other file without importing torch.

A checkpoint is a torch.save'd dict:
    {"kind": "unet", "format": 1, "arch": {"in_channels", "base", "depth"}, "img_size": int,
     "normalize": {"mean", "std"}, "epoch": int, "metrics": {...}, "model": state_dict,
     "reelmask": version}
last.pt adds "optimizer", "history" (every metrics line so far) and "best" ({"epoch", "value"}).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

from core.config import Config
from core.errors import ConfigError, ModelError

KIND = "unet"
FORMAT = 1
_HEADER_KEYS = ("kind", "format", "arch", "img_size", "epoch", "metrics")


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temporary name beside `path`, then rename: a reader never sees half a file."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """The whole checkpoint on the CPU, checked to be a reelmask U-Net one; raises ModelError."""
    import torch

    read_header(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ModelError(f"cannot load the U-Net checkpoint {path}: {e}") from e
    if not isinstance(data.get("model"), dict):
        raise ModelError(f"{path} has no model weights; give the best.pt or last.pt of a `reelmask train unet` run")
    return data


class _Stub:
    """Stands in for torch objects while reading a checkpoint's plain keys."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return self

    def __setstate__(self, state):
        pass


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch" or module.startswith("torch."):
            return _Stub
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")

    def persistent_load(self, pid):
        return None  # tensor storages: not needed for the header


def read_checkpoint_header(path: Path, *, kind: str, fmt: int, keys: tuple[str, ...], name: str, family: str,
                           trainer: str, fix: str) -> dict:
    """The plain `keys` of a reelmask checkpoint of `kind`, without torch; a ModelError naming the file
    when it is not one (`name`: "a reelmask U-Net checkpoint"; `family`: "a U-Net checkpoint")."""
    path = Path(path)
    what = f"{path} is not {name}"
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                raise ModelError(f"{what} (no torch data in it); {fix}")
            with z.open(pkl) as f:
                data = _HeaderUnpickler(f).load()
    except ModelError:
        raise
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{what} ({e}); {fix}") from e
    except Exception as e:  # a pickle from elsewhere can fail in many ways
        raise ModelError(f"{what} (unreadable: {e}); {fix}") from e
    if not isinstance(data, dict) or data.get("kind") != kind:
        got = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise ModelError(f"{what} (kind {got!r}, expected {kind!r}); {fix}")
    if data.get("format") != fmt:
        raise ModelError(f"{path} is {family} of format {data.get('format')!r}, but this reelmask reads "
                         f"format {fmt}; retrain it with `reelmask train {trainer}` or upgrade reelmask")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ModelError(f"{path} lacks {', '.join(missing)}; {fix}")
    return {k: data[k] for k in keys}


def read_header(path: Path) -> dict:
    """kind, format, arch, img_size, epoch, metrics of a checkpoint, without torch; raises ModelError
    when `path` is not a reelmask U-Net checkpoint."""
    return read_checkpoint_header(path, kind=KIND, fmt=FORMAT, keys=_HEADER_KEYS, name="a reelmask U-Net checkpoint",
                                  family="a U-Net checkpoint", trainer="unet",
                                  fix="give the best.pt or last.pt written by `reelmask train unet`")


def resolve_unet_path(cfg: Config) -> Path:
    """models.unet as a checked checkpoint file (no torch); the errors say how to fix the setting."""
    name = cfg.models.unet
    if not name:
        raise ConfigError("unet mode needs models.unet = PATH to a best.pt written by `reelmask train unet`; "
                          "pass --set models.unet=runs/unet-<dataset>/best.pt (or set it in config.toml)")
    path = cfg.path(name)
    if not path.is_file():
        raise ModelError(f"models.unet = '{name}' does not exist (looked at {path}); set it to the best.pt "
                         "of a `reelmask train unet` run")
    read_header(path)
    return path
