"""The dashboard's panels. Each takes a Snapshot (attributes down) and draws it; none reads the database."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Label, ProgressBar, RichLog, Sparkline, Static

from core.training.events import format_metrics
from tui.state import DeviceMemory, JobDetail, Snapshot, eta_seconds, format_duration, format_mb, percent

QUEUE_COLUMNS = ("id", "name", "kind", "mode", "state", "done/total", "%", "fps", "ETA")
STATE_STYLE = {"queued": "cyan", "running": "bold yellow", "done": "green", "failed": "bold red",
               "cancelled": "magenta", "interrupted": "yellow"}
CHUNK_STYLE = {"done": ("█", "green"), "running": ("▶", "bold yellow"), "pending": ("·", "grey50"),
               "failed": ("✗", "bold red"), "cancelled": ("✗", "magenta"),
               "skipped": ("-", "grey50")}   # epochs an early-stopped training run did not need


class QueueTable(DataTable):
    """One row per job; the cursor row is the selected job."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for name in QUEUE_COLUMNS:
            self.add_column(name, key=name)

    def show(self, snapshot: Snapshot) -> None:
        rows = {j.id: self._cells(j) for j in snapshot.jobs}
        current = [str(k.value) for k in self.rows]
        if current == list(rows):  # same jobs in the same order: update cells, keep the cursor
            for job_id, cells in rows.items():
                for name, value in zip(QUEUE_COLUMNS, cells):
                    self.update_cell(job_id, name, value, update_width=True)  # "9" can become "100"
            return
        selected = self.selected_id
        self.clear()
        for job_id, cells in rows.items():
            self.add_row(*cells, key=job_id)
        if selected in rows:
            self.move_cursor(row=list(rows).index(selected))

    @property
    def selected_id(self) -> str | None:
        if not self.row_count:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    @staticmethod
    def _cells(job) -> tuple:
        pct = percent(job)
        total = job.frames_total
        return (job.id[:8], job.name, job.kind, job.mode or "-", Text(job.state, style=STATE_STYLE.get(job.state, "")),
                f"{job.frames_done}/{total}" if total else "-", f"{pct:.0f}" if pct is not None else "-",
                f"{job.fps:.1f}" if job.fps else "-", format_duration(eta_seconds(job)))


class ChunkStrip(Static):
    """A line per sweep: one mark per chunk (or epoch), coloured by state."""

    def show(self, chunks: tuple[dict, ...]) -> None:
        text = Text()
        by_sweep: dict[str, list[dict]] = {}
        for c in chunks:
            by_sweep.setdefault(c["sweep"], []).append(c)
        for sweep, rows in by_sweep.items():
            if text:
                text.append("\n")
            text.append(f"{sweep[:7]:<8}", style="bold")
            for c in sorted(rows, key=lambda c: c["idx"]):
                mark, style = CHUNK_STYLE.get(c["state"], ("?", ""))
                text.append(mark, style=style)
            states = [c["state"] for c in rows]
            text.append(f" {states.count('done')}/{len(rows)}", style="dim")
        self.update(text if chunks else Text("no chunks yet", style="dim"))


