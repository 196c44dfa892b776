"""The Ray backend against a real Ray cluster on this machine: a node that cannot see the data root
(a real extra node in its own mount namespace, where a tmpfs covers the folder) fails the start,
or the job once it joins, naming that node (split from ``test_ray_executor.py``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, Tuple

import pytest

from smallpond.errors import ClusterError
from tests.ray_cluster import OBJECT_STORE, RayTestCluster, connected_cluster, ray_env

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    """The session's Ray cluster, with this process connected to it as a driver."""
    yield from connected_cluster()


def _unshare_works() -> str:
    """Why a node cannot be started in its own mount namespace here ('' if it can)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"unshare --mount is not permitted here: {probe.stderr.strip()}"


def start_blind_node(cluster: RayTestCluster, hidden: str) -> Tuple[subprocess.Popen, str]:
    """Start a real extra Ray node whose processes do not see ``hidden`` (a tmpfs covers it in the
    node's own mount namespace); returns its process and node id once it has joined."""
    import ray

    before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    script = (
        f'mount -t tmpfs tmpfs "{hidden}" && exec "{sys.executable}" -m ray.scripts.scripts start --address {cluster.address} --num-cpus 1 '
        f"--object-store-memory {OBJECT_STORE} --disable-usage-stats --block"
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=dict(os.environ, **ray_env()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cluster.extra_processes.append(proc)
    node_id = None
    end = time.monotonic() + 120
    while node_id is None and time.monotonic() < end:
        new = {n["NodeID"] for n in ray.nodes() if n["Alive"]} - before
        node_id = next(iter(new), None)
        time.sleep(0.5)
    assert node_id, "the extra node did not join"
    return proc, node_id


def stop_blind_node(proc: subprocess.Popen, node_id: str) -> None:
    import ray

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    end = time.monotonic() + 120
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()) and time.monotonic() < end:
        time.sleep(0.5)
    assert not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()), "the extra node did not leave"


def hidden_folder(tmp_path_factory) -> str:
    reason = _unshare_works()
    if reason:
        pytest.skip(reason)
    hidden = tmp_path_factory.mktemp("blind") / "shared"
    hidden.mkdir()
    return str(hidden)


@pytest.fixture(scope="module")
def blind_node(cluster: RayTestCluster, tmp_path_factory):
    """(a folder, the id of a real extra Ray node that cannot see it)."""
    hidden = hidden_folder(tmp_path_factory)
    proc, node_id = start_blind_node(cluster, hidden)
    yield hidden, node_id
    stop_blind_node(proc, node_id)


def test_a_node_that_cannot_see_the_data_root_fails_the_start_naming_it(cluster, blind_node, tmp_path):
    import sys

    hidden, bad_node = blind_node
    data_root = os.path.join(hidden, "root-session")
    code = (
        "import sys, smallpond\n"
        "sp = smallpond.init(ray_address=sys.argv[1], data_root=sys.argv[2], job_id='blind')\n"
        "print('started')\n"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, cluster.address, data_root],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, SP_PROGRESS="0"),
    )
    took = time.monotonic() - start
    assert proc.returncode != 0 and "started" not in proc.stdout
    assert "ClusterError" in proc.stderr and "cannot use the data root" in proc.stderr
    message = proc.stderr[proc.stderr.index("ClusterError") :]
    assert bad_node in message
    assert not any(good in message for good in cluster.worker_node_ids())
    print(f"the start failed after {took:.1f}s (import, connect and check included)")
    (job_folder,) = [d for d in os.listdir(data_root) if not d.startswith(".")]  # not .task_cache
    status = open(os.path.join(data_root, job_folder, "log", ".STATUS")).read().split()
    assert status[-1].startswith("failure@")


def test_executor_start_raises_cluster_error_for_a_blind_node(cluster, blind_node, make_rt):
    from smallpond.execution.executors.ray import RayExecutor
    from smallpond.execution.job import make_runtime_ctx

    hidden, bad_node = blind_node
    rt = make_runtime_ctx("blind-in-process", None, os.path.join(hidden, "root"))
    rt.initialize()
    ex = RayExecutor(rt, None)
    with pytest.raises(ClusterError, match=bad_node):
        ex.start()
    ex.shutdown()
    leftovers: Dict[str, list] = {d: os.listdir(os.path.join(rt.temp_root)) for d in ["temp"]}
    assert leftovers == {"temp": []}, "the check's marker folder is left behind"


def test_a_node_that_joins_and_cannot_see_the_data_root_fails_the_job_naming_it(cluster, tmp_path_factory):
    from smallpond.execution.executors.ray import RayExecutor
    from smallpond.execution.job import make_runtime_ctx

    hidden = hidden_folder(tmp_path_factory)
    rt = make_runtime_ctx("blind-joiner", None, os.path.join(hidden, "root"))
    rt.initialize()
    ex = RayExecutor(rt, None)
    ex.start()  # every node there now sees the data root
    proc, bad_node = start_blind_node(cluster, hidden)
    try:
        with pytest.raises(ClusterError, match=f"joined cannot use the data root(.|\\n)*{bad_node}"):
            end = time.monotonic() + 120
            while time.monotonic() < end:
                ex.poll(0.2)
                time.sleep(0.2)
    finally:
        ex.shutdown()
        stop_blind_node(proc, bad_node)
