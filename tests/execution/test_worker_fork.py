"""Forked local workers (smallpond.execution.worker_fork): when a driver may fork its first worker,
and that the fork is a worker as good as a fresh interpreter (real jobs, real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types

import psutil
import pytest

from smallpond.execution import module_kinds, worker_fork
from tests.datagen import generate_parquet_files

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")

# A driver script that imports only the standard library and smallpond (as a user's script
# would), so its first worker may be forked. Its task records what the worker process looks like.
_DRIVER = r"""
import gc, json, os, signal, sys, time, warnings
import smallpond.execution.executors.local as local
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, PythonScriptNode, RootNode, SqlEngineNode

inputs, root, mode, out = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
workers = []
init = local._Worker.__init__
def spy(self, *args):
    init(self, *args)
    workers.append({"pid": self.pid, "not_forked": self.not_forked})
local._Worker.__init__ = spy
if mode == "python":  # a forked worker's first attempt goes out once it has DuckDB loaded (or 60 s passed)
    send = local.LocalExecutor._send
    def wait_then_send(self, w, entry):
        if len(workers) == 1 and workers[0]["not_forked"] is None and not workers[0].get("waited"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "duckdb" not in open("/proc/%d/maps" % w.pid).read():
                time.sleep(0.01)
            workers[-1]["waited"] = True
        return send(self, w, entry)
    local.LocalExecutor._send = wait_then_send

read_end, write_end = os.pipe()  # a pipe of the user's: no worker may hold its write end open
held = open(os.path.join(out, "held.txt"), "w")
held.write("written once")  # buffered in the driver when the worker starts: never written twice
print("printed once", end="")  # likewise, stdout's buffer (a pipe here)
signal.signal(signal.SIGTERM, lambda *a: None)  # the user's own handler: not a worker's
warnings.filterwarnings("error", message="smallpond-fork-test")  # the script's filters: not a worker's

class Finalized:  # garbage of the driver's, in a cycle, when the worker starts: finalized here only
    def __del__(self):
        with open(os.path.join(out, "finalized.txt"), "a") as f:
            f.write("in %d\n" % os.getpid())
gc.disable()
cycle = [Finalized()]
cycle.append(cycle)
del cycle

def probe(runtime_ctx, input_datasets, output_path):
    import json, os, signal, sys
    marker = os.path.join(OUT, "killed-once")
    if MODE == "die" and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # the first attempt's worker dies mid-task
    if MODE == "hang":
        with open(os.path.join(OUT, "worker.pid"), "w") as f:
            f.write(str(os.getpid()))
        signal.pause()
    print("the task prints", flush=True)  # a worker flushing stdout writes only its own
    import gc, warnings
    try:
        warnings.warn("smallpond-fork-test")
        warning_raised = False
    except UserWarning:
        warning_raised = True
    gc_enabled = gc.isenabled()
    gc.collect()
    main = sys.modules["__main__"]
    facts = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "main_file": getattr(main, "__file__", None),
        "main_has_probe": hasattr(main, "probe"),
        "fds": [os.readlink("/proc/self/fd/" + f) for f in os.listdir("/proc/self/fd") if os.path.exists("/proc/self/fd/" + f)],
        "stdin": os.readlink("/proc/self/fd/0"),
        "argv0": os.path.basename(sys.argv[0]),
        "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "gc_enabled": gc_enabled,
        "warning_raised": warning_raised,
        "duckdb_loaded": "duckdb" in sys.modules,
    }
    with open(os.path.join(OUT, "facts.json"), "w") as f:
        json.dump(facts, f)
    return True

