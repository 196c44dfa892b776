"""Fuzz: hostile column, file, data-root and output names through both APIs (issue 8, part 2).

Names are drawn from quotes, ``{0}``, glob characters, brackets, newlines, spaces, SQL
punctuation and non-ASCII letters. Each example runs read_parquet → repartition(hash_by) →
SQL → Python map → write_parquet (DataFrame API), or the same as nodes through ``run_job``,
compares the published rows with plain pyarrow, and checks that no file was written outside
the job folder and the output path (the test runs in its own working directory, so relative
paths an injected statement might write to are seen too).
"""

from __future__ import annotations

import glob
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import smallpond
from smallpond.common import quote_identifier
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, HashPartitionNode, LogicalPlan, SqlEngineNode
from tests.e2e.safety_helpers import manifest, tree

HOSTILE_CHARS = "'\"{}*?[]\n ;()-\\%$=é漢"
INJECTION = """x" FROM range(1)) TO 'PWNED'; COPY (SELECT 1 AS "a"""

name_text = st.text(alphabet=st.sampled_from(HOSTILE_CHARS + "abc"), min_size=1, max_size=12)
column_names = st.lists(name_text, min_size=2, max_size=3, unique_by=str.casefold).filter(
    lambda cols: all(c.strip() and not c.startswith("__") for c in cols)
)
file_names = name_text.filter(lambda n: "\n" not in n and n not in (".", "..") and n.strip() == n)
dir_names = name_text.filter(lambda n: "\n" not in n and n.strip() == n and n not in (".", ".."))

# each example runs a whole job: few examples, and no shrinking (a failing example is reported as drawn)
FUZZ = settings(
    max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None, phases=(Phase.explicit, Phase.generate)
)


def _sql_name(column: str) -> str:
    """A column name inside partial_sql text: quoted, with braces doubled for str.format."""
    return quote_identifier(column).replace("{", "{{").replace("}", "}}")


def _write_inputs(folder: str, columns, file_name: str) -> pa.Table:
    os.makedirs(folder)
    n = 12
    table = pa.table({columns[0]: list(range(n)), **{c: [f"{c}:{i}" for i in range(n)] for c in columns[1:]}})
    pq.write_table(table.slice(0, 7), os.path.join(folder, file_name + ".parquet"))
    pq.write_table(table.slice(7), os.path.join(folder, file_name + "-2.parquet"))
    return table


def _expected(table: pa.Table, columns):
    return sorted((2 * r[columns[0]] + 1, r[columns[1]]) for r in table.to_pylist())


def _published(out: str, columns):
    rows = []
    for p in manifest(out):
        assert os.path.dirname(p) == out
        t = pq.read_table(p)
        rows.extend(zip(t.column("k").to_pylist(), t.column(columns[1]).to_pylist()))
    return sorted(rows)


def _check_no_stray_files(base: str, before, allowed):
    for path in sorted(set(tree(base)) - set(before)):
        full = os.path.join(base, path)
        assert any(full == a or full.startswith(a + os.sep) for a in allowed), f"file written outside the job: {full!r}"


def _run_dataframe(base: str, columns, file_name: str, root_name: str, out_name: str):
    table = _write_inputs(os.path.join(base, "in", file_name), columns, file_name)
    before = tree(base)
    data_root, out = os.path.join(base, "root " + root_name), os.path.join(base, "out " + out_name)
    sp = smallpond.init(data_root=data_root, num_executors=1)
    try:
        src = os.path.join(glob.escape(os.path.join(base, "in", file_name)), "*.parquet")
        df = sp.read_parquet(src).repartition(3, hash_by=columns[0])
        df = sp.partial_sql(f"select {_sql_name(columns[0])} * 2 as k, {_sql_name(columns[1])} from {{0}}", df)
        first, second = columns[1], "k"
        df = df.map(lambda row: {"k": row[second] + 1, first: row[first]})
        df.write_parquet(out)
        job_root = sp.runtime_ctx.job_root
    finally:
        sp.shutdown()
    assert _published(out, columns) == _expected(table, columns)
    _check_no_stray_files(base, before, [data_root, out, job_root])


def _run_nodes(base: str, columns, file_name: str, root_name: str, out_name: str):
    table = _write_inputs(os.path.join(base, "in", file_name), columns, file_name)
    before = tree(base)
    data_root, out = os.path.join(base, "root " + root_name), os.path.join(base, "out " + out_name)
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([os.path.join(glob.escape(os.path.join(base, "in", file_name)), "*.parquet")]))
    parts = HashPartitionNode(ctx, (src,), 3, hash_columns=[columns[0]], drop_partition_column=True)
    sql = SqlEngineNode(ctx, (parts,), f"select {_sql_name(columns[0])} * 2 + 1 as k, {_sql_name(columns[1])} from {{0}}")
    rt = make_runtime_ctx(str(uuid.uuid4()), None, data_root)
    run_job(LogicalPlan(ctx, DataSinkNode(ctx, (sql,), out)), rt, num_workers=1)
    assert _published(out, columns) == _expected(table, columns)
    _check_no_stray_files(base, before, [data_root, out])


WORST = dict(columns=[INJECTION, "{0}'\"*?[x]\né漢"], file_name="a*[b]?{0}'", root_name="r'{0}*?[1]", out_name="o'\"{1}*[")


@FUZZ
@example(**WORST)
@given(columns=column_names, file_name=file_names, root_name=dir_names, out_name=dir_names)
def test_fuzz_dataframe_api(tmp_path_factory, columns, file_name, root_name, out_name):
    base = str(tmp_path_factory.mktemp("fuzz"))
    cwd = os.getcwd()
    os.chdir(base)
    try:
        _run_dataframe(base, columns, file_name, root_name, out_name)
    finally:
        os.chdir(cwd)


@FUZZ
@example(**WORST)
@given(columns=column_names, file_name=file_names, root_name=dir_names, out_name=dir_names)
def test_fuzz_node_api(tmp_path_factory, columns, file_name, root_name, out_name):
    base = str(tmp_path_factory.mktemp("fuzz"))
    cwd = os.getcwd()
    os.chdir(base)
    try:
        _run_nodes(base, columns, file_name, root_name, out_name)
    finally:
        os.chdir(cwd)
