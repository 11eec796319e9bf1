"""daemon.executor = "ray": the daemon's workers are Ray actors, on this machine or across a cluster.

The daemon stays the one process that watches the inboxes, claims jobs and writes the state
database. Each worker is a thread in the daemon paired with one actor (`ReelmaskWorker`): the thread
claims a job and moves its folder into work/ as a local worker does, then sends the actor a
JobRequest (paths and settings) and records the events the actor sends back while it runs the
same `job_events` a local worker runs (taken every 0.1 s with plain actor calls, which also work
through Ray Client, where streaming generators do not). The actor keeps its models loaded between jobs and writes
masks straight into the job's staging folder, so every node must see the daemon's folders at the
same paths (shared storage); only small records cross the wire, never frames.

Faults: when an actor dies mid-job (its process killed, its node gone) the next call to it raises
an actor error; the job goes back to the queue and resumes from its last finished chunk on whichever worker
claims it next, and the thread waits for Ray to restart its actor, checking again that it sees the
work folder. Ray is imported only when this executor is chosen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.pipeline import AlphaResult, ChunkFinished, FrameResult, PromptUsed
from core.errors import Cancelled, ConfigError, ReelmaskError
from daemon.worker import JobRequest, Worker, WorkerLost, job_events

log = logging.getLogger(__name__)

ACTOR_CLASS = "ReelmaskWorker"  # its processes show as `ray::ReelmaskWorker` (`ray::ReelmaskWorker.run` while busy)
PROBE_PREFIX = ".ray-probe-"
POLL_SECONDS = 0.1  # how often a waiting stream looks at the job's stop flag: well inside one frame
REFUSED_RETRY_SECONDS = 60.0


# ---------------------------------------------------------------- what crosses the wire

@dataclass(frozen=True)
class Ended:
    """The last record of a stream that ended in an exception: what it was, where, and its traceback."""

    kind: str  # cancelled | reelmask | oserror | internal
    message: str
    detail: str
    node: str
    errno: int | None = None
    filename: str | None = None
    type_name: str = ""

    @classmethod
    def of(cls, error: BaseException, node: str) -> "Ended":
        detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if isinstance(error, Cancelled):
            return cls("cancelled", str(error), detail, node)
        if isinstance(error, ReelmaskError):
            return cls("reelmask", str(error), detail, node)
        if isinstance(error, OSError):
            return cls("oserror", error.strerror or str(error), detail, node, error.errno,
                       None if error.filename is None else str(error.filename))
        return cls("internal", str(error), detail, node, type_name=type(error).__name__)

    def error(self) -> BaseException:
        """The exception to raise in the daemon, with the actor's traceback as its cause."""
        cause = RemoteTraceback(f"on node {self.node}:\n{self.detail}")
        if self.kind == "cancelled":
            error: BaseException = Cancelled(self.message)
        elif self.kind == "reelmask":
            error = ReelmaskError(self.message)
        elif self.kind == "oserror":
            error = OSError(self.errno, self.message, self.filename)
        else:
            error = RemoteError(f"{self.type_name}: {self.message} (on node {self.node})")
        error.__cause__ = cause
        return error


class RemoteTraceback(Exception):
    """The traceback of an error raised on an actor (shown as the cause of the error it became here)."""


class RemoteError(Exception):
    """An unexpected error on an actor; its text names the original type and the node."""


def slim(event: object) -> object | None:
    """An engine event as it crosses to the daemon: what the daemon records, without arrays (the masks
    and mattes themselves are already written by the actor). None: nothing the daemon needs."""
    if isinstance(event, FrameResult):
        return dataclasses.replace(event, id_map=None)
    if isinstance(event, ChunkFinished):
        return dataclasses.replace(event, handover={}, state={})
    if isinstance(event, (AlphaResult, PromptUsed)):
        return None
    return event


# ---------------------------------------------------------------- the actor