MODE, OUT = mode, out
ctx = Context()
source = DataSourceNode(ctx, ParquetDataSet(inputs))
count = SqlEngineNode(ctx, (source,), "select count(*) as n from {0}")
script = PythonScriptNode(ctx, (source,), process_func=probe)
rt = make_runtime_ctx(None, None, root, console_log_level="WARNING")
plan = run_job(LogicalPlan(ctx, RootNode(ctx, (script,) if mode == "python" else (count, script))), rt, num_workers=1)
count_key = next((k for k in plan.tasks if k.startswith("SqlEngineTask")), None)
n = plan.results[count_key].to_arrow_table().column("n")[0].as_py() if count_key else None
facts = json.load(open(os.path.join(out, "facts.json")))
# a second job in the same process: loguru now holds the first job's log sinks, so not forked
rt2 = make_runtime_ctx(None, None, root, console_log_level="WARNING")
run_job(LogicalPlan(ctx, RootNode(ctx, (SqlEngineNode(ctx, (source,), "select 1 as one"),))), rt2, num_workers=1)
held.close()
gc.enable()
gc.collect()
pipe = "pipe:[%d]" % os.fstat(write_end).st_ino
print(json.dumps({"workers": workers, "n": n, "facts": facts, "driver": os.getpid(), "pipe": pipe}))
"""


def _run(tmp_path, mode: str = "plain", env_extra=None, wait: bool = True):
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=30)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    # stdout block-buffered (a pipe): what the driver printed is still in its buffer when it forks
    env = {k: v for k, v in os.environ.items() if k not in ("SP_FORK_WORKERS", "PYTHONUNBUFFERED")}
    # the driver's salt of str hashes is the workers' (the user set it), so the forked worker may
    # run the probe, which is user Python (see test_user_python_never_runs_in_a_fork_of_another_salt)
    env["PYTHONHASHSEED"] = "0"
    for k, v in (env_extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    cmd = [sys.executable, "-c", _DRIVER, ",".join(files), str(tmp_path / "root"), mode, str(out)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), out
    # stdin a pipe: a worker reads /dev/null instead
    proc = subprocess.run(cmd, input="", capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def _report(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1].replace("printed once", "").replace("the task prints", ""))


def test_a_driver_of_smallpond_alone_forks_a_worker_as_clean_as_a_fresh_one(tmp_path):
    proc, out = _run(tmp_path)
    report = _report(proc)
    first, second = report["workers"]
    assert first["not_forked"] is None  # forked
    # the second job's driver holds log sinks and Arrow's threads (it read the first result): fresh
    assert second["not_forked"] is not None
    assert report["n"] == 30
    facts = report["facts"]
    assert facts["pid"] == first["pid"] and facts["ppid"] == report["driver"]
    # __main__ is not the user's script, as in a fresh worker (a function pickled by name fails alike)
    assert facts["main_file"] is None and not facts["main_has_probe"]
    # no descriptor of the driver's but stdin/stdout/stderr: the user's pipe is not held open
    assert report["pipe"] not in facts["fds"]
    assert facts["stdin"] == os.devnull
    assert facts["argv0"] == "worker.py"
    assert facts["sigterm_default"]  # not the driver's handler
    assert not facts["warning_raised"]  # nor its warning filters
    # the driver's buffers were not written out a second time by the worker
    assert proc.stdout.count("printed once") == 1
    assert (out / "held.txt").read_text() == "written once"
    # garbage of the driver's is finalized by the driver, never in the worker (which collects)
    assert facts["gc_enabled"]
    assert (out / "finalized.txt").read_text() == f"in {report['driver']}\n"


def test_sp_fork_workers_0_starts_fresh_interpreters(tmp_path):
    proc, _ = _run(tmp_path, env_extra={"SP_FORK_WORKERS": "0"})
    report = _report(proc)
    assert [w["not_forked"] for w in report["workers"]][0] == "SP_FORK_WORKERS is off"
    assert report["n"] == 30 and report["facts"]["argv0"] == "worker.py"


def test_a_forked_worker_that_dies_mid_task_is_replaced_and_the_task_retried(tmp_path):
    proc, _ = _run(tmp_path, mode="die")
    report = _report(proc)
    forked, replacement = report["workers"][0], report["workers"][1]
    assert forked["not_forked"] is None
    assert replacement["not_forked"] is not None  # a replacement comes while the job runs: fresh
    assert report["facts"]["pid"] == replacement["pid"]  # the retry ran there, and finished
    assert report["n"] == 30


def test_a_forked_worker_dies_with_its_driver(tmp_path):
    proc, out = _run(tmp_path, mode="hang", wait=False)
    pid_file = out / "worker.pid"
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        worker = psutil.Process(int(pid_file.read_text()))
        assert worker.ppid() == proc.pid
        assert worker.cmdline() == psutil.Process(proc.pid).cmdline()  # a fork of the driver, not a fresh python
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs([worker], timeout=30)
        assert not alive, "the forked worker outlived its driver"
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid_file.exists() and pid_file.read_text() and psutil.pid_exists(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _modules(**extra) -> dict:
    import importlib

    mods = {name: importlib.import_module(name) for name in ("sys", "os", "json", "smallpond", "cloudpickle", "psutil")}
    mods.update(extra)
    return mods


def _fake(name: str, path) -> types.ModuleType:
    m = types.ModuleType(name)
    if path is not None:
        m.__file__ = str(path)
    return m


def test_fork_refusal_names_what_a_fresh_worker_would_not_have(tmp_path, monkeypatch):
    monkeypatch.delenv("SP_FORK_WORKERS", raising=False)
    monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    site_dir = module_kinds.library_roots()[1][0]
    assert worker_fork.fork_refusal(_modules(), threads=2) == "2 threads"
    user = _fake("helpers", tmp_path / "helpers.py")  # the user's module: its file may have changed
    assert "module helpers" in worker_fork.fork_refusal(_modules(helpers=user), threads=1)
    ext = _fake("fastlib._core", os.path.join(site_dir, "fastlib", "_core.cpython-311-x86_64-linux-gnu.so"))
    assert "module fastlib._core" in worker_fork.fork_refusal(_modules(**{"fastlib._core": ext}), threads=1)
    lib = _fake("somelib", os.path.join(site_dir, "somelib", "__init__.py"))  # any other library
    assert "module somelib" in worker_fork.fork_refusal(_modules(somelib=lib), threads=1)
    assert worker_fork.fork_refusal(_modules(loguru=_fake("loguru", None)), threads=1) == "loguru is loaded"
    # a running job's log sinks written without loguru: a file of this process (see execution/joblog.py)
    from smallpond.common import _SmallpondLogger

    monkeypatch.setattr(_SmallpondLogger, "_plain", {-1: object()})
    assert worker_fork.fork_refusal(_modules(), threads=1) == "the job's log sinks are open"
    monkeypatch.setattr(_SmallpondLogger, "_plain", {})
    space = _fake("userspace", None)
    space.__path__ = [str(tmp_path)]  # a namespace package of the user's folders
    assert "module userspace" in worker_fork.fork_refusal(_modules(userspace=space), threads=1)
    monkeypatch.setenv("SP_FORK_WORKERS", "0")
    assert worker_fork.fork_refusal(_modules(), threads=1) == "SP_FORK_WORKERS is off"


def test_what_a_fresh_worker_has_too_does_not_refuse_a_fork():
    roots = module_kinds.library_roots()
    site_dir, startup = roots[1][0], roots[2]
    assert module_kinds.kind_of("__main__", _fake("__main__", "/somewhere/script.py"), roots) == "main"
    assert module_kinds.kind_of("json.decoder", sys.modules["json.decoder"], roots) == "stdlib"
    assert module_kinds.kind_of("smallpond.common", sys.modules["smallpond.common"], roots) == "own"
    assert module_kinds.kind_of("psutil._psutil_linux", _fake("psutil._psutil_linux", "/x/_psutil_linux.so"), roots) == "own"
    assert "sitecustomize" in startup
    hook = _fake("sitecustomize", os.path.join(site_dir, "sitecustomize.py"))
    assert module_kinds.kind_of("sitecustomize", hook, roots) == "startup"


def test_the_modules_a_pth_file_imports_are_start_up_modules(tmp_path):
    (tmp_path / "a.pth").write_text("import _finder_x; _finder_x.install()\n/some/dir\n")
    (tmp_path / "b.pth").write_text('import os; exec("try:\\n import certifi_y\\nexcept: pass")\n')
    (tmp_path / "c.pth").write_text("import os; var = 'X'; os.environ.get(var) and __import__('_hack_z').add_shim()\n")
    (tmp_path / "d.pth").write_text("# import not_run\nnot_a_module_line\n")
    names = module_kinds._startup_modules([str(tmp_path)])
    assert {"_finder_x", "certifi_y", "_hack_z", "os"} <= names
    assert "not_run" not in names and "not_a_module_line" not in names


@pytest.mark.parametrize("fork", ["1", "0"])
def test_a_forked_worker_opens_duckdb_while_it_waits_for_its_first_task(tmp_path, fork):
    """A forked worker is ready before its driver has set the job up, and loads DuckDB meanwhile
    (the driver here holds the first attempt back until it has, at most 60 s); a fresh worker,
    whose first task is waiting when it is ready, loads DuckDB only for a task that uses it."""
    proc, _ = _run(tmp_path, mode="python", env_extra={"SP_FORK_WORKERS": fork})
    report = _report(proc)
    assert (report["workers"][0]["not_forked"] is None) == (fork == "1")
    assert report["facts"]["duckdb_loaded"] == (fork == "1")  # a Python task, the job's only one


def test_a_driver_started_with_interpreter_options_does_not_fork():
    """A fresh worker is started without the driver's ``-O``/``-W``/``-X``: a fork would keep them."""
    probe = "from smallpond.execution.worker_fork import fork_refusal; print(fork_refusal())"
    env = {k: v for k, v in os.environ.items() if k != "SP_FORK_WORKERS"}
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    optimized = subprocess.run([sys.executable, "-O", "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert plain.stdout.strip() == "None", plain.stderr
    assert optimized.stdout.strip() == "interpreter options ['-O']", optimized.stderr


def test_user_python_never_runs_in_a_fork_of_another_salt(tmp_path):
    # the driver's str-hash salt is random (no PYTHONHASHSEED): a forked worker has it too, not
    # the job's, so set orders in the task's code would change from run to run; the Python task
    # goes to a fresh interpreter, which replaces the fork
    proc, out = _run(tmp_path, mode="python", env_extra={"PYTHONHASHSEED": None})
    report = _report(proc)
    forked, fresh = report["workers"][:2]
    assert forked["not_forked"] is None
    assert fresh["not_forked"] is not None
    assert report["facts"]["pid"] == fresh["pid"], report


_START_ALL = r"""
import json, sys, time
from smallpond.execution.executors.local import LocalExecutor
from smallpond.execution.job import make_runtime_ctx
rt = make_runtime_ctx(None, None, sys.argv[1], console_log_level="WARNING")
ex = LocalExecutor(rt, int(sys.argv[2]), cpus=int(sys.argv[3]))
ex.start()
pids = [w.pid for w in ex.workers]
forked = [w.not_forked for w in ex.workers]
deadline = time.monotonic() + 60  # the first loads DuckDB while it waits
while time.monotonic() < deadline and "duckdb" not in open("/proc/%d/maps" % pids[0]).read():
    time.sleep(0.01)
time.sleep(0.5)
duckdb = ["duckdb" in open("/proc/%d/maps" % p).read() for p in pids]
ex.shutdown(keep=False)
print(json.dumps({"forked": forked, "duckdb": duckdb}))
"""


def test_a_driver_that_forks_its_first_worker_forks_them_all_at_start(tmp_path):
    """Later the driver holds DuckDB, Arrow or threads of its own (the plan check, the result
    imports), and a worker started then is a fresh interpreter (~0.1 s of CPU on Python's start
    and smallpond's imports): so all are forked at once, and only the first opens DuckDB while
    it waits (a job that never runs two tasks at once pays no more than a fork for the others)."""
    env = {k: v for k, v in os.environ.items() if k != "SP_FORK_WORKERS"}
    proc = subprocess.run(
        [sys.executable, "-c", _START_ALL, str(tmp_path / "root"), "3", "3"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["forked"] == [None, None, None]
    assert report["duckdb"] == [True, False, False]


def test_a_driver_forks_no_more_workers_at_start_than_it_has_cores(tmp_path):
    """num_executors=64 on 2 cores: forking all 64 at the start of a job of one task cost the
    driver ~4 ms of CPU each, in series, and ~18 ms each in all (1.4 -> 4.2 s wall, 0.83 -> 1.98 s
    of CPU); as many as the cores are forked at start, the others start when they are needed."""
    env = {k: v for k, v in os.environ.items() if k != "SP_FORK_WORKERS"}
    proc = subprocess.run(
        [sys.executable, "-c", _START_ALL, str(tmp_path / "root"), "6", "2"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["forked"] == [None, None]


_ONE_TASK_JOB = r"""
import json, sys
import smallpond.execution.executors.local as local
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode
at_start = []
start = local.LocalExecutor.start
def spy(self):
    start(self)
    at_start.append([w.not_forked for w in self.workers])
local.LocalExecutor.start = spy
ctx = Context()
src = DataSourceNode(ctx, ParquetDataSet(sys.argv[1].split(",")))
if int(sys.argv[3]) > 1:
    src = DataSetPartitionNode(ctx, (src,), int(sys.argv[3]))
node = SqlEngineNode(ctx, (src,), "select count(*) as n from {0}")
rt = make_runtime_ctx(None, None, sys.argv[2], console_log_level="WARNING")
if sys.argv[4] == "run_job":
    exec_plan = run_job(LogicalPlan(ctx, node), rt, num_workers=3)
else:  # the Driver's way (upstream's JobManager), one worker per usable CPU
    from smallpond.execution.manager import JobManager
    exec_plan = JobManager(sys.argv[2]).run(LogicalPlan(ctx, node))
table = exec_plan.final_output.to_arrow_table()
print(json.dumps({"at_start": at_start, "counts": sorted(table.column("n").to_pylist()), "cpus": rt.usable_cpu_count}))
"""


@pytest.mark.parametrize("how", ["run_job", "JobManager"])
@pytest.mark.parametrize("partitions", [1, 2])
def test_a_job_forks_no_more_workers_at_start_than_its_plan_runs_tasks_at_once(tmp_path, partitions, how):
    """run_job knows the plan when its executor starts: a plan that can never run two tasks at
    once (one SQL task over a file) forks one worker of the three, not two (the cores here) or
    three (each fork too many cost ~20 ms of CPU of a one-task job's ~0.35 s on 2 cores); one
    of two partitions forks two. The results are the same."""
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    env = {k: v for k, v in os.environ.items() if k != "SP_FORK_WORKERS"}
    proc = subprocess.run(
        [sys.executable, "-c", _ONE_TASK_JOB, ",".join(files), str(tmp_path / "root"), str(partitions), how],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["at_start"] == [[None] * min(partitions, report["cpus"])], report
    assert sum(report["counts"]) == 10 and len(report["counts"]) == partitions, report
