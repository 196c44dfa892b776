"""The queue backend with executors started by hand: ``python script.py executor --job_id J
--data_root D``, three of them, before the driver (``--platform manual``) is.

The executors are not children of the driver: they wait for the job to appear, serve every run
of it (a killed driver's rerun included: they rejoin), and must exit on their own when it ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Dict, Iterator, List

from tests.backends.backend_queue import QueueBackend, assert_no_executor_outlives
from tests.backends.conftest import Backend

EXECUTORS = 3


class ByHandQueueBackend(QueueBackend):
    name = "queue-byhand"

    def driver_args(self) -> List[str]:
        return ["--platform", "manual"]

    def init_kwargs(self):
        return {"platform": "manual"}

    def env(self) -> Dict[str, str]:
        # three executors on this host: each takes a third of it, as mpirun's would
        return dict(super().env(), SP_EXECUTORS_ON_HOST=str(EXECUTORS))

    @contextlib.contextmanager
    def job_side(self, script: str, job_id: str, data_root: str) -> Iterator[None]:
        cmd = [sys.executable, script, "executor", "--job_id", job_id, "--data_root", data_root]
        procs = [
            subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(EXECUTORS)
        ]
        try:
            yield
            assert_no_executor_outlives(data_root, job_id)
            for p in procs:
                _, err = p.communicate(timeout=30)
                assert p.returncode == 0 or p.pid in self.killed, (
                    f"an executor started by hand exited with {p.returncode}:\n{err[-2000:]}"
                )
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def make_backend(tmp_path_factory) -> Backend:
    return ByHandQueueBackend()
