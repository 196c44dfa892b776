"""smallpond.init(), the Session's configuration, lifecycle and job directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime

import pytest

import smallpond
from smallpond.errors import ParameterError
from tests.datagen import generate_parquet_files


def test_init_needs_no_ray_and_no_service(tmp_path):
    code = (
        "import sys, smallpond\n"
        f"sp = smallpond.init(data_root={str(tmp_path)!r})\n"
        "print(sp.from_items([1, 2, 3]).count())\n"
        "sp.shutdown()\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"


def test_argument_beats_environment_beats_default(tmp_path, monkeypatch):
    env_root = tmp_path / "env_root"
    arg_root = tmp_path / "arg_root"
    monkeypatch.setenv("SP_DATA_ROOT", str(env_root))
    jid = str(uuid.uuid4())
    monkeypatch.setenv("SP_JOBID", jid)
    monkeypatch.setenv("SP_NUM_EXECUTORS", "1")
    with smallpond.init(data_root=str(arg_root)) as sp:
        assert sp.config.data_root == str(arg_root)  # argument wins over SP_DATA_ROOT
        assert sp.config.job_id == jid  # environment wins over the default
        assert sp.config.num_executors == 1
        assert sp.runtime_ctx.job_root.startswith(str(arg_root))
    with smallpond.init(num_executors=2) as sp:
        assert sp.config.data_root == str(env_root)
        assert sp.config.num_executors == 2


def test_job_time_accepts_datetime_iso_and_epoch(tmp_path):
    when = datetime(2024, 5, 6, 7, 8, 9)
    for value in (when, when.isoformat(), when.timestamp()):
        with smallpond.init(data_root=str(tmp_path), job_time=value) as sp:
            assert os.path.basename(sp.runtime_ctx.job_root).startswith("2024-05-06-07-08-09.")


def test_bad_init_arguments(tmp_path):
    with pytest.warns(UserWarning, match="no_such_option"):
        smallpond.init(data_root=str(tmp_path), no_such_option=1).shutdown()
    with pytest.raises(ParameterError, match="num_executors"):
        smallpond.init(data_root=str(tmp_path), num_executors=-1)


def test_job_directories_and_status_on_success(tmp_path):
    sp = smallpond.init(data_root=str(tmp_path))
    root = sp.runtime_ctx.job_root
    for d in ("config", "log", "queue", "staging", "output", "temp"):
        assert os.path.isdir(os.path.join(root, d))
    assert oct(os.stat(root).st_mode & 0o777) == "0o700"
    sp.from_items([1, 2]).write_parquet(str(tmp_path / "out"))
    sp.shutdown()
    sp.shutdown()  # idempotent
    for d in ("queue", "staging", "temp"):
        assert not os.path.exists(os.path.join(root, d))
    status = open(os.path.join(root, "log", ".STATUS")).read()
    assert status.strip().splitlines()[-1].startswith("success@")
    assert os.path.exists(tmp_path / "out" / ".MANIFEST.txt")  # results outlive the job's staging


def test_failure_keeps_staging_and_writes_failure_status(tmp_path):
    sp = smallpond.init(data_root=str(tmp_path))
    root = sp.runtime_ctx.job_root
    with pytest.raises(Exception, match="ZeroDivisionError"):
        sp.from_items([1, 2]).map(lambda r: {"x": r["item"] / 0}).compute()
    sp.shutdown()
    assert os.path.isdir(os.path.join(root, "staging"))
    assert open(os.path.join(root, "log", ".STATUS")).read().strip().splitlines()[-1].startswith("failure@")
    assert any(name.endswith(".log") for name in os.listdir(os.path.join(root, "log", "tasks")))


def test_context_manager_marks_failure_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with smallpond.init(data_root=str(tmp_path)) as sp:
            root = sp.runtime_ctx.job_root
            raise RuntimeError("boom")
    assert "failure@" in open(os.path.join(root, "log", ".STATUS")).read()


def test_resume_same_job_id_reuses_results(tmp_path):
    marker = tmp_path / "calls"
    marker.mkdir()

    def work(t):
        (marker / os.urandom(6).hex()).touch()
        return t

    jid = str(uuid.uuid4())
    for _ in range(2):
        sp = smallpond.init(data_root=str(tmp_path / "root"), job_id=jid, _remove_output_root=False)
        df = sp.from_items(list(range(10))).map_batches(work)
        assert df.count() == 10
        sp._failed = True  # keep staging, as after a crash
        sp.shutdown()
    assert len(os.listdir(marker)) == 1  # the second session found the committed task


def test_graph_and_explain(tmp_path):
    with smallpond.init(data_root=str(tmp_path)) as sp:
        df = sp.from_items([1, 2, 3]).repartition(2, by_rows=True).map("item * 2 as x")
        text = df.explain()
        assert "[2 partition(s)]" in text
        dot = sp.graph().source
        assert dot.startswith("digraph") and "SqlEngineNode" in dot
        path = sp.dump_graph(str(tmp_path / "g.dot"))
        assert os.path.exists(tmp_path / "g.dot")
        assert path is None or os.path.exists(path)  # a picture only if Graphviz is installed


def test_settings_without_effect_are_warned_about(tmp_path, log_messages):
    import smallpond

    sp = smallpond.init(data_root=str(tmp_path / "root"), bind_numa_node=True, memory_allocator="jemalloc")
    sp.shutdown()
    warned = [m for m in log_messages if "no effect" in m]
    assert len(warned) == 1 and "bind_numa_node, memory_allocator" in warned[0]


def test_ray_address_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an interpreter without Ray does at `import ray`
    monkeypatch.delitem(sys.modules, "smallpond.execution.executors.ray", raising=False)
    with pytest.raises(ParameterError, match=r"Ray is not installed: pip install \"smallpond\[ray\]\""):
        smallpond.init(data_root=str(tmp_path), ray_address="10.0.0.5:6379")


_WARM_PROBE = r"""
import json, sys, threading
import smallpond
from smallpond import session
modules = ("pyarrow", "pyarrow.parquet", "smallpond.io.arrow", "duckdb", "pandas")
before = sorted(m for m in modules if m in sys.modules)
sp = smallpond.init(data_root=sys.argv[1], num_executors=1)
state = {"before": before, "at_init": session._warming is not None}
sp.partial_sql("select count(*) as n from {0}", sp.read_parquet(sys.argv[2])).compute()
thread = session._warming
state.update(thread=thread is not None, daemon=thread.daemon if thread else None)
if thread is not None:
    thread.join(60)
