"""The model cache: where checkpoints live, how they are downloaded, imported and verified."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.config import Config
from core.errors import ModelError
from core.outputs.folder import write_json
from core.models.registry import SAM2_VARIANTS, Sam2Variant, find_variant

CACHE_ENV = "REELMASK_CACHE"
RANDOM = "random"

Progress = Callable[[int, int | None], None]


def cache_dir(cfg: Config | None = None) -> Path:
    if cfg is not None and cfg.paths.cache:
        return cfg.path(cfg.paths.cache)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reelmask"


def sam2_dir(cfg: Config | None = None) -> Path:
    return cache_dir(cfg) / "sam2"


@dataclass(frozen=True)
class Sam2Weights:
    """What a job will build: an architecture and either a checkpoint file or random weights."""

    variant: Sam2Variant
    checkpoint: Path | None  # None = random weights
    sha256: str              # checkpoint sha256, or "random"

    @property
    def is_random(self) -> bool:
        return self.checkpoint is None


# ---------------------------------------------------------------- hashing

def sha256_file(path: Path, cache: Path | None = None) -> str:
    """sha256 of a file; remembered per (path, size, mtime) so big checkpoints hash once."""
    st = path.stat()
    key = str(path.resolve())
    memo_path = cache / "hashes.json" if cache else None
    memo = _read_json(memo_path) if memo_path else {}
    hit = memo.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo_path:
        memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        write_json(memo_path, memo)
    return digest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def pinned(variant: Sam2Variant, cfg: Config | None) -> tuple[int | None, str | None]:
    """Size and sha256 we hold the file to: the registry's, else the one pinned at first download."""
    if variant.sha256:
        return variant.size, variant.sha256
    pins = _read_json(sam2_dir(cfg) / "checksums.json")
    pin = pins.get(variant.name) or {}
    return pin.get("size"), pin.get("sha256")


def _pin(variant: Sam2Variant, size: int, digest: str, cfg: Config | None) -> None:
    if variant.sha256:
        return
    path = sam2_dir(cfg) / "checksums.json"
    pins = _read_json(path)
    pins[variant.name] = {"size": size, "sha256": digest}
    write_json(path, pins)


def verify(path: Path, variant: Sam2Variant, cfg: Config | None) -> str:
    """Check a checkpoint's size and sha256 against the pinned values; returns its sha256."""
    size, sha = pinned(variant, cfg)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ModelError(
            f"{path} is {actual_size:,} bytes but the official {variant.name} checkpoint is {size:,} bytes "
            f"(incomplete or a different file); delete it and run `reelmask models pull {variant.name}`"
        )
    digest = sha256_file(path, cache_dir(cfg))
    if sha is not None and digest != sha:
        raise ModelError(
            f"{path} has sha256 {digest} but {variant.name} should have {sha}; the file is damaged or "
            f"not the official checkpoint: delete it and run `reelmask models pull {variant.name}`"
        )
    return digest


# ---------------------------------------------------------------- download and import

def cached_path(variant: Sam2Variant, cfg: Config | None = None) -> Path:
    return sam2_dir(cfg) / variant.filename