class JobPanel(VerticalScroll):
    """The selected job: progress bar, chunk strip, prompts, warnings, error, output path; loss curve."""

    def compose(self) -> ComposeResult:
        yield Label("select a job in the queue", id="job-title")
        yield ProgressBar(total=None, show_eta=False, id="job-progress")
        yield ChunkStrip(id="job-chunks")
        yield Sparkline([], id="job-loss")
        yield Static(id="job-info")

    def show(self, detail: JobDetail | None) -> None:
        title = self.query_one("#job-title", Label)
        bar = self.query_one("#job-progress", ProgressBar)
        loss = self.query_one("#job-loss", Sparkline)
        info = self.query_one("#job-info", Static)
        if detail is None:
            title.update("select a job in the queue")
            bar.display = False
            self.query_one(ChunkStrip).show(())
            loss.display = False
            info.update("")
            return
        job = detail.job
        title.update(Text.assemble((job.name, "bold"), f"  {job.id[:8]} · {job.kind}/{job.mode or '-'} · ",
                                   (job.state, STATE_STYLE.get(job.state, ""))))
        bar.display = bool(job.frames_total)  # unknown until the job starts
        bar.update(total=job.frames_total or None, progress=job.frames_done)
        self.query_one(ChunkStrip).show(detail.chunks)
        lines = Text()
        unit = "steps" if job.kind == "train" else "frames"
        lines.append(f"{job.frames_done}/{job.frames_total or '?'} {unit}")
        if job.fps:
            lines.append(f" at {job.fps:.1f}/s, ETA {format_duration(eta_seconds(job))}")
        if job.mem_device and job.mem_job_mb is not None:
            peak = f", worker peak {format_mb(job.mem_peak_mb)}" if job.mem_peak_mb is not None else ""
            lines.append(f"\n{job.mem_device}: job holds {format_mb(job.mem_job_mb)}{peak}")
        loss.display = len(detail.losses) >= 3  # fewer points draw as a solid block, not a curve
        if detail.losses:
            loss.data = list(detail.losses)
            lines.append(f"\nloss {detail.losses[0]:.4f} → {detail.losses[-1]:.4f}")
        if detail.epochs:
            first, last = detail.epochs[0], detail.epochs[-1]
            if first.get("epoch") == 0 and last is not first:  # the untrained model's scores, to compare
                lines.append("\nbefore training: " + format_metrics(
                    {k: v for k, v in first.items() if k in ("val_loss", "val_miou", "val_iou")}))
            shown = format_metrics({k: v for k, v in last.items() if isinstance(v, float)})
            when = "before training" if last.get("epoch") == 0 else f"epoch {last.get('epoch', '?')}"
            lines.append(f"\n{when}: {shown}")
        if detail.prompts:
            given = ", ".join(f"{n} {src}" for src, n in sorted(detail.prompts.items()))
            lines.append(f"\nprompts: {given}; objects {', '.join(map(str, detail.prompt_objects))}")
        for w in detail.warnings:
            lines.append(f"\nwarning: {w}", style="yellow")
        if job.error:
            lines.append(f"\nerror: {job.error}", style="bold red")
        if job.output_path:
            lines.append(f"\noutput: {job.output_path}", style="dim")
        lines.append(f"\ninput: {job.input_path}", style="dim")
        info.update(lines)


class DeviceRow(Vertical):
    def __init__(self, device: str, **kw):
        super().__init__(**kw)
        self.device = device
        self.local = False

    def compose(self) -> ComposeResult:
        yield Label(id="device-label")
        with Horizontal(classes="gauge"):
            yield Label("in use", classes="gauge-label")
            yield ProgressBar(total=100, show_eta=False, show_percentage=True, id="device-bar")
        with Horizontal(classes="gauge"):
            yield Label("trend", classes="gauge-label")
            yield Sparkline([], id="device-history")
        yield Label("", id="device-span", classes="gauge-note")

    def show(self, d: DeviceMemory) -> None:
        where = "this machine" if d.node is None else f"node {d.node}"
        if d.device == "cpu":
            head = Text.assemble((f"No NVIDIA GPU on {where}", "bold"),
                                 f"\nRAM {format_mb(d.used_mb)}/{format_mb(d.total_mb)}")
        else:
            head = Text.assemble(("" if d.node is None else f"{d.node} ", "bold"), (f"{d.device} {d.name}", "bold"),
                                 f" {format_mb(d.used_mb)}/{format_mb(d.total_mb)}")
            if d.util is not None:
                head.append(f" · {d.util:.0f}% busy")
        if d.rss_mb is not None:
            who = "dashboard" if self.local else ("daemon" if d.node is None else "actor")
            head.append(f"\n{who} process {format_mb(d.rss_mb)}", style="dim")
        if d.running:
            head.append(f"\nrunning {', '.join(d.running)}", style="cyan")
        self.query_one("#device-label", Label).update(head)
        self.query_one("#device-bar", ProgressBar).update(total=d.total_mb or None, progress=d.used_mb or 0)
        self.query_one("#device-history", Sparkline).data = list(d.history)
        peak = max(d.history) if d.history else None
        self.query_one("#device-span", Label).update(
            Text(f"trend: last {len(d.history)} samples, oldest left; peak {format_mb(peak)}", style="dim")
            if d.history else "")