state["after"] = sorted(m for m in modules if m in sys.modules)
state["again"] = session.warm_result_imports() is None  # once per process
sp.shutdown()
print(json.dumps(state))
"""


@pytest.mark.parametrize("setting", [None, "0"])
def test_a_session_imports_what_reading_results_needs_in_the_background(tmp_path, setting):
    """pyarrow and its Parquet reader are imported by a (non-daemon) thread the session starts
    once its first computation has an attempt running (not at init, where it held the GIL while
    the first job was planned and sent), so that reading the first result does not wait for them;
    not DuckDB (only workers query with it) nor pandas (for to_pandas alone), whose imports took
    the first job's worker ~0.25 s of CPU on a 2-core machine; SP_WARM_IMPORTS=0 turns it off."""
    env = {k: v for k, v in os.environ.items() if k != "SP_WARM_IMPORTS"}
    # the plan check, which a job still running after its delay (1 s: a loaded machine) starts in
    # this process, imports DuckDB and pyarrow for its own reasons (tests/execution/test_plancheck.py)
    env["SP_PLAN_CHECK"] = "off"
    if setting is not None:
        env["SP_WARM_IMPORTS"] = setting
    proc = subprocess.run(
        [sys.executable, "-c", _WARM_PROBE, str(tmp_path), generate_parquet_files(str(tmp_path / "in"), nfiles=1)[0]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["before"] == []  # `import smallpond` loads none of them
    assert not state["at_init"]
    if setting == "0":
        assert not state["thread"]
        assert state["after"] == []
    else:
        assert state["thread"] and state["daemon"] is False
        assert state["after"] == ["pyarrow", "pyarrow.parquet", "smallpond.io.arrow"]
        assert state["again"]


def test_warming_a_module_that_does_not_exist_is_quiet(monkeypatch):
    from smallpond import session

    monkeypatch.setattr(session, "_warming", None)
    monkeypatch.delenv("SP_WARM_IMPORTS", raising=False)
    thread = session.warm_result_imports(("smallpond_no_such_module_xyz", "json"))
    assert thread is not None
    thread.join(30)
    assert not thread.is_alive()


def test_a_module_edited_between_two_computations_runs_as_it_is_now(tmp_path):
    # a session's workers live on between its computations, and a module a task imported stays
    # loaded in them: after the user edits it, the next computation must run the new code (its
    # tasks are keyed by the new file; run with the old code, the old result would be cached under
    # the new key and served to every later run)
    mods = tmp_path / "mods"
    mods.mkdir()
    helper = mods / "sp_edited_helper.py"
    helper.write_text("def value():\n    return 1\n")
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(mods)!r})\n"
        "import smallpond\n"
        f"sp = smallpond.init(data_root={str(tmp_path / 'root')!r}, num_executors=1)\n"
        "def tag(row):\n"
        "    import sp_edited_helper\n"
        "    return {'a': row['a'], 'v': sp_edited_helper.value()}\n"
        "def run():\n"
        "    return sorted(set(sp.from_items([{'a': 1}, {'a': 2}]).map(tag).to_pandas()['v']))\n"
        "print(run(), flush=True)\n"
        "time.sleep(0.05)\n"
        f"open({str(helper)!r}, 'w').write('def value():\\n    return 2\\n')\n"
        "print(run(), flush=True)\n"
        "sp.shutdown()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["[1]", "[2]"], proc.stdout + proc.stderr[-3000:]


