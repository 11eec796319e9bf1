"""Configuration: config.toml -> frozen dataclasses.

Precedence, lowest first: built-in defaults < config file < job.toml < ``--set key=value``.
Every key is declared once below with its type and meaning; the shipped config.toml is rendered
from these declarations (``render_toml``) and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from core.errors import ConfigError

CONFIG_ENV = "REELMASK_CONFIG"


def _key(default: Any, help: str, *, job: bool = False, lo: float | None = None, hi: float | None = None) -> Any:
    """Declare a config key with its default and a one-line meaning.

    `job`: a folder's job.toml (or prompts.json) may set it; every other key belongs to the daemon's
    owner. `lo`/`hi`: the inclusive range of a number, or the most entries of a list.
    """
    meta = {"help": help, "job": job, "lo": lo, "hi": hi}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class InboxSpec:
    """One watched folder, the mode its folders get when nothing else decides, and whether its
    folders' job.toml may set any key (trusted) or only job-scope keys."""

    path: str
    mode: str = ""
    trusted: bool = False


@dataclass(frozen=True)
class PathsConfig:
    inboxes: tuple[str, ...] = _key(["inbox"], "folders watched for new frame folders (untrusted: job.toml may set job-scope keys only)")
    inbox: tuple[InboxSpec, ...] = _key(
        [], "extra inboxes: [[paths.inbox]] path = ..., mode = ..., trusted = false (true lifts the job.toml allow-list)"
    )
    outbox: str = _key("outbox", "where results appear, one folder per job")
    done: str = _key("done", "where inputs go after a successful job")
    failed: str = _key("failed", "where inputs go after a failed job, with error.txt")
    db: str = _key("reelmask.db", "SQLite state shared by daemon, CLI and TUI")
    work: str = _key("work", "scratch space for jobs in progress (resumable partial outputs)")
    cache: str = _key("", "model cache; empty means $XDG_CACHE_HOME/reelmask or ~/.cache/reelmask")


@dataclass(frozen=True)
class WatchConfig:
    settle_seconds: float = _key(5.0, "a folder without .ready is complete after this many quiet seconds", lo=0, hi=86400)
    polling: bool = _key(False, "poll the file system instead of OS events (network shares)")
    poll_interval: float = _key(1.0, "seconds between scans when polling", lo=0.01, hi=3600)


@dataclass(frozen=True)
class ModelsConfig:
    sam2: str = _key("sam2.1_hiera_tiny", "SAM2 variant name (see `reelmask models list`) or a checkpoint path")
    sam2_weights: str = _key("auto", '"auto" = cached official checkpoint, downloaded on first use; "random" = untrained weights for tests')
    sam2_arch: str = _key("auto", 'architecture of a checkpoint given by path: "auto" reads it from the weights, or a variant name')
    image_size: int = _key(1024, "SAM2 input size in pixels (multiple of 32); lower is faster and coarser",
                           job=True, lo=64, hi=2048)
    sam2_decoder: str = _key("", "fine-tuned mask decoder (best.pt from `reelmask train sam2-decoder`) used in every "
                                 "SAM2 mode; empty = SAM2's own")
    yolo: str = _key("yolo11n.pt", "Ultralytics detector weights (.pt) for detect mode")
    device: str = _key("auto", '"auto" (CUDA if present, else CPU), "cpu", "cuda" or "cuda:N"')
    compile: str = _key("off", '"off" or "vos": sam2\'s compiled video predictor (vos_optimized: torch.compile of the '
                               'image encoder, memory encoder and attention; CUDA only, warmed up once per worker and image '
                               'size, its time reported apart); where it cannot be used, SAM2 runs uncompiled with a warning')
    memory_check: bool = _key(True, "refuse a SAM2 job that would not fit in its CUDA device's free memory, before it "
                                    "starts (the cost per object and frame is measured once per worker and image size)")
    dtype: str = _key("auto", '"auto" (bfloat16 autocast on CUDA, float32 on CPU), "float32" or "bfloat16"')
    seed: int = _key(0, "random seed for random weights and sampling", job=True, lo=0, hi=2**31 - 1)
    unet: str = _key("", "trained U-Net checkpoint (best.pt from `reelmask train unet`) for unet mode")
    unet_threshold: float = _key(0.5, "unet mode: a pixel is the object where the U-Net's probability is above this",
                                 job=True, lo=0, hi=1)
    matting: str = _key("", "trained matting refiner (best.pt from `reelmask train matting`); empty = the classical solver")


