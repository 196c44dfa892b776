"""The run report (log/report.html): self-contained, escaped, rebuilt from the job folder, and
rendered by a real headless Chromium without console errors."""

from __future__ import annotations

import importlib
import json
import os
import re

import pytest

from smallpond.errors import JobFailed
from smallpond.execution.events import NodeStats
from smallpond.execution.job import run_job
from smallpond.execution.report import layered_layout, write_report
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode
from tests.browser import chromium_path, open_page
from tests.conftest import REPO_ROOT

ARTIFACTS = os.path.join(REPO_ROOT, "tests", "artifacts")


def test_layered_layout_puts_each_node_below_its_deepest_input():
    #   1   2
    #   |\ /
    #   | 3
    #   |/
    #   4
    nodes = {
        1: NodeStats(1, inputs=[]),
        2: NodeStats(2, inputs=[]),
        3: NodeStats(3, inputs=[1, 2]),
        4: NodeStats(4, inputs=[1, 3]),
    }
    pos = layered_layout(nodes)
    assert {n: lv for n, (lv, _) in pos.items()} == {1: 0, 2: 0, 3: 1, 4: 2}
    assert sorted(i for lv, i in pos.values() if lv == 0) == [0, 1]


def _hostile_job(make_rt, parquet_files):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    q = SqlEngineNode(ctx, (src,), "select '<script>alert(1)</script>' as x, id from {0}", output_name="a_b")
    bad = SqlEngineNode(ctx, (q,), "select nope, '<img src=x onerror=alert(2)>' from {0}")
    rt = make_rt()
    with pytest.raises(JobFailed):
        run_job(LogicalPlan(ctx, bad), rt, num_workers=1)
    return rt


def test_report_is_self_contained_escaped_and_links_task_logs(make_rt, parquet_files, no_plan_check):
    rt = _hostile_job(make_rt, parquet_files)
    path = os.path.join(rt.log_root, "report.html")
    page = open(path, encoding="utf-8").read()
    # nothing from the job reaches the page unescaped
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # loads nothing: no URL with a scheme, no src= attribute
    assert not re.search(r"(https?|ftp)://", page)
    assert not re.search(r"\bsrc\s*=", page.replace("&lt;img src=x", ""))
    # plan, timeline, node table, failures with links to logs that exist
    assert page.count('<g class="node') >= 3  # source, two SQL nodes (+ the sinks a Driver-style job adds)
    assert "SqlEngine #2" in page and "SqlEngine #3" in page and '<g class="node failed"' in page
    assert '<svg class="timeline"' in page and '<table class="nodes">' in page
    links = re.findall(r'href="(tasks/[^"]+)"', page)
    assert links and all(os.path.exists(os.path.join(rt.log_root, p)) for p in links)
    assert "gave up" in page


def test_report_is_rebuilt_from_the_folder_of_a_crashed_job(make_rt, parquet_files):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    q = SqlEngineNode(ctx, (src,), "select * from {0}")
    rt = make_rt()
    run_job(LogicalPlan(ctx, q), rt, num_workers=1)
    # make it look like a run that died: no job_end, .STATUS running, a process that is gone
    events_file = os.path.join(rt.log_root, "events.jsonl")
    lines = [json.loads(x) for x in open(events_file)]
    lines = [e for e in lines if e["ev"] != "job_end"]
    lines[0]["pid"] = 2**22 + 12345  # above the default pid_max: no such process
    with open(events_file, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in lines)
    with open(rt.job_status_path, "a") as f:
        f.write("running@2026-01-01-00-00-00\n")
    os.remove(os.path.join(rt.log_root, "report.html"))
    path = write_report(rt.job_root)
    page = open(path, encoding="utf-8").read()
    assert '<span class="badge crashed">crashed</span>' in page
    assert "no end recorded" in page
    assert page.count('<g class="node') >= 2


