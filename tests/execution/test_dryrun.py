"""Dry runs: the Driver's ``--dry_run`` and ``DataFrame.explain(dry_run=True)`` say what will run
and what will be reused, and why, without running anything."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

SORT_EXAMPLE = os.path.join(REPO_ROOT, "examples", "sort_mock_urls.py")


def sort_example(args, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SORT_EXAMPLE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_driver_dry_run_runs_nothing_and_says_why(url_files, tmp_path, data_root):
    common = ["--data_root", data_root, "-i", *url_files, "-n", "3", "-o", str(tmp_path / "out")]
    before = sort_example(["scheduler", "--job_id", "dry-1", "--dry_run", *common], str(tmp_path)).stdout
    assert "0 reused from the task cache" in before
    assert "never computed (no earlier build of this task in the cache)" in before
    assert "publishes to" in before
    assert not os.path.exists(tmp_path / "out"), "a dry run publishes nothing"
    assert not glob.glob(os.path.join(data_root, "*.*")), "a dry run creates no job folder"

    sort_example(["scheduler", "--job_id", "build-1", *common], str(tmp_path))
    after = sort_example(["scheduler", "--job_id", "dry-2", "--dry_run", *common], str(tmp_path)).stdout
    assert "reused (written by" in after and "of job" in after
    assert "never computed" not in after
    # only the sinks (the example's and the named output's) would run again
    running = [line for line in after.splitlines() if "will run:" in line]
    assert len(running) == 2 and all("DataSinkTask" in line and "publishes to" in line for line in running), after

    # a new sort key: the node's parameters changed for the sort and everything after it
    with open(url_files[0], "a") as f:
        f.write("com.example.new/page.html\taGVsbG8=\n")
    changed = sort_example(["scheduler", "--job_id", "dry-3", "--dry_run", *common], str(tmp_path)).stdout
    assert f"input file {url_files[0]} changed" in changed


def test_dataframe_explain_dry_run(tmp_path):
    import smallpond

    sp = smallpond.init(job_id="explain-dry", data_root=str(tmp_path / "root"))
    try:
        df = sp.from_items([{"a": i % 3, "b": i} for i in range(30)]).repartition(3, hash_by="a")
        df = sp.partial_sql("select a, sum(b) as s from {0} group by a", df)
        planner = sp._job.planner
        planned, next_id = dict(planner.tasks), planner.next_task_id
        text = df.explain(dry_run=True)
        assert "== What will run ==" in text and "will run: never computed" in text
        assert sp._job.scheduler.state.done == {}, "explaining computes nothing"
        assert planner.tasks == planned and planner.next_task_id == next_id, "nor plans anything in the session"
        rows = sorted(df.take_all(), key=lambda r: r["a"])
        assert rows == [{"a": a, "s": sum(b for b in range(30) if b % 3 == a)} for a in range(3)]
        assert "computed earlier in this session" in df.explain(dry_run=True)
    finally:
        sp.shutdown()
    sp2 = smallpond.init(job_id="explain-dry-2", data_root=str(tmp_path / "root"))
    try:
        df = sp2.from_items([{"a": i % 3, "b": i} for i in range(30)]).repartition(3, hash_by="a")
        df = sp2.partial_sql("select a, sum(b) as s from {0} group by a", df)
        text = df.explain(dry_run=True)
        assert "0 task(s) will run" in text and "will run:" not in text, text
        assert "reused (written by" in text
    finally:
        sp2.shutdown()
