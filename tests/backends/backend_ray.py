"""The Ray backend: the Driver in ``ray`` mode on a real two-worker-node Ray cluster on this machine.

The cluster (tests/ray_cluster.py) is started once per test session. Killing a worker removes a
whole worker node (its raylet and worker processes, SIGKILL) in the middle of the job, then adds
a fresh node so later tests find two again.
"""

from __future__ import annotations

from typing import Dict, List

from tests.backends.conftest import Backend
from tests.ray_cluster import RayTestCluster, get_cluster


class RayBackend(Backend):
    name = "ray"

    def __init__(self, cluster: RayTestCluster) -> None:
        self.cluster = cluster

    def driver_mode(self) -> str:
        return "ray"

    def driver_args(self) -> List[str]:
        return ["--ray_address", self.cluster.address]

    def init_kwargs(self) -> Dict[str, object]:
        return {"ray_address": self.cluster.address}

    def kill_one_worker(self, driver_pid: int, job_root: str) -> str:
        node_id = self.cluster.remove_worker(0)
        self.cluster.restore_workers()
        return f"Ray worker node {node_id}"


def make_backend(tmp_path_factory) -> Backend:
    return RayBackend(get_cluster())
