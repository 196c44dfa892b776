"""The embedded backend: worker processes of the driver on this machine."""

from __future__ import annotations

import os
import signal
import time
from typing import List

import psutil

from tests.backends.conftest import Backend


class LocalBackend(Backend):
    name = "local"

    def driver_args(self) -> List[str]:
        return ["--num_executors", "2"]

    def init_kwargs(self):
        return {"num_executors": 2}

    def kill_one_worker(self, driver_pid: int, job_root: str) -> str:
        deadline = time.monotonic() + 60
        driver = psutil.Process(driver_pid)
        driver_cmd = driver.cmdline()
        while time.monotonic() < deadline:
            for child in driver.children(recursive=True):
                try:
                    cmd = child.cmdline()
                except psutil.Error:
                    continue
                # a fresh interpreter's command names the worker module; a forked worker's is the driver's
                if "smallpond.execution.worker" in " ".join(cmd) or cmd == driver_cmd:
                    os.kill(child.pid, signal.SIGKILL)
                    return f"worker process {child.pid}"
            time.sleep(0.05)
        raise AssertionError("no worker process found to kill")


def make_backend(tmp_path_factory) -> Backend:
    return LocalBackend()
