"""SAM2 adapter: builds the real sam2 video predictor and feeds it frames from our own reader.

sam2's `init_state` loads a whole video into memory. We create the same inference state with
`images` pointing at a lazy window of frames, so a chunk costs memory for its SAM2 outputs only.
Everything else (prompts, memory, propagation) is sam2's own code.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading
import time
import warnings
from collections import OrderedDict
from typing import Callable, Iterator, Sequence

import numpy as np

from core.config import Config
from core.errors import ModelError
from core.models.checkpoints import read_state_dict
from core.models.devices import pick_device
from core.models.memory_cost import LiveStates, MemoryCost, measure_cost
from core.models.sam2_decoder import apply_decoder, base_identity, resolve_decoder_path
from core.models.weights import Sam2Weights

log = logging.getLogger(__name__)


def has_sam2_extension() -> bool:
    """sam2's optional CUDA extension (used to fill small holes in masks)."""
    return importlib.util.find_spec("sam2._C") is not None


@contextlib.contextmanager
def quiet_transforms() -> Iterator[None]:
    """sam2 compiles its image transforms with torch.jit.script, which torch now warns about on every
    build; the warning is about sam2's code, not the user's, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        yield


def fit_image_predictor(predictor, image_size: int):
    """sam2's image predictor assumes 1024 px inputs (features of 256, 128 and 64 px); make it follow
    models.image_size. Returns the predictor."""
    s = int(image_size)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


def image_predictor(model):
    """sam2's own SAM2ImagePredictor on a built SAM2 model, at the model's image size."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with quiet_transforms():
        return fit_image_predictor(SAM2ImagePredictor(model), model.image_size)


def _quiet_sam2() -> None:
    """sam2 wraps propagation in a tqdm bar; pipelines report progress themselves."""
    import sam2.sam2_video_predictor as svp
    from tqdm import tqdm

    if not getattr(svp.tqdm, "_reelmask_quiet", False):
        quiet = functools.partial(tqdm, disable=True)
        quiet._reelmask_quiet = True  # type: ignore[attr-defined]
        svp.tqdm = quiet


def _memory_to_query_dtype(module, args, kwargs):
    """sam2 stores memories in bfloat16; without autocast (CPU, float32) an object whose only
    memory is bfloat16 reaches a float32 layer and fails. Cast the memory to the query's dtype."""
    curr = kwargs.get("curr")
    curr = curr[0] if isinstance(curr, list) else curr
    if curr is None:
        return None
    for key in ("memory", "memory_pos"):
        value = kwargs.get(key)
        if value is not None and value.dtype != curr.dtype:
            kwargs[key] = value.to(curr.dtype)
    return args, kwargs


def compile_blocker(device, torch) -> str | None:
    """Why models.compile = "vos" cannot be used on this device, or None when it can: sam2's compiled
    predictor is made for CUDA (torch.compile with Triton kernels)."""
    import inspect

    from sam2.build_sam import build_sam2_video_predictor

    if "vos_optimized" not in inspect.signature(build_sam2_video_predictor).parameters:
        return "the installed sam2 has no vos_optimized predictor"
    if device.type != "cuda":
        return f"it needs a CUDA device and this one is {device.type}"
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return "this torch cannot tell whether Triton is installed"
    if not has_triton():
        return "Triton (torch.compile's GPU compiler) is not installed"
    return None


