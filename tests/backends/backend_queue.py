"""The queue backend with executors started by a real ``mpirun`` (``--platform mpi``).

Jobs run with short heartbeats (``SP_QUEUE_HEARTBEAT``/``SP_QUEUE_TIMEOUT``), so a killed
executor or driver is noticed in seconds. Around each job, :meth:`QueueBackend.job_side` checks
that no executor of the job outlives it (executors of a killed driver included).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import time
from typing import Dict, Iterator, List

import pytest

from tests.backends.conftest import Backend

#: heartbeat and loss timeout of the test jobs (seconds): the contract's failures (killed
#: processes on this host) are noticed at once, not by a timeout, so this one can be lenient
#: with a loaded machine
HEARTBEAT, TIMEOUT = "0.2", "10"


def job_executors(data_root: str, job_id: str) -> List[dict]:
    """The registration (``info``) of every executor that joined the job, from its queue folder."""
    from smallpond.execution.runtime import parse_job_id

    uid = parse_job_id(job_id)
    out = []
    for path in glob.glob(os.path.join(data_root, f"*.{uid}", "queue", "executors", "*", "info")):
        with open(path) as f:
            out.append(json.load(f))
    return out


def alive(info: dict) -> bool:
    from smallpond.execution.executors.queue_protocol import process_alive

    return process_alive(int(info["pid"]), info.get("create_time"), info.get("start_id"))


def assert_no_executor_outlives(data_root: str, job_id: str, grace: float = 20.0) -> None:
    """Every executor of the job exits within ``grace`` seconds (then they are killed, and it fails)."""
    deadline = time.monotonic() + grace
    left = [i for i in job_executors(data_root, job_id) if alive(i)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [i for i in left if alive(i)]
    for info in left:
        os.kill(int(info["pid"]), signal.SIGKILL)
    assert not left, f"executors outlived their job: {[i['name'] for i in left]}"


class QueueBackend(Backend):
    name = "queue"

    def __init__(self) -> None:
        self.killed: List[int] = []  # pids of the executors kill_one_worker killed

    def driver_args(self) -> List[str]:
        return ["--platform", "mpi", "--num_executors", "3"]

    def init_kwargs(self):
        return {"platform": "mpi", "num_executors": 3}

    def env(self) -> Dict[str, str]:
        return dict(os.environ, SP_QUEUE_HEARTBEAT=HEARTBEAT, SP_QUEUE_TIMEOUT=TIMEOUT)

    @contextlib.contextmanager
    def job_side(self, script: str, job_id: str, data_root: str) -> Iterator[None]:
        yield
        assert_no_executor_outlives(data_root, job_id)

    def kill_one_worker(self, driver_pid: int, job_root: str) -> str:
        """SIGKILL one executor process (an mpirun rank) holding an attempt of the job."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for member in sorted(glob.glob(os.path.join(job_root, "queue", "executors", "*"))):
                claimed = os.path.join(member, "claimed")
                try:
                    with open(os.path.join(member, "info")) as f:
                        info = json.load(f)
                except (OSError, ValueError):
                    continue
                if os.path.isdir(claimed) and os.listdir(claimed) and alive(info):
                    os.kill(int(info["pid"]), signal.SIGKILL)
                    self.killed.append(int(info["pid"]))
                    return f"executor {info['name']} (pid {info['pid']})"
            time.sleep(0.05)
        raise AssertionError("no executor holding an attempt found to kill")


def make_backend(tmp_path_factory) -> Backend:
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (Debian: apt-get install openmpi-bin; .ci/run installs it)")
    return QueueBackend()
