"""The stall warning shows where a running task is: its worker's Python stack, dumped by
faulthandler on request (smallpond.execution.stacks). Real jobs on the embedded backend."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from smallpond.execution import stacks
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan
from tests.execution.test_queue_backend import queue_executor  # noqa: F401 (the fixture)


def _waits_in_here(release: str):
    # until the test has seen the stall warning (it creates ``release``), 30 s at most
    end = time.monotonic() + 30
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.05)


def _hangs(runtime_ctx, tables, release: str):
    _waits_in_here(release)
    return pa.table({"x": [1]})


@contextlib.contextmanager
def released_by_the_stall_warning(release: str, showing: str = ""):
    """Create the file ``release`` once this process logs a stall warning (that holds ``showing``),
    for a task that waits for it instead of sleeping for longer than the warning takes."""
    from smallpond.common import logger

    def sink(message) -> None:
        if "still running" in str(message) and showing in str(message):
            open(release, "w").close()

    sink_id = logger.add(sink, level="WARNING")
    try:
        yield
    finally:
        logger.remove(sink_id)


def _backtracking_length(seconds: float) -> int:
    """A length of ``"a" * n`` on which ``(a+)+b`` backtracks for about ``seconds`` (doubling per
    character), measured here."""
    n = 16
    while True:
        t0 = time.perf_counter()
        re.fullmatch(r"(a+)+b", "a" * n)
        took = time.perf_counter() - t0
        if took > 0.05:
            break
        n += 1
    while took < seconds:
        n, took = n + 1, took * 2
    return n


def _in_c_with_the_gil(n):
    def process(runtime_ctx, tables):
        re.fullmatch(r"(a+)+b", "a" * n)  # one C call that holds the GIL throughout
        return pa.table({"x": [1]})

    return process


def _stall_warnings(tmp_path, monkeypatch, log_messages, func, showing: str = ""):
    monkeypatch.setenv("SP_STALL_LOG", "1")
    ctx = Context()
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, None),), process_func=func)
    rt = make_runtime_ctx(None, None, str(tmp_path))
    with released_by_the_stall_warning(str(tmp_path / "warned"), showing):
        run_job(LogicalPlan(ctx, node), rt)
    return rt, [m for m in log_messages if "still running" in m]


def test_the_stall_warning_shows_the_line_a_task_waits_on(tmp_path, monkeypatch, log_messages):
    # the task waits until a warning shows it in _waits_in_here (the first, 1 s after the start,
    # may come while a loaded worker is still loading the function; a later one, after it)
    func = functools.partial(_hangs, release=str(tmp_path / "warned"))
    rt, stalls = _stall_warnings(tmp_path, monkeypatch, log_messages, func, showing="_waits_in_here")
    assert stalls, log_messages
    text = next((m for m in stalls if "_waits_in_here" in m), "")
    assert text, f"no stall warning shows where the task waits: {stalls}"
    assert re.search(r"Where ArrowComputeTask-\S+ \(attempt 0\) is now, innermost call first:", text), text
    frames = text.split("innermost call first:", 1)[1]
    # the innermost frames first: the sleep's caller, then the task's function, in this file
    assert frames.index("_waits_in_here") < frames.index("_hangs"), frames
    assert __file__ in frames and "run_attempt" in frames
    assert "py-spy" not in text  # the hint is for backends that cannot show the stack
    # the worker's dump file goes with the worker
    assert not list((tmp_path.glob("*/temp/stacks/*.txt"))), list(tmp_path.glob("*/temp/stacks/*"))


def test_a_task_holding_the_gil_in_c_code_shows_its_stack_too(tmp_path, monkeypatch, log_messages):
    # a Python thread asked to dump would wait for the GIL until the call returns; the signal
    # handler of faulthandler writes while it is held (the first warning, 1 s after the start,
    # may come while a loaded worker is still loading the function; a later one, in the call)
    n = _backtracking_length(3.0)
    _, stalls = _stall_warnings(tmp_path, monkeypatch, log_messages, _in_c_with_the_gil(n))
    assert stalls, log_messages
    shown = [m.split("innermost call first:", 1)[1] for m in stalls if "in fullmatch" in m]
    assert shown, f"no stall warning shows the task in its C call: {stalls}"
    assert "in process" in shown[0], shown[0]


def test_a_process_without_a_dump_file_is_never_signalled(tmp_path):
    # SIGUSR1 ends a process that did not register a handler: only workers that wrote their file
    # (enable) are asked
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert stacks.request(str(tmp_path), {"k": proc.pid}, timeout=0.3) == {}
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_registered_process_dumps_on_request(tmp_path):
    code = (
        "import sys, time\n"
        "from smallpond.execution import stacks\n"
        "stacks.enable(sys.argv[1])\n"
        "def execute_attempt():\n"
        "    print('ready', flush=True)\n"  # inside: a dump right after it finds the function
        "    time.sleep(30)\n"
        "execute_attempt()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        dumps = stacks.request(str(tmp_path), {("t", 0): proc.pid})
        frames = stacks.attempt_frames(dumps[("t", 0)])
        assert frames.splitlines()[0].startswith("Current thread") or "Thread" in frames.splitlines()[0]
        assert "in execute_attempt" in frames and proc.poll() is None
        # a second request gets the new dump only
        again = stacks.request(str(tmp_path), {"k": proc.pid})
        assert again["k"].count("in execute_attempt") == 1
    finally:
        proc.kill()
        proc.wait()
    stacks.remove(str(tmp_path), proc.pid)
    assert not os.path.exists(stacks.stack_path(str(tmp_path), proc.pid))
    assert not list(tmp_path.glob("stacks/*"))


def _registered(tmp_path, body: str = "") -> subprocess.Popen:
    """A process that registered for dumps (``body`` runs after it) and waits in execute_attempt."""
    code = (
        "import os, signal, sys, threading, time\n"
        "from smallpond.execution import stacks\n"
        "stacks.enable(sys.argv[1])\n" + body + "def execute_attempt():\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "execute_attempt()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _stop(pid: int) -> None:
    """Stop process ``pid`` and wait until it is (a signal is taken a while after it is sent)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            if "\nState:\tT" in f.read():
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


