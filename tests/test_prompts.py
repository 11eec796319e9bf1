from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import PromptError
from core.frames import FrameFolder
from core.prompts import load_prompts
from tests.conftest import make_clip


@pytest.fixture
def folder(tmp_path: Path) -> FrameFolder:
    return FrameFolder.scan(make_clip(tmp_path / "clip", n=10, size=(160, 120)))


def _load(folder: FrameFolder, data) -> object:
    text = data if isinstance(data, str) else json.dumps(data)
    (folder.root / "prompts.json").write_text(text)
    return load_prompts(folder)


def test_design_example_parses(folder):
    p = _load(folder, {"objects": [{"id": 1, "frame": 0, "points": [[41, 23], [38, 30]], "labels": [1, 0]},
                                   {"id": 2, "frame": 5, "box": [10, 8, 22, 26]}],
                       "detect": {"classes": ["dog"], "min_confidence": 0.5, "self_train": False},
                       "mode": "track"})
    assert p.object_ids == [1, 2]
    assert p.objects[0].points == ((41.0, 23.0), (38.0, 30.0)) and p.objects[0].labels == (1, 0)
    assert p.objects[1].box == (10.0, 8.0, 22.0, 26.0) and p.first_frame(2) == 5
    assert p.detect.classes == ("dog",) and p.mode == "track"


def test_absent_file_means_no_prompts(folder):
    assert load_prompts(folder).objects == ()


def test_frame_by_name_and_default_labels(folder):
    p = _load(folder, {"objects": [{"id": 3, "frame": "00004.jpg", "points": [[5, 5]]}]})
    assert p.objects[0].frame == 4 and p.objects[0].labels == (1,)


def test_mask_prompt(folder):
    m = np.zeros((120, 160), np.uint8)
    m[10:20, 10:30] = 255
    cv2.imwrite(str(folder.root / "m.png"), m)
    p = _load(folder, {"objects": [{"id": 1, "frame": 0, "mask": "m.png"}]})
    assert p.objects[0].load_mask(160, 120).sum() == 200


@pytest.mark.parametrize("data, words", [
    ("{not json", "not valid JSON: .* line 1"),
    ([1, 2], "must hold a JSON object"),
    ({"objets": []}, "unknown key 'objets' .*did you mean 'objects'"),
    ({"objects": [{"id": 0, "points": [[1, 1]]}]}, "integer 'id' from 1 to 255"),
    ({"objects": [{"id": "a", "points": [[1, 1]]}]}, "integer 'id'"),
    ({"objects": [{"id": 1, "frame": 10, "points": [[1, 1]]}]}, "object 1 .*frame 10 does not exist; this folder has 10 frames"),
    ({"objects": [{"id": 1, "frame": "x.jpg", "points": [[1, 1]]}]}, "frame 'x.jpg' is not a frame"),
    ({"objects": [{"id": 2, "points": [[170, 5]]}]}, r"object 2 .*point \[170, 5\] on frame 0 is outside the 160x120 frame"),
    ({"objects": [{"id": 1, "points": [[1, 1], [2, 2]], "labels": [1]}]}, "2 points but 1 labels"),
    ({"objects": [{"id": 1, "points": [[1, 1]], "labels": [2]}]}, "labels' must be a list of 0"),
    ({"objects": [{"id": 1, "points": [[1, 1]], "labels": [0]}]}, "every label is 0"),
    ({"objects": [{"id": 1, "points": [1, 1]}]}, r"list of \[x, y\] pairs"),
    ({"objects": [{"id": 1, "box": [10, 10, 5, 20]}]}, "x1 < x2"),
    ({"objects": [{"id": 1, "box": [10, 10, 200, 20]}]}, "reaches outside"),
    ({"objects": [{"id": 1, "box": [1, 2, 3]}]}, r"\[x1, y1, x2, y2\]"),
    ({"objects": [{"id": 1, "frame": 0}]}, "give 'points'"),
    ({"objects": [{"id": 1, "point": [[1, 1]]}]}, "unknown key 'point' .*did you mean 'points'"),
    ({"objects": [{"id": 1, "mask": "nope.png"}]}, "mask file nope.png does not exist"),
    ({"objects": [{"id": 1, "mask": "../x.png"}]}, "leaves the input folder"),
    ({"objects": [{"id": 1, "points": [[1, 1]]}, {"id": 1, "frame": 0, "box": [1, 1, 4, 4]}]}, "two entries for frame 0"),
    ({"detect": {"classes": "dog", "min_confidence": 3}}, "min_confidence must be a number between 0 and 1"),
    ({"mode": 5}, "'mode' must be a string"),
])
def test_errors_name_file_object_and_value(folder, data, words):
    with pytest.raises(PromptError, match=words) as e:
        _load(folder, data)
    assert "prompts.json" in str(e.value)
