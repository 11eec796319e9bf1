"""daemon.executor = "ray" on a real Ray runtime: a private instance started by the daemon, and a
`ray.cluster_utils.Cluster` of two simulated nodes. Jobs spread over the workers; an actor process
killed or a node removed mid-job costs at most the chunk in flight; cancel reaches a remote job; an
actor that does not see the daemon's work folder is refused."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from core.engine.events import ChunkFinished, FrameResult, PromptUsed
from core.errors import Cancelled, FrameFolderError
from tests.conftest import make_clip, point_prompt
from tests.daemon_process import cli, start, status, stop, wait, write_config, scaled

ray = pytest.importorskip("ray")

from daemon.ray_executor import Ended, RemoteError, plan_workers, slim  # noqa: E402

CLIP = dict(size=(96, 64), prompts={"objects": [point_prompt((96, 64))]})


def _config(root: Path, **ray_keys) -> Path:
    (root / "inbox").mkdir(exist_ok=True)
    keys = {"address": "", "workers": 2, "num_gpus": 0, "num_cpus": 1, **ray_keys}
    return write_config(root, {"paths": {"inboxes": ["inbox"]}, "chunking": {"chunk_size": 6},
                               "daemon": {"executor": "ray", "sample_seconds": 0.5}, "ray": keys})


def _drop(root: Path, name: str, n: int) -> None:
    """A clip copied in elsewhere and moved into the inbox whole, marked ready."""
    clip = make_clip(root / "staging" / name, n=n, **CLIP)
    (clip / ".ready").write_text("")
    os.rename(clip, root / "inbox" / name)


def _jobs(root: Path) -> dict[str, dict]:
    return {j["name"]: j for j in status(root)["jobs"]}


def _masks(root: Path, name: str) -> list[np.ndarray]:
    import cv2

    files = sorted((root / "outbox" / name / "masks").glob("*.png"))
    return [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]


def _all_done(root: Path, names: list[str], proc, timeout: float = 300) -> dict[str, dict]:
    def done():
        jobs = _jobs(root)
        bad = {n: j for n, j in jobs.items() if n in names and j["state"] in ("failed", "cancelled")}
        assert not bad, bad
        return jobs if all(jobs.get(n, {}).get("state") == "done" for n in names) else None
    return wait(done, timeout, f"jobs {names} done", proc)


def _actor_pid(root: Path, worker: str) -> int:
    """The pid of `worker`'s actor, from the daemon's event line when the actor answered."""
    from core.store import Store

    lines = [e["message"] for e in Store(root / "reelmask.db").events(limit=500)
             if e["message"].startswith(f"{worker}: Ray actor on node")]
    assert lines, f"no actor line for {worker}"
    return int(lines[-1].rsplit("pid ", 1)[1].split(",")[0])


# ---------------------------------------------------------------- without a runtime

def test_plan_workers_counts_gpus_or_devices():
    from core.config import load_config

    cfg = load_config(None, ["daemon.devices=[\"cpu\",\"cpu\",\"cpu\"]"], use_default_path=False)
    assert [(p.name, p.device, p.num_gpus) for p in plan_workers(cfg, 0)] == \
        [("ray-worker-0", "cpu", 0), ("ray-worker-1", "cpu", 0), ("ray-worker-2", "cpu", 0)]
    assert len(plan_workers(cfg, 8)) == 8 and plan_workers(cfg, 8)[0].device == "auto"
    half = load_config(None, ["ray.num_gpus=0.5"], use_default_path=False)
    assert len(plan_workers(half, 2)) == 4
    fixed = load_config(None, ["ray.workers=3", "ray.num_gpus=0"], use_default_path=False)
    assert [p.num_gpus for p in plan_workers(fixed, 4)] == [0, 0, 0]


def test_only_small_records_cross_and_errors_come_back_as_themselves():
    frame = FrameResult(3, np.ones((64, 96), np.uint8), 0)
    assert slim(frame).id_map is None and slim(frame).frame == 3
    chunk = ChunkFinished(0, 0, 6, "forward", 1.0, 6, handover={1: np.ones((4, 4))}, state={"x": 1})
    assert slim(chunk).handover == {} and slim(chunk).state == {}
    assert slim(PromptUsed(0, 1, "user", 0)) is None
    for raised, kind in ((Cancelled(), Cancelled), (FrameFolderError("frame 3 is broken"), Exception),
                         (FileNotFoundError(2, "No such file", "/x/y.png"), OSError), (KeyError("k"), RemoteError)):
        try:
            raise raised
        except BaseException as e:  # noqa: BLE001
            ended = Ended.of(e, "node-a")
        back = ended.error()
        assert isinstance(back, kind) and "node-a" in str(back.__cause__)
    assert str(Ended.of(FrameFolderError("frame 3 is broken"), "n").error()) == "frame 3 is broken"
    assert Ended.of(FileNotFoundError(2, "No such file", "/x/y.png"), "n").error().filename == "/x/y.png"
    assert "KeyError" in str(Ended.of(KeyError("k"), "node-a").error())


def test_without_ray_the_daemon_says_how_to_install_it(tmp_path: Path, monkeypatch):
    import sys

    from core.config import load_config
    from core.errors import ConfigError
    from daemon.ray_executor import RayPool

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as on a machine without it
    cfg = load_config(_config(tmp_path))
    with pytest.raises(ConfigError, match=r'pip install "ray\[client\]>=2.40"'):
        RayPool(cfg).start()


# ---------------------------------------------------------------- a private Ray instance

@pytest.mark.slow
def test_jobs_spread_over_two_actors_and_survive_a_killed_actor(tmp_path: Path):
    """Three clips on two actors: every job done on both workers; one actor process killed mid-job costs
    that job at most the chunk in flight, and its masks equal those of the same clip run without a kill."""
    _config(tmp_path)
    for name in ("a", "b"):
        _drop(tmp_path, name, 36)
    proc = start(tmp_path)
    try:
        running = wait(lambda: [j for j in _jobs(tmp_path).values() if j["state"] == "running" and j["frames_done"] >= 8],
                       240, "a job 8 frames in", proc)[0]
        pid = _actor_pid(tmp_path, running["worker"])
        at_kill = _jobs(tmp_path)[running["name"]]["frames_done"]
        os.kill(pid, signal.SIGKILL)
        _drop(tmp_path, "c", 36)
        jobs = _all_done(tmp_path, ["a", "b", "c"], proc)
    finally:
        assert stop(proc)[0] == 0
    assert len({j["worker"] for j in jobs.values()}) == 2, jobs
    assert all(j["node"] for j in jobs.values())
    killed = jobs[running["name"]]
    assert killed["attempts"] == 2
    manifest = json.loads((tmp_path / "outbox" / running["name"] / "manifest.json").read_text())
    assert manifest["resumed_from_frame"] is not None and manifest["resumed_from_frame"] >= at_kill - 6 - 1
    reference = _masks(tmp_path, "c")
    for name in ("a", "b"):
        masks = _masks(tmp_path, name)
        assert len(masks) == 36
        assert all(np.array_equal(m, r) for m, r in zip(masks, reference)), f"{name}'s masks differ"
    assert not [p for p in (tmp_path / "work").iterdir()], "work/ keeps something"


@pytest.mark.slow
def test_cancel_and_sigterm_reach_a_remote_job(tmp_path: Path):
    _config(tmp_path, workers=1)
    _drop(tmp_path, "long", 120)
    proc = start(tmp_path)
    try:
        job = wait(lambda: [j for j in _jobs(tmp_path).values() if j["state"] == "running" and j["frames_done"] >= 3],
                   240, "the job running", proc)[0]
        assert cli(tmp_path, "cancel", job["id"][:8]).returncode == 0
        wait(lambda: _jobs(tmp_path)["long"]["state"] == "cancelled", 60, "the job cancelled", proc)
        assert _jobs(tmp_path)["long"]["frames_done"] < 120
        assert (tmp_path / "failed" / "long" / "error.txt").is_file()
        _drop(tmp_path, "next", 6)
        _all_done(tmp_path, ["next"], proc)
        _drop(tmp_path, "stopped", 120)
        wait(lambda: _jobs(tmp_path).get("stopped", {}).get("frames_done", 0) >= 3, 240, "the next job running", proc)
    finally:
        rc, _ = stop(proc)
    # SIGTERM: the remote job stops at its next frame, is marked interrupted and the daemon exits 0
    assert rc == 0, rc
    job = _jobs(tmp_path)["stopped"]
    assert job["state"] == "interrupted" and job["frames_done"] < 120


@pytest.mark.slow
def test_an_actor_that_cannot_see_the_work_folder_is_refused(tmp_path: Path):
    """The real actor reads back a file the daemon wrote into work/; here it finds another token, as an
    actor on a node with a local folder of the same name would."""
    from core.config import load_config
    from core.store import Store
    from daemon.ray_executor import RayPool, RayWorker
    import threading

    cfg = load_config(_config(tmp_path, workers=1))
    for d in ("work", "outbox"):
        (tmp_path / d).mkdir()
    store = Store(tmp_path / "reelmask.db")
    pool = RayPool(cfg)
    plans = pool.start()
    worker = RayWorker(cfg, pool, plans[0], threading.Event())
    try:
        pool.token = "not what the daemon wrote"
        job_id = store.add_job("queued", tmp_path / "x", source="submit")
        deadline = time.monotonic() + scaled(120)
        while worker._refused_at < 0 and time.monotonic() < deadline:
            assert worker.step() is False
            time.sleep(0.1)
        assert worker.step() is False  # refused: it takes no job
        assert store.job(job_id).state == "queued"
        errors = [e["message"] for e in store.events() if e["level"] == "error"]
        assert errors and "on node" in errors[-1] and str(tmp_path / "work") in errors[-1], errors
        assert "shared storage" in errors[-1]
    finally:
        pool.shutdown([])


# ---------------------------------------------------------------- two simulated nodes

@pytest.mark.slow
def test_two_nodes_one_removed_mid_job(tmp_path: Path):
    """A cluster of two worker nodes (one CPU each, the head runs no actor): jobs run on both; removing
    the node of a running job requeues it and it ends on the other node with the same masks."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    _config(tmp_path, address=cluster.address)
    for name in ("a", "b"):
        _drop(tmp_path, name, 36)
    proc = start(tmp_path)
    try:
        def both_running():
            jobs = [j for j in _jobs(tmp_path).values() if j["state"] == "running" and j["frames_done"] >= 2]
            return jobs if len(jobs) == 2 and max(j["frames_done"] for j in jobs) >= 8 else None
        both = wait(both_running, 240, "both jobs running", proc)
        assert both[0]["node"] != both[1]["node"] and both[0]["worker"] != both[1]["worker"], both
        victim = max(both, key=lambda j: j["frames_done"])
        at_kill = _jobs(tmp_path)[victim["name"]]["frames_done"]
        node = next((n for n in nodes if victim["node"].endswith(n.node_id[:8])), None)
        assert node is not None, (victim, [n.node_id for n in nodes])
        cluster.remove_node(node)
        _drop(tmp_path, "c", 36)
        jobs = _all_done(tmp_path, ["a", "b", "c"], proc, timeout=400)
    finally:
        try:
            assert stop(proc)[0] == 0
        finally:
            cluster.shutdown()
    assert jobs[victim["name"]]["attempts"] >= 2 and jobs[victim["name"]]["node"] != victim["node"]
    manifest = json.loads((tmp_path / "outbox" / victim["name"] / "manifest.json").read_text())
    assert manifest["resumed_from_frame"] >= at_kill - 6 - 1
    reference = _masks(tmp_path, "c")
    for name in ("a", "b"):
        assert all(np.array_equal(m, r) for m, r in zip(_masks(tmp_path, name), reference)), f"{name}'s masks differ"