@dataclass(frozen=True)
class ChunkingConfig:
    chunk_size: int = _key(100, "frames per SAM2 inference state; bounds memory whatever the video length",
                           job=True, lo=2, hi=2000)
    overlap: int = _key(1, "frames shared by neighbouring chunks; the hand-over mask sits on the first shared frame",
                        job=True, lo=0, hi=1999)
    anchor_prompts: bool = _key(True, "re-add each object's latest user prompt frame as conditioning memory in later chunks",
                                job=True)
    prefetch: int = _key(6, "frames decoded ahead of SAM2 by a background thread", job=True, lo=0, hi=64)


@dataclass(frozen=True)
class DetectConfig:
    classes: tuple[str, ...] = _key([], "COCO class names or ids to detect; empty = every class", job=True, hi=100)
    min_confidence: float = _key(0.5, "detections below this confidence are ignored", job=True, lo=0, hi=1)
    stride: int = _key(5, "YOLO looks at every Nth frame of a chunk (and always at its first frame)",
                       job=True, lo=1, hi=10000)
    match_iou: float = _key(0.3, "a detection continues an object when its box overlaps the object's mask this much",
                            job=True, lo=0, hi=1)
    lost_chunks: int = _key(2, "an object no detection confirms for this many chunks in a row ends",
                            job=True, lo=1, hi=10000)
    max_objects: int = _key(20, "at most this many objects tracked at once (the most confident detections win)",
                            job=True, lo=1, hi=255)
    imgsz: int = _key(640, "YOLO input size", job=True, lo=32, hi=2048)
    parallel_chunks: int = _key(1, "chunks with their own detections run this many at a time, each from its own "
                                   "prompts, linked by overlap afterwards; 1 = one after another with hand-over",
                                lo=1, hi=32)
    self_train: bool = _key(False, "train the detector on SAM2 masks of the first frames (objects from prompts.json) first",
                            job=True)
    train_frames: int = _key(250, "self-training: how many first frames become the detector's dataset",
                             job=True, lo=2, hi=100000)
    train_epochs: int = _key(300, "self-training: YOLO epochs", job=True, lo=1, hi=1000)
    train_patience: int = _key(50, "self-training: stop after this many epochs without improvement",
                               job=True, lo=1, hi=1000)
    train_imgsz: int = _key(640, "self-training: YOLO training image size", job=True, lo=32, hi=2048)
    train_batch: int = _key(16, "self-training: YOLO batch size", job=True, lo=1, hi=256)


@dataclass(frozen=True)
class PromptlessConfig:
    keyframe_every: int = _key(25, "automatic masks on frame 0 and every Nth frame; new regions become objects",
                               job=True, lo=1, hi=100000)
    points_per_side: int = _key(32, "automatic mask generator: grid of points per image side", job=True, lo=1, hi=64)
    pred_iou_thresh: float = _key(0.8, "automatic mask generator: keep masks SAM2 rates at least this good",
                                  job=True, lo=0, hi=1)
    stability_thresh: float = _key(0.95, "automatic mask generator: keep masks at least this stable",
                                   job=True, lo=0, hi=1)
    min_area: int = _key(100, "regions smaller than this many pixels are not objects", job=True, lo=0, hi=100_000_000)
    max_objects: int = _key(50, "at most this many objects per video", job=True, lo=1, hi=255)
    merge_iou: float = _key(0.9, "candidate regions overlapping more than this are one object", job=True, lo=0, hi=1)
    covered: float = _key(0.5, "a region this much inside already tracked objects is not new", job=True, lo=0, hi=1)


