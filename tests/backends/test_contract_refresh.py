"""One contract, every backend: a session's next computation runs the user's code as it is now.

A session's workers live on between its computations (``smallpond.init()``, then several
``to_pandas()``), and a module a task imported stays loaded in them. When the user edits that
module between two computations, the second one's tasks are keyed by the new file: run by a
worker that still holds the old module, their old-code result would be stored in the task cache
under the new code's key and served to every later run. So every backend replaces the workers
that may hold it (:meth:`~smallpond.execution.executors.base.Executor.restart_workers`):

* embedded: new worker processes;
* Ray, connected by the session: a new connection (a new Ray job, whose worker processes are new);
* Ray, connected by the user before the session: the session's attempts run in worker processes
  of their own generation (a ``runtime_env`` Ray starts new workers for), renewed after an edit;
* queue (mpirun, or executors started by hand): every executor replaces its worker processes
  before it takes another attempt.

Each test runs a real session script (a subprocess) that computes, edits the module, computes
again, and checks both the values (the new code's) and the worker processes (none of the first
computation's ran the second).
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import uuid
from typing import Dict, List, Tuple

import pytest

SESSION = """
import json, os, sys, uuid
MODS = {mods!r}
sys.path.insert(0, MODS)
{connect}
import smallpond

sp = None


def start(job_id):
    global sp
    sp = smallpond.init(job_id=job_id, data_root={data_root!r}, **{init_kwargs!r})


def tag(row):
    if MODS not in sys.path:  # a worker process (Ray's, an executor's) is not told where it is
        sys.path.insert(0, MODS)
    import sp_edited_helper

    return {{"a": row["a"], "v": sp_edited_helper.value(), "pid": os.getpid()}}


def run():
    df = sp.from_items([{{"a": i}} for i in range(4)]).repartition(4, by_rows=True).map(tag).to_pandas()
    print(json.dumps({{"v": sorted(set(df["v"])), "pids": sorted(set(map(int, df["pid"])))}}), flush=True)


def edit(value):
    with open(os.path.join(MODS, "sp_edited_helper.py"), "w") as f:
        f.write(f"def value():\\n    return {{value}}\\n")


{steps}
"""

#: one session, two computations with an edit between
ONE_SESSION = "start({job_id!r})\nrun()\nedit(2)\nrun()\nsp.shutdown()\n"
#: a session of one computation; an edit; a next session (a new job, which no run before told of
#: the edit) of two computations with an edit between
TWO_SESSIONS = (
    "start(str(uuid.uuid4()))\nrun()\nsp.shutdown()\nedit(2)\nstart({job_id!r})\nrun()\nedit(3)\nrun()\nsp.shutdown()\n"
)

#: a by-hand executor of any session's job: ``python executor.py executor --job_id J --data_root D``
EXECUTOR_SCRIPT = "from smallpond.execution.driver import main\n\nmain()\n"


def run_sessions_across_edits(
    backend, tmp_path, steps: str = ONE_SESSION, *, connect: str = ""
) -> Tuple[List[Dict[str, list]], str]:
    """Run :data:`SESSION` with ``steps`` on ``backend`` (the last session's job is the one its
    ``job_side`` serves); returns what the computations printed, and the script's standard error
    and job logs (the sessions' and their executors')."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sp_edited_helper.py").write_text("def value():\n    return 1\n")
    job_id, data_root = str(uuid.uuid4()), str(tmp_path / "root")
    script = tmp_path / "session.py"
    steps = steps.format(job_id=job_id)
    kwargs = backend.init_kwargs()
    script.write_text(SESSION.format(mods=str(mods), connect=connect, data_root=data_root, init_kwargs=kwargs, steps=steps))
    executor = tmp_path / "executor.py"
    executor.write_text(EXECUTOR_SCRIPT)
    env = dict(backend.env(), SP_PROGRESS="0")
    with backend.job_side(str(executor), job_id, data_root):
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=400
        )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(runs) == len(re.findall(r"^run\w*\(\)$", steps, re.M)), proc.stdout + proc.stderr[-3000:]
    logs = [proc.stderr]
    for path in sorted(glob.glob(os.path.join(data_root, "*", "log", "*.log"))):
        with open(path) as f:
            logs.append(f.read())
    return runs, "\n".join(logs)


def assert_each_run_after_an_edit_is_the_new_codes(runs, logs: str) -> None:
    """Run ``n`` (from 0) computed ``n + 1``, the module's value then, in worker processes no
    earlier run used."""
    for n, run in enumerate(runs):
        assert run["v"] == [n + 1], f"computation {n + 1} ran the module as it was before the edit: {run}\n{logs[-3000:]}"
        reused = {p for earlier in runs[:n] for p in earlier["pids"]} & set(run["pids"])
        assert not reused, f"worker processes {sorted(reused)} of an earlier computation ran computation {n + 1}\n{logs[-3000:]}"


def test_a_module_edited_between_two_computations_runs_as_it_is_now(backend, tmp_path):
    # on Ray, the session connects itself (init's ray_address): the reconnect path
    runs, logs = run_sessions_across_edits(backend, tmp_path)
    assert_each_run_after_an_edit_is_the_new_codes(runs, logs)
    if backend.name == "ray":
        assert "reconnecting to Ray" in logs, logs[-3000:]
    elif backend.name.startswith("queue"):
        assert "asking the executors for fresh worker processes" in logs, logs[-3000:]