@pytest.mark.slow
def test_a_training_job_runs_on_an_actor(tmp_path: Path):
    """A queued U-Net training runs on the worker's actor; its epochs, curves and files arrive as locally."""
    import threading

    from core.config import load_config
    from core.store import Store
    from core.training.registry import queue_training
    from daemon.ray_executor import RayPool, RayWorker
    from tests.conftest import make_seg_dataset

    cfg = load_config(_config(tmp_path, workers=1))
    for d in ("work", "outbox"):
        (tmp_path / d).mkdir()
    data = make_seg_dataset(tmp_path / "dataset")
    store = Store(tmp_path / "reelmask.db")
    job_id = queue_training(store, cfg, "unet", str(data), None,
                            ["train.epochs=2", "train.img_size=32", "train.batch_size=2", "train.workers=0"])
    pool = RayPool(cfg)
    worker = RayWorker(cfg, pool, pool.start()[0], threading.Event())
    try:
        deadline = time.monotonic() + scaled(240)
        while not worker.step():
            assert time.monotonic() < deadline, "the actor never took the job"
            time.sleep(0.1)
    finally:
        pool.shutdown([worker.actor])
    job = store.job(job_id)
    assert job.state == "done", job.error
    assert job.worker == "ray-worker-0" and job.node == worker.node
    assert [(c["idx"], c["state"]) for c in store.chunks(job_id)] == [(1, "done"), (2, "done")]
    assert [r["metrics"]["epoch"] for r in store.train_metrics(job_id, epochs_only=True)] == [1, 2]
    assert (Path(job.output_path) / "best.pt").is_file()


