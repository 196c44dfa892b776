"""What each attempt used: its CPU seconds and its worker's peak memory, in the event log, the
summary and the report, and the note on tasks that peak above the memory they reserved."""

from __future__ import annotations

import json
import os
import sys

import pytest

from smallpond.common import MB
from smallpond.execution import resource_use
from smallpond.execution.events import JobHistory, chrome_trace
from smallpond.execution.job import run_job
from smallpond.execution.summary import format_summary
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, PythonScriptNode

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is measured through /proc")
BIG = 400 * MB


def _touch(nbytes: int) -> int:
    data = b"\x01" * nbytes  # written, so resident
    return len(data)


@linux_only
def test_peak_is_reset_per_attempt_and_a_forked_child_resets_only_its_own():
    assert resource_use.start_peak()
    base = resource_use.peak_since_start()
    _touch(BIG)
    assert resource_use.peak_since_start() >= base + BIG * 0.9
    assert resource_use.start_peak()
    assert resource_use.peak_since_start() < base + BIG // 2  # the next attempt starts from here
    _touch(BIG)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child resets its own high-water mark, not its parent's
        try:
            os.write(write, b"1" if resource_use.start_peak() else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert resource_use.peak_since_start() >= base + BIG * 0.9


def test_over_reservation_needs_a_clear_margin():
    assert resource_use.over_reservation(1000 * MB, 512 * MB)
    assert not resource_use.over_reservation(600 * MB, 512 * MB)  # within the worker's own size
    assert not resource_use.over_reservation(200 * MB, 16 * MB)  # a small task in a ~100 MB process
    assert not resource_use.over_reservation(None, 512 * MB)


def _allocate(runtime_ctx, input_datasets, output_path):
    _touch(BIG)
    return True


def _small(runtime_ctx, input_datasets, output_path):
    return True


@linux_only
def test_events_summary_and_report_show_what_tasks_used(make_rt, parquet_files):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    big = PythonScriptNode(ctx, (src,), process_func=_allocate, memory_limit=64 * MB, output_name="big")
    small = PythonScriptNode(ctx, (big,), process_func=_small, output_name="small")
    rt = make_rt()
    run_job(LogicalPlan(ctx, small), rt, num_workers=1)

    events = [json.loads(line) for line in open(os.path.join(rt.log_root, "events.jsonl"))]
    done = {e["key"]: e for e in events if e["ev"] == "done"}
    used = [e for e in done.values() if e["node"] == int(big.id)]
    assert used and all(e["peak_memory"] >= BIG and e["cpu"] > 0 and e["memory"] > 0 for e in used)
    assert all(resource_use.over_reservation(e["peak_memory"], e["memory"]) for e in used)
    others = [e for e in done.values() if e["node"] == int(small.id)]
    assert others and all(e["peak_memory"] < BIG and "cpu" in e for e in others)

    history = JobHistory.load(rt.log_root)
    ns = history.last.nodes[int(big.id)]
    assert ns.peak_memory >= BIG and ns.over_reserved == len(used) and ns.cpu_seconds > 0
    text = str(format_summary(history, rt.job_root))
    assert "peak memory" in text
    notes = [ln for ln in text.splitlines() if "peaked above the memory reserved" in ln]
    assert len(notes) == 1 and f"PythonScriptNode-{int(big.id):06d}" in notes[0]
    slices = [e for e in chrome_trace(history.last)["traceEvents"] if e["tid"] == int(big.id)]
    assert slices and all(e["args"]["peak_memory"] >= BIG and "cpu" in e["args"] for e in slices)
    page = open(os.path.join(rt.log_root, "report.html"), encoding="utf-8").read()
    assert "<th>Peak memory</th>" in page and "above what they reserved" in page
