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


def _import_example(name):
    sys.path.insert(0, EXAMPLES)
    try:
        return __import__(name)
    finally:
        sys.path.remove(EXAMPLES)


def test_shuffle_training_data_example(tmp_path):
    shuffle = _import_example("shuffle_training_data")
    inputs = shuffle.make_data(str(tmp_path / "shards"), shards=3, rows=2000)
    out = tmp_path / "shuffled"
    proc = run_example("shuffle_training_data.py", inputs, str(out), "-n", "4", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(out / f) for f in os.listdir(out) if f.endswith(".parquet"))
    got = duckdb.sql(f"select example_id, label, text from read_parquet({files!r})").fetchall()
    want = duckdb.sql(f"select example_id, label, text from read_parquet('{inputs}')").fetchall()
    assert sorted(got) == sorted(want), "a permutation of the input: every example once"
    before = [r[0] for r in duckdb.sql(f"select example_id from read_parquet('{inputs}')").fetchall()]
    after = [r[0] for r in got]
    assert sum(a == b for a, b in zip(before, after)) < len(before) // 10, "the order is shuffled"
    labels = [r[1] for r in got[:500]]
    assert len(set(labels)) == 10, "the first rows mix all labels (the input was sorted by label)"


def test_dedup_documents_example(tmp_path):
    dedup = _import_example("dedup_documents")
    inputs = dedup.make_data(str(tmp_path / "docs"), files=3, docs=1500)
    out = tmp_path / "deduped"
    proc = run_example("dedup_documents.py", inputs, str(out), "-n", "4", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    got = duckdb.sql(f"select doc_id, url, content from read_parquet('{out}/*.parquet') order by doc_id").fetchall()
    want = duckdb.sql(
        f"""select doc_id, url, content from read_parquet('{inputs}')
            qualify row_number() over (partition by content order by doc_id) = 1 order by doc_id"""
    ).fetchall()
    assert got == want
    total = duckdb.sql(f"select count(*) from read_parquet('{inputs}')").fetchall()[0][0]
    assert len(got) < total, "the sample data has duplicates"


def test_global_sort_example_equals_one_order_by(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    inputs = []
    for i in range(4):  # skewed keys (Zipf), some NULL, in no order
        keys = rng.zipf(1.2, 25_000).astype(np.float64)
        keys[rng.random(len(keys)) < 0.001] = np.nan
        path = str(tmp_path / f"in{i}.parquet")
        pq.write_table(pa.table({"key": pa.array(keys, from_pandas=True), "row": np.arange(i * 25_000, (i + 1) * 25_000)}), path)
        inputs.append(path)
    out = tmp_path / "sorted"
    args = ["scheduler", "--data_root", str(tmp_path / "root"), "-i", *inputs, "-k", "key", "-n", "8", "-o", str(out)]
    proc = run_example("global_sort.py", *args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    global_sort = _import_example("global_sort")
    got = global_sort.read_in_order(str(out))
    want = duckdb.sql(f"select key, row from read_parquet({inputs!r}) order by key, row").fetchall()
    assert list(zip(got.column("key").to_pylist(), got.column("row").to_pylist())) == want
    sizes = [pq.read_metadata(str(out / f)).num_rows for f in os.listdir(out) if f.endswith(".parquet")]
    assert max(sizes) <= 2 * sum(sizes) / 8, f"no partition over twice the average: {sizes}"


def test_global_sort_example_takes_a_key_with_braces(tmp_path):
    # its query is a format string: a key "k{y}" was an unknown placeholder
    plan = _import_example("global_sort").global_sort(["/in/x.parquet"], "k{y}", 2, str(tmp_path / "out"))
    sql = plan.root_node.input_deps[0].sql_queries[0]
    assert sql.format("t") == 'select * from t order by "k{y}", columns(*)'


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


def test_readme_quick_start_runs_as_written(tmp_path):
    """The README's quick start, copied out of its first ``python`` block and run in an empty
    folder: it makes its data, publishes ``output/`` and prints every ticker's min and max."""
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = readme.split("## Quick start", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    env = dict(os.environ, SP_DATA_ROOT=str(tmp_path / "sp_data"), SP_PROGRESS="0")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = duckdb.sql(f"select * from read_parquet('{tmp_path}/output/*.parquet') order by ticker").fetchall()
    want = duckdb.sql(
        f"select ticker, min(price), max(price) from '{tmp_path}/prices.parquet' group by ticker order by ticker"
    ).fetchall()
    assert got == want and len(got) == 50
    assert (tmp_path / "output" / ".MANIFEST.txt").exists()
    assert "T49" in proc.stdout  # the printed frame
