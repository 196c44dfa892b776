"""Every example in examples/ runs as written, and its result equals plain DuckDB's on the same input.

(sort_mock_urls.py through the Driver is also checked in depth in tests/e2e/test_sort_mock_urls.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


def run_example(name, *args, cwd, env_extra=None):
    env = dict(os.environ, SP_DATA_ROOT=os.path.join(cwd, "sp_data"), SP_PROGRESS="0")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_quickstart_example_matches_duckdb(tmp_path):
    sys.path.insert(0, EXAMPLES)
    try:
        import quickstart
    finally:
        sys.path.remove(EXAMPLES)
    prices = str(tmp_path / "prices.parquet")
    quickstart.make_prices(prices, rows=20_000)
    proc = run_example("quickstart.py", prices, str(tmp_path / "output"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    got = duckdb.sql(f"select * from read_parquet('{tmp_path}/output/*.parquet') order by ticker").df()
    want = duckdb.sql(f"select ticker, min(price), max(price) from '{prices}' group by ticker order by ticker").df()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
    assert "T0" in proc.stdout  # the printed frame
    assert os.path.exists(tmp_path / "output" / ".MANIFEST.txt")


def test_quickstart_example_without_arguments(tmp_path):
    proc = run_example("quickstart.py", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "ticker" in proc.stdout


def test_log_processing_example_matches_duckdb(tmp_path):
    sys.path.insert(0, EXAMPLES)
    try:
        import log_processing
    finally:
        sys.path.remove(EXAMPLES)
    logs = str(tmp_path / "logs")
    log_processing.make_logs(logs, nfiles=3, lines=2000)
    proc = run_example("log_processing.py", logs, str(tmp_path / "stats"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    got = duckdb.sql(f"select host, requests, bytes from read_parquet('{tmp_path}/stats/*.parquet') order by host").df()
    want = duckdb.sql(
        f"""select lower(host) as host, count(*) as requests, cast(sum(bytes) as bigint) as bytes
            from read_json('{logs}/*.jsonl', format='newline_delimited') group by 1 order by 1"""
    ).df()
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert "slow" in duckdb.sql(f"select * from read_parquet('{tmp_path}/stats/*.parquet')").columns


def test_sort_mock_urls_v2_example(tmp_path):
    from tests.datagen import generate_mock_urls

    paths = generate_mock_urls(str(tmp_path / "urls"), nfiles=4, nlines=50)
    out = tmp_path / "sorted"
    proc = run_example("sort_mock_urls_v2.py", "-i", *paths, "-o", str(out), "-n", "3", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(out / f) for f in os.listdir(out) if f.endswith(".parquet"))
    assert len(files) == 3
    for f in files:  # each partition is sorted by host, and hosts do not cross partitions
        hosts = duckdb.sql(f"select host from read_parquet('{f}')").fetchall()
        assert hosts == sorted(hosts)
    got = duckdb.sql(f"select host, url, payload from read_parquet({files!r}) order by all").fetchall()
    want = duckdb.sql(
        f"""select split_part(urlstr, '/', 1) as host, split_part(urlstr, ' ', 1) as url, from_base64(valstr) as payload
            from read_csv({paths!r}, delim='\\t', columns={{'urlstr': 'varchar', 'valstr': 'varchar'}}, header=false)
            order by all"""
    ).fetchall()
    assert got == want


def test_sort_mock_urls_example_as_written_in_its_docstring(tmp_path):
    """From a fresh clone: the mock data is generated, the job runs, its result folder is printed and
    reads back (a FinalResults manifest), and the same command resumes."""
    import smallpond

    args = ["scheduler", "--job_id", "my-job", "--data_root", str(tmp_path / "sp"), "-i", "tests/data/mock_urls/*.tsv", "-n", "4"]
    proc = run_example("sort_mock_urls.py", *args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "writing mock URL data" in proc.stderr and "succeeded" in proc.stderr and "report.html" in proc.stderr
    final = proc.stdout.split("sorted URLs:", 1)[1].split()[0]
    assert final.endswith("FinalResults") and os.path.exists(os.path.join(final, ".MANIFEST.txt"))
    sp = smallpond.init(data_root=str(tmp_path / "reader"))
    try:
        result = sp.read_parquet(final)
        assert result.count() == 1000 and result.schema.names == ["host", "url", "payload"]
    finally:
        sp.shutdown()
    again = run_example("sort_mock_urls.py", *args, cwd=str(tmp_path))
    assert again.returncode == 0 and "writing mock URL data" not in again.stderr
    assert " 0 run, " in again.stderr and "resumed" in again.stderr


def test_sort_mock_urls_v2_example_as_written_prints_its_result(tmp_path):
    proc = run_example(
        "sort_mock_urls_v2.py", "-i", "tests/data/mock_urls/*.tsv", "-o", "sorted_urls/", "-n", "4", cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "host: string" in out and "payload: binary" in out  # the schema, before running
    assert f"wrote 1000 rows in 4 file(s) to {tmp_path / 'sorted_urls'}" in out
    assert "(5 rows, limit 5)" in out
