"""Rerunning a session with the same job id after it finished: its sinks are not published twice.

A session removes its intermediates at shutdown, but keeps its sinks' commit records (moved to
config/published/, brought back when the job starts): a rerun of the same script (same ``job_id`` and data root, as after a crash) finds its ``write_parquet``
already published, as a Driver job rerun with the same ``--job_id`` does, and a changed plan
(another query, another folder) still runs and publishes.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

JOB = """
import sys, time
import smallpond
base, expr, out, linger = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
sp = smallpond.init(job_id="rerun-job", data_root=base + "/root", task_cache="off", num_executors=1)
df = sp.partial_sql(f"select id, {expr} as y from {{0}}", sp.read_parquet(base + "/in/a.parquet"))
df.write_parquet(out, mode="append")
sp.shutdown()
print("shut down", flush=True)
time.sleep(linger)  # the process's teardown, where a SIGKILL (OOM, CI timeout) may land
"""

ROWS = 3000


def _setup(tmp_path) -> str:
    base = str(tmp_path)
    os.makedirs(base + "/in")
    pq.write_table(pa.table({"id": pa.array(range(ROWS), pa.int64())}), base + "/in/a.parquet")
    with open(base + "/job.py", "w") as f:
        f.write(JOB)
    return base


def _run(base: str, expr: str, out: str, kill_after_shutdown: bool = False) -> None:
    cmd = [sys.executable, base + "/job.py", base, expr, out, "60" if kill_after_shutdown else "0"]
    if not kill_after_shutdown:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "shut down"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _ys(out: str):
    listed = open(os.path.join(out, ".MANIFEST.txt")).read().split()
    assert sorted(listed) == sorted(glob.glob(os.path.join(out, "*.parquet")))
    return sorted(r[0] for r in duckdb.sql(f"select y from read_parquet({listed!r})").fetchall())


def test_a_session_killed_after_shutdown_and_rerun_does_not_append_again(tmp_path):
    base = _setup(tmp_path)
    out = base + "/out"
    _run(base, "id * 2", out, kill_after_shutdown=True)
    assert _ys(out) == [2 * i for i in range(ROWS)]
    (job_root,) = glob.glob(base + "/root/*")
    assert not os.path.exists(job_root + "/staging")  # shutdown removed the intermediates...
    assert os.listdir(job_root + "/config/published")  # ...and kept the sink's commit record

    _run(base, "id * 2", out)
    assert _ys(out) == [2 * i for i in range(ROWS)]  # 3000 rows, not 6000
    _run(base, "id * 2", out)
    assert _ys(out) == [2 * i for i in range(ROWS)]


def test_a_rerun_with_a_changed_plan_still_publishes(tmp_path):
    base = _setup(tmp_path)
    out = base + "/out"
    _run(base, "id * 2", out)
    _run(base, "id * 3", out)  # another query: another computation, appended
    assert _ys(out) == sorted([2 * i for i in range(ROWS)] + [3 * i for i in range(ROWS)])
    _run(base, "id * 2", base + "/other")  # another folder: published there
    assert _ys(base + "/other") == [2 * i for i in range(ROWS)]
    assert len(_ys(out)) == 2 * ROWS


CHAIN = """
import os, signal, sys
import pyarrow as pa
import smallpond
base = sys.argv[1]
sp = smallpond.init(job_id="chain-job", data_root=base + "/root", task_cache="off", num_executors=1)
g = sp.from_arrow(pa.table({"id": list(range(10))})).write_parquet_lazy(base + "/G")


def die_once(t):
    if not os.path.exists(base + "/died"):  # the whole session, killed once: as an OOM kill would
        open(base + "/died", "w").close()
        os.kill(int(open(base + "/pid").read()), signal.SIGKILL)
    return t


with open(base + "/pid", "w") as f:
    f.write(str(os.getpid()))
g.map("id * 2 as id").map_batches(die_once, schema=pa.schema([("id", pa.int64())])).write_parquet(base + "/S")
sp.shutdown()
"""


def test_a_sink_behind_committed_tasks_is_published_by_the_rerun(tmp_path):
    """One computation publishes G (write_parquet_lazy) and S, computed from G's staged files
    through a committed task. The session is SIGKILLed before the publication; its rerun finds
    that task committed, and S needs nothing else, but G, whose commit record comes only with its
    publication, still runs and is published. (The walk stopped at the committed task: the rerun
    published S alone and reported success, G's destination never made.) A damaged record of G
    still counts as published."""
    base = str(tmp_path)
    with open(base + "/chain.py", "w") as f:
        f.write(CHAIN)
    killed = subprocess.run([sys.executable, base + "/chain.py", base], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not os.path.exists(base + "/G") and not os.path.exists(base + "/S")
    rerun = subprocess.run([sys.executable, base + "/chain.py", base], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for folder, factor in (("G", 1), ("S", 2)):
        assert duckdb.sql(f"select id from read_parquet('{base}/{folder}/*.parquet') order by id").fetchall() == [
            (factor * i,) for i in range(10)
        ]
    assert not glob.glob(base + "/G.staging-*")
    # a sink's damaged commit record still says it was published (only its publication writes
    # one): a rerun does not publish it again (in append mode, its rows twice)
    records = glob.glob(base + "/root/*/config/published/DataSinkTask-*.commit")
    g_record = min(records, key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))  # G was planned first
    with open(g_record, "r+b") as f:
        f.truncate(10)
    published = os.stat(base + "/G").st_ino
    again = subprocess.run([sys.executable, base + "/chain.py", base], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.stat(base + "/G").st_ino == published, "G was published again"


def test_a_rerun_does_not_append_again_after_a_user_removed_a_published_file(tmp_path):
    """An append is published once. A user removes the file it appended; the rerun (same job id)
    finds the sink's commit record, whose files are not all there: the append counts as
    published (a warning names the missing file), rather than adding its rows a second time."""
    base = _setup(tmp_path)
    out = base + "/out"
    _run(base, "id * 2", out)
    (appended,) = glob.glob(out + "/*.parquet")
    os.unlink(appended)
    cmd = [sys.executable, base + "/job.py", base, "id * 2", out, "0"]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert glob.glob(out + "/*.parquet") == [], "the rerun appended the rows again"
    assert f"{appended} is gone since; the append counts as published" in rerun.stderr