_FREEZER = "/sys/fs/cgroup/freezer"


def _can_freeze() -> bool:
    return os.access(_FREEZER, os.W_OK) and os.path.isfile(os.path.join(_FREEZER, "cgroup.procs"))


@contextlib.contextmanager
def _frozen_for(pid: int, seconds: float):
    """Process ``pid`` frozen (a cgroup v1 freezer: state D, as one waiting for its pages, not
    stopped) from now for ``seconds`` seconds, then thawed; back in the root group at the end."""
    group = os.path.join(_FREEZER, f"smallpond-test-{os.getpid()}-{pid}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        with open(os.path.join(group, "freezer.state"), "w") as f:
            f.write("FROZEN")

        def thaw():
            with open(os.path.join(group, "freezer.state"), "w") as f:
                f.write("THAWED")

        timer = threading.Timer(seconds, thaw)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            thaw()
    finally:
        with contextlib.suppress(OSError), open(os.path.join(_FREEZER, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        with contextlib.suppress(OSError):
            os.rmdir(group)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the signal's state is read from /proc")
@pytest.mark.skipif(not _can_freeze(), reason="a cgroup v1 freezer, writable, freezes the worker")
def test_a_worker_that_takes_the_signal_late_is_waited_for(tmp_path):
    # on a loaded machine a worker may wait longer than the timeout to take the signal (for a CPU,
    # for its pages; here: frozen, state D, for 1.5 s); it is waited for, up to stacks.PATIENCE
    proc = _registered(tmp_path)
    try:
        with _frozen_for(proc.pid, 1.5):
            t0 = time.monotonic()
            dumps = stacks.request(str(tmp_path), {"k": proc.pid}, timeout=0.3)
            assert "in execute_attempt" in dumps.get("k", ""), dumps
            assert 1.0 < time.monotonic() - t0 < stacks.PATIENCE
    finally:
        proc.kill()
        proc.wait()


def _fake_pending(monkeypatch, pending) -> None:
    """Make /proc's answer (``stacks._signal_state``) say the signal is pending and takeable while
    ``pending()``; the first look, before the signal is sent, and any after are the real one."""
    real, calls = stacks._signal_state, []

    def state(pid):
        calls.append(pid)
        return (True, set(), {"1"}) if len(calls) > 1 and pending() else real(pid)

    monkeypatch.setattr(stacks, "_signal_state", state)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the signal's state is read from /proc")
def test_a_signal_on_its_way_is_waited_for(tmp_path, monkeypatch):
    # the same without a freezer: /proc says the signal is pending and takeable (as for a worker
    # waiting for a CPU) for 1.5 s, while the worker is kept from answering (stopped) until then
    proc = _registered(tmp_path)
    t0 = time.monotonic()
    continued = threading.Event()  # (pending until the worker is let go: not by a clock, on a loaded machine)
    _fake_pending(monkeypatch, lambda: not continued.is_set())

    def let_go():
        os.kill(proc.pid, signal.SIGCONT)
        continued.set()

    try:
        _stop(proc.pid)
        threading.Timer(1.5, let_go).start()
        dumps = stacks.request(str(tmp_path), {"k": proc.pid}, timeout=0.3)
        assert "in execute_attempt" in dumps.get("k", ""), dumps
        assert time.monotonic() - t0 < stacks.PATIENCE
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the signal's state is read from /proc")
def test_a_worker_that_never_took_the_last_signal_is_not_waited_for_again(tmp_path, monkeypatch):
    # a worker in an uninterruptible wait for good (a read from a mount that hangs: state D, as one
    # waiting for its pages) looks like one on its way; the first request waits its patience, a
    # later one, finding the first's signal still pending, does not (each stall warning held the
    # scheduler stacks.PATIENCE). /proc's answer is faked: pending, takeable, for good
    proc = _registered(tmp_path)
    _fake_pending(monkeypatch, lambda: True)
    try:
        _stop(proc.pid)  # (so it does not answer meanwhile)
        t0 = time.monotonic()
        assert stacks.request(str(tmp_path), {"k": proc.pid}, timeout=0.2, patience=1.5) == {}
        t1 = time.monotonic()
        assert stacks.request(str(tmp_path), {"k": proc.pid}, timeout=0.2, patience=1.5) == {}
        assert t1 - t0 >= 1.5 and time.monotonic() - t1 < 1.0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the signal's state is read from /proc")
@pytest.mark.parametrize("how", ["stopped", "every thread blocks the signal"])
def test_a_signal_no_thread_will_take_costs_the_timeout_not_the_patience(tmp_path, how):
    # a worker stopped for good (SIGSTOP, a debugger) or whose every thread blocks the signal takes
    # it only when someone continues it or unblocks it: the stall warning, which runs in the
    # scheduler's loop, waited stacks.PATIENCE (10 s) for it at each warning, for no stack
    body = "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n" if how != "stopped" else ""
    proc = _registered(tmp_path, body)
    try:
        if how == "stopped":
            _stop(proc.pid)
        t0 = time.monotonic()
        assert stacks.request(str(tmp_path), {"k": proc.pid}, timeout=0.3) == {}
        assert time.monotonic() - t0 < 2.0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the signal's state is read from /proc")
def test_a_dump_is_taken_once_its_handler_has_returned(tmp_path):
    # a worker preempted while it writes its dump (a loaded machine) had written part of it: that
    # part was taken once the file had not grown for 20 ms. Here a handler that blocks the signal
    # while it writes, as faulthandler's does, and pauses half way
    path = stacks.stack_path(str(tmp_path), 0).replace("-0.txt", "-{pid}.txt")
    body = (
        f"out = open({path!r}.format(pid=os.getpid()), 'w')\n"
        "def slow_dump(signum, frame):\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
        "    out.write('first half\\n'); out.flush()\n"
        "    time.sleep(0.5)\n"
        "    out.write('second half\\n'); out.flush()\n"
        "    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})\n"
        "signal.signal(signal.SIGUSR1, slow_dump)\n"
    )
    proc = _registered(tmp_path, body)
    try:
        assert stacks.request(str(tmp_path), {"k": proc.pid}) == {"k": "first half\nsecond half\n"}
    finally:
        proc.kill()
        proc.wait()


def test_a_thread_that_blocks_the_signal_for_good_is_not_waited_for(tmp_path):
    # jemalloc's background thread (DuckDB's allocator) blocks every signal from its start: the
    # dump is whole once the thread that took the signal has returned from its handler
    body = (
        "def blocking():\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
        "    time.sleep(60)\n"
        "threading.Thread(target=blocking, daemon=True).start()\n"
        "time.sleep(0.2)\n"
    )
    proc = _registered(tmp_path, body)
    try:
        t0 = time.monotonic()
        dumps = stacks.request(str(tmp_path), {"k": proc.pid})
        assert "in execute_attempt" in dumps.get("k", "") and "in blocking" in dumps["k"], dumps
        assert time.monotonic() - t0 < stacks.PATIENCE / 2
    finally:
        proc.kill()
        proc.wait()


def test_attempt_frames_keeps_the_attempts_thread_and_cuts_long_stacks():
    dump = (
        "Thread 0x1 (most recent call first):\n"
        '  File "threading.py", line 1 in wait\n'
        "\n"
        "Current thread 0x2 (most recent call first):\n"
        + "".join(f'  File "u.py", line {i} in f{i}\n' for i in range(40))
        + '  File "attempt.py", line 9 in execute_attempt\n'
    )
    out = stacks.attempt_frames(dump, max_lines=10)
    assert out.startswith("Current thread 0x2") and "wait" not in out
    assert out.splitlines()[-1] == "  ... (32 more lines)"
    assert stacks.attempt_frames("Thread 0x1:\n  File x") == "Thread 0x1:\n  File x"


_FAILING_SCRIPT = """
import pyarrow as pa
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan


def divide(x):
    return 1 / x


def process(runtime_ctx, tables):
    divide(0)
    return pa.table({"x": [1]})


if __name__ == "__main__":
    import sys

    ctx = Context()
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, None),), process_func=process)
    run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, sys.argv[1]), max_retry_count=0)
"""


def test_a_task_traceback_names_the_users_script_and_line(tmp_path):
    # the script's functions travel by value (its __main__ is not importable in a worker);
    # cloudpickle writes "<dynamic-code>" for their file, which the traceback then showed
    script = tmp_path / "my_job.py"
    script.write_text(_FAILING_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "root")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "ZeroDivisionError" in proc.stderr
    (log,) = tmp_path.glob("root/*/log/tasks/ArrowComputeTask-*.log")
    text = log.read_text()
    assert f'File "{script}", line 8, in divide\n    return 1 / x' in text, text
    assert "<dynamic-code>" not in text


def test_pickle_for_workers_keeps_the_file_of_functions_pickled_by_value():
    import pickle

    from smallpond.execution.executors.base import pickle_for_workers

    namespace = {"__name__": "not_importable_module"}
    exec(compile("def outer():\n    def inner():\n        return 1\n    return inner\n", "/some/script.py", "exec"), namespace)
    outer = pickle.loads(pickle_for_workers(namespace["outer"]))
    assert outer.__code__.co_filename == "/some/script.py"
    assert outer().__code__.co_filename == "/some/script.py" and outer()() == 1


@pytest.mark.queue
def test_a_queue_executors_running_attempt_shows_its_stack(queue_executor, make_rt, tmp_path):  # noqa: F811
    # the scheduler asks through queue/epoch; the executor (a separate process, as on another
    # host) signals its worker and answers in its own stacks file
    from tests.execution.test_stall_places import one_executor_running_a_hanging_attempt

    qe = queue_executor()
    with one_executor_running_a_hanging_attempt(qe, tmp_path) as (task, _):
        stacks = qe.attempt_stacks([(task.key, 0), ("NoSuchTask-000001", 0)])
        again = qe.attempt_stacks([(task.key, 0)])  # a second request gets a fresh answer
    assert list(stacks) == [(task.key, 0)], stacks
    frames = stacks[(task.key, 0)]
    assert "in execute_attempt" in frames and "sleep" in frames, frames
    assert list(again) == [(task.key, 0)]


@pytest.mark.queue
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the signal's state is read from /proc")
@pytest.mark.skipif(not _can_freeze(), reason="a cgroup v1 freezer, writable, freezes the worker")
def test_a_queue_executor_whose_worker_is_slow_to_answer_is_waited_for(queue_executor, make_rt, tmp_path):  # noqa: F811
    # the executor says it is answering before it asks its workers; the scheduler waits for it
    # past STACKS_WAIT (here its worker is frozen until a second after it: not stopped, which
    # would take the signal only once someone continues it, and is not waited for)
    from smallpond.execution.executors.queue import STACKS_WAIT
    from tests.execution.test_stall_places import one_executor_running_a_hanging_attempt

    qe = queue_executor()
    with one_executor_running_a_hanging_attempt(qe, tmp_path) as (task, _):
        (name,) = os.listdir(os.path.join(qe.rt.temp_root, "stacks"))
        worker = int(name[: -len(".txt")].rsplit("-", 1)[1])
        with _frozen_for(worker, STACKS_WAIT + 1.0):
            got = qe.attempt_stacks([(task.key, 0)])
    assert list(got) == [(task.key, 0)], got
    assert "in execute_attempt" in got[(task.key, 0)], got


def test_an_executor_waits_for_its_workers_stacks_at_most_half_its_heartbeat_timeout():
    # the executor's heartbeat waits while it asks its workers: a wait of stacks.PATIENCE with
    # SP_QUEUE_TIMEOUT=4 would have the scheduler declare it lost
    from smallpond.execution.executors.queue_protocol import QueueSettings

    assert QueueSettings().stacks_patience == stacks.PATIENCE
    assert QueueSettings(heartbeat=1.0, timeout=4.0).stacks_patience == 2.0
