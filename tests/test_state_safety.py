"""The state database under stress: opened read-only while another process holds its locks, missing,
of another schema, damaged, or wanted by a second daemon. Real SQLite, real subprocesses."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import store as store_module
from core.cli import main as cli_main
from core.config import load_config
from core.errors import StateError
from core.state_lock import DaemonLock
from core.store import Access, Store
from tests.conftest import reelmask_command
from tests.daemon_process import wait, scaled
from tui.app import ReelmaskApp
from tui.widgets import QueueTable

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = scaled(120.0)  # seconds on an idle machine, more under load: starting Python takes long then


def _wait(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = DEADLINE):
    return wait(cond, timeout, what, proc)


def _cli(cwd: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *reelmask_command(), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=DEADLINE, env={**os.environ, "YOLO_OFFLINE": "1",
                                                            "PYTHONPATH": str(ROOT)})


def _setup(tmp_path: Path, db: str = "state.db") -> tuple[Path, Path]:
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndb = "{db}"\n')
    return config, tmp_path / db


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _crash_after_writes(db: Path, name: str) -> None:
    """A writer that commits a job and dies without a checkpoint: the commit is only in the -wal file."""
    code = (f"import os; from core.store import Store; s = Store({str(db)!r}); "
            f"s.conn.execute('PRAGMA wal_autocheckpoint = 0'); s.add_job({name!r}, '/x'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=DEADLINE)


# ---------------------------------------------------------------- status: read-only, never creates, never migrates

@pytest.mark.parametrize("lock", ["IMMEDIATE", "EXCLUSIVE"])
def test_status_reads_while_another_connection_holds_the_write_lock(tmp_path: Path, lock: str):
    config, db = _setup(tmp_path)
    store = Store(db)
    job = store.add_job("clip", tmp_path / "clip")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute(f"BEGIN {lock}")
    holder.execute("INSERT INTO settings (key, value) VALUES ('held', '1')")
    before = _digest(db)
    try:
        # the lock is held for the whole run: a status that needed it could only fail ("busy", exit 2)
        r = _cli(tmp_path, "status", "--json", "--config", str(config))
    finally:
        holder.execute("ROLLBACK")
    assert r.returncode == 0, r.stderr
    assert [j["id"] for j in json.loads(r.stdout)["jobs"]] == [job]
    assert _digest(db) == before


def test_status_at_a_mistyped_path_creates_nothing(tmp_path: Path):
    config, db = _setup(tmp_path, db="stat.db")
    Store(tmp_path / "state.db").close()  # the real one
    r = _cli(tmp_path, "status", "--json", "--config", str(config))
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert str(db) in line and str(config) in line and "reelmask daemon" in line and "paths.db" in line
    assert not db.exists()


def test_status_with_built_in_defaults_names_them(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REELMASK_CONFIG", raising=False)
    assert cli_main(["status"]) == 2
    assert "config: built-in defaults" in capsys.readouterr().err and not (tmp_path / "reelmask.db").exists()


def test_status_cancel_and_retry_never_migrate(tmp_path: Path, monkeypatch, capsys):
    config, db = _setup(tmp_path)
    old = store_module._MIGRATIONS
    monkeypatch.setattr(store_module, "_MIGRATIONS", old[:1])
    first = Store(db)
    job = first.add_job("clip", tmp_path / "clip")
    first.close()
    monkeypatch.setattr(store_module, "_MIGRATIONS", old)
    before = _digest(db)
    for args in (["status", "--json"], ["cancel", job], ["retry", job]):
        assert cli_main([*args, "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert "schema version 1" in err and "start `reelmask daemon` once" in err, err
    assert _digest(db) == before
    assert Store(db).schema_version() == old[-1][0]  # the daemon's way of opening upgrades it


def test_a_newer_schema_is_refused(tmp_path: Path, capsys):
    config, db = _setup(tmp_path)
    store = Store(db)
    store.conn.execute("INSERT INTO migrations (version, applied_at) VALUES (99, 'later')")
    assert cli_main(["status", "--config", str(config)]) == 2
    assert "schema version 99, newer than this reelmask" in capsys.readouterr().err
    with pytest.raises(StateError, match="newer"):
        Store(db)


def test_status_waits_for_the_busy_timeout_then_says_busy(tmp_path: Path, monkeypatch, capsys):
    """A rollback-journal database with an EXCLUSIVE lock cannot be read at all."""
    config, db = _setup(tmp_path)
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO settings (key, value) VALUES ('held', '1')")
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.2)
    try:
        assert cli_main(["status", "--json", "--config", str(config)]) == 2
        assert cli_main(["cancel", "abc", "--config", str(config)]) == 2
    finally:
        holder.execute("ROLLBACK")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("is busy" in x and x.endswith("try again") and str(db) in x for x in lines)


def test_cancel_never_creates_a_database(tmp_path: Path, capsys):
    config, db = _setup(tmp_path)
    assert cli_main(["cancel", "abc", "--config", str(config)]) == 2
    assert "no state database at" in capsys.readouterr().err and not db.exists()


# ---------------------------------------------------------------- read-only opens of a WAL database

def test_read_only_open_while_a_writer_holds_the_database_open(tmp_path: Path):
    daemon = Store(tmp_path / "state.db")
    daemon.conn.execute("PRAGMA wal_autocheckpoint = 0")
    job = daemon.add_job("clip", tmp_path / "clip")
    reader = Store(tmp_path / "state.db", Access.READ)
    assert [j.id for j in reader.jobs()] == [job] and not reader.snapshot
    later = daemon.add_job("dog", tmp_path / "dog")  # committed while the reader is open: seen on the next read
    assert {j.id for j in reader.jobs()} == {job, later}
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.add_command("pause")


def test_read_only_open_with_no_other_connection(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    job = store.add_job("clip", tmp_path / "clip")
    store.close()
    assert _files(tmp_path) == {"state.db"}  # the last writer checkpointed and removed -wal and -shm
    before = _digest(tmp_path / "state.db")
    reader = Store(tmp_path / "state.db", Access.READ)
    assert [j.id for j in reader.jobs()] == [job] and not reader.snapshot
    reader.close()
    assert _digest(tmp_path / "state.db") == before


def test_read_only_open_after_a_crash_sees_the_commits_in_the_wal(tmp_path: Path):
    Store(tmp_path / "state.db").close()
    _crash_after_writes(tmp_path / "state.db", "clip")
    (tmp_path / "state.db-shm").unlink()
    assert (tmp_path / "state.db-wal").stat().st_size > 0
    assert [j.name for j in Store(tmp_path / "state.db", Access.READ).jobs()] == ["clip"]


def _reader_who_cannot_write(folder: Path) -> tuple[str, ...]:
    """A command prefix for a process that may read `folder` but not write to it (the folder is made
    read-only; root also gives up the capability that lets it write anyway)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a reader that lacks write access")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}")


