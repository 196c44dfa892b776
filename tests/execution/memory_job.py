"""A job script for the memory-limit tests (run through the Driver, or its plan run in-process).

    python memory_job.py scheduler --job_id J --data_root D [--enforce_memory_limit] -i a.parquet \
        --hog loop --alloc_mb 600 --limit_mb 100 [-m MARKERS]

Plan: Parquet → one ``ArrowComputeNode`` (``memory_limit=limit_mb``) whose function allocates
``alloc_mb`` MiB, as ``mode`` says (:func:`hog`), and returns its input.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan

MiB = 1 << 20
MODES = ("loop", "swallow", "blocked", "child")


def hog(runtime_ctx, tables, mode: str, alloc_mb: int, markers: str):
    """Allocate ``alloc_mb`` MiB:

    * ``loop``: in 10 MiB pieces, in Python, then hold it for 2 s (the watch samples: a loaded
      machine may not run its thread during a fast allocation);
    * ``swallow``: the same, catching everything (the watch's interrupt too) and going on;
    * ``blocked``: in a thread started by the task, while the task's own thread waits in C
      (``time.sleep``), which an interrupt cannot reach;
    * ``child``: in a child process the task waits for (its PID is written to ``markers``).
    """
    kept = []
    if mode == "loop":
        _allocate_and_hold(kept, alloc_mb)
    elif mode == "swallow":
        try:
            _allocate_and_hold(kept, alloc_mb)
        except BaseException:
            kept.clear()
    elif mode == "blocked":
        threading.Thread(target=lambda: (time.sleep(0.3), kept.append(bytearray(alloc_mb * MiB))), daemon=True).start()
        time.sleep(30)
    elif mode == "child":
        code = f"import time; b = bytearray({alloc_mb} * 2**20); time.sleep(30)"
        child = subprocess.Popen([sys.executable, "-c", code])
        with open(os.path.join(markers, f"child.{runtime_ctx.task.retry_count}"), "w") as f:
            f.write(str(child.pid))
        child.wait()
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return tables[0]


def _allocate_and_hold(kept: list, alloc_mb: int) -> None:
    for _ in range(alloc_mb // 10):
        kept.append(bytearray(10 * MiB))
    for _ in range(40):  # back in Python every 50 ms, where an interrupt is raised
        time.sleep(0.05)


def use_libraries(runtime_ctx, input_datasets, output_path) -> bool:
    """A PythonScriptNode's function using pyarrow, pandas and DuckDB, in a module that does not
    import them itself (a fresh worker loads them for its first task), then holding its memory
    for 0.5 s (the watch samples)."""
    import duckdb
    import pyarrow.parquet as pq

    frame = pq.read_table(input_datasets[0].resolved_paths).to_pandas()
    frame.to_parquet(os.path.join(output_path, "copy.parquet"))
    assert duckdb.__version__
    for _ in range(10):
        time.sleep(0.05)
    return True


def memory_plan(input_paths, hog_mode: str, alloc_mb: int, limit_mb: int, markers: str = "") -> LogicalPlan:
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(input_paths))
    fn = functools.partial(hog, mode=hog_mode, alloc_mb=alloc_mb, markers=markers)
    return LogicalPlan(ctx, ArrowComputeNode(ctx, (source,), process_func=fn, memory_limit=limit_mb * MiB))


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("--hog", dest="hog_mode", choices=MODES, default="loop")
    driver.add_argument("--alloc_mb", type=int, default=600)
    driver.add_argument("--limit_mb", type=int, default=100)
    driver.add_argument("-m", "--markers", default="")
    driver.run(memory_plan(**driver.get_arguments()))


if __name__ == "__main__":
    main()
