"""The dashboard driven with Textual's Pilot: what it shows from SQLite and the commands it writes."""

from __future__ import annotations

import asyncio
import functools
import time
import types
from itertools import count
from pathlib import Path

import pytest

from core import store as store_module
from core.cli import main as cli_main
from core.config import load_config
from core.store import Store
from tests.conftest import make_clip, make_seg_dataset
from tui.app import ReelmaskApp
from tui.widgets import DeviceRow, GpuPanel, JobPanel, QueueTable


def _sync(fn):
    """Run an async test body on its own event loop (no pytest async plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def _cfg(tmp_path: Path):
    """A config and its state database, made as the daemon makes it (the dashboard never creates one)."""
    cfg = load_config(None, [f"paths.db={tmp_path / 'state.db'}", "daemon.sample_seconds=1"], use_default_path=False)
    Store(cfg.path(cfg.paths.db)).close()
    return cfg


async def _settle(app, pilot) -> None:
    """Let the refresh worker read the database and the widgets draw it."""
    for _ in range(3):
        await pilot.pause()
        await app.workers.wait_for_complete()
    await pilot.pause()


async def _until(pilot, condition, seconds: float = 60.0) -> None:
    """Pause until `condition()` holds, or `seconds` have passed (generous: a busy machine is slow)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        await pilot.pause(0.05)


@_sync
async def test_submitted_jobs_appear_and_cancel_writes_a_command(tmp_path: Path, monkeypatch):
    cfg = _cfg(tmp_path)
    clip = make_clip(tmp_path / "clip_042", n=4)
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndb = "{tmp_path / "state.db"}"\n')
    assert cli_main(["submit", str(clip), "--config", str(config)]) == 0
    store = Store(tmp_path / "state.db")
    other = store.add_job("dog", tmp_path / "dog")
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        table = app.query_one(QueueTable)
        names = {str(table.get_row(k)[1]) for k in table.rows}
        assert names == {"clip_042", "dog"}
        assert "queue · all (2)" in str(table.border_title)
        table.move_cursor(row=[str(k.value) for k in table.rows].index(other))
        await _settle(app, pilot)
        await pilot.press("c")  # asks first: "n" sends nothing
        await pilot.pause()
        assert "Cancel dog" in str(app.screen.query_one("#confirm-text").render())
        await pilot.press("n")
        await pilot.pause()
        assert store.pending_commands() == []
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
    commands = store.pending_commands()
    assert [(c.kind, c.job_id) for c in commands] == [("cancel", other)]


@_sync
async def test_filter_pause_and_retry(tmp_path: Path):
    cfg = _cfg(tmp_path)
    store = Store(cfg.path(cfg.paths.db))
    failed = store.add_job("broken", tmp_path / "broken")
    store.add_job("fine", tmp_path / "fine")
    store.finish_job(failed, store_module.JobState.FAILED, error="prompts.json: point outside the frame")
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        table = app.query_one(QueueTable)
        for _ in range(4):  # all -> queued -> running -> done -> failed
            await pilot.press("f")
        await _settle(app, pilot)
        assert app.state_filter == "failed" and table.row_count == 1
        assert "error: prompts.json: point outside the frame" in str(app.query_one("#job-info").render())
        await pilot.press("r")
        await pilot.press("p")
        await pilot.pause()
    assert [(c.kind, c.job_id) for c in store.pending_commands()] == [("retry", failed), ("pause", None)]


