"""The queue backend with executors started by hand: ``python script.py executor --job_id J
--data_root D``, three of them, before the driver (``--platform manual``) is.

The executors are not children of the driver: they wait for the job to appear, serve every run
of it (a killed driver's rerun included: they rejoin), and must exit on their own when it ends.
For a rerun of a job (its queue folder exists), :meth:`ByHandQueueBackend.job_side` lets the
driver start only once the executors have registered and read the queue's state, as when they are
started well before it: they then find the previous run ended, and must wait for the rerun.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import sys
import time
from typing import Dict, Iterator, List

from smallpond.execution.executors.queue_protocol import read_json
from tests.backends.backend_queue import QueueBackend, assert_no_executor_outlives, job_executors
from tests.backends.conftest import Backend

EXECUTORS = 3
WAIT = 20  # seconds an executor waits for the next run of a job whose run failed or was interrupted


class ByHandQueueBackend(QueueBackend):
    name = "queue-byhand"

    def driver_args(self) -> List[str]:
        return ["--platform", "manual"]

    def init_kwargs(self):
        return {"platform": "manual"}

    def env(self) -> Dict[str, str]:
        # three executors on this host: each takes a third of it, as mpirun's would. One that
        # registers only after a failed run ended waits SP_QUEUE_WAIT for a rerun (default 120 s):
        # under heavy load that outlived the check below; a rerun here comes within seconds
        return dict(super().env(), SP_EXECUTORS_ON_HOST=str(EXECUTORS), SP_QUEUE_WAIT=str(WAIT))

    @contextlib.contextmanager
    def job_side(self, script: str, job_id: str, data_root: str) -> Iterator[None]:
        cmd = [sys.executable, script, "executor", "--job_id", job_id, "--data_root", data_root]
        procs = [
            subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(EXECUTORS)
        ]
        try:
            if glob.glob(os.path.join(data_root, f"*.{job_id}", "queue", "epoch")):
                wait_until_looked_at_the_queue(procs, data_root, job_id)
            yield
            assert_no_executor_outlives(data_root, job_id, grace=2 * WAIT)
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


def wait_until_looked_at_the_queue(procs: List[subprocess.Popen], data_root: str, job_id: str) -> None:
    """Until each executor has registered and heartbeat twice (its loop read the queue's control
    files in between) without exiting; fails at once, with its output, if one exits instead."""
    pids = {p.pid for p in procs}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                err = p.communicate()[1].decode(errors="replace")
                raise AssertionError(f"an executor started by hand before the rerun exited with {p.returncode}:\n{err[-2000:]}")
        beats = []
        for info in job_executors(data_root, job_id):
            if int(info["pid"]) in pids:
                (member,) = glob.glob(os.path.join(data_root, f"*.{job_id}", "queue", "executors", info["name"]))
                beat = read_json(os.path.join(member, "heartbeat")) or {}
                beats.append(int(beat.get("n", 0)) if beat.get("state") != "exited" else 0)
        if len(beats) == len(procs) and min(beats) >= 2:
            return
        time.sleep(0.05)
    raise AssertionError("executors started by hand did not register with the job within 120s")


def make_backend(tmp_path_factory) -> Backend:
    return ByHandQueueBackend()
