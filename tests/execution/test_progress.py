"""Progress bars: shown on a terminal (checked in a real tmux pane) and in a Jupyter kernel (a real
IPython kernel, stderr not a tty); never elsewhere or with SP_PROGRESS=0; erased before a traceback."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from smallpond.execution import progress
from smallpond.execution.progress import console_listeners, progress_mode
from tests.conftest import REPO_ROOT


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_progress_mode(monkeypatch):
    monkeypatch.delenv("SP_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_mode() is None and console_listeners() == []  # a file or a pipe: nothing
    monkeypatch.setattr(sys, "stderr", FakeTty())
    assert progress_mode() == "terminal" and len(console_listeners()) == 1
    monkeypatch.setenv("SP_PROGRESS", "0")
    assert progress_mode() is None and console_listeners() == []
    monkeypatch.setenv("SP_PROGRESS", "always")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_mode() == "text"


def test_bars_count_tasks_rows_and_bytes_on_a_terminal(monkeypatch, tmp_path):
    import smallpond

    tty = FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.delenv("SP_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    sp = smallpond.init(data_root=str(tmp_path / "root"), num_executors=2)
    try:
        df = sp.from_items(list(range(40))).repartition(4, by_rows=True)
        out = sp.partial_sql("select item * 2 as x from {0}", df).to_arrow()
        assert out.num_rows == 40
    finally:
        sp.shutdown()
    text = tty.getvalue()
    assert "SqlEngineNode-000003 partial_sql" in text
    assert "4/4" in text and "40 rows" in text and ("task/s" in text or "s/task" in text)
    assert progress._active == []  # every bar was closed when the run ended


def _tmux(*args, socket_name):
    return subprocess.run(["tmux", "-L", socket_name, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_bars_end_cleanly_before_a_traceback_in_a_terminal(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time, smallpond
            sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=2)
            df = sp.from_items(list(range(12))).repartition(6, by_rows=True)
            slow = df.map(lambda r: (time.sleep(0.5), r)[1])
            sp.partial_sql("select no_such_column from {{0}}", slow).to_pandas()
            """
        )
    )
    socket_name = f"smallpond-test-{os.getpid()}"
    # SP_PROGRESS not inherited: the terminal decides. No plan check: at 1 s it may find the missing
    # column and end the job before a loaded machine drew the bar (0.5 s), and the test sees no bar
    env = f"PYTHONPATH={REPO_ROOT} SP_SUMMARY=0 SP_PROGRESS=auto SP_PLAN_CHECK=off"
    cmd = f"cd {tmp_path} && {env} {sys.executable} {script}; echo __END__; sleep 60"
    started = _tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "60", cmd, socket_name=socket_name)
    assert started.returncode == 0, started.stderr
    try:
        saw_bar, screen = False, ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = _tmux("capture-pane", "-p", "-t", "t", socket_name=socket_name).stdout
            saw_bar = saw_bar or "task/s" in screen or "s/task" in screen
            if "__END__" in screen:
                break
            time.sleep(0.1)
        full = _tmux("capture-pane", "-p", "-S", "-1000", "-t", "t", socket_name=socket_name).stdout
    finally:
        _tmux("kill-server", socket_name=socket_name)
    assert "__END__" in full, full
    assert saw_bar, "no progress bar was ever drawn"
    lines = full.splitlines()
    assert "Traceback (most recent call last):" in lines  # a whole line of its own, from column 0
    assert "no_such_column" in full
    leftovers = [ln for ln in lines if "task/s" in ln or "s/task" in ln or "%|" in ln]
    assert leftovers == [], f"progress bar remains on screen: {leftovers}"


def test_progress_and_schema_in_a_jupyter_kernel(tmp_path):
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    code = textwrap.dedent(
        f"""
        import time, smallpond
        sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=2)
        df = sp.from_items(list(range(8))).repartition(4, by_rows=True)
        slow = df.map(lambda r: (time.sleep(0.3), r)[1], schema=None)
        q = sp.partial_sql("select item, item * 2 as doubled from {{0}}", slow)
        q.compute()
        q
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    env.pop("SP_PROGRESS", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    stderr, results = [], []
    try:
        msg_id = kc.execute(code)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stderr":
                stderr.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                results.append(content["data"])
            elif kind == "error":
                pytest.fail("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
        kc.execute("sp.shutdown()")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    err = "".join(stderr)
    assert "smallpond" in err and ("task/s" in err or "s/task" in err), err  # the plain-text bar (no ipywidgets here)
    shown = results[-1]
    assert "item: int64" in shown["text/plain"] and "doubled: int64" in shown["text/plain"]
    assert "<table>" in shown["text/html"] and "doubled" in shown["text/html"]
