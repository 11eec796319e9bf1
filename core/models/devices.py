"""Device choice for every model (SAM2, the U-Net, the matting refiner, YOLO training): models.device
or a daemon.devices entry as a torch device."""

from __future__ import annotations

from core.errors import ModelError


def pick_device(name: str):
    """"auto" is the first CUDA GPU where there is one, else the CPU; a named CUDA device on a machine
    without one is a ModelError that says which values work."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f'models.device = "{name}" but this machine has no usable CUDA GPU; use "auto" or "cpu"')
    return dev
