"""GPU and memory samples for the dashboard, written to the state database every daemon.sample_seconds."""

from __future__ import annotations

from core.memory import MemoryProbe
from core.store import Store


class Sampler:
    def __init__(self):
        self.probe = MemoryProbe()

    def sample(self, store: Store) -> None:
        rss = self.probe.rss_mb()
        for d in self.probe.read():
            store.add_sample(d.device, d.name, d.used_mb, d.total_mb, d.util, rss)
