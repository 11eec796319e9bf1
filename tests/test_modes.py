from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import PromptError
from core.modes import Mode, choose_mode
from core.prompts import DetectRequest, ObjectPrompt, Prompts

OBJ = (ObjectPrompt(1, 0, points=((1, 1),), labels=(1,)),)


@pytest.mark.parametrize("masks, prompts, kw, expected", [
    (False, Prompts(), {"explicit": "refine"}, Mode.REFINE),
    (True, Prompts(objects=OBJ, mode="detect"), {}, Mode.DETECT),
    (True, Prompts(objects=OBJ), {"job_mode": "matting"}, Mode.MATTING),
    (True, Prompts(objects=OBJ), {}, Mode.REFINE),
    (False, Prompts(objects=OBJ, detect=DetectRequest(("dog",))), {}, Mode.TRACK),
    (False, Prompts(detect=DetectRequest(("dog",))), {"inbox_mode": "matting"}, Mode.DETECT),
    (False, Prompts(), {"inbox_mode": "matting"}, Mode.MATTING),
    (False, Prompts(), {}, Mode.PROMPTLESS),
])
def test_first_match_wins(tmp_path: Path, masks, prompts, kw, expected):
    if masks:
        (tmp_path / "masks").mkdir()
    choice = choose_mode(tmp_path, prompts, **kw)
    assert choice.mode is expected and choice.reason


def test_unknown_mode_is_named(tmp_path: Path):
    with pytest.raises(PromptError, match="unknown mode 'trak'; choose one of track"):
        choose_mode(tmp_path, Prompts(), explicit="trak")