class Sam2Tracker:
    """A loaded SAM2 video predictor plus the device/precision policy to run it with."""

    def __init__(self, cfg: Config, weights: Sam2Weights):
        import torch

        self.weights = weights
        self.device = pick_device(cfg.models.device)
        self.image_size = cfg.models.image_size
        use_bf16 = cfg.models.dtype == "bfloat16" or (cfg.models.dtype == "auto" and self.device.type == "cuda")
        self.dtype = "bfloat16" if use_bf16 and self.device.type == "cuda" else "float32"
        self.sam2_fills_holes = has_sam2_extension() and cfg.output.fill_hole_area > 0
        self.decoder: dict | None = None   # the fine-tuned decoder loaded over SAM2's own (models.sam2_decoder)
        self.warnings: list[str] = []      # for the manifest of every job this tracker runs
        self.seconds = 0.0  # time spent inside sam2 calls (summed over threads)
        self._seconds_lock = threading.Lock()  # detect's independent chunks call in from several threads
        self.compiled: dict = {"mode": "off"}   # what models.compile gave: for the manifest
        self.live = LiveStates()     # the inference states open now (a job's own device memory)
        self._cost: MemoryCost | None | bool = False   # measured on first use (False: not yet)
        started = time.perf_counter()
        self.predictor = self._build(cfg, torch)
        self.build_seconds = time.perf_counter() - started
        if cfg.models.compile == "vos":
            self._compile(cfg, torch)

    def _compile(self, cfg: Config, torch) -> None:
        """models.compile = "vos": sam2's compiled predictor, warmed up here on two blank frames so the
        compile time never lands in a job's frames/s; where it cannot be used, the uncompiled one stays."""
        reason = compile_blocker(self.device, torch)
        if reason is None:
            started = time.perf_counter()
            try:
                compiled = self._build(cfg, torch, vos=True)
                self._warm_up(compiled)
            except Exception as e:   # a compiler that fails at build or first run: keep the plain model
                reason = f"compiling failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            else:
                self.predictor = compiled
                self.compiled = {"mode": "vos", "warmup_seconds": round(time.perf_counter() - started, 3)}
                return
        self.compiled = {"mode": "off", "asked": "vos", "reason": reason}
        self.warnings.append(f'models.compile = "vos" not used: {reason}; SAM2 ran uncompiled')

    def _warm_up(self, predictor) -> None:
        """One box on the first of two blank frames, propagated: every compiled part runs once."""
        import torch

        size = self.image_size
        frames = torch.zeros((2, 3, size, size))
        state = self.new_state(frames, size, size)
        with self.running():
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                            box=np.array([size / 4, size / 4, 3 * size / 4, 3 * size / 4], np.float32))
            for _ in predictor.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=1):
                pass
        self.seconds = 0.0

    def _build(self, cfg: Config, torch, vos: bool = False):
        from sam2.build_sam import build_sam2_video_predictor

        _quiet_sam2()
        size = self.image_size
        feat = size // 16
        overrides = [
            f"++model.image_size={size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
            # sam2's own inference post-processing (what apply_postprocessing=True sets), except
            # that it fills holes only with its CUDA extension; without it we fill them when writing.
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
            "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
            "++model.binarize_mask_from_pts_for_mem_enc=true",
            f"++model.fill_hole_area={cfg.output.fill_hole_area if self.sam2_fills_holes else 0}",
        ]
        if self.weights.is_random:
            torch.manual_seed(cfg.models.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        try:
            model = build_sam2_video_predictor(
                self.weights.variant.config, None, device="cpu", hydra_overrides_extra=overrides,
                apply_postprocessing=False, **({"vos_optimized": True} if vos else {}),
            )
        except Exception as e:
            raise ModelError(f"sam2 could not build {self.weights.variant.name}: {e}") from e
        if self.weights.checkpoint is not None:
            sd = read_state_dict(self.weights.checkpoint)
            fix = "set models.sam2_arch to the variant the checkpoint was trained as"
            try:
                missing, unexpected = model.load_state_dict(sd, strict=False)
            except RuntimeError as e:  # shape mismatches
                first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
                raise ModelError(f"{self.weights.checkpoint.name} does not fit {self.weights.variant.name}: "
                                 f"{first.strip()}; {fix}") from e
            if missing or unexpected:
                raise ModelError(
                    f"{self.weights.checkpoint.name} does not fit {self.weights.variant.name}: "
                    f"{len(missing)} missing and {len(unexpected)} unexpected weights "
                    f"(first: {(missing or unexpected)[0]}); {fix}"
                )
        decoder = resolve_decoder_path(cfg)
        if decoder is not None:
            identity = base_identity(self.weights, self.image_size, cfg.models.seed)
            self.decoder, self.warnings = apply_decoder(model, decoder, identity)
        if self.dtype == "float32":
            model.memory_attention.register_forward_pre_hook(_memory_to_query_dtype, with_kwargs=True)
        # a prompt on a frame SAM2 already tracked (a detector box correcting an object) becomes a
        # conditioning frame, so propagating again keeps the correction instead of recomputing it
        model.add_all_frames_to_correct_as_cond = True
        return model.to(self.device).eval()

    @contextlib.contextmanager
    def running(self):
        """Inside sam2: inference mode, bfloat16 autocast when chosen, and the time added to `seconds`."""
        import torch

        start = time.perf_counter()
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.dtype == "bfloat16"
               else contextlib.nullcontext())
        try:
            with torch.inference_mode(), amp:
                yield
        finally:
            with self._seconds_lock:
                self.seconds += time.perf_counter() - start

    def memory_cost(self) -> MemoryCost | None:
        """This tracker's device memory per object and frame, measured once on its device (None on a CPU)."""
        if self._cost is False:
            self._cost = measure_cost(self)
        return self._cost

    # -------------------------------------------------------- state and prompts

    def new_state(self, frames: Sequence, height: int, width: int) -> dict:
        """An inference state like sam2's `init_state`, reading frames lazily from `frames`."""
        device = self.device
        state = _State({
            "images": frames,
            "num_frames": len(frames),
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": height,
            "video_width": width,
            "device": device,
            "storage_device": device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        })
        self.live.add(state)
        return state

    def add_points(self, state: dict, frame: int, obj_id: int, points=None, labels=None, box=None) -> None:
        with self.running():
            self.predictor.add_new_points_or_box(
                state, frame_idx=frame, obj_id=obj_id,
                points=np.asarray(points, dtype=np.float32) if points is not None else None,
                labels=np.asarray(labels, dtype=np.int32) if labels is not None else None,
                box=np.asarray(box, dtype=np.float32) if box is not None else None,
            )

    def add_mask(self, state: dict, frame: int, obj_id: int, mask: np.ndarray) -> None:
        import torch

        with self.running():
            self.predictor.add_new_mask(state, frame_idx=frame, obj_id=obj_id, mask=torch.from_numpy(mask))

    def propagate(self, state: dict, start: int, count: int, reverse: bool,
                  allowed_for: Callable[[int], set[int] | None] | None = None,
                  ) -> Iterator[tuple[int, list[int], "FrameLogits"]]:
        """Yield (local frame, object ids, logits) per frame, `count` frames after `start`.

        With `allowed_for(local frame)` (the objects whose id map the caller will ask for; None: none)
        each frame's id map is started as soon as SAM2 returns the frame, and the frame is handed out
        only after SAM2 has queued the next one: on a GPU the wait for one frame's map then overlaps
        the next frame's work instead of emptying the queue every frame. The results are the same."""
        gen = self.predictor.propagate_in_video(
            state, start_frame_idx=start, max_frame_num_to_track=count, reverse=reverse
        )
        held = None
        while True:
            with self.running():
                try:
                    frame, obj_ids, logits = next(gen)
                except StopIteration:
                    break
                current = (frame, list(obj_ids), FrameLogits(list(obj_ids), logits[:, 0]))
                if allowed_for is not None:
                    allowed = allowed_for(frame)
                    if allowed is not None:
                        current[2].start_id_map(allowed)
            if allowed_for is None:
                yield current
                continue
            if held is not None:
                yield held
            held = current
        if held is not None:
            yield held