class GpuPanel(VerticalScroll):
    """Memory per device from the daemon's samples, with a short history."""

    def compose(self) -> ComposeResult:
        yield Static(id="gpu-status")

    def show(self, snapshot: Snapshot, stale_after: float) -> None:
        status = self.query_one("#gpu-status", Static)
        status.display = snapshot.sample_age is None or snapshot.sample_age > stale_after
        seen = "this machine as the dashboard reads it" if snapshot.local else ""
        if snapshot.sample_age is None:
            status.update(Text(f"no memory samples from `reelmask daemon` yet (is it running?)"
                               f"{'; showing ' + seen if seen else ''}", style="dim"))
        elif snapshot.sample_age > stale_after:
            status.update(Text(f"daemon not sampling: last sample {format_duration(snapshot.sample_age)} ago"
                               f"{'; showing ' + seen if seen else ''}", style="yellow"))
        else:
            status.update("")
        rows = {r.device: r for r in self.query(DeviceRow)}
        for key, row in rows.items():
            if key not in {d.key for d in snapshot.devices}:
                row.remove()
        for d in snapshot.devices:
            row = rows.get(d.key)
            if row is None:
                row = DeviceRow(d.key)
                row.local = snapshot.local
                self.mount(row)
                self.call_after_refresh(row.show, d)
            else:
                row.local = snapshot.local
                row.show(d)


class PreviewPanel(VerticalScroll):
    """The selected job's latest finished frame with masks and ids: in half-block characters, or with a
    textual-image widget (`graphics`, from tui.preview.pick_graphics) in the terminal's own graphics."""

    def __init__(self, *args, graphics=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphics = graphics

    @property
    def detail(self) -> int:
        """Pixels per half-block pixel to ask the reader for: with graphics, a cell's width in pixels
        (a cell is about twice as high, as two half-block pixels are)."""
        if self.graphics is None:
            return 1
        try:
            from textual_image._terminal import get_cell_size

            return max(2, min(32, get_cell_size().width))
        except Exception:
            return 8

    def compose(self) -> ComposeResult:
        yield Static(id="preview-image")
        if self.graphics is not None:
            yield self.graphics(id="preview-graphics")
        yield Label("", id="preview-caption")

    def size_wanted(self) -> tuple[int, int]:
        """Columns and text rows the picture may take (one row is the caption)."""
        return max(8, self.size.width - 2), max(2, self.size.height - 1)

    def show(self, preview) -> None:
        image = self.query_one("#preview-image", Static)
        caption = self.query_one("#preview-caption", Label)
        graphic = self.query_one("#preview-graphics") if self.graphics is not None else None
        if preview is None:
            return  # not read yet
        if isinstance(preview, str):
            image.display = True
            image.update(Text(preview, style="dim"))
            caption.update("")
            if graphic is not None:
                graphic.display = False
            return
        if graphic is not None:
            from PIL import Image as PILImage

            image.display, graphic.display = False, True
            if getattr(graphic, "_shown", None) is not preview:
                graphic.image = PILImage.fromarray(preview.rgb)
                graphic._shown = preview
        else:
            from tui.preview import half_blocks

            image.update(half_blocks(preview.rgb))
        caption.update(Text(preview.caption, style="dim"))


EVENT_STYLE = {"error": "bold red", "warning": "yellow", "info": ""}


def event_line(e: dict, whole: bool = True) -> Text:
    """One event as `HH:MM:SS job message`; `whole=False` keeps only its first line (for a list)."""
    line = Text(e["ts"][11:19] + " ", style="dim")
    if e["job_id"]:
        line.append(f"{e['job_id'][:8]} ", style="cyan")
    message = e["message"] if whole else e["message"].splitlines()[0] if e["message"] else ""
    line.append(message, style=EVENT_STYLE.get(e["level"], ""))
    return line


class EventLog(RichLog):
    """Daemon events, newest at the bottom; only new lines are appended. The events shown are kept
    (as many as the log holds) so `e` can list them and show any one whole."""

    last_id = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []

    def show(self, events: tuple[dict, ...]) -> None:
        for e in events:
            if e["id"] <= self.last_id:
                continue
            self.last_id = e["id"]
            self.seen.append(e)
            self.write(event_line(e))
        keep = self.max_lines or 500
        if len(self.seen) > keep:
            del self.seen[:-keep]
