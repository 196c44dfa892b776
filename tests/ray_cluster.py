"""A real Ray cluster on this machine for the tests: a head that runs no task and two worker nodes.

:func:`get_cluster` starts it on first use (about 15 s) and returns the same one for the rest of
the test session; ``tests/conftest.py`` stops it when the session ends. Every node is a real
raylet with its own worker processes (``ray.cluster_utils.Cluster``); the head has no CPU, so
every attempt runs on a worker node. Token authentication is off for this test cluster
(``RAY_AUTH_MODE=disabled`` for the head, the nodes and every client: the tests' drivers inherit
it), and the nodes' worker processes import smallpond from this checkout (``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_CPUS = 2
WORKER_MEMORY = 3 << 30
OBJECT_STORE = 100 << 20
# The GCS checks each raylet every 0.5 s instead of every 3 s: a killed node is known dead after
# about 5 failed checks (2.5 s, not 15 s), which the tests that kill nodes wait for. A loaded but
# living raylet is not taken for dead sooner: each check still waits Ray's 10 s for an answer.
HEALTH_CHECKS = {"health_check_period_ms": 500}


def ray_env() -> Dict[str, str]:
    """What the cluster's processes and its clients need in their environment."""
    path = [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != REPO]
    return {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join(path), "RAY_USAGE_STATS_ENABLED": "0"}


class RayTestCluster:
    """The head and the worker nodes (``ray.cluster_utils.Cluster``), and how to break them."""

    def __init__(self, num_workers: int = 2) -> None:
        os.environ.update(ray_env())  # inherited by the raylets and by the drivers tests start
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": False,
                "object_store_memory": OBJECT_STORE,
                "_system_config": HEALTH_CHECKS,
            },
        )
        self.workers = [self.add_worker(wait=False) for _ in range(num_workers)]
        self.cluster.wait_for_nodes()
        self.address: str = self.cluster.address
        self.extra_processes: List[subprocess.Popen] = []

    def add_worker(self, wait: bool = True):
        node = self.cluster.add_node(wait=wait, num_cpus=WORKER_CPUS, memory=WORKER_MEMORY, object_store_memory=OBJECT_STORE)
        return node

    @property
    def head_node_id(self) -> str:
        return self.cluster.head_node.node_id

    def worker_node_ids(self) -> List[str]:
        return [n.node_id for n in self.workers]

    def remove_worker(self, index: int = 0) -> str:
        """Kill one worker node (its raylet and worker processes, no goodbye); returns its node id."""
        node = self.workers.pop(index)
        self.cluster.remove_node(node, allow_graceful=False)
        return node.node_id

    def restore_workers(self, num_workers: int = 2) -> None:
        while len(self.workers) < num_workers:
            self.workers.append(self.add_worker())

    def alive_nodes(self) -> List[dict]:
        """``ray.nodes()`` of the alive nodes, asked by a short-lived client (this process stays no Ray driver)."""
        code = (
            "import json, sys, ray\n"
            "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')\n"
            "print(json.dumps([n for n in ray.nodes() if n['Alive']]))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, self.address], capture_output=True, text=True, timeout=120, env=dict(os.environ)
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def shutdown(self) -> None:
        for p in self.extra_processes:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.cluster.shutdown()


_cluster: Optional[RayTestCluster] = None


def get_cluster() -> RayTestCluster:
    """The test session's cluster, started on first use (skips the test if Ray is not installed)."""
    global _cluster
    pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra (CI installs it)")
    if _cluster is None:
        _cluster = RayTestCluster()
    return _cluster


def connected_cluster():
    """A module fixture's body: the session's cluster (:func:`get_cluster`), with this process
    connected to it as a Ray driver until the module's tests are done."""
    c = get_cluster()
    import ray

    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    yield c
    ray.shutdown()


def stop_cluster() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.shutdown()
        _cluster = None
