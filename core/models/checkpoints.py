"""Checkpoint files: writing them atomically, reading a reelmask checkpoint's plain keys without
torch, loading one as weights only, and the three formats reelmask trains (U-Net, matting refiner,
SAM2 decoder).

Every reelmask checkpoint is a torch.save'd dict with at least "kind", "format", "epoch",
"metrics", "model" (a state dict) and "reelmask" (the version that wrote it); each format adds its
own keys (see the format's module: core/models/unet.py, core/matting/refiner.py,
core/models/sam2_decoder.py). last.pt adds "optimizer", "history" and "best". The trainers write these
files and inference reads them; both import this module, which imports torch only when loading.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelError


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temporary name beside `path`, then rename: a reader never sees half a file."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state_dict(path: Path) -> dict:
    """The state dict of a checkpoint file (a bare one, or the "model" entry of a dict), loaded as
    weights only: a file that refers to anything but tensors and plain data is refused."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused:  # torch's own advice (load it unrestricted) is exactly what must not happen here
            raise ModelError(f"checkpoint {path} refers to {refused.group(1)}, which is not part of model weights; "
                             "reelmask loads checkpoints as weights only, never as code: use the official file "
                             "(`reelmask models pull` or `reelmask models import`)") from None
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e)).strip()  # torch colours parts of its messages
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
        raise ModelError(f"{path} is not a PyTorch checkpoint reelmask can read as weights ({first[:200]}); "
                         "check that it is the file you meant (a .pt saved by torch.save)") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a state dict (got {type(data).__name__})")
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


@dataclass(frozen=True)
class CheckpointFormat:
    """One kind of reelmask checkpoint: what its "kind" and "format" say, the plain keys its header
    has, and the words its errors use."""

    kind: str
    format: int
    keys: tuple[str, ...]   # the header: plain keys readable without torch
    name: str               # "a reelmask U-Net checkpoint"
    family: str             # "a U-Net checkpoint"
    label: str              # "the U-Net checkpoint" (load errors)
    trainer: str            # `reelmask train <trainer>` writes it

    @property
    def fix(self) -> str:
        return f"give the best.pt or last.pt written by `reelmask train {self.trainer}`"

    def header(self, path: Path) -> dict:
        """The header keys, without torch; a ModelError naming the file when it is not one of these."""
        path = Path(path)
        what = f"{path} is not {self.name}"
        try:
            with zipfile.ZipFile(path) as z:
                pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    raise ModelError(f"{what} (no torch data in it); {self.fix}")
                with z.open(pkl) as f:
                    data = _HeaderUnpickler(f).load()
        except ModelError:
            raise
        except (zipfile.BadZipFile, OSError) as e:
            raise ModelError(f"{what} ({e}); {self.fix}") from e
        except Exception as e:  # a pickle from elsewhere can fail in many ways
            raise ModelError(f"{what} (unreadable: {e}); {self.fix}") from e
        if not isinstance(data, dict) or data.get("kind") != self.kind:
            got = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise ModelError(f"{what} (kind {got!r}, expected {self.kind!r}); {self.fix}")
        if data.get("format") != self.format:
            raise ModelError(f"{path} is {self.family} of format {data.get('format')!r}, but this reelmask reads "
                             f"format {self.format}; retrain it with `reelmask train {self.trainer}` or upgrade reelmask")
        missing = [k for k in self.keys if k not in data]
        if missing:
            raise ModelError(f"{path} lacks {', '.join(missing)}; {self.fix}")
        return {k: data[k] for k in self.keys}

    def load(self, path: Path) -> dict:
        """The whole checkpoint on the CPU, weights only, checked to be of this format; ModelError."""
        import torch

        self.header(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad file
            raise ModelError(f"cannot load {self.label} {path}: {e}") from e
        if not isinstance(data.get("model"), dict):
            raise ModelError(f"{path} has no model weights; {self.fix}")
        return data


UNET = CheckpointFormat("unet", 1, ("kind", "format", "arch", "img_size", "epoch", "metrics"),
                        "a reelmask U-Net checkpoint", "a U-Net checkpoint", "the U-Net checkpoint", "unet")
REFINER = CheckpointFormat("matting-refiner", 1,
                           ("kind", "format", "arch", "img_size", "epoch", "metrics", "sam2", "features"),
                           "a reelmask matting refiner checkpoint", "a matting refiner", "the matting refiner",
                           "matting")
SAM2_DECODER = CheckpointFormat("sam2-decoder", 1, ("kind", "format", "sam2", "trained", "epoch", "metrics"),
                                "a reelmask SAM2 decoder checkpoint", "a SAM2 decoder checkpoint",
                                "the SAM2 decoder checkpoint", "sam2-decoder")
