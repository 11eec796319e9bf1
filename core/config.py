"""Configuration: config.toml -> frozen dataclasses.

Precedence, lowest first: built-in defaults < config file < job.toml < ``--set key=value``.
Every key is declared once below with its type and meaning; the shipped config.toml is rendered
from these declarations (``render_toml``) and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import difflib
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


def _key(default: Any, help: str, **extra: Any) -> Any:
    """Declare a config key with its default and a one-line meaning."""
    meta = {"help": help, **extra}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class InboxSpec:
    """One watched folder and the mode its folders get when nothing else decides."""

    path: str
    mode: str = ""


@dataclass(frozen=True)
class PathsConfig:
    inboxes: tuple[str, ...] = _key(["inbox"], "folders watched for new frame folders")
    inbox: tuple[InboxSpec, ...] = _key(
        [], "extra inboxes with their own default mode: [[paths.inbox]] path = ..., mode = ..."
    )
    outbox: str = _key("outbox", "where results appear, one folder per job")
    done: str = _key("done", "where inputs go after a successful job")
    failed: str = _key("failed", "where inputs go after a failed job, with error.txt")
    db: str = _key("reelmask.db", "SQLite state shared by daemon, CLI and TUI")
    work: str = _key("work", "scratch space for jobs in progress (resumable partial outputs)")
    cache: str = _key("", "model cache; empty means $XDG_CACHE_HOME/reelmask or ~/.cache/reelmask")


@dataclass(frozen=True)
class WatchConfig:
    settle_seconds: float = _key(5.0, "a folder without .ready is complete after this many quiet seconds")
    polling: bool = _key(False, "poll the file system instead of OS events (network shares)")
    poll_interval: float = _key(1.0, "seconds between scans when polling")


@dataclass(frozen=True)
class ModelsConfig:
    sam2: str = _key("sam2.1_hiera_tiny", "SAM2 variant name (see `reelmask models list`) or a checkpoint path")
    sam2_weights: str = _key("auto", '"auto" = cached official checkpoint, downloaded on first use; "random" = untrained weights for tests')
    sam2_arch: str = _key("auto", 'architecture of a checkpoint given by path: "auto" reads it from the weights, or a variant name')
    image_size: int = _key(1024, "SAM2 input size in pixels (multiple of 32); lower is faster and coarser")
    sam2_decoder: str = _key("", "fine-tuned mask decoder (best.pt from `reelmask train sam2-decoder`) used in every "
                                 "SAM2 mode; empty = SAM2's own")
    yolo: str = _key("yolo11n.pt", "Ultralytics detector weights for detect mode")
    device: str = _key("auto", '"auto" (CUDA if present, else CPU), "cpu", "cuda" or "cuda:N"')
    dtype: str = _key("auto", '"auto" (bfloat16 autocast on CUDA, float32 on CPU), "float32" or "bfloat16"')
    seed: int = _key(0, "random seed for random weights and sampling")
    unet: str = _key("", "trained U-Net checkpoint (best.pt from `reelmask train unet`) for unet mode")
    unet_threshold: float = _key(0.5, "unet mode: a pixel is the object where the U-Net's probability is above this")
    matting: str = _key("", "trained matting refiner (best.pt from `reelmask train matting`); empty = the classical solver")


@dataclass(frozen=True)
class ChunkingConfig:
    chunk_size: int = _key(100, "frames per SAM2 inference state; bounds memory whatever the video length")
    overlap: int = _key(1, "frames shared by neighbouring chunks; the hand-over mask sits on the first shared frame")
    anchor_prompts: bool = _key(True, "re-add each object's latest user prompt frame as conditioning memory in later chunks")
    prefetch: int = _key(6, "frames decoded ahead of SAM2 by a background thread")


@dataclass(frozen=True)
class DetectConfig:
    classes: tuple[str, ...] = _key([], "COCO class names or ids to detect; empty = every class")
    min_confidence: float = _key(0.5, "detections below this confidence are ignored")
    stride: int = _key(5, "YOLO looks at every Nth frame of a chunk (and always at its first frame)")
    match_iou: float = _key(0.3, "a detection continues an object when its box overlaps the object's mask this much")
    lost_chunks: int = _key(2, "an object no detection confirms for this many chunks in a row ends")
    max_objects: int = _key(20, "at most this many objects tracked at once (the most confident detections win)")
    imgsz: int = _key(640, "YOLO input size")
    parallel_chunks: int = _key(1, "chunks with their own detections run this many at a time, each from its own "
                                   "prompts, linked by overlap afterwards; 1 = one after another with hand-over")
    self_train: bool = _key(False, "train the detector on SAM2 masks of the first frames (objects from prompts.json) first")
    train_frames: int = _key(250, "self-training: how many first frames become the detector's dataset")
    train_epochs: int = _key(300, "self-training: YOLO epochs")
    train_patience: int = _key(50, "self-training: stop after this many epochs without improvement")
    train_imgsz: int = _key(640, "self-training: YOLO training image size")
    train_batch: int = _key(16, "self-training: YOLO batch size")


@dataclass(frozen=True)
class PromptlessConfig:
    keyframe_every: int = _key(25, "automatic masks on frame 0 and every Nth frame; new regions become objects")
    points_per_side: int = _key(32, "automatic mask generator: grid of points per image side")
    pred_iou_thresh: float = _key(0.8, "automatic mask generator: keep masks SAM2 rates at least this good")
    stability_thresh: float = _key(0.95, "automatic mask generator: keep masks at least this stable")
    min_area: int = _key(100, "regions smaller than this many pixels are not objects")
    max_objects: int = _key(50, "at most this many objects per video")
    merge_iou: float = _key(0.9, "candidate regions overlapping more than this are one object")
    covered: float = _key(0.5, "a region this much inside already tracked objects is not new")


@dataclass(frozen=True)
class RefineConfig:
    keyframe_every: int = _key(10, "use every Nth frame that has a mask in masks/ as a keyframe")
    prompt: str = _key("points", '"points" (sampled inside each mask component, as the seed does) or "mask"')
    max_points: int = _key(64, "cap on the max(10, 1% of area) points sampled per component")
    filter_threshold: float = _key(0.08, "with diffs/: components whose mean difference (0..1) is below this are dropped")
    min_area: int = _key(50, "mask components smaller than this many pixels are ignored")
    max_objects: int = _key(100, "at most this many objects per video")
    merge_iou: float = _key(0.9, "components overlapping more than this are one object")
    covered: float = _key(0.5, "a component this much inside already tracked objects is not new")


@dataclass(frozen=True)
class OutputConfig:
    preview: bool = _key(True, "write preview.mp4 with the masks drawn over the frames")
    preview_fps: float = _key(25.0, "frame rate of preview.mp4")
    preview_max_side: int = _key(960, "longest side of preview.mp4 in pixels (frames are scaled down to fit)")
    preview_opacity: float = _key(0.5, "opacity of the mask colours in preview.mp4 (0..1)")
    fill_hole_area: int = _key(8, "fill background holes up to this many pixels (at SAM2 mask resolution) inside masks; 0 = off")
    overwrite: bool = _key(False, "replace an existing output folder instead of refusing")


@dataclass(frozen=True)
class DaemonConfig:
    devices: tuple[str, ...] = _key(["auto"], 'one worker per entry, each running one job at a time: "auto", "cpu", "cuda:0", ...')
    tick_seconds: float = _key(0.5, "how often the daemon looks at inboxes and commands")
    progress_seconds: float = _key(0.5, "at most one progress write per job per this many seconds")
    sample_seconds: float = _key(2.0, "how often GPU / memory use is sampled for the dashboard")
    stop_seconds: float = _key(8.0, "on SIGTERM, how long a running job may take to reach a checkpoint")


@dataclass(frozen=True)
class MattingConfig:
    classes: tuple[str, ...] = _key(["person"], "matting mode without prompts or masks/: detect these classes (as detect mode does)")
    band: float = _key(0.02, "trimap: width of the unknown band on each side of the mask edge, as a share of the shorter image side")
    solver: str = _key("cf", "classical alpha solver (pymatting): cf (closed form), knn, lkm, rw (random walk) or sm (shared)")
    solve_max_side: int = _key(1024, "frames larger than this are matted at this size (longest side) and the alpha scaled back")
    sample_weight: float = _key(0.01, "cf solver: pull of shared matting's per-pixel sampled alpha against the closed-form smoothness (0 = plain closed form; helps thin strands)")
    foreground: bool = _key(False, "also write foreground/<stem>.png: RGBA cut-outs with estimated foreground colour")
    temporal: float = _key(0.3, "learned refiner: weight of the previous frame's alpha in the unknown band (0 = none)")


@dataclass(frozen=True)
class TrainConfig:
    out: str = _key("runs", "where `reelmask train` puts a run without --out: <out>/<kind>-<dataset name>")
    epochs: int = _key(0, "passes over the training set; 0 = the kind's default (unet, matting, yolo 20; "
                          "sam2-decoder 15)")
    lr: float = _key(0.0, "learning rate; 0 = the kind's default (unet, matting 1e-4; sam2-decoder 1e-5; "
                          "yolo: Ultralytics' own)")
    batch_size: int = _key(0, "images per optimisation step; 0 = the kind's default (unet, matting, yolo 8; "
                              "sam2-decoder 4)")
    img_size: int = _key(0, "training images are resized to this square size (pixels); 0 = the kind's default "
                            "(unet, matting, yolo 640; sam2-decoder trains at models.image_size)")
    workers: int = _key(4, "data loading processes (0 = load in the training process)")
    val_fraction: float = _key(0.2, "without a test/ folder, this share of the videos (or frames) is held out for validation")
    seed: int = _key(0, "random seed for the split, augmentation and initial weights")
    frame_every: int = _key(10, "matting: train on every Nth frame of each clip (the seed's 10x speed-up)")
    semi_weight: float = _key(10.0, "matting: L1 loss weight where the ground-truth alpha is semi-transparent")
    backgrounds: str = _key("", "matting: folder of background images/videos for composites; empty = DATA/backgrounds")
    weight_decay: float = _key(0.01, "sam2-decoder: AdamW weight decay")
    dropout: float = _key(0.1, "sam2-decoder: dropout in the mask decoder's attention while training")
    patience: int = _key(3, "sam2-decoder: stop when val_loss has not improved for this many epochs (0 = never)")
    prompt_encoder: bool = _key(False, "sam2-decoder: also train SAM2's prompt encoder (the image encoder stays frozen)")
    prompts: tuple[str, ...] = _key(["box", "point", "points"],
                                    "sam2-decoder: prompts sampled from the masks: box (jittered), point (one click), "
                                    "points (2-4 clicks, some negative)")


SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "watch": WatchConfig,
    "models": ModelsConfig,
    "chunking": ChunkingConfig,
    "detect": DetectConfig,
    "promptless": PromptlessConfig,
    "refine": RefineConfig,
    "output": OutputConfig,
    "daemon": DaemonConfig,
    "matting": MattingConfig,
    "train": TrainConfig,
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
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    matting: MattingConfig = field(default_factory=MattingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
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


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


# ---------------------------------------------------------------- typing and validation

def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(choices)}"


def _type_name(tp: Any) -> str:
    if tp == tuple[str, ...]:
        return "list of strings"
    if tp == tuple[InboxSpec, ...]:
        return "list of tables {path, mode}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any, origin: str) -> Any:
    """Check one value against its declared type; ints are accepted where floats are."""
    where = f"{key} in {origin}"
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp == tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return tuple(str(v) for v in value)
    elif tp == tuple[InboxSpec, ...]:
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            specs = []
            for i, item in enumerate(value):
                unknown = set(item) - {"path", "mode"}
                if unknown or not isinstance(item.get("path"), str) or not isinstance(item.get("mode", ""), str):
                    raise ConfigError(
                        f"{where}: entry {i} must be a table with a string 'path' and an optional string "
                        f"'mode', got {item!r}"
                    )
                specs.append(InboxSpec(item["path"], item.get("mode", "")))
            return tuple(specs)
    raise ConfigError(f"{where} must be a {_type_name(tp)}, got {value!r}")


def _apply(base: Config, data: Mapping[str, Any], origin: str) -> Config:
    """Return `base` with the sections/keys of a parsed TOML mapping applied."""
    sections = list(SECTIONS)
    replaced: dict[str, Any] = {}
    for sname, values in data.items():
        if sname not in SECTIONS:
            raise ConfigError(f"unknown section [{sname}] in {origin}{_suggest(sname, sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{sname}] in {origin} must be a table of keys, got {values!r}")
        cls = SECTIONS[sname]
        types = _field_types(cls)
        changes = {}
        for k, v in values.items():
            if k not in types:
                raise ConfigError(
                    f"unknown key '{sname}.{k}' in {origin}{_suggest(f'{sname}.{k}', all_keys())}"
                )
            changes[k] = _coerce(f"{sname}.{k}", types[k], v, origin)
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
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path given to --config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e


def _validate(cfg: Config) -> Config:
    c = cfg.chunking
    if c.chunk_size < 2:
        raise ConfigError(f"chunking.chunk_size must be at least 2, got {c.chunk_size}")
    if not 0 <= c.overlap < c.chunk_size:
        raise ConfigError(
            f"chunking.overlap must be between 0 and chunk_size - 1 ({c.chunk_size - 1}), got {c.overlap}"
        )
    if c.prefetch < 0:
        raise ConfigError(f"chunking.prefetch must be 0 or more, got {c.prefetch}")
    m = cfg.models
    if m.image_size < 64 or m.image_size % 32:
        raise ConfigError(f"models.image_size must be a multiple of 32 and at least 64, got {m.image_size}")
    if m.dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f'models.dtype must be "auto", "float32" or "bfloat16", got "{m.dtype}"')
    if not (m.device in ("auto", "cpu", "cuda", "mps") or m.device.startswith("cuda:")):
        raise ConfigError(f'models.device must be "auto", "cpu", "cuda" or "cuda:N", got "{m.device}"')
    dc = cfg.detect
    if not 0.0 <= dc.min_confidence <= 1.0 or not 0.0 < dc.match_iou <= 1.0:
        raise ConfigError(f"detect.min_confidence and detect.match_iou must be between 0 and 1, "
                          f"got {dc.min_confidence} and {dc.match_iou}")
    if dc.train_frames < 2 or dc.train_epochs < 1 or dc.train_patience < 1 or dc.train_imgsz < 32 or dc.train_batch < 1:
        raise ConfigError("detect.train_frames must be >= 2, detect.train_epochs, train_patience, train_batch >= 1 "
                          "and detect.train_imgsz >= 32")
    if dc.stride < 1 or dc.lost_chunks < 1 or dc.imgsz < 32 or dc.max_objects < 1:
        raise ConfigError(f"detect.stride, detect.lost_chunks and detect.max_objects must be >= 1 and "
                          f"detect.imgsz >= 32, got {dc.stride}, {dc.lost_chunks}, {dc.max_objects}, {dc.imgsz}")
    t = cfg.train
    if t.epochs < 0 or t.batch_size < 0 or t.img_size < 0 or (t.img_size and (t.img_size < 32 or t.img_size % 32)) \
            or t.workers < 0 or t.lr < 0:
        raise ConfigError(f"train.epochs, train.batch_size and train.lr must be >= 0 (0 = the kind's default), "
                          f"train.img_size 0 or a multiple of 32 (>= 32) and train.workers >= 0; got {t.epochs}, "
                          f"{t.batch_size}, {t.lr}, {t.img_size}, {t.workers}")
    if not 0.0 <= t.dropout < 1.0 or t.weight_decay < 0 or t.patience < 0:
        raise ConfigError(f"train.dropout must be in [0, 1), train.weight_decay and train.patience >= 0; got "
                          f"{t.dropout}, {t.weight_decay}, {t.patience}")
    bad = [p for p in t.prompts if p not in ("box", "point", "points")]
    if bad or not t.prompts:
        raise ConfigError(f'train.prompts must list some of "box", "point", "points"; got {list(t.prompts)}')
    if not 0.0 <= t.val_fraction < 1.0 or not 0.0 < cfg.models.unet_threshold < 1.0:
        raise ConfigError(f"train.val_fraction must be in [0, 1) and models.unet_threshold in (0, 1), "
                          f"got {t.val_fraction} and {cfg.models.unet_threshold}")
    mt = cfg.matting
    if not 0.0 < mt.band < 0.5 or mt.solver not in ("cf", "knn", "lkm", "rw", "sm") or mt.solve_max_side < 64 \
            or not 0.0 <= mt.temporal < 1.0:
        raise ConfigError(f'matting.band must be in (0, 0.5), matting.solver one of "cf", "knn", "lkm", "rw", "sm", '
                          f"matting.solve_max_side >= 64 and matting.temporal in [0, 1); got {mt.band}, "
                          f'"{mt.solver}", {mt.solve_max_side}, {mt.temporal}')
    if t.frame_every < 1 or t.semi_weight <= 0:
        raise ConfigError(f"train.frame_every must be >= 1 and train.semi_weight > 0, got {t.frame_every}, {t.semi_weight}")
    if not 1 <= dc.parallel_chunks <= 32:
        raise ConfigError(f"detect.parallel_chunks must be between 1 and 32, got {dc.parallel_chunks}")
    o = cfg.output
    if o.preview_fps <= 0 or o.preview_max_side < 16 or not 0.0 <= o.preview_opacity <= 1.0 or o.fill_hole_area < 0:
        raise ConfigError(
            "output.preview_fps must be > 0, output.preview_max_side >= 16, output.preview_opacity in 0..1 "
            f"and output.fill_hole_area >= 0; got {o.preview_fps}, {o.preview_max_side}, "
            f"{o.preview_opacity}, {o.fill_hole_area}"
        )
    for name in ("promptless", "refine"):
        k = getattr(cfg, name)
        if k.keyframe_every < 1 or k.min_area < 0 or k.max_objects < 1 or not 0 < k.merge_iou <= 1 \
                or not 0 < k.covered <= 1:
            raise ConfigError(f"{name}.keyframe_every and {name}.max_objects must be >= 1, {name}.min_area >= 0, "
                              f"{name}.merge_iou and {name}.covered in (0, 1]")
    if cfg.refine.prompt not in ("points", "mask"):
        raise ConfigError(f'refine.prompt must be "points" or "mask", got "{cfg.refine.prompt}"')
    if cfg.refine.max_points < 1 or cfg.promptless.points_per_side < 1:
        raise ConfigError("refine.max_points and promptless.points_per_side must be >= 1")
    d = cfg.daemon
    if not d.devices or min(d.tick_seconds, d.progress_seconds, d.sample_seconds) <= 0 or d.stop_seconds < 0:
        raise ConfigError("daemon.devices must list at least one device and the daemon.*_seconds keys must be > 0")
    if cfg.watch.settle_seconds < 0 or cfg.watch.poll_interval <= 0:
        raise ConfigError("watch.settle_seconds must be >= 0 and watch.poll_interval > 0")
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
        cfg = with_overrides(cfg, read_toml(job_toml), str(job_toml))
    if sets:
        cfg = _apply(cfg, parse_sets(sets), "--set")
    return _validate(cfg)


def with_overrides(cfg: Config, data: Mapping[str, Any], origin: str) -> Config:
    """Apply a mapping of overrides (job.toml, --set) on top of a loaded config."""
    return _validate(_apply(cfg, data, origin))


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


def render_toml() -> str:
    """The shipped config.toml: every key with its default and a `# (type) meaning` comment."""
    lines = [
        "# reelmask configuration. Every key is optional: a missing key keeps the default shown here.",
        "# Precedence: built-in defaults < this file < a job folder's job.toml < --set section.key=value.",
        "# Relative paths resolve against the folder of this file.",
    ]
    defaults = Config()
    for sname, cls in SECTIONS.items():
        lines += ["", f"[{sname}]"]
        types = _field_types(cls)
        section = getattr(defaults, sname)
        for f in dataclasses.fields(cls):
            tp = types[f.name]
            word = _TYPE_WORDS.get(tp) or ("list[str]" if tp == tuple[str, ...] else "list[table]")
            lines.append(f"# ({word}) {f.metadata['help']}")
            value = getattr(section, f.name)
            if tp == tuple[InboxSpec, ...]:
                lines.append("# (see the [[paths.inbox]] example at the end of this file)")
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
    lines += [
        "",
        "# An inbox with its own default mode (used when a folder's sidecars do not decide):",
        "# [[paths.inbox]]",
        '# path = "inbox/matting"',
        '# mode = "matting"',
    ]
    return "\n".join(lines) + "\n"