def test_a_rebuilt_report_of_a_killed_run_lasts_as_long_as_its_summary_says(tmp_path):
    """A run without its end event lasted until its logs' last write (the scheduler's heartbeat):
    'smallpond status' said so, the rebuilt report took its last event (here its start: 0 s)."""
    from smallpond.execution.summary import summary_of

    log = tmp_path / "log"
    (log / "workers").mkdir(parents=True)
    start = 1_000_000.0
    (log / "events.jsonl").write_text(json.dumps({"ev": "job_start", "t": start, "job_id": "abc"}) + "\n")
    os.utime(log / "events.jsonl", (start + 3.0, start + 3.0))
    page = open(write_report(str(tmp_path), state="crashed"), encoding="utf-8").read()
    assert "<dt>elapsed</dt><dd>3.0 s so far (no end recorded)</dd>" in page, re.findall(r"<dt>elapsed</dt><dd>[^<]*", page)
    assert " in 3.0 s" in str(summary_of(str(tmp_path), state="crashed")).splitlines()[0]


@pytest.fixture
def sort_example(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "examples"))
    return importlib.import_module("sort_mock_urls")


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_url_sort_report_renders_in_headless_chromium(make_rt, url_files, sort_example, tmp_path):
    plan = sort_example.sort_mock_urls(url_files, npartitions=3)
    rt = make_rt()
    run_job(plan, rt, num_workers=2)
    path = os.path.join(rt.log_root, "report.html")
    shot = os.path.join(ARTIFACTS, "report-url-sort.png")
    got = open_page(
        path,
        {
            "plan_nodes": "document.querySelectorAll('svg.plan g.node').length",
            "edges": "document.querySelectorAll('svg.plan path.edge').length",
            "attempts": "document.querySelectorAll('svg.timeline rect.att').length",
            "lanes": "document.querySelectorAll('svg.timeline text.lane').length",
            "node_rows": "document.querySelectorAll('table.nodes tr[data-node]').length",
            "plan_width": "document.querySelector('svg.plan').getBoundingClientRect().width",
            "timeline_width": "document.querySelector('svg.timeline').getBoundingClientRect().width",
            "title": "document.querySelector('h1').textContent",
        },
        screenshot=shot,
    )
    print(f"\nscreenshot of the URL-sort run report: {shot}")
    assert got.exceptions == [] and got.console_errors == []
    assert [u for u in got.requests if not u.startswith(("file:", "data:", "about:"))] == []
    v = got.values
    assert v["plan_nodes"] >= 6 and v["edges"] >= v["plan_nodes"] - 1
    assert v["attempts"] >= 9 and v["lanes"] == 2
    assert v["node_rows"] == v["plan_nodes"]
    assert v["plan_width"] > 200 and v["timeline_width"] > 800
    assert "success" in v["title"]
    assert os.path.getsize(shot) > 10_000


def _kill_own_worker(rt, inputs, output_path):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_lost_attempts_log_link_points_at_its_workers_log_also_for_earlier_jobs(make_rt, parquet_files):
    """An attempt whose worker was killed has no file of its own; the events of earlier versions
    named ``tasks/{key}.{n}.log`` for it anyway, a broken link in a rebuilt report and a "task log:"
    path in ``smallpond status`` that did not exist. Both name the worker's log holding its start."""
    from smallpond.execution.summary import summary_of
    from smallpond.logical.node import PythonScriptNode

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    q = PythonScriptNode(ctx, (src,), process_func=_kill_own_worker)
    rt = make_rt()
    with pytest.raises(JobFailed):
        run_job(LogicalPlan(ctx, q), rt, num_workers=1, max_retry_count=0)
    # the events as an earlier version wrote them: the attempt's own file, which does not exist
    events_file = os.path.join(rt.log_root, "events.jsonl")
    lines = [json.loads(x) for x in open(events_file)]
    key = next(e["key"] for e in lines if e["ev"] == "failed")
    for e in lines:
        if e["ev"] in ("failed", "job_end"):
            e["log"] = f"tasks/{key}.0.log"
    with open(events_file, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in lines)
    assert not os.path.exists(os.path.join(rt.log_root, "tasks", f"{key}.0.log"))
    page = open(write_report(rt.job_root), encoding="utf-8").read()
    links = set(re.findall(r'href="([^"]+)"', page))
    assert not any(link.startswith("tasks/") for link in links), links
    for link in links:
        assert os.path.exists(os.path.join(rt.log_root, link)), link
    assert any(link.startswith("workers/") for link in links)
    path = next(ln for ln in str(summary_of(rt.job_root)).splitlines() if "task log:" in ln).split("task log:")[1]
    with open(path.strip()) as f:
        assert f" - start {key} attempt 0 " in f.read()


def _killer_once(marker: str):
    def process(rt, inputs, output_path):
        import signal

        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return True

    return process


