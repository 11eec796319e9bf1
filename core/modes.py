"""Modes and the rule that picks one for a folder (DESIGN.md, "Mode selection")."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from core.errors import PromptError
from core.prompts import Prompts


class Mode(str, enum.Enum):
    TRACK = "track"
    DETECT = "detect"
    PROMPTLESS = "promptless"
    REFINE = "refine"
    MATTING = "matting"
    UNET = "unet"

    @classmethod
    def parse(cls, value: str, where: str) -> "Mode":
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise PromptError(f"{where}: unknown mode '{value}'; choose one of {names}") from None



@dataclass(frozen=True)
class ModeChoice:
    mode: Mode
    reason: str


def choose_mode(
    folder: Path,
    prompts: Prompts,
    *,
    explicit: str | None = None,
    job_mode: str | None = None,
    inbox_mode: str | None = None,
) -> ModeChoice:
    """First match wins: --mode / prompts.json / job.toml; masks/; objects; detect; inbox; promptless."""
    if explicit:
        return ModeChoice(Mode.parse(explicit, "--mode"), f"--mode {explicit}")
    if prompts.mode:
        return ModeChoice(Mode.parse(prompts.mode, "prompts.json"), '"mode" in prompts.json')
    if job_mode:
        return ModeChoice(Mode.parse(job_mode, "job.toml"), "mode in job.toml")
    if (folder / "masks").is_dir():
        return ModeChoice(Mode.REFINE, "masks/ folder present")
    if prompts.objects:
        return ModeChoice(Mode.TRACK, "objects given in prompts.json")
    if prompts.detect is not None:
        return ModeChoice(Mode.DETECT, "detect section in prompts.json")
    if inbox_mode:
        return ModeChoice(Mode.parse(inbox_mode, "inbox configuration"), f"default mode of the inbox ({inbox_mode})")
    return ModeChoice(Mode.PROMPTLESS, "no prompts, masks or detect section")
