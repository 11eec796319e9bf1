"""What the dashboard shows, read from the state database in one go (no Textual, no torch here).

The daemon writes jobs, progress, chunks, events, samples and training curves; the dashboard only
reads them (on a worker thread) and writes commands.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.outputs.folder import staging_path
from core.store import Job, Store, since_retry

STATE_FILTERS: tuple[str | None, ...] = (None, "queued", "running", "done", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class DeviceMemory:
    device: str                 # cuda:0, or "cpu" on a machine without an NVIDIA GPU
    name: str
    used_mb: float | None
    total_mb: float | None
    util: float | None
    rss_mb: float | None
    history: tuple[float, ...]  # used memory, oldest first
    ts: str
    node: str | None = None     # the machine (Ray executor: sampled by its actors); None = the daemon's own
    running: tuple[str, ...] = ()  # "job name (worker)" of the jobs running on this node's workers

    @property
    def key(self) -> str:
        return f"{self.node}/{self.device}" if self.node else self.device


@dataclass(frozen=True)
class JobDetail:
    job: Job
    chunks: tuple[dict, ...]
    warnings: tuple[str, ...]
    prompts: dict[str, int]             # source -> prompts given to SAM2
    prompt_objects: tuple[int, ...]
    losses: tuple[float, ...]           # training: step losses, oldest first
    epochs: tuple[dict, ...]            # training: metrics.jsonl lines seen so far


@dataclass(frozen=True)
class Snapshot:
    jobs: tuple[Job, ...]
    counts: dict[str, int]
    detail: JobDetail | None
    devices: tuple[DeviceMemory, ...]
    events: tuple[dict, ...]
    paused: bool
    sample_age: float | None            # seconds since the daemon's last memory sample; None = never
    taken_at: str = field(default="")
    local: bool = False                 # devices read by the dashboard itself (the daemon is not sampling)
    preview: object = None              # tui.preview.PreviewImage, or why there is none (str); None: not asked


def read_snapshot(store: Store, selected: str | None, state: str | None, last_event: int = 0,
                  now: datetime | None = None, local: LocalMemory | None = None,
                  stale_after: float = 10.0) -> Snapshot:
    """Everything the dashboard shows; with `local`, devices are read here when the daemon's samples
    are missing or older than `stale_after` seconds."""
    all_jobs = store.jobs()
    counts = Counter(j.state for j in all_jobs)
    jobs = tuple(j for j in all_jobs if state is None or j.state == state)
    job = next((j for j in all_jobs if j.id == selected), None) if selected else None
    samples = store.samples(limit=600)
    now = now or datetime.now(timezone.utc)
    age = (now - datetime.fromisoformat(samples[-1]["ts"])).total_seconds() if samples else None
    use_local = local is not None and (age is None or age > stale_after)
    return Snapshot(
        jobs=jobs, counts=dict(counts), detail=_detail(store, job) if job else None,
        devices=local.devices(now) if use_local else _devices(samples, all_jobs),
        events=tuple(e for e in store.events(limit=200) if e["id"] > last_event),
        paused=store.setting("paused") == "1", sample_age=age, taken_at=now.isoformat(), local=use_local)


class LocalMemory:
    """The dashboard's own reading of this machine, for when the daemon is not sampling."""

    def __init__(self, keep: int = 60):
        from core.memory import MemoryProbe

        self.probe = MemoryProbe()
        self.keep = keep
        self.history: dict[str, list[float]] = {}

    def devices(self, now: datetime) -> tuple[DeviceMemory, ...]:
        rss, out = self.probe.rss_mb(), []
        for d in self.probe.read():
            hist = self.history.setdefault(d.device, [])
            hist.append(d.used_mb)
            del hist[:-self.keep]
            out.append(DeviceMemory(d.device, d.name, d.used_mb, d.total_mb, d.util, rss, tuple(hist), now.isoformat()))
        return tuple(out)