@pytest.mark.ray
def test_on_a_ray_connection_the_user_made_an_edited_module_runs_as_it_is_now(tmp_path):
    # the connection is the user's (ray.init before smallpond.init): the session cannot end its
    # Ray job, so its attempts run in worker processes of their own: a session's own (a new job is
    # told of no edit before it), and new ones after an edit
    from tests.backends.backend_ray import make_backend

    backend = make_backend(None)
    connect = f"import ray\nray.init(address={backend.cluster.address!r}, log_to_driver=False)\n"
    runs, logs = run_sessions_across_edits(backend, tmp_path, TWO_SESSIONS, connect=connect)
    assert_each_run_after_an_edit_is_the_new_codes(runs, logs)
    assert "reconnecting to Ray" not in logs


#: the map's function is the edited module's own (``df.map(helper.tag)``), which the session
#: reloads after the edit (as IPython's autoreload does): pickled by reference, it runs in a
#: worker as the module's file says, so the file is part of its code and its edit renews workers
HOME_MODULE = """
import importlib
HERE = os.path.dirname(os.path.abspath(__file__))  # on a worker's path, as the script's folder


def write_home(value):
    path = os.path.join(HERE, "sp_home_helper.py")
    old = os.stat(path).st_mtime_ns if os.path.exists(path) else None
    with open(path, "w") as f:
        f.write("import os\\ndef tag(row):\\n    return dict(a=row['a'], v=%d, pid=os.getpid())\\n" % value)
    if old is not None:  # a later time than the last version's: the bytecode cache is by seconds
        os.utime(path, ns=(old + 2_000_000_000, old + 2_000_000_000))


def run_home():
    df = sp.from_items([dict(a=i) for i in range(4)]).repartition(4, by_rows=True).map(sp_home_helper.tag).to_pandas()
    print(json.dumps(dict(v=sorted(set(df["v"])), pids=sorted(set(map(int, df["pid"]))))), flush=True)


write_home(1)
import sp_home_helper

start({job_id!r})
run_home()
write_home(2)
importlib.reload(sp_home_helper)
run_home()
sp.shutdown()
"""


def test_a_mapped_function_of_an_edited_and_reloaded_module_runs_as_it_is_now(backend, tmp_path):
    # the workers of the first computation hold the module as it was: without renewing them the
    # second ran its old code (embedded, queue), or old and new in one result (Ray: a new worker
    # process imports the file as it is now)
    runs, logs = run_sessions_across_edits(backend, tmp_path, HOME_MODULE)
    assert_each_run_after_an_edit_is_the_new_codes(runs, logs)


#: a folder of the user's modules put on sys.path after the session started its workers (as in a
#: notebook), and a map with a function of a module found there
LATE_PATH = """
LATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "late_libs")


def run_late():
    os.makedirs(LATE, exist_ok=True)
    with open(os.path.join(LATE, "sp_late_lib.py"), "w") as f:
        f.write("import os\\ndef tag(row):\\n    return dict(a=row['a'], v=1, pid=os.getpid())\\n")
    sys.path.insert(0, LATE)
    import sp_late_lib

    df = sp.from_items([dict(a=i) for i in range(4)]).repartition(4, by_rows=True).map(sp_late_lib.tag).to_pandas()
    print(json.dumps(dict(v=sorted(set(df["v"])), pids=sorted(set(map(int, df["pid"]))))), flush=True)


start({job_id!r})
run_late()
sp.shutdown()
"""


def test_a_module_found_through_a_folder_put_on_sys_path_after_the_workers_started_is_found(backend, tmp_path):
    # the session's workers (executors, Ray workers) started with the import path of then; the
    # function travels by reference, so they must learn the folder from the driver
    runs, logs = run_sessions_across_edits(backend, tmp_path, LATE_PATH)
    assert runs[0]["v"] == [1], logs[-3000:]


#: os.chdir in the script: a relative path in a node's SQL (and in its Python code) means the
#: folder current when the node was built, as a dataset's relative paths do (reference §1.3),
#: whatever folder the workers started in (A here) or the script is in when it computes
CHDIR = """
import duckdb
HERE = os.path.dirname(os.path.abspath(__file__))
for name in ("A", "B"):
    os.makedirs(os.path.join(HERE, name), exist_ok=True)
    duckdb.sql("COPY (SELECT '%s' AS v) TO '%s'" % (name, os.path.join(HERE, name, "rel.parquet")))


def read_rel(row):
    with open("marker.txt") as f:  # relative: the folder current when the map was built
        return dict(v=f.read(), pid=os.getpid())


def run_relative():
    os.chdir(os.path.join(HERE, "B"))
    in_b = sp.partial_sql("select v, 1 as k from read_parquet('rel.parquet')")
    os.chdir(os.path.join(HERE, "A"))  # the script moves on before it computes
    sql = in_b.to_pandas()["v"].tolist()
    os.chdir(os.path.join(HERE, "B"))
    mapped = sp.from_items([dict(a=1)]).map(read_rel)
    os.chdir(HERE)
    py = mapped.to_pandas()["v"].tolist()
    print(json.dumps(dict(v=sql + py, pids=[])), flush=True)


for name in ("A", "B"):
    with open(os.path.join(HERE, name, "marker.txt"), "w") as f:
        f.write(name)
os.chdir(os.path.join(HERE, "A"))
start({job_id!r})
sp.from_items([dict(a=1)]).to_pandas()  # the workers start (in A)
run_relative()
sp.shutdown()
"""


def test_relative_paths_after_os_chdir_mean_the_folder_current_when_the_node_was_built(backend, tmp_path):
    # the tasks read them in their worker's folder: the driver's when the workers started (A), or
    # where a queue executor was started (tmp_path), not B
    runs, logs = run_sessions_across_edits(backend, tmp_path, CHDIR)
    assert runs[0]["v"] == ["B", "B"], logs[-3000:]