def test_session_platform_is_upstream_s(tmp_path):
    """(Reference §1.2: ``Session._platform``.) The platform that starts the session's executors
    on the queue backend; else upstream's choice (MPI when mpirun is on the PATH, else the base
    Platform), one object for the session."""
    import shutil

    from smallpond.platform import MPI, Manual, Platform

    with smallpond.init(data_root=str(tmp_path / "embedded")) as sp:
        assert type(sp._platform) is (MPI if shutil.which("mpirun") else Platform)
        assert sp._platform is sp._platform
        assert sp._platform.default_data_root().endswith(os.path.join(".smallpond", "data"))
    with smallpond.init(data_root=str(tmp_path / "queue"), platform="manual") as sp:
        assert type(sp._platform) is Manual and sp._platform is sp._job.executor.platform


def test_init_flags_read_the_text_false_as_false(tmp_path):
    # restart="false" (as a command line passes a value on) was bool("false"), True: the job's
    # folder was moved aside and the job started over; elastic_threads and the rest likewise
    from smallpond.session import Config

    names = ["restart", "elastic_threads", "remove_empty_parquet", "skip_task_with_empty_input", "bind_numa_node"]
    off = Config.from_args_and_env(data_root=str(tmp_path), _remove_output_root="false", **{n: "false" for n in names})
    assert [getattr(off, n) for n in names] + [off.remove_output_root] == [False] * 6
    on = Config.from_args_and_env(data_root=str(tmp_path), **{n: "TRUE" for n in names})
    assert [getattr(on, n) for n in names] == [True] * 5
    with pytest.raises(ParameterError, match="smallpond.init: restart must be True or False, got 'nope'"):
        Config.from_args_and_env(data_root=str(tmp_path), restart="nope")
    # None was falsy upstream (its documented bind_numa_node default): not refused; elastic_threads
    # not given is its default, "safe"
    none = Config.from_args_and_env(data_root=str(tmp_path), _remove_output_root=None, **{n: None for n in names})
    assert [getattr(none, n) for n in names] + [none.remove_output_root] == [False, "safe"] + [False] * 4


def test_elastic_threads_is_safe_by_default_and_takes_true_false_or_safe(tmp_path, monkeypatch):
    from smallpond.session import Config

    monkeypatch.delenv("SP_ELASTIC_THREADS", raising=False)
    assert Config.from_args_and_env(data_root=str(tmp_path)).elastic_threads == "safe"
    for given, mode in [(True, True), (False, False), ("Safe", "safe"), ("off", False), (1, True)]:
        assert Config.from_args_and_env(data_root=str(tmp_path), elastic_threads=given).elastic_threads == mode
    monkeypatch.setenv("SP_ELASTIC_THREADS", "0")
    assert Config.from_args_and_env(data_root=str(tmp_path)).elastic_threads is False
    with pytest.raises(ParameterError, match="smallpond.init: elastic_threads must be True, False or 'safe', got 'some'"):
        Config.from_args_and_env(data_root=str(tmp_path), elastic_threads="some")
