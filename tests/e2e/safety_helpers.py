"""Helpers of the data-safety scenarios (tests/e2e/test_safety_*.py)."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq


def snapshot(root: str) -> Dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) by relative path, with its bytes."""
    out: Dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def tree(root: str) -> List[str]:
    """Every path under ``root`` (files and folders), relative, sorted."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def manifest(folder: str) -> List[str]:
    with open(os.path.join(folder, ".MANIFEST.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def published_rows(folder: str, column: str) -> List:
    """Values of ``column`` in the Parquet files the folder's manifest lists (sorted)."""
    values = []
    for p in manifest(folder):
        values.extend(pq.read_table(p).column(column).to_pylist())
    return sorted(values)


def fault_count(log_root: str, pattern: str = "InjectedFault") -> int:
    """How many failed attempts the task logs show whose error matches ``pattern``."""
    n = 0
    for path in glob.glob(os.path.join(log_root, "tasks", "*.log")):
        with open(path, errors="replace") as f:
            n += len(re.findall(rf"failed \S+ attempt \d+: {pattern}", f.read()))
    return n


def ids(n: int, start: int = 0) -> pa.Table:
    """A table of one column ``id``: ``start`` .. ``start + n - 1``."""
    return pa.table({"id": list(range(start, start + n))})


def kill_at(cmd: List[str], step: int) -> None:
    """Run ``cmd``, which SIGKILLs itself just before publication step ``step`` (a rerun finishing
    the journal counts the journal's steps the same way)."""
    killed = subprocess.run(
        cmd, env=dict(os.environ, SP_TEST_PUBLISH_KILL_AT_STEP=str(step)), capture_output=True, text=True, timeout=180
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


#: a session that appends rows ``start..start+2`` to ``{base}/A`` and publishes them doubled into
#: ``{base}/B``, in one computation: ``python script base job_id start``
SESSION_APPEND = """
import sys
import pyarrow as pa
import smallpond
base, job_id, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
sp = smallpond.init(job_id=job_id, data_root=base + "/root", task_cache="off", num_executors=1)
t = sp.from_arrow(pa.table({"id": list(range(start, start + 3))}))
a = t.write_parquet_lazy(base + "/A", mode="append")
b = t.map("id * 2 as id").write_parquet_lazy(base + "/B")
sp.wait(a, b)  # one computation: A and B are published together
sp.shutdown()
"""


def append_session(base: str) -> str:
    """Write :data:`SESSION_APPEND` into ``base``; its path."""
    script = os.path.join(base, "append.py")
    with open(script, "w") as f:
        f.write(SESSION_APPEND)
    return script
