"""How much device memory a SAM2 job needs, measured on the device, and whether it fits before it starts.

A job's SAM2 memory grows with the objects it follows and the frames of a chunk: every tracked frame
keeps each object's memory features and low-resolution mask in the inference state until the chunk
ends. `measure_cost` runs the job's own tracker on blank frames four times (one and two objects, two
chunk lengths; after one run that is not measured) and solves need = fixed + per_object x objects +
per_frame x frames + per_object_frame x objects x frames from the peaks the CUDA allocator reports. Two costs are added
by arithmetic, not measured: the mask logits at the video's own resolution (float32, per object,
twice: the logits and their threshold) and the frames the reader prepares ahead on the device.

The measurement needs CUDA's allocator statistics; on a CPU nothing is measured and no job is
refused (system memory is the operating system's business there).

`held_mb` is what one job holds now: the tensors of its live SAM2 states, which is the job's own even
when two workers share a device.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass

CALIBRATION = ((1, 10), (2, 10), (1, 20), (2, 20))  # (objects, frames) measured
HEADROOM = 1.1   # the estimate is raised by this much before it is compared with the free memory


@dataclass(frozen=True)
class MemoryCost:
    """Measured device memory of SAM2 at one image size, in MiB, beyond what the model itself holds."""

    device: str
    image_size: int
    fixed_mb: float
    per_object_mb: float
    per_frame_mb: float
    per_object_frame_mb: float
    frame_input_mb: float     # one frame prepared for the model (3 x size x size float32)

    def need_mb(self, objects: int, frames: int, height: int, width: int, prefetch: int = 0, states: int = 1) -> float:
        """The peak a job reaches: `states` chunks in flight at once (detect's parallel chunks), each of
        `frames` frames and `objects` objects, on video frames of height x width."""
        o, f = max(1, objects), max(1, frames)
        per_state = (self.fixed_mb + self.per_object_mb * o + self.per_frame_mb * f + self.per_object_frame_mb * o * f
                     + o * height * width * 4 * 2 / 2**20)
        return per_state * max(1, states) + self.frame_input_mb * prefetch

    def objects_that_fit(self, free_mb: float, frames: int, height: int, width: int, prefetch: int = 0,
                         states: int = 1) -> int:
        """The most objects a chunk of `frames` frames can follow in `free_mb` (0: not even one)."""
        n = 0
        while n < 4096 and self.need_mb(n + 1, frames, height, width, prefetch, states) * HEADROOM <= free_mb:
            n += 1
        return n

    def record(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def solve(peaks: dict[tuple[int, int], float]) -> tuple[float, float, float, float]:
    """(fixed, per_object, per_frame, per_object_frame) from peaks at the four CALIBRATION points;
    a negative term (allocator rounding on tiny costs) counts as 0 and its share stays in `fixed`."""
    (o1, f1), (o2, _), (_, f2), _ = CALIBRATION
    n11, n21, n12, n22 = (peaks[p] for p in CALIBRATION)
    d = (n22 - n21 - n12 + n11) / ((o2 - o1) * (f2 - f1))
    b = (n21 - n11) / (o2 - o1) - d * f1
    c = (n12 - n11) / (f2 - f1) - d * o1
    b, c, d = max(b, 0.0), max(c, 0.0), max(d, 0.0)
    a = max(n11 - b * o1 - c * f1 - d * o1 * f1, 0.0)
    return a, b, c, d


class _BlankFrames:
    """A chunk of blank model inputs made on the device as they are read (none kept)."""

    def __init__(self, n: int, size: int, device):
        self.n, self.size, self.device = n, size, device

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        if not 0 <= i < self.n:
            raise IndexError(i)
        return torch.zeros((3, self.size, self.size), device=self.device)


def measure_cost(tracker, states_only: bool = False) -> MemoryCost | None:
    """The tracker's memory cost at its image size, measured now on its CUDA device; None on a CPU.

    With `states_only` the peaks are what the inference states hold at the end of each run (any
    device, no transient memory): what a job's `held_mb` will read, used to check the model on a CPU."""
    import torch

    device = tracker.device
    cuda = device.type == "cuda" and not states_only
    if not cuda and not states_only:
        return None
    size, video = tracker.image_size, 256   # a small video: its logits' cost is added by arithmetic
    peaks = {}
    seconds = tracker.seconds
    # a first run, not measured, takes the one-off allocations (library workspaces, kernel caches) that
    # would otherwise land in the first point and pass for a cost per object and frame
    for objects, frames in ([(1, 3)] if cuda else []) + list(CALIBRATION):
        if cuda:
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        state = tracker.new_state(_BlankFrames(frames, size, device), video, video)
        for k in range(objects):
            lo = 32 + 96 * k / max(1, objects)
            tracker.add_points(state, 0, k + 1, box=[lo, lo, lo + 96, lo + 96])
        for _ in tracker.propagate(state, 0, frames, reverse=False):
            pass
        if cuda:
            torch.cuda.synchronize(device)
            peaks[(objects, frames)] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            peaks[(objects, frames)] = state_mb(state)
        del state
    tracker.seconds = seconds    # the measurement is no job's time
    a, b, c, d = solve(peaks)
    return MemoryCost(str(device), size, a, b, c, d, 3 * size * size * 4 / 2**20 if cuda else 0.0)


def free_mb(device) -> float:
    """Memory a new job can use on a CUDA device: free on the card plus what torch's cache holds unused."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return (free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)) / 2**20


def tensor_mb(value, seen: set[int] | None = None) -> float:
    """MiB of the tensors inside nested dicts, lists and tuples (each storage counted once)."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        try:
            key = value.untyped_storage().data_ptr()
            size = value.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):   # a tensor without storage (e.g. meta)
            return 0.0
        if key in seen:
            return 0.0
        seen.add(key)
        return size / 2**20
    if isinstance(value, dict):   # list() copies in one step: a chunk running on another thread may add entries
        return sum(tensor_mb(v, seen) for v in list(value.values()))
    if isinstance(value, (list, tuple)):
        return sum(tensor_mb(v, seen) for v in list(value))
    return 0.0