def test_status_in_a_folder_the_reader_cannot_write(tmp_path: Path):
    """SQLite needs a -shm file to read a WAL database in place; here it can neither find nor make one."""
    folder = tmp_path / "state"
    folder.mkdir()
    config, db = _setup(folder)
    store = Store(db)
    job = store.add_job("clip", tmp_path / "clip")
    store.close()
    prefix = _reader_who_cannot_write(folder)
    status = lambda: _cli(tmp_path, "status", "--json", "--config", str(config), prefix=prefix)  # noqa: E731
    folder.chmod(0o555)
    try:
        r = status()  # no writer: the file alone holds every commit, read from a private copy
        assert r.returncode == 0, r.stderr
        assert [j["id"] for j in json.loads(r.stdout)["jobs"]] == [job]
        assert _files(folder) == {"config.toml", "state.db"}

        folder.chmod(0o755)
        daemon = Store(db)  # a writer has it open: its -shm exists and the reader reads in place
        daemon.conn.execute("PRAGMA wal_autocheckpoint = 0")
        later = daemon.add_job("dog", tmp_path / "dog")
        folder.chmod(0o555)
        r = status()
        assert r.returncode == 0, r.stderr
        assert {j["id"] for j in json.loads(r.stdout)["jobs"]} == {job, later}
        daemon.close()

        folder.chmod(0o755)
        _crash_after_writes(db, "cat")
        (folder / "state.db-shm").unlink()
        folder.chmod(0o555)
        r = status()  # commits only a writer can recover: said so, not a stale answer
        assert r.returncode == 2 and "state.db-wal" in r.stderr and "start `reelmask daemon` once" in r.stderr
    finally:
        folder.chmod(0o755)


# ---------------------------------------------------------------- the dashboard