class _State(dict):
    """A SAM2 inference state (a dict, as sam2 expects) that a weak reference can follow."""

    __slots__ = ("__weakref__",)


_DEVICE_CONSTANTS: "OrderedDict[tuple, object]" = OrderedDict()
_DEVICE_CONSTANTS_LOCK = threading.Lock()


def _on_device(key: tuple, device, make):
    """A small constant tensor kept on `device` (the last 64 used)."""
    key = (*key, str(device))
    with _DEVICE_CONSTANTS_LOCK:
        value = _DEVICE_CONSTANTS.get(key)
        if value is not None:
            _DEVICE_CONSTANTS.move_to_end(key)
            return value
    value = make().to(device)
    with _DEVICE_CONSTANTS_LOCK:
        _DEVICE_CONSTANTS[key] = value
        while len(_DEVICE_CONSTANTS) > 64:
            _DEVICE_CONSTANTS.popitem(last=False)
    return value


class FrameLogits:
    """SAM2's per-object mask logits of one frame at video resolution, on the model's device."""

    def __init__(self, obj_ids: list[int], logits):
        self.obj_ids = obj_ids
        self.logits = logits
        self._started: tuple | None = None   # (allowed, map on the host or being copied there, CUDA event)

    def id_map(self, allowed: set[int] | None = None) -> np.ndarray:
        """HxW uint8 object ids; overlaps go to the highest logit; only `allowed` ids take part."""
        key = None if allowed is None else frozenset(allowed)
        if self._started is None or self._started[0] != key:
            self.start_id_map(allowed)
        _, host, event = self._started
        if event is not None:
            event.synchronize()
            return host.numpy()
        return host

    def start_id_map(self, allowed: set[int] | None) -> None:
        """Begin the id map for `allowed`: on CUDA its kernels and an asynchronous copy into page-locked
        memory with an event after it, so that waiting for the map later waits for nothing queued after
        it. The small per-object tensors are made once per set of objects and device."""
        import torch

        key = None if allowed is None else frozenset(allowed)
        logits = self.logits.float()
        if allowed is not None:
            if not any(o in allowed for o in self.obj_ids):
                self._started = (key, np.zeros(logits.shape[-2:], dtype=np.uint8), None)
                return
            keep = _on_device(("keep", tuple(self.obj_ids), key), logits.device,
                              lambda: torch.tensor([o in allowed for o in self.obj_ids]))
            logits = torch.where(keep[:, None, None], logits, torch.full_like(logits, -1e4))
        best, arg = logits.max(dim=0)
        ids = _on_device(("ids", tuple(self.obj_ids)), logits.device,
                         lambda: torch.tensor(self.obj_ids, dtype=torch.uint8))
        out = torch.where(best > 0, ids[arg], torch.zeros_like(arg, dtype=torch.uint8))
        if out.device.type != "cuda":
            self._started = (key, out.numpy(), None)
            return
        with torch.cuda.device(out.device):
            host = torch.empty(out.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(out, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._started = (key, host, event)

    def mask(self, obj_id: int) -> np.ndarray:
        """Bool HxW mask (logit > 0) of one object."""
        return (self.logits[self.obj_ids.index(obj_id)] > 0).cpu().numpy()
