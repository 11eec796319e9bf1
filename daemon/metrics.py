"""GPU and memory samples for the dashboard: device memory through NVML where present, process RSS."""

from __future__ import annotations

import logging
import os

import psutil

from core.store import Store

log = logging.getLogger(__name__)


class Sampler:
    def __init__(self):
        self._process = psutil.Process(os.getpid())
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no NVIDIA driver or library: RAM only
            self._nvml = None

    @property
    def has_gpu(self) -> bool:
        return self._nvml is not None and self._nvml.nvmlDeviceGetCount() > 0

    def sample(self, store: Store) -> None:
        rss = self._process.memory_info().rss / 2**20
        if self.has_gpu:
            nv = self._nvml
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                name = nv.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else name
                util = nv.nvmlDeviceGetUtilizationRates(h).gpu
                store.add_sample(f"cuda:{i}", name, mem.used / 2**20, mem.total / 2**20, float(util), rss)
        else:
            vm = psutil.virtual_memory()
            store.add_sample("cpu", "no NVIDIA GPU", (vm.total - vm.available) / 2**20, vm.total / 2**20,
                             psutil.cpu_percent(interval=None), rss)
