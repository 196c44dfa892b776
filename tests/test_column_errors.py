"""A column the user names that the data lacks (``columns=`` of a reader, a hash key, a shuffle's
partition column) fails as early as it can be known, with an error that names
the column, where it was looked for (the file, the declared schema, the node's input) and the
line that named it; never a bare ``KeyError``, a DuckDB binder error about a statement smallpond
built, or a result without the column."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import ColumnNotFoundError, ParameterError, TaskError
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import CsvDataSet, JsonDataSet, ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
)

HERE = os.path.basename(__file__)


@pytest.fixture
def ab(tmp_path) -> str:
    path = str(tmp_path / "ab.parquet")
    pq.write_table(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}), path)
    return path


def _line_of(text: str) -> int:
    """The line of this file holding ``text`` (the call site an error must name)."""
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line and "_line_of" not in line)


def _raises_naming_the_column(call, path: str, line_text: str) -> TaskError:
    with pytest.raises(TaskError) as info:
        call()
    text = str(info.value)
    assert f"columns=['zz']: column 'zz' not found in '{path}' (its columns: a, b)" in text, text
    assert f"{HERE}:{_line_of(line_text)}" in text, text  # where the reader was called
    assert info.value.cause_type == "ColumnNotFoundError" and not info.value.retryable
    return info.value


def test_read_parquet_of_a_column_the_file_lacks_fails_naming_it(sp, ab, tmp_path):
    def frame():
        return sp.read_parquet(ab, columns=["zz"])  # READER

    _raises_naming_the_column(lambda: frame().take_all(), ab, "# READER")
    # every consumer, not only a read: count() would count the rows, write_parquet() published
    # the input file as it is (a result without the column)
    _raises_naming_the_column(lambda: frame().count(), ab, "# READER")
    out = str(tmp_path / "out")
    _raises_naming_the_column(lambda: frame().write_parquet(out), ab, "# READER")
    assert not os.path.exists(out)
    _raises_naming_the_column(lambda: frame().map(lambda r: r).take_all(), ab, "# READER")
    # asked before anything runs (the schema is read at plan time): raised there, at once
    with pytest.raises(ColumnNotFoundError, match=rf"DataSourceNode-\d+ created at .*{HERE}:\d+: columns=\['zz'\]"):
        _ = frame().schema


def test_a_column_that_only_some_files_have_is_read_as_nulls_where_they_lack_it(sp, ab, tmp_path):
    other = str(tmp_path / "ac.parquet")
    pq.write_table(pa.table({"a": [4], "c": [1.5]}), other)
    df = sp.read_parquet([ab, other], columns=["a", "c"])
    assert df.schema.field("c").type == pa.float64()  # the type of the file that has it
    assert sorted(df.take_all(), key=lambda r: r["a"]) == [
        {"a": 1, "c": None},
        {"a": 2, "c": None},
        {"a": 3, "c": None},
        {"a": 4, "c": 1.5},
    ]
    # DuckDB binds names ignoring case: a name differing only in case is not reported missing
    assert sp.partial_sql("select * from {0} order by 1", sp.read_parquet(ab, columns=["A"])).take_all()[0] == {"a": 1}


def test_csv_and_json_columns_are_checked_against_the_declared_schema_where_built(tmp_path):
    for kind in (CsvDataSet, JsonDataSet):
        with pytest.raises(ParameterError) as info:
            kind([str(tmp_path / "x")], {"a": "INTEGER", "b": "VARCHAR"}, columns=["a", "zz"])  # built here
        text = str(info.value)
        assert f"{kind.__name__} created at " in text and f"{HERE}:{_line_of('# built here')}" in text, text
        assert "columns=['a', 'zz']: column 'zz' not found in the declared schema (its columns: a, b)" in text, text
    # an expression over the declared columns is DuckDB's to bind, a declared name in any case is fine
    assert CsvDataSet([str(tmp_path / "x")], {"a": "INTEGER"}, columns=["a + 1 as a1", "A"]).missing_columns() == []


def _run_failing(tmp_path, build) -> str:
    ctx = Context()
    node = build(ctx, DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "ab.parquet")])))
    rt = make_runtime_ctx("columns", None, str(tmp_path / "root"), task_cache=False)
    with pytest.raises(Exception) as info:
        run_job(LogicalPlan(ctx, node), rt, num_workers=1)
    return str(info.value)


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_hash_key_or_shuffle_column_the_input_lacks_is_named(tmp_path, ab, engine):
    text = _run_failing(tmp_path, lambda ctx, src: HashPartitionNode(ctx, (src,), 2, ["a", "zz"], engine_type=engine))  # hash
    assert "hash_columns=['a', 'zz']: column 'zz' not found in the input (its columns: a, b)" in text, text
    assert f"{HERE}:{_line_of('# hash')}" in text and "Binder Error" not in text, text
    text = _run_failing(
        tmp_path,
        lambda ctx, src: HashPartitionNode(ctx, (src,), 2, data_partition_column="zz", shuffle_only=True, engine_type=engine),
    )
    assert "data_partition_column='zz': column 'zz' not found in the input (its columns: a, b)" in text, text
    assert "Binder Error" not in text, text


def test_a_hash_key_that_is_an_expression_is_not_taken_for_a_column(sp):
    # text that is no column of the input is an SQL expression, as before (so is a name that
    # DuckDB evaluates on its own, such as current_date)
    df = sp.from_items([{"a": i} for i in range(20)])
    assert df.repartition(3, hash_by="a % 7").count() == 20
    assert df.repartition(3, hash_by=["a", "current_date"]).count() == 20