def _devices(samples: list[dict], jobs: list[Job] | tuple[Job, ...] = ()) -> tuple[DeviceMemory, ...]:
    """The newest reading and recent history of each device, per node where samples name one (Ray
    actors sample their own nodes), with the jobs running on the workers that sampled it."""
    by_device: dict[tuple[str, str], list[dict]] = {}
    for s in samples:
        by_device.setdefault((s.get("node") or "", s["device"]), []).append(s)
    running = [j for j in jobs if j.state == "running" and j.worker]
    out = []
    for (node, device), rows in sorted(by_device.items()):
        last = rows[-1]
        workers = {r.get("worker") for r in rows[-20:] if r.get("worker")}
        # a Ray actor's samples name it; the daemon's own samples name no worker: its jobs on this device
        here = [j for j in running if j.worker in workers or (not node and not workers and j.mem_device == device)]
        out.append(DeviceMemory(device, last["name"] or device, last["mem_used_mb"], last["mem_total_mb"],
                                last["util"], last["rss_mb"],
                                tuple(r["mem_used_mb"] or 0.0 for r in rows[-60:]), last["ts"], node or None,
                                tuple(_running_label(j) for j in sorted(here, key=lambda j: j.worker))))
    return tuple(out)


def _running_label(job: Job) -> str:
    """"name (worker)", with the memory the job holds on its device once it has said."""
    held = f", holds {format_mb(job.mem_job_mb)}" if job.mem_job_mb is not None else ""
    return f"{job.name} ({job.worker}{held})"


def _detail(store: Store, job: Job) -> JobDetail:
    events = since_retry(store.events(limit=50, job_id=job.id))
    warned = [e["message"] for e in events if e["level"] == "warning"]
    # random weights first (every mask of the job is meaningless), then the latest others
    first = [w for w in warned if "RANDOM weights" in w][-1:]
    warnings = tuple(first + [w for w in warned if w not in first][-(4 - len(first)):])
    prompts: Counter = Counter()
    objects: set[int] = set()
    losses: tuple[float, ...] = ()
    epochs: tuple[dict, ...] = ()
    if job.kind == "train":
        curve = store.train_metrics(job.id, limit=400)
        losses = tuple(r["loss"] for r in curve if r["loss"] is not None)
        epochs = tuple(r["metrics"] for r in curve if r["metrics"] is not None)
    else:
        for line in _prompt_lines(job):
            try:
                p = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            prompts[p.get("source", "?")] += 1
            objects.add(int(p.get("object_id", 0)))
    return JobDetail(job, tuple(store.chunks(job.id)), warnings, dict(prompts), tuple(sorted(objects)),
                     losses, epochs)


_PROMPT_CACHE: dict[Path, tuple[tuple[int, int], list[str]]] = {}


def _prompt_lines(job: Job) -> list[str]:
    """prompts_used.jsonl of a finished job, or of the staging folder of a running one."""
    if not job.output_path:
        return []
    out = Path(job.output_path)
    for path in (out / "prompts_used.jsonl", staging_path(out) / "prompts_used.jsonl"):
        try:
            st = path.stat()
        except OSError:
            continue
        key = (st.st_size, st.st_mtime_ns)
        cached = _PROMPT_CACHE.get(path)
        if cached is None or cached[0] != key:
            cached = (key, path.read_text(encoding="utf-8", errors="replace").splitlines())
            _PROMPT_CACHE[path] = cached
        return cached[1]
    return []


# ---------------------------------------------------------------- formatting shared by widgets

def percent(job: Job) -> float | None:
    return 100.0 * job.frames_done / job.frames_total if job.frames_total else None


def eta_seconds(job: Job) -> float | None:
    if job.state != "running" or not job.fps or not job.frames_total:
        return None
    return max(0.0, (job.frames_total - job.frames_done) / job.fps)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}:{s % 60:02d}"


def format_mb(mb: float | None) -> str:
    if mb is None:
        return "?"
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"