@dataclass(frozen=True)
class RefineConfig:
    keyframe_every: int = _key(10, "use every Nth frame that has a mask in masks/ as a keyframe",
                               job=True, lo=1, hi=100000)
    prompt: str = _key("points", '"points" (sampled inside each mask component, as the seed does) or "mask"', job=True)
    max_points: int = _key(64, "cap on the max(10, 1% of area) points sampled per component", job=True, lo=1, hi=1000)
    filter_threshold: float = _key(0.08, "with diffs/: components whose mean difference (0..1) is below this are dropped",
                                   job=True, lo=0, hi=1)
    min_area: int = _key(50, "mask components smaller than this many pixels are ignored", job=True, lo=0, hi=100_000_000)
    max_objects: int = _key(100, "at most this many objects per video", job=True, lo=1, hi=255)
    merge_iou: float = _key(0.9, "components overlapping more than this are one object", job=True, lo=0, hi=1)
    covered: float = _key(0.5, "a component this much inside already tracked objects is not new", job=True, lo=0, hi=1)


@dataclass(frozen=True)
class OutputConfig:
    preview: bool = _key(True, "write preview.mp4 with the masks drawn over the frames", job=True)
    preview_fps: float = _key(25.0, "frame rate of preview.mp4", job=True, lo=0.1, hi=240)
    preview_max_side: int = _key(960, "longest side of preview.mp4 in pixels (frames are scaled down to fit)",
                                 job=True, lo=16, hi=4096)
    preview_opacity: float = _key(0.5, "opacity of the mask colours in preview.mp4 (0..1)", job=True, lo=0, hi=1)
    fill_hole_area: int = _key(8, "fill background holes up to this many pixels (at SAM2 mask resolution) inside masks; 0 = off",
                               job=True, lo=0, hi=1_000_000)
    overwrite: bool = _key(False, "replace an existing output folder instead of refusing")
    formats: tuple[str, ...] = _key(["png"], 'what to write besides masks/ (always written): "coco" (coco.json, RLE), "ytvis" '
                                             '(ytvis.json, YouTube-VIS video layout), "yolo-seg" (labels/ + data.yaml), "keep-mask" (keep/, inverted), '
                                             '"mask-video" (masks.mkv, FFV1); matting: "png16" (alpha16/), "prores" '
                                             '(alpha.mov, ProRes 4444 with alpha)', job=True, hi=8)


@dataclass(frozen=True)
class VideoConfig:
    on_damage: str = _key("fail", 'a damaged or truncated video file: "fail" (error naming the frame where decoding stops) '
                          'or "truncate" (process the frames before it, with a warning; costs one extra decoding pass)',
                          job=True)
    cache_mb: int = _key(64, "decoded video frames each decoding thread keeps for backward reads and seeks, in MiB",
                         lo=8, hi=65536)


@dataclass(frozen=True)
class DaemonConfig:
    devices: tuple[str, ...] = _key(["auto"], 'one worker per entry, each running one job at a time: "auto", "cpu", "cuda:0", ...',
                                    hi=64)
    tick_seconds: float = _key(0.5, "how often the daemon looks at inboxes and commands", lo=0.01, hi=60)
    progress_seconds: float = _key(0.5, "at most one progress write per job per this many seconds", lo=0.01, hi=60)
    sample_seconds: float = _key(2.0, "how often GPU / memory use is sampled for the dashboard", lo=0.01, hi=3600)
    stop_seconds: float = _key(8.0, "on SIGTERM, how long a running job may take to reach a checkpoint", lo=0, hi=3600)
    executor: str = _key("local", '"local": worker threads in the daemon, one per daemon.devices entry; "ray": workers '
                                  'are Ray actors, on this machine or a cluster (see [ray])')


@dataclass(frozen=True)
class RayConfig:
    address: str = _key("", '"" starts a private Ray instance inside the daemon; "auto" or "HOST:6379" or '
                            '"ray://HOST:10001" joins a running cluster')
    workers: int = _key(0, "actors, each running one job at a time with its models loaded; 0 = one per GPU the "
                           "cluster offers, or one per daemon.devices entry where it offers none", lo=0, hi=1024)
    num_gpus: float = _key(1.0, "GPUs each actor takes (0 = a CPU worker; 0.5 = two actors share a GPU); ignored "
                                "where the cluster has no GPU", lo=0, hi=64)
    num_cpus: float = _key(1.0, "CPUs each actor takes", lo=0, hi=1024)
    start_seconds: float = _key(120.0, "how long an actor may take to start and load its code before the daemon "
                                       "says it is waiting for one", lo=1, hi=86400)