@pytest.mark.slow
def test_a_restarted_daemon_finds_its_actor_again(tmp_path: Path):
    """On a cluster the actors outlive a daemon killed with SIGKILL: the next daemon finds the same actor
    process (models loaded), stops what it still ran for the dead daemon, and the job resumes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    _config(tmp_path, address=cluster.address, workers=1)
    _drop(tmp_path, "a", 36)
    try:
        proc = start(tmp_path)
        wait(lambda: _jobs(tmp_path).get("a", {}).get("frames_done", 0) >= 9, 240, "9 frames", proc)
        pid = _actor_pid(tmp_path, "ray-worker-0")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=scaled(30))
        proc = start(tmp_path)
        try:
            _all_done(tmp_path, ["a"], proc)
            assert _actor_pid(tmp_path, "ray-worker-0") == pid
            _drop(tmp_path, "ref", 36)
            jobs = _all_done(tmp_path, ["a", "ref"], proc)
        finally:
            assert stop(proc)[0] == 0
    finally:
        cluster.shutdown()
    assert jobs["a"]["attempts"] == 2
    manifest = json.loads((tmp_path / "outbox" / "a" / "manifest.json").read_text())
    assert manifest["resumed_from_frame"] is not None and manifest["resumed_from_frame"] >= 5  # chunk 1 starts at 5
    assert all(np.array_equal(m, r) for m, r in zip(_masks(tmp_path, "a"), _masks(tmp_path, "ref")))
    assert len(_masks(tmp_path, "a")) == 36


@pytest.mark.slow
def test_independent_detect_chunks_fan_out_to_an_idle_actor(tmp_path: Path):
    """One detect job with detect.parallel_chunks = 2 on two actors: solo passes also run on the idle
    actor (the manifest lists them), and the masks equal a plain `reelmask run` of the same folder."""
    import shutil
    import subprocess

    from tests.conftest import data_path, reelmask_command

    frames = sorted(data_path("vos", "dog", "images").glob("*.jpg"))[:40]
    yolo = data_path("models", "yolo11n-coco-dequant.pt")
    clip = tmp_path / "staging" / "dog"
    clip.mkdir(parents=True)
    for f in frames:
        shutil.copyfile(f, clip / f.name)
    (clip / "prompts.json").write_text(json.dumps({"detect": {"classes": ["dog"]}}))
    sets = {"chunking": {"chunk_size": 8}, "detect": {"parallel_chunks": 2, "stride": 4},
            "models": {"sam2_weights": "random", "image_size": 256, "yolo": str(yolo), "device": "cpu"}}
    (tmp_path / "inbox").mkdir()
    write_config(tmp_path, {**sets, "paths": {"inboxes": ["inbox"]},
                            "daemon": {"executor": "ray"},
                            "ray": {"address": "", "workers": 2, "num_gpus": 0, "num_cpus": 1}})
    flat = [f"{section}.{key}={json.dumps(value)}" for section, keys in sets.items() for key, value in keys.items()]
    ref = subprocess.run([*reelmask_command(), "run", str(clip), "--out", str(tmp_path / "ref"), "--config",
                          str(tmp_path / "config.toml"), *[a for s in flat for a in ("--set", s)]],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"})
    assert ref.returncode == 0, ref.stderr
    (clip / ".ready").write_text("")
    os.rename(clip, tmp_path / "inbox" / "dog")
    proc = start(tmp_path)
    try:
        jobs = _all_done(tmp_path, ["dog"], proc)
    finally:
        assert stop(proc)[0] == 0
    manifest = json.loads((tmp_path / "outbox" / "dog" / "manifest.json").read_text())
    elsewhere = manifest.get("chunks_elsewhere")
    assert elsewhere and all(e["worker"] != jobs["dog"]["worker"] for e in elsewhere), manifest.get("chunks_elsewhere")
    import cv2

    ours = sorted((tmp_path / "outbox" / "dog" / "masks").glob("*.png"))
    theirs = sorted((tmp_path / "ref" / "masks").glob("*.png"))
    assert len(ours) == len(theirs) == 40
    same = [np.array_equal(cv2.imread(str(a), cv2.IMREAD_UNCHANGED), cv2.imread(str(b), cv2.IMREAD_UNCHANGED))
            for a, b in zip(ours, theirs)]
    assert all(same), f"{same.count(False)} of 40 masks differ"


@pytest.mark.slow
def test_a_daemon_joins_through_ray_client(tmp_path: Path):
    """ray.address = "ray://HOST:PORT" (Ray Client, for a daemon outside the cluster): jobs run on the
    cluster's actors and their events come back as with a direct connection."""
    import socket as sockets

    from ray.cluster_utils import Cluster

    with sockets.socket() as s:  # a free port for the client server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "ray_client_server_port": port})
    cluster.wait_for_nodes()
    _config(tmp_path, address=f"ray://127.0.0.1:{port}", workers=1)
    _drop(tmp_path, "a", 12)
    try:
        proc = start(tmp_path)
        try:
            jobs = _all_done(tmp_path, ["a"], proc)
        finally:
            assert stop(proc)[0] == 0
    finally:
        cluster.shutdown()
    assert jobs["a"]["worker"] == "ray-worker-0" and jobs["a"]["node"]
    assert len(_masks(tmp_path, "a")) == 12