@_sync
async def test_the_training_form_queues_a_training_command(tmp_path: Path):
    cfg = _cfg(tmp_path)
    data = make_seg_dataset(tmp_path / "dataset")
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        await pilot.press("t")
        await pilot.pause()
        form = app.screen
        form.query_one("#data").value = str(tmp_path / "missing")
        await pilot.click("#submit-training")
        error = lambda: str(form.query_one("#train-error").render())  # noqa: E731
        await _until(pilot, lambda: "does not exist" in error())   # answered on the next message round
        assert "does not exist" in error() and app.screen is form  # refused, form stays open
        form.query_one("#data").value = str(data)
        form.query_one("#epochs").value = "3"
        form.query_one("#size").value = "128"
        # a Button ignores clicks while its press effect (0.2 s) lasts: on a fast machine the second
        # click came within it and was lost. Wait it out (and for the layout the error's text moved).
        await _until(pilot, lambda: not form.query_one("#submit-training").has_class("-active"))
        await pilot.pause()
        await pilot.click("#submit-training")
        await _until(pilot, lambda: app.screen is not form)   # the modal closes on the next message round
        assert app.screen is not form
    [cmd] = Store(cfg.path(cfg.paths.db)).pending_commands()
    assert cmd.kind == "train" and cmd.payload["kind"] == "unet" and cmd.payload["data"] == str(data.resolve())
    assert {"train.epochs=3", "train.img_size=128", "train.batch_size=8"} <= set(cmd.payload["sets"])


@_sync
async def test_training_form_shows_each_kinds_defaults(tmp_path: Path):
    cfg = _cfg(tmp_path)
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        await pilot.press("t")
        await pilot.pause()
        form = app.screen
        values = lambda: [form.query_one(f"#{k}").value for k in ("epochs", "lr", "batch", "size")]  # noqa: E731
        assert values() == ["20", "0.0001", "8", "640"]
        form.query_one("#kind").value = "sam2-decoder"
        await pilot.pause(0.1)
        assert values() == ["15", "1e-05", "4", str(cfg.models.image_size)]   # seed 003; SAM2's own input size
        form.query_one("#size").value = "512"
        form.query_one("#data").value = str(make_seg_dataset(tmp_path / "dataset"))
        request, problem = form.read()
        assert request is None and "models.image_size" in problem


@_sync
async def test_gpu_panel_without_a_gpu_shows_ram_and_process_memory(tmp_path: Path):
    cfg = _cfg(tmp_path)
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        # no daemon yet: the dashboard reads this machine itself (here: no GPU) and says so
        status = str(app.query_one("#gpu-status").render())
        assert "no memory samples from `reelmask daemon` yet" in status and "as the dashboard reads it" in status
        label = str(app.query_one(GpuPanel).query_one("#device-label").render())
        from core.memory import MemoryProbe

        here = "cuda:0" if MemoryProbe().has_gpu else "No NVIDIA GPU on this machine"
        assert here in label and "dashboard process" in label
        Store(cfg.path(cfg.paths.db)).add_sample("cpu", "no NVIDIA GPU", 6144, 24576, 12.0, 900)
        await pilot.pause(0.4)
        await _settle(app, pilot)
        label = str(app.query_one(GpuPanel).query_one("#device-label").render())
        assert "No NVIDIA GPU on this machine" in label and "RAM 6.0 GiB/24.0 GiB" in label
        assert "daemon process 900 MiB" in label


@_sync
async def test_gpu_panel_shows_each_nodes_devices_and_the_job_running_there(tmp_path: Path):
    """Ray actors sample their own nodes: one row per node and device, naming the job on its worker."""
    cfg = _cfg(tmp_path)
    s = Store(cfg.path(cfg.paths.db))
    job = s.add_job("clip_a", tmp_path / "clip_a")
    s.claim("ray-worker-1", "render02:9f3e11aa")
    s.add_sample("cuda:0", "NVIDIA L40S", 9000, 46068, 80.0, 2100, node="render01:1b2c3d4e", worker="ray-worker-0")
    s.add_sample("cuda:0", "NVIDIA L40S", 12000, 46068, 95.0, 2300, node="render02:9f3e11aa", worker="ray-worker-1")
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(100, 40)) as pilot:
        await _settle(app, pilot)
        labels = [str(row.query_one("#device-label").render()) for row in app.query_one(GpuPanel).query(DeviceRow)]
        assert len(labels) == 2, labels
        one, two = sorted(labels)
        assert "render01:1b2c3d4e" in one and "cuda:0 NVIDIA L40S" in one and "running" not in one
        assert "render02:9f3e11aa" in two and "actor process" in two
        assert "running clip_a (ray-worker-1)" in two
    assert s.job(job).node == "render02:9f3e11aa"


