"""The SQLite state shared by daemon, CLI and TUI. All SQL of the project lives in this module.

WAL journal and a busy timeout let the daemon write while the TUI and CLI read; claiming a job is a
single IMMEDIATE transaction, so two workers never run the same job. Timestamps are UTC ISO.
Who may create, migrate or only read the file is the `Access` a Store is opened with; the
one-daemon-per-database lock is `core.state_lock.DaemonLock`.
"""

from __future__ import annotations

import enum
import json
import os
import shlex
import sqlite3
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote


from core.errors import StateError

BUSY_TIMEOUT = 10.0  # seconds a connection waits for another one's write lock before giving up


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Access(str, enum.Enum):
    """How a process opens the state database."""
    CREATE = "create"  # the daemon, submit, train --queue: create if missing, WAL, migrate
    WRITE = "write"    # cancel, retry, the dashboard's buttons: an existing database at this schema, read-write
    READ = "read"      # status, the dashboard's reads: an existing database at this schema, read-only


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.INTERRUPTED.value)


RETRY_MARK = "queued again (retry)"  # the event that starts a job's records afresh


def since_retry(events: list[dict]) -> list[dict]:
    """A job's events after its latest retry: earlier warnings and errors belong to runs that are over."""
    marks = [i for i, e in enumerate(events) if e["message"].endswith(RETRY_MARK)]
    return events[marks[-1]:] if marks else events


class CommandKind(str, enum.Enum):
    CANCEL = "cancel"
    RETRY = "retry"
    PAUSE = "pause"
    RESUME = "resume"
    TRAIN = "train"


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    kind: str
    mode: str | None
    state: str
    source: str            # inbox | submit
    origin_path: str       # where the folder was found
    input_path: str        # where the folder is now
    inbox_mode: str | None
    output_path: str | None
    frames_total: int | None
    error: str | None
    error_detail: str | None
    attempts: int
    resumed_from_frame: int | None
    worker: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    options: str | None
    node: str | None       # the machine the job runs (or ran) on; worker names the worker there
    frames_done: int = 0
    fps: float | None = None
    chunk: int | None = None
    mem_device: str | None = None      # the device the job's model runs on (last memory reading)
    mem_job_mb: float | None = None    # the job's own SAM2 state there now
    mem_peak_mb: float | None = None   # the worker process's peak on that device since the job started (CUDA)

    def status(self) -> dict[str, Any]:
        """The `reelmask status --json` form of a job."""
        return {
            "id": self.id, "name": self.name, "kind": self.kind, "mode": self.mode, "state": self.state,
            "frames_done": self.frames_done, "frames_total": self.frames_total, "error": self.error,
            "fps": self.fps, "input": self.input_path, "output": self.output_path, "source": self.source,
            "attempts": self.attempts, "resumed_from_frame": self.resumed_from_frame,
            "worker": self.worker, "node": self.node,
            "device_memory": ({"device": self.mem_device, "job_mb": self.mem_job_mb, "peak_mb": self.mem_peak_mb}
                              if self.mem_device else None),
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
        }

    @property
    def option_values(self) -> dict[str, Any]:
        return json.loads(self.options) if self.options else {}


@dataclass(frozen=True)
class Command:
    id: int
    ts: str
    kind: str
    job_id: str | None
    payload: dict
    state: str


_MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, mode TEXT, state TEXT NOT NULL,
        source TEXT NOT NULL, origin_path TEXT NOT NULL, input_path TEXT NOT NULL, inbox_mode TEXT,
        output_path TEXT, frames_total INTEGER, error TEXT, error_detail TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        resumed_from_frame INTEGER, worker TEXT, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
        updated_at TEXT NOT NULL, options TEXT);
    CREATE INDEX jobs_state ON jobs(state, created_at);
    CREATE INDEX jobs_origin ON jobs(origin_path);
    CREATE TABLE progress (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE, frames_done INTEGER NOT NULL,
        frames_total INTEGER, fps REAL, chunk INTEGER, updated_at TEXT NOT NULL);
    CREATE TABLE chunks (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, sweep TEXT NOT NULL, idx INTEGER NOT NULL,
        start_frame INTEGER NOT NULL, end_frame INTEGER NOT NULL, state TEXT NOT NULL, seconds REAL,
        updated_at TEXT NOT NULL, PRIMARY KEY (job_id, sweep, idx));
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, level TEXT NOT NULL, job_id TEXT, message TEXT NOT NULL);
    CREATE INDEX events_job ON events(job_id, id);
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, device TEXT NOT NULL, name TEXT,
        mem_used_mb REAL, mem_total_mb REAL, util REAL, rss_mb REAL);
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, kind TEXT NOT NULL, job_id TEXT,
        payload TEXT, state TEXT NOT NULL DEFAULT 'pending', handled_at TEXT, result TEXT);
    CREATE INDEX commands_pending ON commands(state, id);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
    """),
    (2, """
    CREATE TABLE train_metrics (
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        ts TEXT NOT NULL, epoch INTEGER NOT NULL, step INTEGER, loss REAL, metrics TEXT);
    CREATE INDEX train_metrics_job ON train_metrics(job_id, id);
    """),
    (3, """
    ALTER TABLE jobs ADD COLUMN node TEXT;
    ALTER TABLE samples ADD COLUMN node TEXT;
    ALTER TABLE samples ADD COLUMN worker TEXT;
    """),
    (4, """
    ALTER TABLE progress ADD COLUMN mem_device TEXT;
    ALTER TABLE progress ADD COLUMN mem_job_mb REAL;
    ALTER TABLE progress ADD COLUMN mem_peak_mb REAL;
    """),
]

_PROGRESS_FIELDS = ("frames_done", "fps", "chunk", "mem_device", "mem_job_mb", "mem_peak_mb")
_JOB_COLUMNS = [f.name for f in fields(Job) if f.name not in _PROGRESS_FIELDS]
_JOB_SELECT = ("SELECT " + ", ".join(f"j.{c}" for c in _JOB_COLUMNS) +
               ", COALESCE(p.frames_done, 0), p.fps, p.chunk, p.mem_device, p.mem_job_mb, p.mem_peak_mb "
               "FROM jobs j LEFT JOIN progress p ON p.job_id = j.id")


class Store:
    """One connection to the state database. Cheap to open; open one per thread.

    `access` says what this process may do to the file (see `Access`); only CREATE makes or
    migrates it. Errors while opening are StateError with the path and the way out; errors of
    later calls are sqlite3 errors that `explain` turns into the same kind of message.
    """

    def __init__(self, path: str | Path, access: Access = Access.CREATE, timeout: float | None = None,
                 config_source: str | None = None):
        self.path = Path(path)
        self.access = Access(access)
        self.timeout = BUSY_TIMEOUT if timeout is None else timeout
        self.snapshot = False  # READ only: a private copy of the file, taken at open (see _open_read)
        if self.access is not Access.CREATE and not self.path.is_file():
            raise StateError(_missing_message(self.path, config_source))
        conn = None
        try:
            if self.access is Access.CREATE:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = _connect(str(self.path), self.timeout)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            elif self.access is Access.WRITE:
                conn = _connect(f"file:{quote(str(self.path.resolve()))}?mode=rw", self.timeout)
            else:
                conn, self.snapshot = _open_read(self.path, self.timeout)
            conn.execute("PRAGMA foreign_keys = ON")
            self.conn = conn
            if self.access is Access.CREATE:
                self._migrate()
            else:
                self._check_schema()
        except (sqlite3.Error, StateError) as e:
            if conn is not None:
                conn.close()
            if isinstance(e, StateError):
                raise
            raise self.explain(e) from e

    def close(self) -> None:
        self.conn.close()

    def explain(self, error: sqlite3.Error) -> StateError:
        """A sqlite3 error of this database as a message a user can act on."""
        return _explain(self.path, error, self.timeout)

    @staticmethod
    def check_integrity(path: str | Path, timeout: float | None = None) -> None:
        """Raise StateError when the database at `path` is damaged; reads only, so a damaged file stays
        as it was (the daemon calls this before it opens the file to write)."""
        path = Path(path)
        if not path.exists():
            return
        timeout = BUSY_TIMEOUT if timeout is None else timeout
        try:
            conn, _ = _open_read(path, timeout)
            try:
                rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise _explain(path, e, timeout) from e
        if rows != ["ok"]:
            problems = [line for r in rows for line in r.splitlines() if not line.startswith("***")]
            raise StateError(_damaged_message(path, "quick_check: " + "; ".join(problems[:2])))

    # ------------------------------------------------------------------ migrations

    def _migrate(self) -> None:
        with self._tx():
            self.conn.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            done = {r[0] for r in self.conn.execute("SELECT version FROM migrations")}
            if done and max(done) > _MIGRATIONS[-1][0]:
                raise StateError(_newer_message(self.path, max(done)))
            for version, script in _MIGRATIONS:
                if version in done:
                    continue
                for statement in filter(str.strip, script.split(";")):
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO migrations (version, applied_at) VALUES (?, ?)", (version, utc_now()))

    def _check_schema(self) -> None:
        """READ and WRITE never migrate: a database of another schema version is refused."""
        try:
            have = self.schema_version()
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            have = 0  # an empty file, or one no daemon has started on yet
        want = _MIGRATIONS[-1][0]
        if have < want:
            raise StateError(f"the state database {self.path} has schema version {have} and this reelmask needs "
                             f"{want}: start `reelmask daemon` once with this config to upgrade it")
        if have > want:
            raise StateError(_newer_message(self.path, have))

    def schema_version(self) -> int:
        return self.conn.execute("SELECT MAX(version) FROM migrations").fetchone()[0] or 0

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, *_):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "_Tx":
        return Store._Tx(self.conn)

    # ------------------------------------------------------------------ jobs

    def add_job(self, name: str, input_path: Path | str, *, kind: str = "segment", mode: str | None = None,
                source: str = "inbox", inbox_mode: str | None = None, options: dict | None = None,
                refused: str | None = None, job_id: str | None = None, output_path: str | None = None) -> str:
        """A new queued job; with `refused`, a job that failed at intake with that reason (never claimed).
        `job_id` and `output_path` are given for a job adopted again from its work folder."""
        job_id = job_id or uuid.uuid4().hex[:12]
        now = utc_now()
        path = str(input_path)
        if mode and kind == "segment":  # the row's mode becomes the chosen one; what was asked for stays here
            options = {**(options or {}), "requested_mode": mode}
        row = {
            "id": job_id, "name": name, "kind": kind, "mode": mode,
            "state": JobState.FAILED.value if refused else JobState.QUEUED.value,
            "error": refused, "finished_at": now if refused else None,
            "source": source, "origin_path": path, "input_path": path, "inbox_mode": inbox_mode,
            "attempts": 0, "created_at": now, "updated_at": now, "output_path": output_path,
            "options": json.dumps(options) if options else None,
        }
        self.conn.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                          tuple(row.values()))
        return job_id

    def add_job_once(self, name: str, input_path: Path | str, **kw: Any) -> str | None:
        """Queue a job unless an active one already exists for the same folder (one folder, one job)."""
        with self._tx() as conn:
            hit = conn.execute(
                f"SELECT id FROM jobs WHERE origin_path = ? AND state IN ({','.join('?' * len(ACTIVE))})",
                (str(input_path), *ACTIVE)).fetchone()
            if hit:
                return None
            return self.add_job(name, input_path, **kw)

    def _row_to_job(self, row: Iterable[Any]) -> Job:
        return Job(*row)

    def job(self, job_id: str) -> Job | None:
        row = self.conn.execute(_JOB_SELECT + " WHERE j.id = ?", (job_id,)).fetchone()
        return self._row_to_job(row) if row else None

    def last_job_for(self, origin_path: Path | str) -> Job | None:
        """The newest job made from the folder at `origin_path`."""
        row = self.conn.execute(_JOB_SELECT + " WHERE j.origin_path = ? ORDER BY j.created_at DESC, j.id DESC LIMIT 1",
                                (str(origin_path),)).fetchone()
        return self._row_to_job(row) if row else None

    def find_job(self, prefix: str) -> Job | None:
        """A job by id or unique id prefix."""
        rows = self.conn.execute(_JOB_SELECT + " WHERE j.id LIKE ? ORDER BY j.created_at", (prefix + "%",)).fetchall()
        return self._row_to_job(rows[0]) if len(rows) == 1 else None

    def jobs(self, states: Iterable[str] | None = None, limit: int | None = None) -> list[Job]:
        sql, args = _JOB_SELECT, []
        if states:
            states = list(states)
            sql += f" WHERE j.state IN ({','.join('?' * len(states))})"
            args += states
        sql += " ORDER BY j.created_at, j.id"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._row_to_job(r) for r in self.conn.execute(sql, args)]

    def claim(self, worker: str, node: str | None = None) -> Job | None:
        """Take the oldest queued job for `worker` (on the machine `node`), atomically."""
        with self._tx() as conn:
            row = conn.execute("SELECT id FROM jobs WHERE state = ? ORDER BY created_at, id LIMIT 1",
                               (JobState.QUEUED.value,)).fetchone()
            if row is None:
                return None
            now = utc_now()
            conn.execute("UPDATE jobs SET state = ?, worker = ?, node = ?, started_at = COALESCE(started_at, ?), "
                         "attempts = attempts + 1, updated_at = ? WHERE id = ? AND state = ?",
                         (JobState.RUNNING.value, worker, node, now, now, row[0], JobState.QUEUED.value))
        return self.job(row[0])

    def update_job(self, job_id: str, **values: Any) -> None:
        values["updated_at"] = utc_now()
        cols = ", ".join(f"{k} = ?" for k in values)
        self.conn.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def finish_job(self, job_id: str, state: JobState, *, error: str | None = None, detail: str | None = None,
                   **values: Any) -> None:
        self.update_job(job_id, state=state.value, error=error, error_detail=detail, finished_at=utc_now(), **values)

    def cancel_queued(self, job_id: str, reason: str) -> bool:
        """Cancel a job only if no worker has claimed it yet (atomic against `claim`)."""
        now = utc_now()
        cur = self.conn.execute(
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, updated_at = ? WHERE id = ? AND state IN (?, ?)",
            (JobState.CANCELLED.value, reason, now, now, job_id, JobState.QUEUED.value, JobState.INTERRUPTED.value))
        return cur.rowcount == 1

    def requeue(self, job_id: str) -> None:
        self.update_job(job_id, state=JobState.QUEUED.value, worker=None, node=None, error=None, error_detail=None,
                        finished_at=None)

    def requeue_orphans(self) -> list[str]:
        """Jobs left running or interrupted by a stopped daemon go back to the queue (they resume)."""
        with self._tx() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE state IN (?, ?)",
                                              (JobState.RUNNING.value, JobState.INTERRUPTED.value))]
            for job_id in ids:
                conn.execute("UPDATE jobs SET state = ?, worker = NULL, node = NULL, updated_at = ? WHERE id = ?",
                             (JobState.QUEUED.value, utc_now(), job_id))
        return ids

    # ------------------------------------------------------------------ progress and chunks

    def set_progress(self, job_id: str, frames_done: int, frames_total: int | None, fps: float | None,
                     chunk: int | None) -> None:
        self.conn.execute(
            "INSERT INTO progress (job_id, frames_done, frames_total, fps, chunk, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET frames_done = excluded.frames_done, frames_total = excluded.frames_total, "
            "fps = excluded.fps, chunk = excluded.chunk, updated_at = excluded.updated_at",
            (job_id, frames_done, frames_total, fps, chunk, utc_now()))

    def set_device_memory(self, job_id: str, device: str, job_mb: float, peak_mb: float | None) -> None:
        """A running job's device memory (its progress row exists once the job has started)."""
        self.conn.execute("UPDATE progress SET mem_device = ?, mem_job_mb = ?, mem_peak_mb = ? WHERE job_id = ?",
                          (device, job_mb, peak_mb, job_id))

    def set_chunk(self, job_id: str, sweep: str, idx: int, start: int, end: int, state: str,
                  seconds: float | None = None) -> None:
        self.conn.execute(
            "INSERT INTO chunks (job_id, sweep, idx, start_frame, end_frame, state, seconds, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id, sweep, idx) DO UPDATE SET state = excluded.state, "
            "seconds = excluded.seconds, updated_at = excluded.updated_at",
            (job_id, sweep, idx, start, end, state, seconds, utc_now()))

    def plan_chunk_rows(self, job_id: str, sweep: str, bounds: list[tuple[int, int, int]]) -> None:
        """Rows in state "pending" for chunks (idx, start, end) not recorded yet (a resumed job keeps its own)."""
        now = utc_now()
        self.conn.executemany(
            "INSERT OR IGNORE INTO chunks (job_id, sweep, idx, start_frame, end_frame, state, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?)", [(job_id, sweep, i, s, e, now) for i, s, e in bounds])

    def chunks(self, job_id: str) -> list[dict]:
        rows = self.conn.execute("SELECT sweep, idx, start_frame, end_frame, state, seconds FROM chunks "
                                 "WHERE job_id = ? ORDER BY sweep DESC, idx", (job_id,))
        return [dict(zip(("sweep", "idx", "start", "end", "state", "seconds"), r)) for r in rows]

    def clear_job_details(self, job_id: str) -> None:
        """Forget progress and chunk states (before a job starts again from scratch)."""
        self.conn.execute("DELETE FROM progress WHERE job_id = ?", (job_id,))
        self.conn.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))
        self.conn.execute("DELETE FROM train_metrics WHERE job_id = ?", (job_id,))

    # ------------------------------------------------------------------ training curves

    def add_train_metric(self, job_id: str, epoch: int, step: int | None = None, loss: float | None = None,
                         metrics: dict | None = None) -> None:
        """A step's loss (metrics None) or an epoch's metrics.jsonl line."""
        self.conn.execute("INSERT INTO train_metrics (job_id, ts, epoch, step, loss, metrics) VALUES (?, ?, ?, ?, ?, ?)",
                          (job_id, utc_now(), epoch, step, loss, json.dumps(metrics) if metrics is not None else None))

    def train_metrics(self, job_id: str, limit: int = 500, epochs_only: bool = False) -> list[dict]:
        sql = "SELECT ts, epoch, step, loss, metrics FROM train_metrics WHERE job_id = ?"
        if epochs_only:
            sql += " AND metrics IS NOT NULL"
        rows = self.conn.execute(sql + " ORDER BY id DESC LIMIT ?", (job_id, limit)).fetchall()
        return [{"ts": r[0], "epoch": r[1], "step": r[2], "loss": r[3], "metrics": json.loads(r[4]) if r[4] else None}
                for r in reversed(rows)]

    # ------------------------------------------------------------------ events, samples, settings

    def log(self, level: str, message: str, job_id: str | None = None) -> None:
        self.conn.execute("INSERT INTO events (ts, level, job_id, message) VALUES (?, ?, ?, ?)",
                          (utc_now(), level, job_id, message))

    def events(self, limit: int = 200, job_id: str | None = None) -> list[dict]:
        sql = "SELECT id, ts, level, job_id, message FROM events"
        args: list[Any] = []
        if job_id:
            sql += " WHERE job_id = ?"
            args.append(job_id)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = self.conn.execute(sql, (*args, limit)).fetchall()
        return [dict(zip(("id", "ts", "level", "job_id", "message"), r)) for r in reversed(rows)]

    def add_sample(self, device: str, name: str | None, mem_used_mb: float | None, mem_total_mb: float | None,
                   util: float | None, rss_mb: float | None, keep: int = 5000, *, node: str | None = None,
                   worker: str | None = None) -> None:
        """One reading of one device; `node` and `worker` say whose (None: the daemon's own machine)."""
        self.conn.execute("INSERT INTO samples (ts, device, name, mem_used_mb, mem_total_mb, util, rss_mb, node, worker) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (utc_now(), device, name, mem_used_mb, mem_total_mb, util, rss_mb, node, worker))
        self.conn.execute("DELETE FROM samples WHERE id <= (SELECT MAX(id) FROM samples) - ?", (keep,))

    def samples(self, limit: int = 120) -> list[dict]:
        keys = ("ts", "device", "name", "mem_used_mb", "mem_total_mb", "util", "rss_mb", "node", "worker")
        rows = self.conn.execute(f"SELECT {', '.join(keys)} FROM samples ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(keys, r)) for r in reversed(rows)]

    def setting(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------------------------ commands

    def add_command(self, kind: CommandKind | str, job_id: str | None = None, payload: dict | None = None) -> int:
        cur = self.conn.execute("INSERT INTO commands (ts, kind, job_id, payload) VALUES (?, ?, ?, ?)",
                                (utc_now(), CommandKind(kind).value, job_id, json.dumps(payload or {})))
        return int(cur.lastrowid)

    def pending_commands(self) -> list[Command]:
        rows = self.conn.execute("SELECT id, ts, kind, job_id, payload, state FROM commands WHERE state = 'pending' "
                                 "ORDER BY id").fetchall()
        return [Command(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5]) for r in rows]

    def has_pending_cancel(self, job_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM commands WHERE state = 'pending' AND kind = 'cancel' AND job_id = ?",
                                 (job_id,)).fetchone() is not None

    def finish_command(self, command_id: int, state: str, result: str | None = None) -> None:
        self.conn.execute("UPDATE commands SET state = ?, handled_at = ?, result = ? WHERE id = ?",
                          (state, utc_now(), result, command_id))


# ---------------------------------------------------------------------- opening, and what went wrong

def _connect(target: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False,
                           uri=target.startswith("file:"))
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


def _open_read(path: Path, timeout: float) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection, and whether it reads a private copy instead of the file.

    SQLite reads a WAL database in place only when its -shm file exists or can be created. When no
    writer has the file open (no -wal, no -shm) and this user cannot write to its folder (another
    user's daemon, stopped), the file alone holds every commit: it is copied whole while it stays
    unchanged and no writer appears, and read from memory.
    """
    for _ in range(5):
        conn = _connect(f"file:{quote(str(path.resolve()))}?mode=ro", timeout)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn, False
        except sqlite3.OperationalError as e:
            conn.close()
            if _code(e) != "SQLITE_READONLY_DIRECTORY":
                raise
        data = _quiet_copy(path)
        if data is not None:
            return _memory_database(data, timeout), True
    raise StateError(_busy_message(path, timeout), busy=True)


def _quiet_copy(path: Path) -> bytes | None:
    """The file's bytes, or None when a writer had it open or changed it while it was read."""
    wal = path.with_name(path.name + "-wal")

    def mark() -> tuple:
        st = os.stat(path)
        return wal.exists(), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    before = mark()
    if before[0]:
        return None
    data = path.read_bytes()
    return data if mark() == before else None


def _memory_database(data: bytes, timeout: float) -> sqlite3.Connection:
    image = bytearray(data)
    if image[18:20] == b"\x02\x02":  # an in-memory database has no WAL: mark the copy as a rollback-journal one
        image[18:20] = b"\x01\x01"
    conn = _connect(":memory:", timeout)
    conn.deserialize(bytes(image))
    conn.execute("PRAGMA query_only = ON")
    return conn


def _code(error: sqlite3.Error) -> str:
    name = getattr(error, "sqlite_errorname", "")  # Python 3.11+
    if not name and isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
        name = "SQLITE_BUSY"
    return name


def _explain(path: Path, error: sqlite3.Error, timeout: float) -> StateError:
    code = _code(error)
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StateError(_busy_message(path, timeout), busy=True)
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
            type(error) is sqlite3.DatabaseError and not code):
        return StateError(_damaged_message(path, str(error)))
    if code.startswith("SQLITE_READONLY"):
        return StateError(f"cannot write the state database {path} ({error}): this user needs write access to "
                          f"the file and its folder {path.parent}")
    if code.startswith("SQLITE_CANTOPEN"):
        wal, shm = (path.with_name(path.name + s) for s in ("-wal", "-shm"))
        if wal.exists() and not shm.exists():
            return StateError(f"cannot read the state database {path}: {wal.name} holds changes that only a "
                              f"writer can recover, and this user cannot write to {path.parent}; start "
                              f"`reelmask daemon` once (as the user that owns the folder), then try again")
        return StateError(f"cannot open the state database {path} ({error}); check that this user may read it "
                          f"and its folder")
    return StateError(f"the state database {path} cannot be used: {error}")


def _busy_message(path: Path, timeout: float) -> str:
    return (f"the state database {path} is busy: another process has held a lock on it for more than "
            f"{timeout:g} s; try again")


def _missing_message(path: Path, config_source: str | None) -> str:
    config = {None: "unknown", "defaults": "built-in defaults"}.get(config_source, config_source)
    return (f"there is no state database at {path} (paths.db; config: {config}). Start `reelmask daemon` "
            f"with this config to create it, or check paths.db and --config if the daemon uses another one")


def _newer_message(path: Path, version: int) -> str:
    return (f"the state database {path} has schema version {version}, newer than this reelmask knows "
            f"({_MIGRATIONS[-1][0]}): it was written by a newer reelmask; use that one, or upgrade this one")


def _damaged_message(path: Path, detail: str) -> str:
    p, aside = shlex.quote(str(path)), shlex.quote(f"{path}.damaged")
    return (f"the state database {path} is damaged ({detail}). Move it aside: `mv {p} {aside}` (and "
            f"`mv {shlex.quote(f'{path}-wal')} {shlex.quote(f'{path}.damaged-wal')}` if that file exists), then "
            f"start `reelmask daemon` again: it makes a new empty database and adopts again the jobs whose "
            f"folders are still in work/. `sqlite3 {aside} .recover` salvages what rows it can.")
