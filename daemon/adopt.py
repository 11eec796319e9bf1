"""Jobs the database does not know: found at start in work/ and the outbox, adopted again or reported.

A database that was deleted or replaced (after damage) forgets jobs whose folders are still in
work/<job id>/ and whose partial outputs are still in the outbox. Each work folder holding one job
folder becomes a queued job again under its old id; its staging folder (its checkpoint names the
job and the output) lets it resume from its last finished chunk. Anything else is reported, not
touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.config import Config
from core.outputs.checkpoint import Checkpoint
from core.store import Store

log = logging.getLogger(__name__)


def adopt_strays(store: Store, cfg: Config) -> list[str]:
    """Queue work/ folders of unknown jobs again; report what cannot be adopted. Returns the adopted ids."""
    work, outbox = cfg.path(cfg.paths.work), cfg.path(cfg.paths.outbox)
    known = {job.id for job in store.jobs()}
    partials = _partials(outbox)
    adopted = []
    for entry in sorted(work.iterdir()) if work.is_dir() else []:
        if entry.name in known or entry.name.startswith("."):
            continue
        inner = list(entry.iterdir()) if entry.is_dir() and not entry.is_symlink() else []
        if len(inner) != 1 or not inner[0].is_dir() or inner[0].is_symlink():
            _report(store, f"{entry} belongs to no known job and holds no job folder to adopt; it was left as it is")
            continue
        folder = inner[0]
        ckpt = partials.pop(entry.name, None)
        store.add_job(folder.name, folder, source="inbox", job_id=entry.name,
                      output_path=ckpt.output if ckpt is not None else None)
        how = "resumes from its checkpoint" if ckpt is not None else "starts from its first frame (no partial output)"
        store.log("warning", f"{folder.name}: adopted again from {entry} (the database did not know it); {how}",
                  entry.name)
        log.warning("adopted %s again as job %s; it %s", folder, entry.name, how)
        adopted.append(entry.name)
    for job_id, ckpt in partials.items():
        if job_id not in known:
            _report(store, f"the partial output {ckpt.output} (job {job_id}) belongs to no known job; its input is "
                           f"not in {work}: submit the input again, or delete the hidden staging folder beside it")
    return adopted


def _partials(outbox: Path) -> dict[str, Checkpoint]:
    """Staging folders in the outbox with a checkpoint that names its job, by job id."""
    found = {}
    for stage in outbox.glob(".*.partial") if outbox.is_dir() else []:
        ckpt = Checkpoint.load(stage) if stage.is_dir() and not stage.is_symlink() else None
        if ckpt is not None and ckpt.job_id and ckpt.output:
            found[ckpt.job_id] = ckpt
    return found


def _report(store: Store, message: str) -> None:
    store.log("warning", message)
    log.warning(message)