def _sync(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def _app(tmp_path: Path, make: bool = True) -> tuple[ReelmaskApp, list[str], Path]:
    cfg = load_config(None, [f"paths.db={tmp_path / 'state.db'}"], use_default_path=False)
    if make:
        Store(tmp_path / "state.db").close()
    app = ReelmaskApp(cfg, refresh_seconds=0.2, lock_wait=0.2)
    notes: list[str] = []
    notify = app.notify

    def record(message, **kw):
        notes.append(message)
        notify(message, **kw)

    app.notify = record
    return app, notes, tmp_path / "state.db"


async def _until(pilot, cond, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


@_sync
async def test_dashboard_commands_under_a_held_write_lock(tmp_path: Path):
    app, notes, db = _app(tmp_path)
    store = Store(db)
    job = store.add_job("clip", tmp_path / "clip")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO settings (key, value) VALUES ('held', '1')")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(QueueTable)
        await _until(pilot, lambda: table.row_count == 1, "the queue (WAL reads go on under the lock)")
        for i, key in enumerate(("c", "p", "r")):
            await pilot.press(key)
            if key == "c":  # cancel asks first
                await pilot.pause()
                await pilot.press("y")
            await _until(pilot, lambda: len(notes) > i, f"'{key}' to be reported")
        assert len(notes) == 3 and all("not sent" in n and "is busy" in n and "try again" in n for n in notes), notes
        assert app.db_problem is None and app.title == "reelmask"
        holder.execute("ROLLBACK")
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await _until(pilot, lambda: notes[-1].startswith("cancel requested"), "the cancel to be sent")
        assert app.is_running
    assert [(c.kind, c.job_id) for c in store.pending_commands()] == [("cancel", job)]


@_sync
async def test_dashboard_shows_database_busy_and_recovers(tmp_path: Path):
    """Readers are locked out only by a rollback-journal EXCLUSIVE lock; the title says so until it goes."""
    app, notes, db = _app(tmp_path)
    store = Store(db)
    store.add_job("clip", tmp_path / "clip")
    store.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(QueueTable)
        await _until(pilot, lambda: table.row_count == 1, "the queue")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO settings (key, value) VALUES ('held', '1')")
        await _until(pilot, lambda: app.db_problem is not None, "the refresh to fail")
        assert app.title == "reelmask · database busy, retrying"
        assert any("is busy" in n for n in notes) and table.row_count == 1  # the last good state stays
        await pilot.press("p")
        await _until(pilot, lambda: "not sent" in notes[-1], "the pause to be refused")
        holder.execute("ROLLBACK")
        await _until(pilot, lambda: app.db_problem is None, "the refresh to succeed again")
        assert app.title == "reelmask" and app.is_running


@_sync
async def test_dashboard_without_a_database(tmp_path: Path):
    app, notes, db = _app(tmp_path, make=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.db_problem is not None, "the refresh to fail")
        assert app.title == "reelmask · database unreadable, retrying"
        assert "no state database at" in notes[0] and str(db) in notes[0]
        await pilot.press("p")
        await _until(pilot, lambda: "not sent" in notes[-1], "the pause to be refused")
        Store(db).close()  # the daemon starts
        await _until(pilot, lambda: app.db_problem is None, "the dashboard to read it")
    assert Store(db, Access.READ).pending_commands() == []


def test_tui_command_refuses_a_missing_database(tmp_path: Path, capsys):
    config, db = _setup(tmp_path)
    assert cli_main(["tui", "--config", str(config)]) == 2
    assert "no state database at" in capsys.readouterr().err and not db.exists()


# ---------------------------------------------------------------- one daemon per database

DAEMON_CONFIG = """
[paths]
inboxes = ["inbox"]
[models]
sam2_weights = "random"
image_size = 256
[daemon]
devices = ["cpu"]
tick_seconds = 0.1
"""


def _start_daemon(tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([*reelmask_command(), "daemon", "--config", "config.toml"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "a"),
                            env={**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(ROOT)})


def _holder(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _started(db: Path) -> bool:
    try:
        return any(e["message"].startswith("daemon started") for e in Store(db, Access.READ).events())
    except StateError:
        return False  # not made or not migrated yet


def test_a_second_daemon_exits_at_once_and_a_killed_ones_lock_is_free(tmp_path: Path):
    (tmp_path / "config.toml").write_text(DAEMON_CONFIG)
    db, lock = tmp_path / "reelmask.db", tmp_path / "reelmask.db.lock"
    first = _start_daemon(tmp_path)
    try:
        _wait(lambda: _holder(lock) == first.pid and _started(db), "the first daemon to start", first)
        store = Store(db, Access.WRITE)
        running = store.add_job("busy_clip", tmp_path / "nowhere")  # as if the first daemon ran it
        store.update_job(running, state="running", worker="worker-0-cpu")

        second = _cli(tmp_path, "daemon", "--config", "config.toml")
        assert second.returncode == 2, second.stderr
        [line] = second.stderr.strip().splitlines()
        assert f"pid {first.pid}" in line and str(db) in line and "paths.db" in line
        assert store.job(running).state == "running"  # not requeued under the first daemon's feet
        assert first.poll() is None

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=DEADLINE)
        third = _start_daemon(tmp_path)
        try:
            _wait(lambda: _holder(lock) == third.pid, "the new daemon's lock", third)
            _wait(lambda: any("requeued after a restart" in e["message"] for e in store.events(job_id=running)),
                  "the orphan to be requeued", third)
        finally:
            third.send_signal(signal.SIGTERM)
            assert third.wait(timeout=DEADLINE) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_daemon_lock_names_its_holder_and_frees_on_release(tmp_path: Path):
    db = tmp_path / "state.db"
    first = DaemonLock(db)
    first.acquire()
    holder = json.loads(first.path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
    with pytest.raises(StateError, match=f"pid {os.getpid()} on {holder['host']}"):
        DaemonLock(db).acquire()
    first.release()
    again = DaemonLock(db)
    again.acquire()
    assert again.held
    again.release()


# ---------------------------------------------------------------- a damaged database

def _damaged(tmp_path: Path, how: str) -> Path:
    db = tmp_path / "reelmask.db"
    store = Store(db)
    for i in range(300):
        job = store.add_job(f"clip_{i:03d}", tmp_path / f"clip_{i:03d}")
        store.log("info", "a line long enough to fill pages " * 6, job)
    store.close()
    size, page = db.stat().st_size, 4096
    with open(db, "r+b") as f:
        if how == "pages":  # three pages in the middle, past their first bytes
            f.seek((size // page // 2) * page + 8)
            f.write(bytes(range(256)) * (3 * page // 256 - 1))
        else:
            f.write(b"this is not a database header")
    return db


@pytest.mark.parametrize("how", ["pages", "header"])
def test_daemon_refuses_a_damaged_database_and_leaves_it_as_it_was(tmp_path: Path, how: str):
    (tmp_path / "config.toml").write_text(DAEMON_CONFIG)
    db = _damaged(tmp_path, how)
    before = _digest(db)
    r = _cli(tmp_path, "daemon", "--config", "config.toml")
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert f"the state database {db} is damaged" in line
    assert f"mv {db} {db}.damaged" in line and f"sqlite3 {db}.damaged .recover" in line
    assert "new empty database" in line and "work/" in line
    assert _digest(db) == before


# ---------------------------------------------------------------- the daemon loop under a held lock

def test_a_tick_that_meets_a_held_lock_is_retried(tmp_path: Path, monkeypatch, caplog):
    from daemon.service import Daemon

    (tmp_path / "config.toml").write_text(DAEMON_CONFIG.replace("tick_seconds = 0.1", "tick_seconds = 0.05"))
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.2)
    cfg = load_config(tmp_path / "config.toml")
    daemon = Daemon(cfg)
    monkeypatch.setattr(daemon, "start", lambda: None)  # no watcher, no workers: only the loop is under test
    daemon.store.add_command("pause")
    holder = sqlite3.connect(tmp_path / "reelmask.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO settings (key, value) VALUES ('held', '1')")
    caplog.set_level(logging.WARNING, logger="daemon.service")
    loop = threading.Thread(target=daemon.run)
    loop.start()
    try:
        _wait(lambda: any("a tick failed on the state database" in r.getMessage() for r in caplog.records),
              "a tick to meet the lock")
        holder.execute("ROLLBACK")
        _wait(lambda: daemon.store.setting("paused") == "1", "the next tick to apply the pause")
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        daemon.stopping.set()
        loop.join(timeout=DEADLINE)
    assert not loop.is_alive() and not daemon.lock.held