@dataclass(frozen=True)
class LimitsConfig:
    max_frames: int = _key(100_000, "frames per job; a folder with more fails before anything is decoded", lo=1)
    max_frame_pixels: int = _key(40_000_000, "width x height of a frame or mask, read from the file header before "
                                             "decoding (8K UHD is 33 million)", lo=1)
    max_files: int = _key(250_000, "files and folders in one input folder's tree", lo=1)
    max_prompts_bytes: int = _key(1_048_576, "size of prompts.json in bytes", lo=2)
    max_job_toml_bytes: int = _key(65_536, "size of job.toml in bytes", lo=1)
    max_prompts: int = _key(10_000, "entries in prompts.json's objects list", lo=1)
    max_objects: int = _key(255, "distinct object ids in prompts.json (ids are 1..255)", lo=1, hi=255)
    max_points_per_object: int = _key(1_000, "points given for one object over all its prompts", lo=1)
    min_free_mb: int = _key(200, "a job is claimed only when work, outbox and failed each have this much free space "
                                 "(MiB); 0 = no check", lo=0)


@dataclass(frozen=True)
class MattingConfig:
    classes: tuple[str, ...] = _key(["person"], "matting mode without prompts or masks/: detect these classes (as detect mode does)",
                                    job=True, hi=100)
    band: float = _key(0.02, "trimap: width of the unknown band on each side of the mask edge, as a share of the shorter image side",
                       job=True, lo=0, hi=0.5)
    solver: str = _key("cf", "classical alpha solver (pymatting): cf (closed form), knn, lkm, rw (random walk) or sm (shared)",
                       job=True)
    solve_max_side: int = _key(1024, "frames larger than this are matted at this size (longest side) and the alpha scaled back "
                                "(a band narrowed for a mask on the edge is solved at full size, in tiles of half this)",
                               job=True, lo=64, hi=4096)
    sample_weight: float = _key(0.01, "cf solver: pull of shared matting's per-pixel sampled alpha against the closed-form smoothness (0 = plain closed form; helps thin strands)",
                                job=True, lo=0, hi=100)
    foreground: bool = _key(False, "also write foreground/<stem>.png: RGBA cut-outs with estimated foreground colour", job=True)
    trimap: str = _key("colour", "classical: \"band\" (a fixed unknown band around the mask edge) or \"colour\" (the band, opened "
                                 "up where a pixel's colour is nearer the other side's: strands and gaps the mask swallowed or missed)",
                       job=True)
    colour_overlap: float = _key(0.08, "classical, colour trimap: the plain band is kept when more than this share of the "
                                       "object's core colours lie among the background's just outside the band (an object "
                                       "coloured partly like its surroundings, which colour would punch holes in; 1 = always open up)",
                                 job=True, lo=0, hi=1)
    grow: int = _key(0, "classical: times the unknown band may widen (by its own width) where the solved alpha runs "
                        "on past it (strands, smoke, a veil) or is see-through inside the mask (0 = fixed band)",
                     job=True, lo=0, hi=10)
    on_edge: float = _key(1.1, "classical: when the first solve's edge lies on average within this many pixels of the "
                               "mask's edge (the mask is on the true edge; haze around thin parts not counted), the band "
                               "narrows to a pixel and the frame is solved again (0 = never)", job=True, lo=0, hi=100)
    temporal: float = _key(0.3, "weight of the previous frame's alpha: classical, where the image did not change; "
                                "learned refiner, in the unknown band (0 = none)", job=True, lo=0, hi=1)


