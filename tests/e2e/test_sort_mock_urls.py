"""Acceptance: the URL-sort plan gives exactly what one DuckDB query gives on the same files.

Run in-process (``run_job``) with both sort engines, and as a script through the Driver.
"""

from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys
import uuid
from typing import List

import duckdb
import pytest

from smallpond.execution.job import run_job
from tests.conftest import REPO_ROOT
from tests.datagen import parquet_paths_in, read_parquet, rows

EXAMPLE = os.path.join(REPO_ROOT, "examples", "sort_mock_urls.py")


@pytest.fixture
def example(monkeypatch):
    # on sys.path (not loaded from a file path) so worker processes can import its node class
    monkeypatch.syspath_prepend(os.path.dirname(EXAMPLE))
    return importlib.import_module("sort_mock_urls")


def duckdb_reference(url_files: List[str]) -> List[tuple]:
    """One DuckDB query over the same TSV files, written independently of the example."""
    files = ", ".join(f"'{p}'" for p in url_files)
    sql = f"""
        select split_part(urlstr, '/', 1) as host, urlstr as url, from_base64(valstr) as payload
        from read_csv([{files}], delim='\t', header=false,
                      columns={{'urlstr': 'varchar', 'valstr': 'varchar'}})
        order by host, url, payload
    """
    return duckdb.connect().execute(sql).fetchall()


def check_sorted_urls(paths: List[str], url_files: List[str], npartitions: int) -> None:
    assert paths, "no output files"
    assert len(paths) <= npartitions
    hosts_seen = {}
    for p in paths:
        file_rows = rows(read_parquet([p]), ["host", "url", "payload"])
        keys = [(h, u) for h, u, _ in file_rows]
        assert keys == sorted(keys), f"{p} is not sorted by host, url"
        for h in {h for h, _ in keys}:
            assert h not in hosts_seen, f"host {h} is in both {hosts_seen[h]} and {p}"
            hosts_seen[h] = p
    table = read_parquet(paths)
    assert table.column_names == ["host", "url", "payload"]
    assert sorted(rows(table)) == duckdb_reference(url_files)


@pytest.mark.parametrize("engine_type", ["duckdb", "arrow"])
def test_sort_mock_urls_in_process(example, url_files, make_rt, tmp_path, engine_type):
    out = tmp_path / "out"
    plan = example.sort_mock_urls(url_files, 3, engine_type=engine_type, external_output_path=str(out))
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    assert exec_plan.successful
    sink = out / "data_sink"
    paths = parquet_paths_in(str(sink))
    check_sorted_urls(paths, url_files, 3)
    manifest = (sink / ".MANIFEST.txt").read_text().split()
    assert sorted(manifest) == paths
    # the plan's final output (a dataset) describes the same rows
    assert sorted(rows(exec_plan.final_output.to_arrow_table(), ["host", "url", "payload"])) == duckdb_reference(url_files)


def test_sort_mock_urls_without_sink(example, url_files, make_rt):
    rt = make_rt()
    exec_plan = run_job(example.sort_mock_urls(url_files, 2), rt, num_workers=2)
    final = exec_plan.final_output
    check_sorted_urls(sorted(final.resolved_paths), url_files, 2)
    # the named output of the import step is kept under output/imported_urls
    assert exec_plan.get_output("imported_urls").num_rows == len(duckdb_reference(url_files))
    assert os.path.isdir(os.path.join(rt.output_root, "imported_urls"))


def run_example(args: List[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EXAMPLE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# 0.5: the job's ~11 worker tasks all draw no fault 1 time in 2,000 (at 0.2, 1 time in 12)
@pytest.mark.parametrize("fault_inject_prob", ["0", "0.5"])
def test_sort_mock_urls_driver(url_files, tmp_path, data_root, fault_inject_prob):
    job_id = str(uuid.uuid4())
    out = tmp_path / "out"
    args = ["scheduler", "--job_id", job_id, "--data_root", data_root, "--num_executors", "2"]
    args += ["--fault_inject_prob", fault_inject_prob]
    args += ["-i", *url_files, "-n", "3", "-o", str(out)]
    proc = run_example(args, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_sorted_urls(parquet_paths_in(str(out / "data_sink")), url_files, 3)
    (job_root,) = glob.glob(os.path.join(data_root, f"*.{job_id}"))
    status = open(os.path.join(job_root, "log", ".STATUS")).read().split()
    assert status[-1].startswith("success@")
    assert os.path.exists(os.path.join(job_root, "log", "scheduler.log"))
    from smallpond.execution.attempt import logged_attempts

    assert any(attempt == 0 for _, attempt in logged_attempts(os.path.join(job_root, "log")))
    if fault_inject_prob != "0":
        from tests.e2e.safety_helpers import fault_count

        assert fault_count(os.path.join(job_root, "log")) > 0, "no fault was injected"


def test_sort_mock_urls_driver_failure_exit_code(tmp_path, data_root):
    missing = str(tmp_path / "no_such_file.tsv")
    proc = run_example(["scheduler", "--job_id", "bad-input", "--data_root", data_root, "-i", missing, "-n", "2"], str(tmp_path))
    assert proc.returncode == 70
    assert missing in proc.stderr