def state_mb(state: dict, seen: set[int] | None = None) -> float:
    """MiB a SAM2 inference state holds, its frames (read from the job's reader) left out."""
    return tensor_mb({k: v for k, v in list(state.items()) if k != "images"}, seen)


class LiveStates:
    """The SAM2 inference states a tracker has open (weakly held: a finished chunk's state goes away)."""

    def __init__(self):
        self._refs: list[weakref.ref] = []

    def add(self, state) -> None:
        self._refs = [r for r in self._refs if r() is not None]
        self._refs.append(weakref.ref(state))

    def held_mb(self) -> float:
        seen: set[int] = set()
        total = 0.0
        for r in list(self._refs):
            state = r()
            if state is not None:
                total += state_mb(state, seen)
        return total


def check_fits(tracker, objects: int, frames: int, height: int, width: int, prefetch: int, states: int = 1,
               free: float | None = None) -> dict:
    """The manifest's record of the memory check; raises DeviceMemoryError when the job would not fit.
    `objects` is what is known before the start (a detect job's objects come later: at least one)."""
    from core.errors import DeviceMemoryError

    cost = tracker.memory_cost()
    if cost is None:
        return {"checked": False, "reason": f"no allocator statistics on {tracker.device.type}"}
    free = free_mb(tracker.device) if free is None else free
    need = cost.need_mb(objects, frames, height, width, prefetch, states)
    record = {"checked": True, "estimate_mb": round(need, 1), "free_mb": round(free, 1), "objects": objects,
              "chunk_frames": frames, "chunks_at_once": states, "cost": cost.record()}
    if need * HEADROOM <= free:
        return record
    fit = cost.objects_that_fit(free, frames, height, width, prefetch, states)
    per_frame = cost.per_frame_mb + cost.per_object_frame_mb * max(1, objects)
    chunk_fit = next((f for f in range(frames - 1, 0, -1)
                      if cost.need_mb(objects, f, height, width, prefetch, states) * HEADROOM <= free), 0)
    hints = []
    if chunk_fit:
        hints.append(f"lower chunking.chunk_size to {chunk_fit} or less (each frame of a chunk holds about "
                     f"{per_frame:.1f} MiB with {objects} object(s))")
    if fit:
        hints.append(f"split the objects over jobs ({fit} fit in one)")
    if states > 1:
        hints.append("lower detect.parallel_chunks")
    hints.append(f"lower models.image_size (now {cost.image_size})")
    hints.append("or free the device (other jobs or programs on it hold the rest)")
    raise DeviceMemoryError(
        f"this job would not fit on {tracker.device}: it needs about {need * HEADROOM:.0f} MiB ({objects} object(s), "
        f"{frames} frames a chunk{f', {states} chunks at once' if states > 1 else ''}, {width}x{height} video, "
        f"measured at {cost.image_size} px) and {free:.0f} MiB are free; " + "; ".join(hints))