class ReelmaskWorker:
    """One Ray actor: runs one job at a time with its models loaded between jobs. Made a Ray actor
    class by `actor_class()`, with threads enough that take, stop, hello, sample and offload answer while
    a job runs."""

    def __init__(self, name: str, peers: list[str] | None = None):
        import ray

        from core.pipeline import ModelPool

        self.name = name
        self.peers = [p for p in (peers or []) if p != name]  # the other workers, which may help with a job
        # the host name, and Ray's node id for several nodes on one host (and to find a node by it)
        self.node = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"
        self.models = ModelPool()
        self.busy = threading.Lock()  # one job at a time, even when an old daemon's call still runs
        self.stopped: set[str] = set()  # job ids told to stop; "*" stops whatever runs
        self.outbox: dict[str, deque] = {}  # job id -> events not yet taken by the daemon
        self.probe = None

    def hello(self, folders: list[str], probe: str | None, token: str | None) -> dict:
        """Who and where this actor is, and whether it sees the daemon's folders (the same files, not
        just folders of the same name: it reads back a token the daemon wrote into work/)."""
        import ray

        problem = None
        for folder in folders:
            if not Path(folder).is_dir():
                problem = (f"worker {self.name} on node {self.node} cannot see the folder {folder}: every node must "
                           "see the daemon's inboxes, work/ and outbox at the same paths (shared storage); mount it "
                           "there or leave this node out of the cluster")
                break
        if problem is None and probe is not None:
            try:
                seen = Path(probe).read_text()
            except OSError:
                seen = None
            if seen != token:
                problem = (f"worker {self.name} on node {self.node} sees a folder at {Path(probe).parent} but not the "
                           "daemon's: a file the daemon wrote there is missing or different. Every node must see the "
                           "same work/ at the same path (shared storage, not a local folder of that name)")
        ctx = ray.get_runtime_context()
        return {"node": self.node, "ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
                "pid": os.getpid(), "gpus": [str(g) for g in ray.get_gpu_ids()], "problem": problem}

    def run(self, request: JobRequest) -> Ended | None:
        """Run one segmentation job; its events wait in this actor for `take` (slimmed). Returns None when
        it finished, else an `Ended` record. Independent work of the job (detect solo passes) may go to
        idle peers."""
        def events(stop):
            helpers = Peers(self.name, self.peers, request.job_id, stop) if self.peers else None
            return job_events(request, self.models, stop, helpers)

        return self._work(request.job_id, events)

    def offload(self, task):
        """Do a piece of another actor's job (an OffloadTask) if this actor is free; None when it is busy."""
        from core.pipeline import run_offloaded

        if not self.busy.acquire(blocking=False):
            return None
        self.stopped.discard("*")  # a stop of whatever ran before this actor was free no longer applies
        try:
            return run_offloaded(task, self.models, lambda: task.job_id in self.stopped or "*" in self.stopped)
        finally:
            self.stopped.discard(task.job_id)
            self.busy.release()

    def train(self, job_id: str, kind: str, data: Path, out: Path, cfg: Config) -> Ended | None:
        """Run one training job; the trainer's events wait for `take`, as a segmentation job's do."""
        from daemon.training import train_events

        return self._work(job_id, lambda stop: train_events(kind, data, out, cfg, stop))

    def _work(self, job_id: str, events: Callable[[Callable[[], bool]], Iterator[object]]) -> Ended | None:
        def should_stop() -> bool:
            return job_id in self.stopped or "*" in self.stopped

        with self.busy:
            self.stopped.discard("*")
            box = self.outbox[job_id] = deque()
            try:
                for event in events(should_stop):
                    small = slim(event)
                    if small is not None:
                        box.append(small)
                return None
            except BaseException as e:  # noqa: BLE001 - everything goes back to the daemon as a record
                return Ended.of(e, self.node)
            finally:
                self.stopped.discard(job_id)

    def take(self, job_id: str, last: bool = False) -> list:
        """The events of job `job_id` since the last call (all of them, and forgotten here, with `last`)."""
        box = self.outbox.pop(job_id, None) if last else self.outbox.get(job_id)
        taken = []
        while box:
            taken.append(box.popleft())
        return taken

    def stop(self, job_id: str | None = None) -> None:
        """Stop the job `job_id` (or whatever runs, for None) at its next frame; it ends as cancelled."""
        self.stopped.add(job_id or "*")

    def sample(self) -> dict:
        """This actor's devices and memory, for the dashboard."""
        from core.memory import MemoryProbe

        if self.probe is None:
            self.probe = MemoryProbe()
        readings = [dataclasses.asdict(d) for d in self.probe.read()]
        return {"node": self.node, "rss_mb": self.probe.rss_mb(), "devices": readings}