def test_commands_are_in_the_palette_and_bindings_are_named():
    names = {b.action: b.description for b in ReelmaskApp.BINDINGS}
    assert names == {"cancel_job": "Cancel", "retry_job": "Retry", "toggle_pause": "Pause", "train": "Train",
                     "cycle_filter": "Filter", "toggle_preview": "Preview", "show_events": "Events", "quit": "Quit"}


@_sync
async def test_palette_lists_the_actions(tmp_path: Path):
    app = ReelmaskApp(_cfg(tmp_path))
    async with app.run_test(size=(80, 24)):
        titles = {c.title for c in app.get_system_commands(app.screen)}
    assert {"Cancel job", "Retry job", "Pause / resume queue", "Train a model", "Filter by state", "Events"} <= titles


@_sync
async def test_an_event_selected_in_the_list_is_shown_whole(tmp_path: Path):
    """`e` lists the events one line each; the highlighted one is shown whole below, even a long
    error that the events panel at 80 columns has to wrap."""
    from textual.widgets import OptionList

    cfg = _cfg(tmp_path)
    store = Store(cfg.path(cfg.paths.db))
    job = store.add_job("clip", "inbox/clip")
    tail = "copy the frame again from the camera card, then run `reelmask retry " + job[:8] + "`"
    long = "frame 00017.jpg is truncated (2048 of 91533 bytes); " + "x" * 120 + " " + tail
    store.log("error", long, job)
    store.log("info", "training unet: epoch 3 val_iou 0.812; best.pt in runs/unet-dataset/best.pt", None)
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        await pilot.press("e")
        await pilot.pause()
        listing = app.screen.query_one(OptionList)
        assert listing.option_count == 2 and listing.highlighted == 1   # the newest selected first
        assert "best.pt in runs/unet-dataset/best.pt" in str(app.screen.query_one("#events-whole").render())
        await pilot.press("up")
        await pilot.pause()
        whole = str(app.screen.query_one("#events-whole").render())
        assert tail in whole.replace("\n", "") and job in whole and "error" in whole
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query("#events-list")


