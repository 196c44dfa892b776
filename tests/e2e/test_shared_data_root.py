"""A data root shared by two real users: each has their own key, records and task cache.

User A (this process, root) publishes first and so makes ``{data_root}/.smallpond``; user B
(``nobody``, through setpriv) then plans jobs in the same data root. B's plan used to fail at
once, whatever its destination: A's key was "not private to this user" (or unreadable) and A's
task cache was "owned by uid 0". Now:

* B plans (and publishes) into a fresh folder, with records and a task cache of B's own, in
  ``.smallpond/users/65534`` (0700, B's);
* B's overwrite of A's result is refused: B has no record of it (nothing is removed);
* ``smallpond clean`` run by B prunes B's records only, and A's still vouch for A's result;
* A data root whose ``.smallpond`` an earlier smallpond made (``0700``) stops B with a message
  saying that its owner's next job opens it; that job does, and B goes on.

B's plans run as dry runs (the planner's destination checks and the task cache, nothing else),
which need neither DuckDB nor pyarrow: this machine's interpreter lives under /root and its
libraries are not readable by nobody. A whole job run by B needs both; it runs where nobody can
import them (``SP_TEST_OTHER_USER_PYTHON``, ``SP_TEST_OTHER_USER_PYTHONPATH`` name an interpreter
and a library path that nobody can use), and is skipped otherwise, saying why.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.execution.ops import sink_record
from smallpond.execution.runtime import sink_records_dir, user_dir
from tests.conftest import REPO_ROOT
from tests.e2e.safety_helpers import published_rows, snapshot

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

# B's side: plan a job (a dry run) writing ``dest`` from ``src``; or record a folder B filled and
# removed (a result that is gone, for clean); prints what happened
B_PLAN = """
import os, sys
from smallpond.errors import PlanError
from smallpond.execution.job import dry_run_plan, make_runtime_ctx
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan
root, src, dest = sys.argv[1:4]
ctx = Context()
plan = LogicalPlan(ctx, DataSinkNode(ctx, (DataSourceNode(ctx, ParquetDataSet([src])),), dest, mode="overwrite"))
try:
    print(dry_run_plan(plan, make_runtime_ctx("cccccccc-0000-0000-0000-00000000000c", None, root)))
except PlanError as e:
    print("REFUSED", e)
"""
B_RECORD_GONE = """
import os, shutil, sys
from smallpond.execution.ops import sink_record
from smallpond.execution.runtime import sink_records_dir
root, dest = sys.argv[1:3]
os.makedirs(dest)
open(os.path.join(dest, "a.parquet"), "wb").write(b"x")
open(os.path.join(dest, ".MANIFEST.txt"), "w").write(os.path.join(dest, "a.parquet") + "\\n")
records = sink_records_dir(root)
sink_record.save(sink_record.record_path(records, dest), sink_record.record_of(records, dest, dest, ["a.parquet"]))
shutil.rmtree(dest)
print(sink_record.record_path(records, dest))
"""


def _nobody_env(extra_path: str = "") -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, extra_path) if p), HOME="/tmp")


def _nobody_python(engine: bool = False) -> tuple:
    """(interpreter, env) with which user nobody runs smallpond (``engine``: and DuckDB and pyarrow);
    skips the test, saying why, where it cannot."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root, to run commands as a second user (nobody)")
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot run commands as another user")
    module = "import duckdb, pyarrow, smallpond" if engine else "import smallpond"
    if engine:  # a job starts its workers with sys.executable: that must start as nobody too
        module += "; import subprocess, sys; subprocess.run([sys.executable, '-c', 'import duckdb'], check=True)"
    tried = []
    candidates = [(sys.executable, "")]
    if os.environ.get("SP_TEST_OTHER_USER_PYTHON"):
        candidates.append((os.environ["SP_TEST_OTHER_USER_PYTHON"], os.environ.get("SP_TEST_OTHER_USER_PYTHONPATH", "")))
    for python, extra in candidates:
        env = _nobody_env(extra)
        probe = subprocess.run([*AS_NOBODY, python, "-c", module], capture_output=True, text=True, env=env, cwd="/", timeout=60)
        if probe.returncode == 0:
            return python, env
        tried.append(f"{python}: {probe.stderr.strip()[-160:]}")
    pytest.skip(f"user nobody cannot run {module!r} here ({'; '.join(tried)})")


def as_nobody(python_env, *args) -> subprocess.CompletedProcess:
    python, env = python_env
    out = subprocess.run([*AS_NOBODY, python, *args], capture_output=True, text=True, env=env, cwd="/", timeout=300)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out


@pytest.fixture
def shared(tmp_path):
    """A data root every user can write (as a shared one is), with an input everyone can read."""
    top = tempfile.mkdtemp(prefix="smallpond-two-users-")  # /tmp: reachable by nobody
    os.chmod(top, 0o1777)
    os.mkdir(os.path.join(top, "root"))
    os.chmod(os.path.join(top, "root"), 0o1777)  # each user makes job folders in it
    src = os.path.join(top, "in.parquet")
    pq.write_table(pa.table({"id": list(range(6))}), src)
    os.chmod(src, 0o644)
    try:
        yield top, os.path.join(top, "root"), src
    finally:
        shutil.rmtree(top, ignore_errors=True)


