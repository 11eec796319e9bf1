"""Device memory readings: NVIDIA GPUs through NVML where present, otherwise system RAM (no torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class DeviceReading:
    device: str             # "cuda:0" ..., or "cpu" on a machine without an NVIDIA GPU
    name: str
    used_mb: float
    total_mb: float
    util: float | None      # percent busy (GPU) or CPU load


class MemoryProbe:
    """Reads memory of every NVIDIA GPU, or of the system when there is none, and this process's RSS."""

    def __init__(self):
        self._process = psutil.Process(os.getpid())
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml if pynvml.nvmlDeviceGetCount() > 0 else None
        except Exception:  # no NVIDIA driver or library: RAM only
            self._nvml = None

    @property
    def has_gpu(self) -> bool:
        return self._nvml is not None

    def rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def read(self) -> list[DeviceReading]:
        if self._nvml is None:
            vm = psutil.virtual_memory()
            return [DeviceReading("cpu", "no NVIDIA GPU", (vm.total - vm.available) / 2**20, vm.total / 2**20,
                                  psutil.cpu_percent(interval=None))]
        nv, out = self._nvml, []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            name = nv.nvmlDeviceGetName(h)
            out.append(DeviceReading(f"cuda:{i}", name.decode() if isinstance(name, bytes) else name,
                                     mem.used / 2**20, mem.total / 2**20, float(nv.nvmlDeviceGetUtilizationRates(h).gpu)))
        return out
