"""`reelmask tui`: the queue, the selected job, device memory and the event log, over SSH.

State comes from the SQLite database, opened read-only, on a worker thread every `refresh_seconds`;
actions write commands (cancel, retry, pause/resume, train) that the daemon carries out. A database
that is busy, missing or unreadable is shown in the title and read again on the next refresh; a
command that cannot be written is reported as not sent. No torch in here.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header

from core.config import Config
from core.errors import StateError
from core.store import Access, CommandKind, Store
from tui.forms import ConfirmScreen, EventsScreen, TrainForm, TrainRequest
from tui.state import STATE_FILTERS, LocalMemory, Snapshot, read_snapshot
from tui.preview import PreviewReader
from tui.widgets import EventLog, GpuPanel, JobPanel, PreviewPanel, QueueTable


class ReelmaskApp(App):
    CSS_PATH = "reelmask.tcss"
    TITLE = "reelmask"
    BINDINGS = [
        Binding("c", "cancel_job", "Cancel"),
        Binding("r", "retry_job", "Retry"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("t", "train", "Train"),
        Binding("f", "cycle_filter", "Filter"),
        Binding("v", "toggle_preview", "Preview"),
        Binding("e", "show_events", "Events"),
        Binding("q", "quit", "Quit"),
    ]

    state_filter: reactive[str | None] = reactive(None)
    snapshot: reactive[Snapshot | None] = reactive(None)
    db_problem: reactive[str | None] = reactive(None)   # shown in the title while the database cannot be read

    def __init__(self, cfg: Config, refresh_seconds: float = 1.0, lock_wait: float = 2.0, graphics=None,
                 graphics_note: str = ""):
        """`lock_wait`: seconds a read or a command waits for another process's lock on the database;
        `graphics`: the textual-image widget class for the preview (tui.preview.pick_graphics), None for half blocks."""
        super().__init__()
        self.graphics, self.graphics_note = graphics, graphics_note   # the note says why, shown on the pane
        self.cfg = cfg
        self.refresh_seconds = refresh_seconds
        self.lock_wait = lock_wait
        self.db = cfg.path(cfg.paths.db)
        self.store: Store | None = None      # commands, written from the UI thread; opened on first use
        self._reader: Store | None = None    # reads, on the refresh worker thread
        self._reading = threading.Lock()     # one read at a time, however long a lock makes it wait
        self._local: LocalMemory | None = None
        self._stale_after = max(10.0, 5 * cfg.daemon.sample_seconds)
        self._previews = PreviewReader()

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield QueueTable(id="queue")
        with Horizontal(id="middle"):
            yield JobPanel(id="job")
            yield GpuPanel(id="gpu")
            yield PreviewPanel(id="preview", graphics=self.graphics)
        yield EventLog(id="log", max_lines=500, wrap=True, markup=False, min_width=20)
        yield Footer()

    def on_mount(self) -> None:
        try:  # the database the dashboard reads, short when it is under the working directory
            self.sub_title = str(self.db.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            self.sub_title = str(self.db)
        self.query_one("#queue").border_title = "queue"
        self.query_one("#job").border_title = "job"
        self.query_one("#gpu").border_title = "memory (v: preview)"
        self.query_one("#preview").border_title = "preview (v: memory)"
        if self.graphics_note:  # how the preview draws; a failed choice's reason once, as a notice
            short, _, detail = self.graphics_note.partition("\n")
            self.query_one("#preview").border_subtitle = short
            if detail:
                self.notify(detail, title=f"preview: {short}", severity="warning", timeout=10)
        self.query_one("#preview").display = False
        self.query_one("#log").border_title = "events (e: list, each whole)"
        self.query_one(QueueTable).focus()
        self.reload()
        self.set_interval(self.refresh_seconds, self.reload)

    # ---------------------------------------------------------------- state

    def reload(self) -> None:
        try:
            table, log = self.query_one(QueueTable), self.query_one(EventLog)
        except NoMatches:  # quitting: the widgets are gone before the interval timer stops
            return
        pane = self.query_one(PreviewPanel)
        size = (*pane.size_wanted(), pane.detail) if pane.display else None
        self.read_state(table.selected_id, self.state_filter, log.last_id, size)

    @work(thread=True, exclusive=True, group="refresh")
    def read_state(self, selected: str | None, state: str | None, last_event: int,
                   preview_size: tuple[int, int, int] | None = None) -> None:
        if not self._reading.acquire(blocking=False):
            return  # the previous read still waits for a lock; this refresh is skipped
        try:
            snap = self._read(selected, state, last_event)
            if preview_size is not None:  # files, not the database: read here, off the UI thread
                job = snap.detail.job if snap.detail else None
                try:
                    picture = self._previews.read(job, *preview_size)
                except Exception as e:  # a half-written file, a vanished folder: said, tried again next time
                    picture = f"no preview this time ({type(e).__name__}: {e})"
                snap = dataclasses.replace(snap, preview=picture)
        except StateError as e:
            self.call_from_thread(self._show_problem, e)
            return
        finally:
            self._reading.release()
        self.call_from_thread(self._show_snapshot, snap)

    def _read(self, selected: str | None, state: str | None, last_event: int) -> Snapshot:
        if self._local is None:
            self._local = LocalMemory()
        if self._reader is not None and self._reader.snapshot:  # a copy of the file: take a fresh one
            self._close_reader()
        if self._reader is None:
            self._reader = Store(self.db, Access.READ, timeout=self.lock_wait, config_source=self.cfg.source)
        try:
            return read_snapshot(self._reader, selected, state, last_event, local=self._local,
                                 stale_after=self._stale_after)
        except sqlite3.Error as e:
            error = self._reader.explain(e)
            self._close_reader()  # opened again on the next refresh
            raise error from e

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _show_snapshot(self, snap: Snapshot) -> None:
        self.db_problem = None
        self.snapshot = snap

    def _show_problem(self, error: StateError) -> None:
        problem = "database busy, retrying" if error.busy else "database unreadable, retrying"
        if self.db_problem != problem:  # once, when it starts: the full reason and the way out
            self.notify(str(error), title=problem, severity="warning" if error.busy else "error", timeout=10)
        self.db_problem = problem

    def watch_db_problem(self, problem: str | None) -> None:
        self.title = f"{self.TITLE} · {problem}" if problem else self.TITLE

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        if snap is None:
            return
        try:
            table = self.query_one(QueueTable)
        except NoMatches:  # a read that finished while the dashboard was quitting
            return
        table.show(snap)
        shown = f"queue · {self.state_filter or 'all'} ({len(snap.jobs)})"
        table.border_title = shown + (" · PAUSED" if snap.paused else "")
        selected = table.selected_id
        detail = snap.detail if snap.detail and snap.detail.job.id == selected else None
        self.query_one(JobPanel).show(detail)
        if selected and detail is None:  # the cursor moved since this snapshot was read
            self.reload()
        self.query_one(GpuPanel).show(snap, stale_after=self._stale_after)
        self.query_one(PreviewPanel).show(snap.preview)
        self.query_one(EventLog).show(snap.events)

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.reload()

    def watch_state_filter(self, _value: str | None) -> None:
        if self.is_mounted:
            self.reload()

    # ---------------------------------------------------------------- actions

    def _selected(self) -> str | None:
        job_id = self.query_one(QueueTable).selected_id
        if job_id is None:
            self.notify("no job selected", severity="warning")
        return job_id

    def _send(self, what: str, kind: CommandKind, job_id: str | None = None, payload: dict | None = None) -> bool:
        """Write one command for the daemon; when it cannot be written, say so (nothing was sent)."""
        try:
            if self.store is None:
                self.store = Store(self.db, Access.WRITE, timeout=self.lock_wait, config_source=self.cfg.source)
            try:
                self.store.add_command(kind, job_id, payload)
            except sqlite3.Error as e:
                error = self.store.explain(e)
                self.store.close()
                self.store = None
                raise error from e
        except StateError as e:
            self.notify(f"{what} was not sent: {e}", title="not sent", severity="error", timeout=10)
            return False
        return True

    def action_cancel_job(self) -> None:
        job_id = self._selected()
        if not job_id:
            return
        job = next((j for j in (self.snapshot.jobs if self.snapshot else ()) if j.id == job_id), None)
        what = f"{job.name} ({job_id[:8]}, {job.state})" if job else job_id[:8]
        running = job is not None and job.state == "running"
        question = (f"Cancel {what}?\n" + ("It stops within a frame; its partial output is removed and the input "
                                           "goes to failed/." if running else "It will not run."))

        def answered(yes: bool | None) -> None:
            if yes and self._send(f"cancel of {job_id[:8]}", CommandKind.CANCEL, job_id):
                self.notify(f"cancel requested for {job_id[:8]}")

        self.push_screen(ConfirmScreen(question, "Cancel the job"), answered)

    def action_retry_job(self) -> None:
        job_id = self._selected()
        if job_id and self._send(f"retry of {job_id[:8]}", CommandKind.RETRY, job_id):
            self.notify(f"retry requested for {job_id[:8]}")

    def action_toggle_pause(self) -> None:
        paused = self.snapshot is not None and self.snapshot.paused  # as last read; the daemon has the final say
        kind = CommandKind.RESUME if paused else CommandKind.PAUSE
        if self._send(kind.value, kind):
            self.notify("resume requested" if paused else "pause requested (the running job finishes)")

    def action_toggle_preview(self) -> None:
        """The right-hand pane shows device memory or the selected job's latest frame."""
        pane, gpu = self.query_one(PreviewPanel), self.query_one(GpuPanel)
        pane.display, gpu.display = not pane.display, pane.display
        self.call_after_refresh(self.reload)  # once the pane has its size

    def action_show_events(self) -> None:
        """Every event shown so far in a list; the selected one whole, however long."""
        self.push_screen(EventsScreen(self.query_one(EventLog).seen))

    def action_cycle_filter(self) -> None:
        i = STATE_FILTERS.index(self.state_filter)
        self.state_filter = STATE_FILTERS[(i + 1) % len(STATE_FILTERS)]

    def action_train(self) -> None:
        self.push_screen(TrainForm(self.cfg), self._queue_training)

    def _queue_training(self, request: TrainRequest | None) -> None:
        if request is None:
            return
        if self._send(f"training {request.kind}", CommandKind.TRAIN, payload=request.payload()):
            self.notify(f"training {request.kind} on {request.data} sent to the daemon")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Cancel job", "Cancel the selected job (c)", self.action_cancel_job)
        yield SystemCommand("Retry job", "Queue the selected failed or cancelled job again (r)", self.action_retry_job)
        yield SystemCommand("Pause / resume queue", "Stop or restart claiming queued jobs (p)", self.action_toggle_pause)
        yield SystemCommand("Train a model", "Open the training form (t)", self.action_train)
        yield SystemCommand("Preview or memory", "Show the selected job's latest frame, or device memory (v)",
                            self.action_toggle_preview)
        yield SystemCommand("Events", "List the events and show the selected one whole (e)", self.action_show_events)
        yield SystemCommand("Filter by state", "Show all, queued, running, done, failed ... jobs (f)",
                            self.action_cycle_filter)