def pull(variant: Sam2Variant, cfg: Config | None = None, progress: Progress | None = None,
         timeout: float = 30.0) -> Path:
    """Download the official checkpoint into the cache (idempotent) and verify it."""
    dest = cached_path(variant, cfg)
    if dest.is_file():
        verify(dest, variant, cfg)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".pt.part")
    try:
        with urllib.request.urlopen(variant.url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            while block := resp.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise ModelError(
            f"cannot download {variant.name} from {variant.url} ({reason}). On a machine without internet, "
            f"download {variant.filename} elsewhere, copy it here and run "
            f"`reelmask models import {variant.filename} --name {variant.name}`; or set "
            "models.sam2 to the checkpoint's path"
        ) from e
    try:
        digest = verify(part, variant, cfg)
    except ModelError:
        part.unlink(missing_ok=True)
        raise
    _pin(variant, part.stat().st_size, digest, cfg)
    os.replace(part, dest)
    return dest


def import_checkpoint(path: Path, name: str | None = None, cfg: Config | None = None) -> tuple[Sam2Variant, Path]:
    """Copy a checkpoint obtained elsewhere into the cache after checking it is what it claims."""
    if not path.is_file():
        raise ModelError(f"{path} does not exist; give the path of a downloaded SAM2 .pt checkpoint")
    digest = sha256_file(path)
    if name:
        variant = find_variant(name)
        if variant is None:
            raise ModelError(f"unknown model name '{name}'; `reelmask models list` shows the names")
    else:
        matches = [v for v in SAM2_VARIANTS.values() if pinned(v, cfg)[1] == digest]
        if not matches:
            raise ModelError(
                f"{path.name} (sha256 {digest[:12]}...) matches no pinned checkpoint; say which model it is "
                "with --name, e.g. `reelmask models import FILE --name sam2.1_hiera_small`"
            )
        variant = matches[0]
    size, sha = pinned(variant, cfg)
    if sha is not None and sha != digest:
        raise ModelError(
            f"{path.name} has sha256 {digest} but {variant.name} should have {sha}; it is damaged or a different model"
        )
    if size is not None and path.stat().st_size != size:
        raise ModelError(f"{path.name} is {path.stat().st_size:,} bytes, {variant.name} is {size:,} bytes")
    _check_architecture(path, variant)
    dest = cached_path(variant, cfg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".pt.part")
    shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    _pin(variant, dest.stat().st_size, digest, cfg)
    return variant, dest


def _check_architecture(path: Path, variant: Sam2Variant) -> None:
    from core.models.checkpoints import read_state_dict
    from core.models.registry import variant_from_state_dict

    found = variant_from_state_dict(read_state_dict(path))
    if found is None or found.name != variant.name:
        what = f"holds {found.name}" if found else "is not a SAM2 checkpoint (its weights have other names)"
        raise ModelError(f"{path.name} {what}, not {variant.name}; check the file or the --name given")


# ---------------------------------------------------------------- resolving a config

def resolve_sam2(cfg: Config, progress: Progress | None = None) -> Sam2Weights:
    """Turn models.sam2 / sam2_weights / sam2_arch into an architecture and a verified file."""
    m = cfg.models
    variant = find_variant(m.sam2)
    ckpt: Path | None = None
    if variant is None:
        candidate = cfg.path(m.sam2)
        if not candidate.is_file():
            names = ", ".join(SAM2_VARIANTS)
            raise ModelError(
                f"models.sam2 = '{m.sam2}' is neither a known model ({names}) nor an existing checkpoint file"
            )
        ckpt = candidate
        if m.sam2_arch != "auto":
            variant = find_variant(m.sam2_arch)
            if variant is None:
                raise ModelError(f"models.sam2_arch = '{m.sam2_arch}' is not a known SAM2 variant")
        else:
            from core.models.checkpoints import read_state_dict
            from core.models.registry import variant_from_state_dict

            variant = variant_from_state_dict(read_state_dict(ckpt))
            if variant is None:
                raise ModelError(
                    f"cannot tell which SAM2 architecture {ckpt.name} is; set models.sam2_arch "
                    "(e.g. sam2.1_hiera_small)"
                )
    weights = m.sam2_weights.strip()
    if weights == RANDOM:
        return Sam2Weights(variant, None, RANDOM)
    if ckpt is not None:
        return Sam2Weights(variant, ckpt, sha256_file(ckpt, cache_dir(cfg)))
    if weights == "auto":
        path = cached_path(variant, cfg)
        path = pull(variant, cfg, progress) if not path.is_file() else path
        return Sam2Weights(variant, path, verify(path, variant, cfg))
    path = cfg.path(weights)
    if not path.is_file():
        raise ModelError(
            f'models.sam2_weights = "{weights}" is not "auto", "random" or an existing checkpoint file'
        )
    return Sam2Weights(variant, path, sha256_file(path, cache_dir(cfg)))
