"""Records stay true: a retried job keeps no stale error, warning or error.txt, `retry --set` re-runs with
other settings (recorded on the job), the manifest names where the input is now and why the mode was
chosen, and the daemon's log tells a job's life."""

from __future__ import annotations

import json
from pathlib import Path

from core.store import since_retry
from tests import daemon_process as dp
from tests.conftest import make_clip, point_prompt
import pytest


@pytest.mark.slow
def test_retry_with_new_settings_after_fixing_the_folder(tmp_path: Path):
    root = tmp_path
    dp.write_config(root)
    (root / "inbox").mkdir()
    (root / "kept").mkdir()
    bad = make_clip(root / "kept" / "clip", n=6, prompts={"objects": [{"id": 1, "frame": 0, "points": [[900, 20]]}]})
    (root / "kept" / "clip" / "prompts.json").write_text(json.dumps({"objects": [point_prompt()]}))
    r = dp.cli(root, "submit", str(bad))  # valid now; broken below, after the check `submit` makes
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    (bad / "prompts.json").write_text(json.dumps({"objects": [{"id": 1, "frame": 0, "points": [[900, 20]]}]}))
    dropped = make_clip(root / "inbox" / "drop", n=5, prompts={"objects": [point_prompt()]})
    (dropped / ".ready").touch()
    proc = dp.start(root)
    try:
        failed = dp.wait(lambda: next((j for j in dp.status(root)["jobs"] if j["id"] == job_id
                                       and j["state"] == "failed"), None), 120, "the broken folder failed", proc)
        assert "outside the 160x120 frame" in failed["error"]
        assert (root / "failed" / "clip" / "error.txt").is_file()
        (bad / "prompts.json").write_text(json.dumps({"objects": [point_prompt()]}))  # fixed
        r = dp.cli(root, "retry", job_id[:8], "--set", "chunking.chunk_size=4")
        assert r.returncode == 0, r.stderr
        dp.wait(lambda: all(j["state"] == "done" for j in dp.status(root)["jobs"]) and len(dp.status(root)["jobs"]) == 2,
                180, "both jobs done", proc)
        bad_key = dp.cli(root, "retry", job_id[:8], "--set", "chunking.chunk_sise=4")
        assert bad_key.returncode == 2 and "chunk_sise" in bad_key.stderr and "chunk_size" in bad_key.stderr
    finally:
        dp.stop(proc)
    assert not (root / "failed" / "clip").exists()  # the earlier error.txt (and its folder) went on retry
    job = next(j for j in dp.status(root)["jobs"] if j["id"] == job_id)
    assert job["error"] is None
    whole = dp.cli(root, "status", job_id)
    assert "chunking.chunk_size=4" in whole.stdout and "outside the 160x120" not in whole.stdout, whole.stdout
    m = json.loads((root / "outbox" / "clip" / "manifest.json").read_text())
    assert m["mode_reason"] == "objects given in prompts.json"  # not "--mode track" from the first run's record
    assert m["config"]["chunking"]["chunk_size"] == 4 and len(m["chunks"]) == 2
    assert m["input"] == str(bad.resolve())  # a submitted folder stays where it is
    dropped_m = json.loads((root / "outbox" / "drop" / "manifest.json").read_text())
    assert dropped_m["input"] == str((root / "done" / "drop").resolve())  # where the input is now
    assert (root / "done" / "drop").is_dir()
    log = (root / "daemon.log").read_text()
    for line in ("drop: claimed job", "drop: started track (objects given in prompts.json), 5 frames in 1 chunk(s)",
                 "drop: 5/5 frames (100%)", "drop: done, 5 frames at", "clip: failed: prompts.json: object 1"):
        assert line in log, line


def test_events_since_the_last_retry():
    events = [{"message": "a: The job was cancelled before it finished.", "level": "warning"},
              {"message": "a: queued again (retry)", "level": "info"},
              {"message": "a: track (objects), 5 frames", "level": "info"}]
    assert since_retry(events) == events[1:]
    assert since_retry(events[:1]) == events[:1]