def _lanes_and_failed_bars(page: str):
    """(the timeline's row names, the row of each failed attempt's bar) of a report page."""
    lanes = {int(float(y)): name for y, name in re.findall(r'<text class="lane" x="[\d.]+" y="([\d.]+)">([^<]*)</text>', page)}
    bars = re.findall(r'<rect class="att failed" data-node="\d+" x="[\d.]+" y="([\d.]+)"', page)
    return sorted(lanes.values()), [lanes.get(int(float(y)) + 12) for y in bars]


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_a_killed_attempts_bar_sits_on_its_workers_row(make_rt, parquet_files, tmp_path, no_plan_check):
    """The executor told a killed attempt's failure as worker 'local-0' (its done attempts say
    '{host}/local-0'), or without a worker at all (a replaced local worker, Ray): its bar sat on a
    row of its own ('?', no worker shown). It sits on the row of the worker that ran it, as the
    failures table says, in the page Chromium renders."""
    import socket

    from smallpond.logical.node import PythonScriptNode

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    first = SqlEngineNode(ctx, (src,), "select * from {0}")  # done on local-0 before it is killed
    killer = PythonScriptNode(ctx, (first,), process_func=_killer_once(str(tmp_path / "killed")))
    rt = make_rt()
    run_job(LogicalPlan(ctx, killer), rt, num_workers=1, max_retry_count=1)
    host = socket.gethostname()
    failed = [e for e in map(json.loads, open(os.path.join(rt.log_root, "events.jsonl"))) if e["ev"] == "failed"]
    assert [e["worker"] for e in failed] == [f"{host}/local-0"]
    path = os.path.join(rt.log_root, "report.html")
    page = open(path, encoding="utf-8").read()
    assert _lanes_and_failed_bars(page) == ([f"{host}/local-0", f"{host}/local-1"], [f"{host}/local-0"])
    got = open_page(
        path,
        {
            "lanes": "[...document.querySelectorAll('svg.timeline text.lane')].map(t => t.textContent)",
            "failed_row": "(() => { const r = document.querySelector('svg.timeline rect.att.failed');"
            " const y = r.getBoundingClientRect().top; return [...document.querySelectorAll('svg.timeline text.lane')]"
            ".find(t => Math.abs(t.getBoundingClientRect().bottom - y - 16) < 8)?.textContent ?? null; })()",
            "worker_cell": "document.querySelector('table.failures tr:nth-child(2) td:nth-child(5)').textContent",
        },
    )
    assert got.exceptions == [] and got.console_errors == []
    assert got.values["lanes"] == [f"{host}/local-0", f"{host}/local-1"], got.values
    assert got.values["failed_row"] == got.values["worker_cell"] == f"{host}/local-0", got.values


def test_a_lost_attempt_with_no_worker_named_sits_on_the_row_of_its_workers_log():
    """Ray tells a lost attempt without a worker: its row is the worker of the attempts done in the
    worker log holding its start line, else that log's name; not '?'."""
    from smallpond.execution.events import JobHistory
    from smallpond.execution.report import render_report

    t = 1_000_000.0
    events = [
        {"ev": "job_start", "t": t, "job_id": "abc"},
        {"ev": "node", "t": t, "id": 1, "label": "N-1", "tasks": 3},
        {
            "ev": "done",
            "t": t + 1,
            "key": "A",
            "node": 1,
            "worker": "h/ray-node-x/pid-5",
            "started": t,
            "elapsed": 1.0,
            "log": "workers/h-5.log",
        },
        {
            "ev": "failed",
            "t": t + 2,
            "key": "B",
            "node": 1,
            "worker": "",
            "started": t + 1,
            "elapsed": 1.0,
            "log": "workers/h-5.log",
            "decision": "retry",
            "error": "WorkerLost",
        },
        {
            "ev": "failed",
            "t": t + 2,
            "key": "C",
            "node": 1,
            "worker": "",
            "started": t + 1,
            "elapsed": 1.0,
            "log": "workers/h-9.log",
            "decision": "retry",
            "error": "WorkerLost",
        },
    ]
    page = render_report(JobHistory(events), job_root="/nonexistent", state="failure", log_files=[])
    assert _lanes_and_failed_bars(page) == (["h-9", "h/ray-node-x/pid-5"], ["h/ray-node-x/pid-5", "h-9"])