def publish_as_a(root: str, dest: str, start: int = 0) -> None:
    sp = smallpond.init(data_root=root, num_executors=1)
    try:
        sp.from_arrow(pa.table({"id": list(range(start, start + 3))})).write_parquet(dest)
    finally:
        sp.shutdown()
    os.chmod(dest, 0o777)  # B could write into it: only the records stand between B and A's files


def test_each_user_of_a_shared_data_root_has_their_own_records_and_cache(shared):
    top, root, src = shared
    py = _nobody_python()
    out_a, out_b = os.path.join(top, "out_a"), os.path.join(top, "out_b")
    publish_as_a(root, out_a)  # A (root) makes .smallpond first
    a_key = sink_record.key_path(sink_records_dir(root))
    with open(a_key, "rb") as f:
        a_secret = f.read()
    a_files = snapshot(out_a)

    fresh = as_nobody(py, "-c", B_PLAN, root, src, out_b)
    assert "will run: publishes to " + out_b in fresh.stdout, fresh.stdout + fresh.stderr
    mine = os.path.join(root, ".smallpond", "users", str(NOBODY))
    st = os.lstat(mine)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o700)
    for name in ("secret", "task_cache"):  # B's key and cache, in B's folder
        assert os.lstat(os.path.join(mine, name)).st_uid == NOBODY, name

    over = as_nobody(py, "-c", B_PLAN, root, src, out_a)
    assert over.stdout.startswith("REFUSED DataSinkNode created at "), over.stdout + over.stderr
    assert f"there is no record of it under {mine}/sinks" in over.stdout and "another user" in over.stdout
    assert snapshot(out_a) == a_files
    with open(a_key, "rb") as f:
        assert f.read() == a_secret, "B's jobs changed A's key"
    publish_as_a(root, out_a, start=10)  # A's overwrite: A's record and key still vouch for A's result
    assert published_rows(out_a, "id") == [10, 11, 12]

    gone = as_nobody(py, "-c", B_RECORD_GONE, root, os.path.join(top, "b_gone")).stdout.strip()
    assert os.path.dirname(gone) == os.path.join(mine, "sinks")
    shutil.rmtree(out_a)  # A's result is gone too: only A's own clean prunes its record
    a_record = sink_record.record_path(sink_records_dir(root), out_a)
    cleaned = as_nobody(py, "-m", "smallpond", "clean", "--yes", "--data_root", root)
    assert "removed 1 record(s) of published results" in cleaned.stdout, cleaned.stdout + cleaned.stderr
    assert not os.path.exists(gone) and os.path.exists(a_record)


def test_a_closed_smallpond_folder_of_an_earlier_version_is_opened_by_its_owners_next_job(shared):
    """Before each user had a folder, A's first job made ``.smallpond`` 0700 with A's key and
    records in it: B is told who must open it, and A's next job does (moving A's records in)."""
    top, root, src = shared
    py = _nobody_python()
    out_a = os.path.join(top, "out_a")
    publish_as_a(root, out_a)
    legacy = os.path.join(root, ".smallpond")
    for name in ("secret", "sinks"):  # the layout an earlier smallpond left
        os.rename(os.path.join(user_dir(root), name), os.path.join(legacy, name))
    shutil.rmtree(os.path.join(legacy, "users"))
    os.chmod(legacy, 0o700)

    refused = as_nobody(py, "-c", B_PLAN, root, src, os.path.join(top, "out_b"))
    assert refused.stdout.startswith("REFUSED"), refused.stdout + refused.stderr
    assert f"{legacy} (owned by uid 0" in refused.stdout and "its owner's next smallpond job opens it" in refused.stdout

    publish_as_a(root, out_a, start=20)  # A's overwrite: its record moved in with its key, and still vouches
    assert published_rows(out_a, "id") == [20, 21, 22]
    assert sorted(os.listdir(legacy)) == ["users"] and stat.S_IMODE(os.stat(legacy).st_mode) == 0o711
    fresh = as_nobody(py, "-c", B_PLAN, root, src, os.path.join(top, "out_b"))
    assert "will run" in fresh.stdout, fresh.stdout + fresh.stderr


B_JOB = """
import sys
import pyarrow as pa
import smallpond
root, dest, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
sp = smallpond.init(data_root=root, num_executors=1)
try:
    sp.from_arrow(pa.table({"id": list(range(start, start + 2))})).write_parquet(dest)
    print("PUBLISHED")
except smallpond.errors.PlanError as e:
    print("REFUSED", e)
finally:
    sp.shutdown()
"""


def test_a_second_users_whole_jobs_publish_and_overwrite_only_their_own(shared):
    top, root, _ = shared
    py = _nobody_python(engine=True)
    out_a, out_b = os.path.join(top, "out_a"), os.path.join(top, "out_b")
    publish_as_a(root, out_a)
    for start in (0, 5):  # a fresh folder, then B's own overwrite (B's record vouches for it)
        ran = as_nobody(py, "-c", B_JOB, root, out_b, str(start))
        assert "PUBLISHED" in ran.stdout, ran.stdout + ran.stderr
    assert published_rows(out_b, "id") == [5, 6]
    a_files = snapshot(out_a)
    over = as_nobody(py, "-c", B_JOB, root, out_a, "9")
    assert over.stdout.startswith("REFUSED") and "no record of it under" in over.stdout, over.stdout + over.stderr
    assert snapshot(out_a) == a_files