class Peers:
    """`helpers` for a job running on an actor: offers each piece of independent work to the other
    actors in turn; the first free one does it (None when all are busy: the piece runs here). A stop
    of the job reaches the helper too; a helper that fails or dies is skipped."""

    def __init__(self, me: str, peers: list[str], job_id: str, should_stop: Callable[[], bool]):
        self.me, self.peers, self.job_id, self.should_stop = me, peers, job_id, should_stop
        self.next = 0
        self.lock = threading.Lock()

    def __call__(self, task) -> tuple[object, str] | None:
        import ray

        with self.lock:  # start at a different peer each time, to spread the pieces
            order = self.peers[self.next:] + self.peers[:self.next]
            self.next = (self.next + 1) % len(self.peers)
        for name in order:
            if self.should_stop():
                raise Cancelled("cancelled")
            try:
                helper = ray.get_actor(name)
                result = self._wait(helper, helper.offload.remote(task))
            except Cancelled:
                raise
            except Exception as e:  # gone, restarting, or the piece failed there: try another, or run it here
                logging.getLogger(__name__).warning("%s: %s could not help with job %s (%s: %s)", self.me, name,
                                                    self.job_id, type(e).__name__, e)
                continue
            if result is not None:
                return result, name
        return None

    def _wait(self, helper, ref):
        import ray

        stopped = False
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
            if ready:
                try:
                    result = ray.get(ref)
                except Exception as e:  # the helper's own failure (or its stop) is not this job's cancel
                    if stopped:
                        raise Cancelled("cancelled") from e
                    first = (str(e).strip().splitlines() or [""])[0]
                    raise RuntimeError(f"{type(e).__name__}: {first[:200]}") from e
                if stopped:
                    raise Cancelled("cancelled")
                return result
            if not stopped and self.should_stop():  # tell the helper, then wait for it to let go of the files
                helper.stop.remote(self.job_id)
                stopped = True


def actor_class():
    import ray

    return ray.remote(ReelmaskWorker)


# ---------------------------------------------------------------- the cluster

@dataclass(frozen=True)
class WorkerPlan:
    index: int
    name: str
    device: str  # the device setting the actor's jobs get: "auto" (its GPU) or "cpu"
    num_gpus: float


def namespace(cfg: Config) -> str:
    """The Ray namespace of this daemon's actors: one per state database, so two daemons on one
    cluster never take each other's actors."""
    db = str(cfg.path(cfg.paths.db).resolve())
    return "reelmask-" + hashlib.sha1(db.encode()).hexdigest()[:10]


