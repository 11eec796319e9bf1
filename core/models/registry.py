"""Known SAM2 / SAM2.1 variants: their sam2 config, official checkpoint and what we know of it."""

from __future__ import annotations

from dataclasses import dataclass

_BASE_2 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class Sam2Variant:
    name: str            # e.g. "sam2.1_hiera_tiny", also the checkpoint's file stem
    config: str          # config path inside the sam2 package
    url: str
    size: int | None     # bytes of the official checkpoint, when pinned
    sha256: str | None   # sha256 of the official checkpoint, when pinned
    embed_dim: int       # Hiera trunk width, read back from a checkpoint to tell variants apart
    blocks: int          # Hiera trunk depth

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


def _variants() -> dict[str, Sam2Variant]:
    shapes = {"tiny": ("t", 96, 12), "small": ("s", 96, 16), "base_plus": ("b+", 112, 24), "large": ("l", 144, 48)}
    out = {}
    for size, (short, dim, blocks) in shapes.items():
        out[f"sam2_hiera_{size}"] = Sam2Variant(
            f"sam2_hiera_{size}", f"configs/sam2/sam2_hiera_{short}.yaml", f"{_BASE_2}sam2_hiera_{size}.pt",
            None, None, dim, blocks)
        out[f"sam2.1_hiera_{size}"] = Sam2Variant(
            f"sam2.1_hiera_{size}", f"configs/sam2.1/sam2.1_hiera_{short}.yaml", f"{_BASE_21}sam2.1_hiera_{size}.pt",
            None, None, dim, blocks)
    # Pinned from the official release (DESIGN.md); the others are verified on first download
    # and their hash is then pinned in the cache (see core.models.weights).
    tiny = out["sam2.1_hiera_tiny"]
    out[tiny.name] = Sam2Variant(tiny.name, tiny.config, tiny.url, 156_008_466,
                                 "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
                                 tiny.embed_dim, tiny.blocks)
    return out


SAM2_VARIANTS: dict[str, Sam2Variant] = _variants()

# Short names people type: "tiny" means the newest family (SAM2.1).
_ALIASES = {
    **{k: f"sam2.1_hiera_{k}" for k in ("tiny", "small", "base_plus", "large")},
    "base+": "sam2.1_hiera_base_plus", "b+": "sam2.1_hiera_base_plus",
    **{f"sam2.1-{k}": f"sam2.1_hiera_{k}" for k in ("tiny", "small", "base_plus", "large")},
    **{f"sam2-{k}": f"sam2_hiera_{k}" for k in ("tiny", "small", "base_plus", "large")},
    **{f"facebook/sam2.1-hiera-{k.replace('_', '-')}": f"sam2.1_hiera_{k}" for k in ("tiny", "small", "base_plus", "large")},
    **{f"facebook/sam2-hiera-{k.replace('_', '-')}": f"sam2_hiera_{k}" for k in ("tiny", "small", "base_plus", "large")},
}


def find_variant(name: str) -> Sam2Variant | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return SAM2_VARIANTS.get(key)


def variant_from_state_dict(sd: dict) -> Sam2Variant | None:
    """Tell the architecture of a checkpoint from its weights (trunk width, depth, SAM2.1 keys)."""
    w = sd.get("image_encoder.trunk.patch_embed.proj.weight")
    if w is None:
        return None
    dim = int(w.shape[0])
    blocks = len({k.split(".")[3] for k in sd if k.startswith("image_encoder.trunk.blocks.")})
    family = "sam2.1" if "no_obj_embed_spatial" in sd else "sam2"
    for v in SAM2_VARIANTS.values():
        if v.embed_dim == dim and v.blocks == blocks and v.name.startswith(family + "_"):
            return v
    return None
