"""A fine-tuned SAM2 mask decoder (`reelmask train sam2-decoder`) and loading it into a SAM2 model.

A decoder checkpoint is a torch.save'd dict:
    {"kind": "sam2-decoder", "format": 1,
     "sam2": {"variant", "weights" (sha256 or "random"), "image_size", "seed"},   the SAM2 it was tuned on
     "trained": ["sam_mask_decoder", ("sam_prompt_encoder")], "frozen": [...kept at the base weights],
     "prompts": [...], "epoch": int, "metrics": {...}, "model": {name: tensor} (the trained modules only),
     "reelmask": version}
last.pt adds "optimizer", "history" and "best". `models.sam2_decoder = PATH` loads "model" over the
base SAM2 weights in every SAM2 mode; the decoder only fits the encoder it was tuned on, so another
variant or other base weights are refused with the setting to change. Nothing here imports torch at
import time.
"""

from __future__ import annotations

from pathlib import Path

from core.config import Config
from core.errors import ConfigError, ModelError
from core.models.checkpoints import SAM2_DECODER

def resolve_decoder_path(cfg: Config) -> Path | None:
    """models.sam2_decoder as a checked checkpoint file (no torch), or None when it is not set."""
    name = cfg.models.sam2_decoder.strip()
    if not name:
        return None
    path = cfg.path(name)
    if not path.is_file():
        raise ConfigError(f"models.sam2_decoder = '{name}' does not exist (looked at {path}); set it to the best.pt "
                          "of a `reelmask train sam2-decoder` run, or leave it empty for SAM2's own decoder")
    SAM2_DECODER.header(path)
    return path


def base_identity(weights, image_size: int, seed: int) -> dict:
    """The SAM2 a decoder is tuned on: variant, weights sha256 (or "random" + the seed), image size."""
    return {"variant": weights.variant.name, "weights": weights.sha256, "image_size": int(image_size),
            "seed": int(seed) if weights.is_random else None}


def describe(identity: dict) -> str:
    w = identity["weights"]
    text = f"random weights (models.seed = {identity.get('seed')})" if w == "random" else f"weights sha256 {w[:12]}..."
    return f"{identity['variant']} with {text}"


def apply_decoder(model, path: Path, identity: dict) -> tuple[dict, list[str]]:
    """Copy the checkpoint's trained weights into `model` (a built SAM2 on any device) after checking
    it was tuned on the SAM2 of `identity`; returns (what the manifest records, warnings)."""
    import torch

    from core.models.weights import sha256_file

    header = SAM2_DECODER.header(path)
    tuned = header["sam2"]
    if tuned.get("variant") != identity["variant"] or tuned.get("weights") != identity["weights"] \
            or (identity["weights"] == "random" and tuned.get("seed") != identity["seed"]):
        if tuned.get("variant") != identity["variant"]:
            fix = f"set models.sam2 = {tuned.get('variant')}"
        elif tuned.get("weights") == "random":
            fix = f"set models.sam2_weights = \"random\" and models.seed = {tuned.get('seed')}"
        else:
            fix = "set models.sam2 / models.sam2_weights to the checkpoint it was tuned on"
        raise ModelError(f"the SAM2 decoder {path} was tuned on {describe(tuned)}, but this job's SAM2 is "
                         f"{describe(identity)}; a decoder only fits the encoder it was trained with: {fix}, "
                         "or clear models.sam2_decoder")
    weights = SAM2_DECODER.load(path)["model"]
    if not weights:
        raise ModelError(f"{path} holds no decoder weights; {SAM2_DECODER.fix}")
    own = model.state_dict()
    for name, value in weights.items():
        if name not in own or tuple(own[name].shape) != tuple(value.shape):
            raise ModelError(f"{path} does not fit {identity['variant']}: weight {name} "
                             f"{'is unknown' if name not in own else f'has shape {tuple(value.shape)}'}; {SAM2_DECODER.fix}")
    with torch.no_grad():
        for name, value in weights.items():
            own[name].copy_(value.to(own[name].device, own[name].dtype))
    warnings = []
    if int(tuned.get("image_size", identity["image_size"])) != identity["image_size"]:
        warnings.append(f"the SAM2 decoder {path.name} was tuned at models.image_size = {tuned['image_size']} and "
                        f"runs here at {identity['image_size']}; masks may be worse than at the size it was tuned at")
    info = {"path": str(Path(path).resolve()), "sha256": sha256_file(Path(path)), "epoch": header["epoch"],
            "trained": list(header["trained"]), "tuned_image_size": tuned.get("image_size"),
            "metrics": header["metrics"]}
    return info, warnings