def plan_workers(cfg: Config, cluster_gpus: float) -> list[WorkerPlan]:
    """How many actors and what each takes: `ray.workers` (0 = one per GPU the cluster offers, or one
    per daemon.devices entry where it has none), each with `ray.num_gpus` GPUs where there are GPUs."""
    r = cfg.ray
    gpus = r.num_gpus if cluster_gpus > 0 else 0.0
    count = r.workers or (max(1, int(cluster_gpus // gpus)) if gpus else len(cfg.daemon.devices))
    return [WorkerPlan(i, f"ray-worker-{i}", "auto" if gpus else "cpu", gpus) for i in range(count)]


class RayPool:
    """The daemon's connection to Ray and its actors."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.private = cfg.ray.address == ""
        self.namespace = namespace(cfg)
        self.work = cfg.path(cfg.paths.work)
        self.probe = self.work / f"{PROBE_PREFIX}{os.getpid()}"
        self.token = secrets.token_hex(16)
        self.cls = None
        self.plans: list[WorkerPlan] = []

    def _client_connect(self, ray, address: str, attempts: int = 3) -> None:
        """Ray Client's server starts a server process per client, and that start can fail for a moment (seen
        on a busy machine: the process exits at once, "Initialization failure from server"); such a connect
        is tried again, twice, before the daemon gives up. An address nobody answers on fails at once."""
        for attempt in range(1, attempts + 1):
            try:
                ray.init(address=address, namespace=self.namespace)
                return
            except Exception as e:
                if attempt == attempts or "from server" not in str(e):  # unreachable: no point asking again
                    raise
                log.warning("joining the Ray cluster at %s failed (%s); trying again (%d of %d)", address,
                            str(e).splitlines()[0][:200], attempt + 1, attempts)
                try:
                    ray.shutdown()
                except Exception:  # nothing was connected
                    pass
                time.sleep(2.0 * attempt)

    def start(self) -> list[WorkerPlan]:
        """Connect to (or start) Ray and plan the workers; raises ConfigError when Ray is missing or unreachable."""
        try:
            import ray
        except ImportError as e:
            raise ConfigError('daemon.executor = "ray" needs the ray package: install it with '
                              '`.venv/bin/pip install "ray[client]>=2.40"` (the project\'s `[ray]` extra)') from e
        r = self.cfg.ray
        common = dict(namespace=self.namespace, include_dashboard=False, logging_level=logging.WARNING,
                      configure_logging=False)
        # ray.init installs its own SIGTERM / SIGINT handlers (exit at once); the daemon's own, which let
        # running jobs reach a checkpoint, are put back after it
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        try:
            if self.private:
                need = math.ceil(max(1, r.workers or len(self.cfg.daemon.devices)) * r.num_cpus)
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need),
                         object_store_memory=200 * 2**20, **common)
            elif "://" in r.address:  # Ray Client: only what a client may set
                self._client_connect(ray, r.address)
            else:
                ray.init(address=r.address, **common)
        except Exception as e:  # ConnectionError, RuntimeError, ValueError: Ray's own words say why
            where = "start a private Ray instance" if self.private else f"join the Ray cluster at ray.address = {r.address!r}"
            raise ConfigError(f"could not {where}: {e}. Check that `ray start --head` runs there and that this "
                              "machine can reach it, or set ray.address = \"\" for a private instance") from e
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        self.probe.write_text(self.token)
        self.cls = actor_class()
        self.plans = plan_workers(self.cfg, ray.cluster_resources().get("GPU", 0.0))
        return self.plans

    def actor(self, plan: WorkerPlan):
        """The actor of `plan`: found again by its name (after a daemon restart) or made. It restarts
        after a crash (Ray does that); a call in flight then fails and the daemon requeues that job."""
        opts = dict(name=plan.name, get_if_exists=True, max_restarts=-1, max_task_retries=0, max_concurrency=8,
                    num_cpus=self.cfg.ray.num_cpus, num_gpus=plan.num_gpus)
        if not self.private:
            opts["lifetime"] = "detached"  # a daemon that crashes finds its actors, and their models, again
        return self.cls.options(**opts).remote(plan.name, [p.name for p in self.plans])

    def hello(self, actor):
        """Ask `actor` who and where it is and whether it sees the daemon's folders (a pending call)."""
        folders = [str(self.work), str(self.cfg.path(self.cfg.paths.outbox))]
        return actor.hello.remote(folders, str(self.probe), self.token)

    def shutdown(self, actors: list) -> None:
        import ray

        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                log.debug("could not kill an actor", exc_info=True)
        self.probe.unlink(missing_ok=True)
        ray.shutdown()


def actor_lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the actor (or its node) is gone, not that the job failed."""
    from ray import exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "ObjectLostError", "OwnerDiedError", "RaySystemError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


# ---------------------------------------------------------------- the daemon's side

class RayWorker(Worker):
    """A worker thread whose jobs run on one Ray actor."""

    def __init__(self, cfg: Config, pool: RayPool, plan: WorkerPlan, stop: threading.Event,
                 inbox_lock: threading.Lock | None = None):
        super().__init__(cfg, plan.name, plan.device, stop, inbox_lock)
        self.pool, self.plan = pool, plan
        self.node = None
        self.actor = None
        self.info: dict | None = None
        self._hello = None
        self._stale_stop = None   # the stop sent to a newly found actor, until it has been carried out
        self._asked_at = 0.0
        self._waited_warned = False
        self._refused_at = float("-inf")
        self._next_try = 0.0

    # ------------------------------------------------------------------ the actor

    def step(self) -> bool:
        if not self._actor_ready():
            return False
        return super().step()

    def _actor_ready(self) -> bool:
        """True once the actor has answered hello and sees the folders; never blocks."""
        import ray

        if self.info is not None:
            return True
        if time.monotonic() - self._refused_at < REFUSED_RETRY_SECONDS or time.monotonic() < self._next_try:
            return False
        if self.actor is None:
            self.actor = self.pool.actor(self.plan)
            # an actor found again after a daemon crash may still run that daemon's job: stop it (its job is
            # requeued here and resumes from its checkpoint once the actor is free). No job is sent before
            # that stop has been carried out: the actor's calls run on several threads in no fixed order,
            # and a stop landing after this daemon's first job started would cancel that job.
            self._stale_stop = self.actor.stop.remote(None)
            if not self._asked_at:
                self._asked_at, self._waited_warned = time.monotonic(), False
        if self._stale_stop is not None:
            done, _ = ray.wait([self._stale_stop], timeout=0)
            if not done:
                self._warn_if_slow()
                return False
            self._stale_stop = None   # done or failed (a lost actor): hello below finds out which
        if self._hello is None:
            self._hello = self.pool.hello(self.actor)
            if not self._asked_at:
                self._asked_at, self._waited_warned = time.monotonic(), False
        ready, _ = ray.wait([self._hello], timeout=0)
        if not ready:
            self._warn_if_slow()
            return False
        hello, self._hello = self._hello, None
        try:
            info = ray.get(hello)
        except ray.exceptions.ActorUnavailableError:  # restarting (once a node has room): ask again soon
            self._next_try = time.monotonic() + 1.0
            self._warn_if_slow()
            return False
        except actor_lost_errors() as e:
            self._say("warning", f"{self.name}: its Ray actor is gone for good ({type(e).__name__}); starting a new one")
            self.actor, self._next_try = None, time.monotonic() + 1.0
            return False
        self._asked_at = 0.0
        if info["problem"]:
            self._say("error", f"{info['problem']} (this worker takes no jobs; it asks again in "
                               f"{REFUSED_RETRY_SECONDS:.0f} s)")
            self._refused_at, self._asked_at = time.monotonic(), 0.0
            try:
                ray.kill(self.actor)
            except Exception:
                log.debug("could not kill a refused actor", exc_info=True)
            self.actor = None
            return False
        self.info, self.node = info, info["node"]
        gpus = f", GPU {','.join(info['gpus'])}" if info["gpus"] else ""
        self._say("info", f"{self.name}: Ray actor on node {info['node']} ({info['ip']}), pid {info['pid']}{gpus}")
        return True

    def _warn_if_slow(self) -> None:
        """Say once when the actor has not answered for ray.start_seconds (no room for it, most often)."""
        waited = time.monotonic() - self._asked_at
        if waited > self.cfg.ray.start_seconds and not self._waited_warned:
            self._waited_warned = True
            r = self.cfg.ray
            self._say("warning", f"{self.name}: no Ray actor after {waited:.0f} s; the cluster may have no room for "
                                 f"one more actor ({r.num_cpus} CPU, {self.plan.num_gpus} GPU): add a node or lower "
                                 "ray.workers. Its jobs run on the other workers meanwhile")

    def _say(self, level: str, message: str) -> None:
        self.store.log(level, message)
        log.log(getattr(logging, level.upper()), message)

    def _where(self) -> str:
        return f", on {self.name} at {self.node}"

    def lost(self) -> None:
        """The actor died: ask again (Ray restarts it, perhaps on another node) before the next job."""
        self.info = None

    # ------------------------------------------------------------------ jobs

    def _events(self, request: JobRequest, should_stop: Callable[[], bool]) -> Iterator[object]:
        return self._follow(self.actor.run.remote(request), request.job_id, should_stop)

    def _train_events(self, kind: str, data: Path, out: Path, cfg: Config,
                      should_stop: Callable[[], bool]) -> Iterator[object]:
        return self._follow(self.actor.train.remote(self.current, kind, data, out, cfg), self.current, should_stop)

    def _follow(self, final, job_id: str, should_stop: Callable[[], bool]) -> Iterator[object]:
        """The actor's events while its call `final` runs, taken every POLL_SECONDS (plain calls, so this
        works over Ray Client too); a stop (cancel, shutdown) reaches the actor within the same time."""
        import ray

        lost = actor_lost_errors()
        stop_sent = False
        try:
            while True:
                if not stop_sent and should_stop():
                    self.actor.stop.remote(job_id)
                    stop_sent = True
                ready, _ = ray.wait([final], timeout=POLL_SECONDS)
                yield from ray.get(self.actor.take.remote(job_id, bool(ready)))
                if ready:
                    ended = ray.get(final)
                    if ended is not None:
                        raise ended.error()
                    return
        except lost as e:
            self.lost()
            raise WorkerLost(f"{self.name} on node {self.node} was lost while running this job "
                             f"({type(e).__name__})") from e

    # ------------------------------------------------------------------ dashboard

    def sample(self):
        """A pending sample() call of this worker's actor, or None while it has none."""
        return self.actor.sample.remote() if self.info is not None and self.actor is not None else None


def sample_workers(store, workers: list[RayWorker], timeout: float = 2.0) -> None:
    """Every actor's devices and memory into the samples table, named by node and worker."""
    import ray

    calls = [(w, w.sample()) for w in workers]
    calls = [(w, ref) for w, ref in calls if ref is not None]
    if not calls:
        return
    ready, _ = ray.wait([ref for _, ref in calls], num_returns=len(calls), timeout=timeout)
    for worker, ref in calls:
        if ref not in ready:
            continue
        try:
            s = ray.get(ref)
        except Exception:  # an actor that just died: the next sample will tell
            continue
        for d in s["devices"]:
            store.add_sample(d["device"], d["name"], d["used_mb"], d["total_mb"], d["util"], s["rss_mb"],
                             node=s["node"], worker=worker.name)