@_sync
async def test_preview_pane_draws_the_latest_frame_with_its_masks(tmp_path: Path):
    """`v` swaps the memory panel for the preview: the newest mask over its frame, in half-block cells."""
    import numpy as np

    from core.outputs.masks import write_palette_png
    from tests.video_files import encode

    cfg = _cfg(tmp_path)
    clip = make_clip(tmp_path / "clip", n=4, size=(160, 120))
    out = tmp_path / "outbox" / "clip"
    (out / "masks").mkdir(parents=True)
    ids = np.zeros((120, 160), np.uint8)
    ids[30:90, 40:120] = 5
    for i in range(3):  # frame 2 is the newest
        write_palette_png(out / "masks" / f"{i:05d}.png", ids)
    store = Store(cfg.path(cfg.paths.db))
    job = store.add_job("clip", clip)
    store.update_job(job, output_path=str(out), state="running")
    app = ReelmaskApp(cfg, refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        await pilot.press("v")
        await _settle(app, pilot)
        picture = app.query_one("#preview-image").render()
        caption = str(app.query_one("#preview-caption").render())
    text = picture if hasattr(picture, "spans") else None
    rows = text.plain.splitlines() if text is not None else []
    # at 80x24 the pane holds about 6 rows: 12 x 16 square pixels of the 4:3 frame
    assert len(rows) >= 5 and all(len(r) >= 12 and set(r) == {"\u2580"} for r in rows), rows
    assert "frame 00002" in caption and "objects 5" in caption

    from tui.preview import PreviewReader

    frames = [np.full((120, 160, 3), 40 * k, np.uint8) for k in range(4)]  # a video input: its picture 2
    video_dir = tmp_path / "video"
    video_dir.mkdir()
    encode(video_dir / "v.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    store.update_job(job, input_path=str(video_dir))
    shown = PreviewReader().read(store.job(job), 40, 15)
    corner = shown.rgb[0, 0]  # outside the object: the frame's own grey (80), not the palette's black
    assert abs(int(corner[0]) - 80) <= 2 and shown.rgb.shape[1] == 40


@_sync
async def test_preview_in_terminal_graphics_where_the_terminal_has_them(tmp_path: Path):
    """With Kitty graphics chosen (`--graphics kitty`, or what `auto` finds) the pane holds a
    textual-image widget given the frame at more than half-block detail, and it draws Kitty's escape
    codes; `halfblock` and a dashboard without a terminal to ask keep half blocks."""
    import io

    import numpy as np
    from rich.console import Console
    from textual_image.renderable.tgp import Image as TGPRenderable

    from core.outputs.masks import write_palette_png
    from tui.preview import pick_graphics

    assert pick_graphics("halfblock")[0] is None
    assert pick_graphics("auto")[0] is None   # pytest's stdout is no terminal: nothing is asked
    widget, how = pick_graphics("kitty")
    assert widget is not None and how == "kitty graphics"
    assert pick_graphics("auto")[1] == "half blocks: no terminal"

    cfg = _cfg(tmp_path)
    clip = make_clip(tmp_path / "clip", n=2, size=(320, 240))
    out = tmp_path / "outbox" / "clip"
    (out / "masks").mkdir(parents=True)
    ids = np.zeros((240, 320), np.uint8)
    ids[60:180, 80:240] = 3
    write_palette_png(out / "masks" / "00001.png", ids)
    store = Store(cfg.path(cfg.paths.db))
    job = store.add_job("clip", clip)
    store.update_job(job, output_path=str(out), state="running")
    app = ReelmaskApp(cfg, refresh_seconds=0.2, graphics=widget)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(app, pilot)
        await pilot.press("v")
        await _settle(app, pilot)
        graphic = app.query_one("#preview-graphics")
        shown = graphic.image
        assert graphic.display and not app.query_one("#preview-image").display
        assert "frame 00001" in str(app.query_one("#preview-caption").render())
    # more pixels than half blocks would give (about 16 columns there), never more than the frame has
    assert 32 <= shown.size[0] <= 320 and abs(shown.size[0] / shown.size[1] - 4 / 3) < 0.1
    console = Console(file=io.StringIO(), force_terminal=True, width=40)
    console.print(TGPRenderable(shown, width=20, height=8))
    # Kitty's placeholder cells (the picture itself goes to the terminal as an escape sequence)
    assert "\U0010eeee" in console.file.getvalue()


def test_the_dashboard_never_imports_torch(tmp_path: Path):
    import subprocess
    import sys

    data = make_seg_dataset(tmp_path / "dataset")
    code = ("import sys; import tui.app, tui.cli, tui.forms, tui.preview; from core.training.registry import check_dataset; "
            f"print(check_dataset('unet', {str(data)!r}), file=sys.stderr); "
            "print(','.join(m for m in ('torch', 'sam2', 'ultralytics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "" and "2 videos" in out.stderr   # the form's dataset check needs no torch


# ---------------------------------------------------------------- snapshots at a fixed size

@pytest.fixture
def fixed_state(tmp_path: Path, monkeypatch):
    """A database with fixed ids and times: a running detect job, a queued one, a failed one, a
    training job with a loss curve, and a fresh CPU memory sample."""
    monkeypatch.chdir(tmp_path)
    ids = count(1)
    monkeypatch.setattr(store_module, "uuid", types.SimpleNamespace(
        uuid4=lambda: types.SimpleNamespace(hex=f"{next(ids):02d}c0ffee0000000000")))
    monkeypatch.setattr(store_module, "utc_now", lambda: "2026-11-21T08:00:00.000+00:00")
    cfg = load_config(None, ["paths.db=state.db"], use_default_path=False)
    s = Store(cfg.path(cfg.paths.db))
    run = s.add_job("clip_042", "inbox/clip_042")
    s.claim("worker-0-auto")
    s.update_job(run, mode="detect", frames_total=240, output_path="outbox/clip_042")
    s.set_progress(run, 130, 240, 6.5, 2)
    s.plan_chunk_rows(run, "forward", [(i, i * 49, i * 49 + 49) for i in range(5)])
    for i, state in enumerate(["done", "done", "running"]):
        s.set_chunk(run, "forward", i, i * 49, i * 49 + 49, state, 7.5 if state == "done" else None)
    s.log("info", "queued clip_042 from inbox", run)
    s.log("warning", "chunk 1 (frames 49-98): no detection; carried on from the hand-over", run)
    s.add_job("street_night", "inbox/street_night")
    bad = s.add_job("broken_upload", "inbox/broken_upload")
    s.finish_job(bad, store_module.JobState.FAILED, error="00017.jpg is truncated; copy the frame again")
    s.log("error", "broken_upload: 00017.jpg is truncated; copy the frame again", bad)
    train = s.add_job("unet: dataset", "dataset", kind="train", mode="unet", source="train")
    s.update_job(train, output_path="runs/unet-dataset", frames_total=60)
    s.set_progress(train, 40, 60, 2.0, 3)
    for step, loss in enumerate([0.9, 0.8, 0.72, 0.6, 0.55, 0.47, 0.44, 0.4], start=1):
        s.add_train_metric(train, 1 + step // 4, step * 5, loss)
    s.add_train_metric(train, 2, 40, None, {"epoch": 2, "train_loss": 0.47, "val_loss": 0.51, "val_iou": 0.62})
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    s.add_sample("cpu", "no NVIDIA GPU", 9216, 24576, 35.0, 1300)
    return cfg, {"run": run, "train": train, "bad": bad}


def _select(job_id):
    async def run_before(pilot) -> None:
        app = pilot.app
        await _settle(app, pilot)
        table = app.query_one(QueueTable)
        table.move_cursor(row=[str(k.value) for k in table.rows].index(job_id))
        await _settle(app, pilot)
    return run_before


def test_snapshot_queue_at_80x24(fixed_state, snap_compare):
    cfg, ids = fixed_state
    assert snap_compare(ReelmaskApp(cfg, refresh_seconds=60), terminal_size=(80, 24), run_before=_select(ids["run"]))


def test_snapshot_training_job_at_120x36(fixed_state, snap_compare):
    cfg, ids = fixed_state
    assert snap_compare(ReelmaskApp(cfg, refresh_seconds=60), terminal_size=(120, 36), run_before=_select(ids["train"]))


def _pressing(key: str):
    """run_before for a snapshot: the state read, then `key` pressed (a form or list opened)."""
    async def run_before(pilot) -> None:
        await _settle(pilot.app, pilot)
        await pilot.press(key)
        await pilot.pause()
    return run_before


def test_snapshot_training_form_at_80x24(fixed_state, snap_compare):
    cfg, _ = fixed_state
    assert snap_compare(ReelmaskApp(cfg, refresh_seconds=60), terminal_size=(80, 24), run_before=_pressing("t"))


def test_snapshot_preview_pane_and_a_long_error_at_80x24(fixed_state, snap_compare, tmp_path: Path, monkeypatch):
    """The running job's newest mask over its frame in the preview pane (half blocks, as in any
    terminal), and a failed job whose long error wraps in the events instead of being cut."""
    import cv2
    import numpy as np

    from core.outputs.masks import write_palette_png

    cfg, ids = fixed_state
    frames, masks = tmp_path / "inbox" / "clip_042", tmp_path / "outbox" / "clip_042" / "masks"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    yy, xx = np.mgrid[0:120, 0:160]
    frame = np.dstack([xx * 1.5, yy * 2, np.full_like(xx, 90)]).astype(np.uint8)
    cv2.imwrite(str(frames / "00129.png"), frame)
    objects = np.zeros((120, 160), np.uint8)
    objects[30:90, 20:70], objects[40:100, 95:145] = 1, 2
    write_palette_png(masks / "00129.png", objects)
    monkeypatch.setattr(store_module, "utc_now", lambda: "2026-11-21T08:00:05.000+00:00")   # a fixed event time
    store = Store(cfg.path(cfg.paths.db))
    long = ("00017.jpg is truncated (2,048 of 91,533 bytes; the upload stopped early); copy the frame again "
            "from the camera card, then run `reelmask retry 03c0ffee`")
    store.log("error", f"broken_upload: {long}", ids["bad"])

    async def preview(pilot) -> None:
        await _select(ids["run"])(pilot)
        await pilot.press("v")
        await _settle(pilot.app, pilot)

    assert snap_compare(ReelmaskApp(cfg, refresh_seconds=60), terminal_size=(80, 24), run_before=preview)


def test_snapshot_events_list_at_80x24(fixed_state, snap_compare):
    cfg, _ = fixed_state
    assert snap_compare(ReelmaskApp(cfg, refresh_seconds=60), terminal_size=(80, 24), run_before=_pressing("e"))


@_sync
async def test_job_panel_shows_chunks_and_prompts(fixed_state):
    cfg, ids = fixed_state
    out = Path("outbox") / ".clip_042.partial"
    out.mkdir(parents=True)
    (out / "prompts_used.jsonl").write_text(
        '{"frame": 0, "object_id": 1, "source": "detector"}\n{"frame": 49, "object_id": 1, "source": "handover"}\n'
        '{"frame": 60, "object_id": 2, "source": "detector"}\n')
    app = ReelmaskApp(cfg, refresh_seconds=60)
    async with app.run_test(size=(120, 36)) as pilot:
        await _select(ids["run"])(pilot)
        panel = app.query_one(JobPanel)
        strip = str(panel.query_one("#job-chunks").render())
        info = str(panel.query_one("#job-info").render())
    assert strip.startswith("forward ██▶··") and "2/5" in strip
    assert "prompts: 2 detector, 1 handover; objects 1, 2" in info
    assert "130/240 frames at 6.5/s, ETA 0:17" in info and "warning: chunk 1" in info


@_sync
async def test_decoder_training_shows_the_untrained_scores_and_skipped_epochs(fixed_state):
    cfg, _ = fixed_state
    s = Store(cfg.path(cfg.paths.db))
    job = s.add_job("sam2-decoder: vos", "vos", kind="train", mode="sam2-decoder", source="train")
    s.update_job(job, output_path="runs/sam2-decoder-vos", frames_total=20)
    s.set_progress(job, 20, 20, None, None)
    s.add_train_metric(job, 0, 0, None, {"epoch": 0, "train_loss": None, "val_loss": 4.36, "val_miou": 0.095,
                                         "lr": 1e-05})
    s.add_train_metric(job, 1, 10, 3.9)
    s.add_train_metric(job, 2, 20, None, {"epoch": 2, "train_loss": 3.17, "val_loss": 2.88, "val_miou": 0.109,
                                          "lr": 1e-05})
    for epoch, state in ((1, "done"), (2, "done"), (3, "skipped")):
        s.set_chunk(job, "epoch", epoch, 0, 0, state)
    app = ReelmaskApp(cfg, refresh_seconds=60)
    async with app.run_test(size=(120, 36)) as pilot:
        await _select(job)(pilot)
        panel = app.query_one(JobPanel)
        info = str(panel.query_one("#job-info").render())
        strip = str(panel.query_one("#job-chunks").render())
    assert "before training: val_loss 4.3600, val_miou 0.0950" in info
    assert "epoch 2: train_loss 3.1700, val_loss 2.8800, val_miou 0.1090, lr 1.0e-05" in info
    assert "██-" in strip