@dataclass(frozen=True)
class TrainConfig:
    out: str = _key("runs", "where `reelmask train` puts a run without --out: <out>/<kind>-<dataset name>")
    epochs: int = _key(0, "passes over the training set; 0 = the kind's default (unet, matting, yolo 20; "
                          "sam2-decoder 15)", lo=0, hi=100_000)
    lr: float = _key(0.0, "learning rate; 0 = the kind's default (unet, matting 1e-4; sam2-decoder 1e-5; "
                          "yolo: Ultralytics' own)", lo=0, hi=10)
    batch_size: int = _key(0, "images per optimisation step; 0 = the kind's default (unet, matting, yolo 8; "
                              "sam2-decoder 4)", lo=0, hi=4096)
    img_size: int = _key(0, "training images are resized to this square size (pixels); 0 = the kind's default "
                            "(unet, matting, yolo 640; sam2-decoder trains at models.image_size)", lo=0, hi=4096)
    workers: int = _key(4, "data loading processes (0 = load in the training process); never more than the CPUs this "
                        "process may use", lo=0, hi=256)
    val_fraction: float = _key(0.2, "without a test/ folder, this share of the videos (or frames) is held out for validation",
                               lo=0, hi=1)
    seed: int = _key(0, "random seed for the split, augmentation and initial weights", lo=0, hi=2**31 - 1)
    frame_every: int = _key(10, "matting: train on every Nth frame of each clip (the seed's 10x speed-up)", lo=1, hi=100_000)
    semi_weight: float = _key(10.0, "matting: L1 loss weight where the ground-truth alpha is semi-transparent", lo=0, hi=10_000)
    backgrounds: str = _key("", "matting: folder of background images/videos for composites; empty = DATA/backgrounds")
    weight_decay: float = _key(0.01, "sam2-decoder: AdamW weight decay", lo=0, hi=10)
    dropout: float = _key(0.1, "sam2-decoder: dropout in the mask decoder's attention while training", lo=0, hi=1)
    patience: int = _key(3, "sam2-decoder: stop when val_loss has not improved for this many epochs (0 = never)",
                         lo=0, hi=100_000)
    prompt_encoder: bool = _key(False, "sam2-decoder: also train SAM2's prompt encoder (the image encoder stays frozen)")
    prompts: tuple[str, ...] = _key(["box", "point", "points"],
                                    "sam2-decoder: prompts sampled from the masks: box (jittered), point (one click), "
                                    "points (2-4 clicks, some negative)", hi=3)


SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "watch": WatchConfig,
    "models": ModelsConfig,
    "chunking": ChunkingConfig,
    "detect": DetectConfig,
    "promptless": PromptlessConfig,
    "refine": RefineConfig,
    "output": OutputConfig,
    "video": VideoConfig,
    "daemon": DaemonConfig,
    "ray": RayConfig,
    "matting": MattingConfig,
    "train": TrainConfig,
    "limits": LimitsConfig,
}


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    promptless: PromptlessConfig = field(default_factory=PromptlessConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    matting: MattingConfig = field(default_factory=MattingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    base_dir: Path = field(default_factory=Path.cwd, compare=False)
    source: str = field(default="defaults", compare=False)

    def path(self, value: str | os.PathLike[str]) -> Path:
        """Resolve a path from the config against the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of every key, for manifests and `config show`."""
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    def inbox_specs(self) -> list[InboxSpec]:
        """Every configured inbox: plain `inboxes` entries first, then `[[paths.inbox]]` tables."""
        return [InboxSpec(p) for p in self.paths.inboxes] + list(self.paths.inbox)

    def inbox_of(self, folder: str | os.PathLike[str]) -> InboxSpec | None:
        """The configured inbox a dropped folder sits in (its parent), if any."""
        parent = Path(folder).parent.resolve()
        return next((s for s in self.inbox_specs() if self.path(s.path).resolve() == parent), None)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


# ---------------------------------------------------------------- typing and validation

def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def key_range(key: str) -> tuple[float | None, float | None]:
    """The declared (lo, hi) of a key such as "detect.classes" (for a list: its length); None = open."""
    section, name = key.split(".", 1)
    meta = {f.name: f.metadata for f in dataclasses.fields(SECTIONS[section])}[name]
    return meta.get("lo"), meta.get("hi")


def job_keys() -> list[str]:
    """The keys a folder's job.toml may set (the allow-list); every other key is the daemon owner's."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata["job"]]


def job_keys_summary() -> str:
    """The allow-list in a few words: `chunking.*` for a section that is all job-scope, else the keys."""
    parts = []
    for sname, cls in SECTIONS.items():
        fields = dataclasses.fields(cls)
        allowed = [f.name for f in fields if f.metadata["job"]]
        if allowed and len(allowed) == len(fields):
            parts.append(f"{sname}.*")
        elif allowed:
            parts.append(", ".join(f"{sname}.{name}" for name in allowed))
    return ", ".join(parts)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(choices)}"


def _type_name(tp: Any) -> str:
    if tp == tuple[str, ...]:
        return "list of strings"
    if tp == tuple[InboxSpec, ...]:
        return "list of tables {path, mode, trusted}"
    return getattr(tp, "__name__", str(tp))


_MAX_STRING = 4096  # no config string (a class name, a path) is longer


def _coerce(key: str, tp: Any, value: Any, origin: str, meta: Mapping[str, Any]) -> Any:
    """Check one value against its declared type and range; ints are accepted where floats are."""
    where = f"{key} in {origin}"
    lo, hi = meta.get("lo"), meta.get("hi")
    if tp in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if tp is int and not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number (int), got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {_num(lo)} and {_num(hi)}" if lo is not None and hi is not None else (
                f"at least {_num(lo)}" if lo is not None else f"at most {_num(hi)}")
            raise ConfigError(f"{where} must be {bounds}, got {_num(value)}")
        return float(value) if tp is float else value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            if len(value) > _MAX_STRING:
                raise ConfigError(f"{where} is {len(value)} characters long; at most {_MAX_STRING} are allowed")
            return value
    elif tp == tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            if hi is not None and len(value) > hi:
                raise ConfigError(f"{where} lists {len(value)} entries; at most {hi} are allowed")
            if any(len(str(v)) > _MAX_STRING for v in value):
                raise ConfigError(f"{where} has an entry longer than {_MAX_STRING} characters")
            return tuple(str(v) for v in value)
    elif tp == tuple[InboxSpec, ...]:
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            specs = []
            for i, item in enumerate(value):
                unknown = set(item) - {"path", "mode", "trusted"}
                if unknown or not isinstance(item.get("path"), str) or not isinstance(item.get("mode", ""), str) \
                        or not isinstance(item.get("trusted", False), bool):
                    raise ConfigError(
                        f"{where}: entry {i} must be a table with a string 'path', an optional string 'mode' "
                        f"and an optional 'trusted' = true/false, got {item!r}"
                    )
                specs.append(InboxSpec(item["path"], item.get("mode", ""), item.get("trusted", False)))
            return tuple(specs)
    raise ConfigError(f"{where} must be a {_type_name(tp)}, got {value!r}")


def _num(value: Any) -> str:
    return f"{value:,}".replace(",", "_") if isinstance(value, int) and abs(value) >= 100_000 else str(value)


def _apply(base: Config, data: Mapping[str, Any], origin: str, job_scope: bool = False) -> Config:
    """Return `base` with the sections/keys of a parsed TOML mapping applied. With `job_scope` (a
    folder's job.toml) only the allow-listed keys may be set."""
    sections = list(SECTIONS)
    replaced: dict[str, Any] = {}
    for sname, values in data.items():
        if sname not in SECTIONS:
            raise ConfigError(f"unknown section [{sname}] in {origin}{_suggest(sname, sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{sname}] in {origin} must be a table of keys, got {values!r}")
        cls = SECTIONS[sname]
        types = _field_types(cls)
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
        changes = {}
        for k, v in values.items():
            if k not in types:
                raise ConfigError(
                    f"unknown key '{sname}.{k}' in {origin}{_suggest(f'{sname}.{k}', all_keys())}"
                )
            if job_scope and not meta[k]["job"]:
                raise ConfigError(
                    f"{origin} sets {sname}.{k}, which a dropped folder may not set: only the daemon's owner "
                    f"can (config.toml or --set). Remove it from job.toml. A folder may set {job_keys_summary()}; "
                    "an inbox whose folders are all the owner's own can be marked trusted "
                    "([[paths.inbox]] trusted = true) to lift this"
                )
            changes[k] = _coerce(f"{sname}.{k}", types[k], v, origin, meta[k])
        replaced[sname] = dataclasses.replace(replaced.get(sname, getattr(base, sname)), **changes)
    return dataclasses.replace(base, **replaced)


def _parse_set_value(raw: str) -> Any:
    """Read a --set value as a TOML literal (1, 0.5, true, ["a"]) and fall back to a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_sets(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ["models.image_size=256", ...] into a nested mapping, with clear errors."""
    nested: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects section.key=value, got '{pair}' (example: --set models.image_size=256)")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key.count(".") != 1:
            raise ConfigError(f"--set key '{key}' must look like section.key{_suggest(key, all_keys())}")
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = _parse_set_value(raw.strip())
    return nested


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path given to --config") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    return parse_toml(text, path)


def parse_toml(text: str, path: Path) -> dict[str, Any]:
    """TOML text of `path` as a mapping; a syntax error names the file, line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    except RecursionError as e:  # arrays nested thousands deep
        raise ConfigError(f"{path} is nested too deeply to be a config file") from e
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise ConfigError(f"{path} holds a value TOML cannot hold here ({str(e)[:120]}); use plain numbers") from e


def _validate(cfg: Config) -> Config:
    """Checks that span keys or exclude an end of a range; each key's own range is checked as it is read."""
    c = cfg.chunking
    if c.overlap >= c.chunk_size:
        raise ConfigError(
            f"chunking.overlap must be between 0 and chunk_size - 1 ({c.chunk_size - 1}), got {c.overlap}"
        )
    m = cfg.models
    if m.image_size % 32:
        raise ConfigError(f"models.image_size must be a multiple of 32 and at least 64, got {m.image_size}")
    if m.dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f'models.dtype must be "auto", "float32" or "bfloat16", got "{m.dtype}"')
    if not (m.device in ("auto", "cpu", "cuda", "mps") or m.device.startswith("cuda:")):
        raise ConfigError(f'models.device must be "auto", "cpu", "cuda" or "cuda:N", got "{m.device}"')
    if not 0.0 < m.unet_threshold < 1.0:
        raise ConfigError(f"models.unet_threshold must be in (0, 1), got {m.unet_threshold}")
    if cfg.detect.match_iou <= 0:
        raise ConfigError(f"detect.match_iou must be above 0 (and at most 1), got {cfg.detect.match_iou}")
    t = cfg.train
    if t.img_size and (t.img_size < 32 or t.img_size % 32):
        raise ConfigError(f"train.img_size must be 0 (the kind's default) or a multiple of 32 (>= 32), got {t.img_size}")
    if t.dropout >= 1.0 or t.val_fraction >= 1.0 or t.semi_weight <= 0:
        raise ConfigError(f"train.dropout and train.val_fraction must be below 1 and train.semi_weight above 0; "
                          f"got {t.dropout}, {t.val_fraction}, {t.semi_weight}")
    bad = [p for p in t.prompts if p not in ("box", "point", "points")]
    if bad or not t.prompts:
        raise ConfigError(f'train.prompts must list some of "box", "point", "points"; got {list(t.prompts)}')
    if cfg.models.compile not in ("off", "vos"):
        raise ConfigError(f'models.compile must be "off" or "vos", got "{cfg.models.compile}"')
    mt = cfg.matting
    if mt.trimap not in ("band", "colour"):
        raise ConfigError(f'matting.trimap must be "band" or "colour", got "{mt.trimap}"')
    if not 0.0 < mt.band < 0.5 or mt.solver not in ("cf", "knn", "lkm", "rw", "sm") or mt.temporal >= 1.0:
        raise ConfigError(f'matting.band must be in (0, 0.5), matting.solver one of "cf", "knn", "lkm", "rw", "sm" '
                          f'and matting.temporal in [0, 1); got {mt.band}, "{mt.solver}", {mt.temporal}')
    for name in ("promptless", "refine"):
        k = getattr(cfg, name)
        if k.merge_iou <= 0 or k.covered <= 0:
            raise ConfigError(f"{name}.merge_iou and {name}.covered must be in (0, 1], got {k.merge_iou}, {k.covered}")
    if cfg.video.on_damage not in ("fail", "truncate"):
        raise ConfigError(f'video.on_damage must be "fail" or "truncate", got "{cfg.video.on_damage}"')
    if cfg.refine.prompt not in ("points", "mask"):
        raise ConfigError(f'refine.prompt must be "points" or "mask", got "{cfg.refine.prompt}"')
    if not cfg.daemon.devices:
        raise ConfigError("daemon.devices must list at least one device")
    if cfg.daemon.executor not in ("local", "ray"):
        raise ConfigError(f'daemon.executor must be "local" or "ray", got "{cfg.daemon.executor}"')
    return cfg


def default_config_path() -> Path | None:
    """$REELMASK_CONFIG, else ./config.toml when present, else None (built-in defaults)."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path.cwd() / "config.toml"
    return local if local.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    sets: list[str] | tuple[str, ...] = (),
    job_toml: Path | None = None,
    use_default_path: bool = True,
) -> Config:
    """Build the effective config: defaults < file < job.toml < --set."""
    cfg_path = Path(path) if path else (default_config_path() if use_default_path else None)
    cfg = Config()
    if cfg_path is not None:
        cfg_path = cfg_path.expanduser().resolve()
        cfg = _apply(cfg, read_toml(cfg_path), str(cfg_path))
        cfg = dataclasses.replace(cfg, base_dir=cfg_path.parent, source=str(cfg_path))
    if job_toml is not None and job_toml.is_file():
        cfg = with_overrides(cfg, read_toml(job_toml), str(job_toml), job_scope=True)
    if sets:
        cfg = _apply(cfg, parse_sets(sets), "--set")
    return _validate(cfg)


def with_overrides(cfg: Config, data: Mapping[str, Any], origin: str, job_scope: bool = False) -> Config:
    """Apply a mapping of overrides (job.toml, --set) on top of a loaded config; `job_scope` for a
    folder's own job.toml, which may set only the allow-listed keys."""
    applied = _apply(cfg, data, origin, job_scope)
    try:
        return _validate(applied)
    except ConfigError as e:  # a check across keys: say where the value came from
        raise ConfigError(f"{e} (set in {origin})") from None


# ---------------------------------------------------------------- rendering config.toml

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


_TYPE_WORDS = {bool: "bool", int: "int", float: "float", str: "str"}


def render_effective(cfg: Config) -> str:
    """`cfg` as config.toml text: every key's value (defaults included), the inbox tables last."""
    lines = [f"# effective reelmask configuration, from: {cfg.source}"]
    tables: list[str] = []
    for sname in SECTIONS:
        lines += ["", f"[{sname}]"]
        section = getattr(cfg, sname)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.name == "inbox" and sname == "paths":
                for spec in value:
                    tables += ["", "[[paths.inbox]]", f"path = {_toml_value(spec.path)}",
                               f"mode = {_toml_value(spec.mode)}", f"trusted = {_toml_value(spec.trusted)}"]
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


def render_toml() -> str:
    """The shipped config.toml: every key with its default and a `# (type) meaning` comment."""
    lines = [
        "# reelmask configuration. Every key is optional: a missing key keeps the default shown here.",
        "# Precedence: built-in defaults < this file < a job folder's job.toml < --set section.key=value.",
        "# Relative paths resolve against the folder of this file.",
        "# Keys marked `job` may also be set by a dropped folder's job.toml; every other key only here or",
        "# with --set (or by the folders of an inbox marked trusted). Numbers show their allowed range.",
    ]
    defaults = Config()
    for sname, cls in SECTIONS.items():
        lines += ["", f"[{sname}]"]
        types = _field_types(cls)
        section = getattr(defaults, sname)
        for f in dataclasses.fields(cls):
            tp = types[f.name]
            lines.append(f"# ({_describe(tp, f.metadata)}) {f.metadata['help']}")
            value = getattr(section, f.name)
            if tp == tuple[InboxSpec, ...]:
                lines.append("# (see the [[paths.inbox]] example at the end of this file)")
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
    lines += [
        "",
        "# An inbox with its own default mode (used when a folder's sidecars do not decide); trusted = true",
        "# lets its folders' job.toml set any key (only for folders the daemon's owner makes):",
        "# [[paths.inbox]]",
        '# path = "inbox/matting"',
        '# mode = "matting"',
        "# trusted = false",
    ]
    return "\n".join(lines) + "\n"


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """`int, 2..2000, job` for a key's comment line."""
    word = _TYPE_WORDS.get(tp) or ("list[str]" if tp == tuple[str, ...] else "list[table]")
    lo, hi = meta["lo"], meta["hi"]
    parts = [word]
    if tp in (int, float) and (lo is not None or hi is not None):
        parts.append(f"{_num(lo) if lo is not None else ''}..{_num(hi) if hi is not None else ''}")
    elif hi is not None:
        parts.append(f"at most {hi}")
    if meta["job"]:
        parts.append("job")
    return ", ".join(parts)
