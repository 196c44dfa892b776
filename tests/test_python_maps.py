"""Python ``map`` / ``flat_map`` / ``filter`` / ``map_batches`` and Arrow/pandas compute nodes, as
a whole node: what their partitions' outputs add up to (types that differ between partitions),
and what their workers import."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond


@pytest.fixture
def sp(tmp_path):
    with smallpond.init(data_root=str(tmp_path / "root"), num_executors=1) as s:
        yield s


@pytest.fixture
def ten(tmp_path):
    """Two Parquet files of five rows (i: 0..9); ``_two`` reads them as a partition each."""
    for k in range(2):
        pq.write_table(pa.table({"i": list(range(k * 5, k * 5 + 5))}), str(tmp_path / f"p{k}.parquet"))
    return str(tmp_path / "p*.parquet")


def _two(sp, ten):
    return sp.read_parquet(ten).repartition(2)


def _row(r):
    """A row of every plain kind (None in some rows), and whether this worker has imported pandas."""
    i = r["i"]
    odd = i % 2 == 1
    return {
        "i": i,
        "f": None if odd else i / 2,
        "s": None if odd else f"s{i}",
        "b": None if i == 3 else odd,
        "pandas": "pandas" in sys.modules,
        "pid": os.getpid(),
    }


def test_a_pure_python_map_worker_does_not_import_pandas(sp, ten):
    """pyarrow's conversion of Python values imports pandas (its check for pandas objects): ~0.2 s of
    CPU in every worker that runs a Python map, whose function never uses pandas. One worker runs
    every task, so a later task's function sees what the earlier tasks imported."""
    df = sp.read_parquet(ten)
    mapped = df.map(_row).flat_map(lambda r: [dict(r, pandas2="pandas" in sys.modules)])
    kept = mapped.filter(lambda r: "pandas" not in sys.modules)
    rows = kept.map(lambda r: dict(r, pandas3="pandas" in sys.modules)).take_all()
    assert len(rows) == 10, rows  # the filter saw no pandas either
    assert len({r["pid"] for r in rows}) == 1
    assert {(r["pandas"], r["pandas2"], r["pandas3"]) for r in rows} == {(False, False, False)}, rows
    assert [r["s"] for r in rows[:3]] == ["s0", None, "s2"]
    # where the user asks for pandas, it is there
    assert len(kept.map_batches(lambda t: pa.Table.from_pandas(t.to_pandas())).to_pandas()) == 10


def _int_then_str(r):
    return {"x": r["i"] if r["i"] < 5 else f"s{r['i']}"}  # partition 0: int64, partition 1: string


def _differ(excinfo, *fragments):
    from smallpond.io.partition_types import PartitionTypesDiffer

    err = excinfo.value
    while not isinstance(err, PartitionTypesDiffer) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, PartitionTypesDiffer), repr(excinfo.value)
    text = str(err)
    for f in ("'x'", "int64", "string", __file__, *fragments):
        assert f in text, text
    types = sorted(str(t) for t in (err.first[1], err.other[1]))  # (Arrow nodes write large strings)
    assert err.first[0] != err.other[0] and types[0] == "int64" and types[1] in ("string", "large_string"), types
    return text


def test_partitions_typed_apart_fail_naming_node_tasks_and_types(sp, ten, tmp_path):
    """A column that is int64 in one partition and string in another was read back cast to the
    first partition's type ('5' -> 5; 's9' failed with "Failed to parse string"), .schema said int64,
    and write_parquet published files of both types. Now the job fails as soon as both partitions
    are done, naming the node, where it was created, both tasks and both types."""
    df = _two(sp, ten)
    for op, bad in (
        ("map", df.map(_int_then_str)),
        ("flat_map", df.flat_map(lambda r: [_int_then_str(r)])),
        ("map_batches", df.map_batches(lambda t: pa.table({"x": t["i"] if t["i"][0].as_py() < 5 else t["i"].cast(pa.string())}))),
    ):
        # a consumer's job fails in the scheduler, naming the Python node (not the SQL node reading it)
        with pytest.raises(Exception) as e:
            sp.partial_sql("select x from {0}", bad).to_arrow()
        _differ(e, f"(DataFrame.{op})", "ArrowStreamTask-")
        with pytest.raises(Exception) as e:  # the node's tasks are done now: the reader says it too
            bad.to_arrow()
        _differ(e, f"(DataFrame.{op})")
        with pytest.raises(Exception) as e:
            _ = bad.schema
        _differ(e, f"(DataFrame.{op})")
    out = str(tmp_path / "out")
    with pytest.raises(Exception) as e:
        df.map(_int_then_str).write_parquet(out)
    _differ(e, "(DataFrame.map)")
    assert not os.path.exists(out) or not [f for f in os.listdir(out) if f.endswith(".parquet")]
    # with schema= every partition has the type given
    fixed = df.map(lambda r: {"x": str(_int_then_str(r)["x"])}, schema=pa.schema([("x", pa.string())]))
    assert fixed.to_arrow().column("x").to_pylist()[:6] == ["0", "1", "2", "3", "4", "s5"]


def test_partitions_whose_types_widen_unchanged_unify(sp, ten):
    """null + int64, int32 + int64 and int64 + double (as Ray Data and Daft do) unify; a value the
    wider type cannot hold unchanged (2**60 + 1 as a double) fails, naming it."""
    df = _two(sp, ten)
    cases = [
        (lambda r: {"x": None if r["i"] < 5 else r["i"]}, pa.int64(), [None] * 5 + list(range(5, 10))),
        (
            lambda r: {"x": r["i"] if r["i"] < 5 else r["i"] + 0.5},
            pa.float64(),
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.5, 6.5, 7.5, 8.5, 9.5],
        ),
    ]
    for func, typ, values in cases:
        mapped = df.map(func)
        assert mapped.to_arrow().column("x").to_pylist() == values
        assert mapped.schema.field("x").type == typ == mapped.to_arrow().schema.field("x").type
        assert sp.partial_sql("select x from {0}", mapped).to_arrow().column("x").to_pylist() == values
    narrow = df.map_batches(lambda t: pa.table({"x": t["i"] if t["i"][0].as_py() < 5 else t["i"].cast(pa.int32())}))
    assert narrow.to_arrow().schema.field("x").type == pa.int64() == narrow.schema.field("x").type
    lossy = df.map(lambda r: {"x": 2**60 + 1 if r["i"] < 5 else 0.5})
    with pytest.raises(Exception, match=r"'x'.*does not fit.*not in range"):
        lossy.to_arrow()


def _typed_apart(runtime_ctx, tables):
    first = tables[0].column("i")[0].as_py()
    return pa.table({"x": [first] if first < 5 else [str(first)]})


def _typed_apart_pandas(runtime_ctx, frames):
    import pandas as pd

    first = int(frames[0]["i"].iloc[0])
    return pd.DataFrame({"x": [first] if first < 5 else [str(first)]})


def test_arrow_and_pandas_compute_nodes_typed_apart_fail_the_job(tmp_path, ten, make_rt):
    import glob

    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import (
        ArrowComputeNode,
        Context,
        DataSetPartitionNode,
        DataSourceNode,
        LogicalPlan,
        PandasComputeNode,
    )

    for cls, func in ((ArrowComputeNode, _typed_apart), (PandasComputeNode, _typed_apart_pandas)):
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(sorted(glob.glob(ten))))
        parts = DataSetPartitionNode(ctx, (src,), 2)
        node = cls(ctx, (parts,), process_func=func)
        with pytest.raises(Exception) as e:
            run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
        _differ(e, f"{cls.__name__}-")


def test_consumers_of_partitions_typed_apart_fail_in_later_runs_too(sp, ten, tmp_path):
    """The map's tasks are done after its first (failed) read: a later job of the session that
    consumes them (a SQL node, write_parquet) fails before it runs, instead of reading or
    publishing files of both types (write_parquet published int64 and string files)."""
    bad = _two(sp, ten).map(_int_then_str)
    with pytest.raises(Exception) as e:
        bad.to_arrow()
    _differ(e, "(DataFrame.map)")
    out = str(tmp_path / "out")
    for run in (lambda: bad.write_parquet(out), lambda: sp.partial_sql("select x from {0}", bad).write_parquet(out)):
        with pytest.raises(Exception) as e:
            run()
        _differ(e, "(DataFrame.map)", "ArrowStreamTask-")
        assert not os.path.exists(out) or not [f for f in os.listdir(out) if f.endswith(".parquet")]
    assert _two(sp, ten).map(lambda r: {"y": r["i"]}).count() == 10  # other frames of the session run


def _int_and_extra_str_file(runtime_ctx, tables):
    """Returns x as int64 and writes, beside that output, a file of its own with x as string (user
    code may write into its task's output folder); with ``tables[0]`` from 5 on, only the extra file
    differs from the other partition's output."""
    task = runtime_ctx.task
    first = tables[0].column("i")[0].as_py()
    if first >= 5 or tables[0].num_rows == 10:
        path = os.path.join(task.runtime_output_abspath, f"{task.output_filename}-zz-extra.parquet")
        pq.write_table(pa.table({"x": ["s"]}), path)
    return pa.table({"x": [first]})


def test_files_of_one_task_typed_apart_fail_the_job(tmp_path, ten, make_rt):
    """The check read the first file of each task's output only: a task whose first file had x as
    int64 and a later file x as string passed (in one partition, or beside another partition of
    int64), and its readers got either type. Now every file's footer is read."""
    import glob

    from smallpond.execution.job import run_job
    from smallpond.execution.partition_schemas import result_schema
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSourceNode, LogicalPlan

    for npartitions in (1, 2):
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(sorted(glob.glob(ten))))
        parts = DataSetPartitionNode(ctx, (src,), npartitions)
        node = ArrowComputeNode(ctx, (parts,), process_func=_int_and_extra_str_file)
        with pytest.raises(Exception) as e:
            run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
        text = _differ(e, "ArrowComputeNode-", "-zz-extra.parquet)")
        assert npartitions == 2 or "-00000.parquet)" in text, text  # one task: both files named
    # a computed frame's .schema reads them the same way
    pq.write_table(pa.table({"x": [1]}), str(tmp_path / "t-00000.parquet"))
    pq.write_table(pa.table({"x": ["s"]}), str(tmp_path / "t-00001.parquet"))
    files = ParquetDataSet([str(tmp_path / "t-0000*.parquet")])
    with pytest.raises(Exception) as e:
        result_schema([files], f"the frame created at {__file__}")
    assert "t-00001.parquet" in _differ(e)


@pytest.mark.parametrize("op", ["filter", "map_batches", "map", "flat_map"])
def test_a_column_with_nulls_only_after_its_first_file(sp, tmp_path, op):
    """The first file's column has no NULL (written REQUIRED, as DuckDB writes such a column) and
    the next has NULLs: filter and map_batches failed every attempt ("Column 'f' is declared
    non-nullable but contains nulls"); found by the differential fuzzer."""
    required = pa.schema([pa.field("k", pa.int64()), pa.field("f", pa.float64(), nullable=False)])
    pq.write_table(pa.table({"k": [1, 2], "f": [1.0, 2.0]}, schema=required), str(tmp_path / "a.parquet"))
    pq.write_table(pa.table({"k": [3, 4], "f": [None, 4.0]}), str(tmp_path / "b.parquet"))
    df = sp.read_parquet(str(tmp_path / "*.parquet"))
    out = {
        "filter": lambda: df.filter(lambda r: True),
        "map_batches": lambda: df.map_batches(lambda t: t, batch_size=1),
        "map": lambda: df.map(lambda r: r),
        "flat_map": lambda: df.flat_map(lambda r: [r]),
    }[op]()
    assert sorted(out.to_arrow().column("f").to_pylist(), key=str) == [1.0, 2.0, 4.0, None]


def _x_then_xy(r):
    """Partition 0 (i < 5) returns {x}, partition 1 {x, y}: a map without schema= types each."""
    i = r["i"]
    return {"x": i} if i < 5 else {"x": i, "y": f"y{i}"}


def test_a_column_of_some_partitions_of_a_map_reaches_every_reader(sp, ten):
    """A map without schema= wrote {x} in one partition and {x, y} in the other. Files of both
    partitions in one partition (a hash or shuffle's consumer, repartition(1), limit) were read by
    SQL by the first file's columns: y was lost in silence (and `select y` refused), while the
    frame's schema, to_arrow and take had it; a Python map over them lost it too (the batch
    reader took the first file's). The engine now reads its own such files by name."""
    m = _two(sp, ten).map(_x_then_xy)
    want = sorted((i, f"y{i}" if i >= 5 else None) for i in range(10))
    frames = {
        "hash": m.repartition(2, hash_by="x"),
        "hash (arrow)": m.repartition(2, hash_by="x", engine_type="arrow"),
        "one": m.repartition(1),
        "shuffle": m.random_shuffle(),
        "limit": m.limit(100),
        "hash, sql *, one": sp.partial_sql("select * from {0}", m.repartition(2, hash_by="x")).repartition(1),
    }
    for name, f in frames.items():
        assert f.schema.names == ["x", "y"], name
        assert sorted((r["x"], r["y"]) for r in f.to_arrow().to_pylist()) == want, name
        assert list(f.to_pandas().columns) == ["x", "y"], name
        assert sorted((r["x"], r["y"]) for r in f.take(10)) == want, name
        assert f.count() == 10, name
        assert f.map("*").to_arrow().column_names == ["x", "y"], name
        assert sorted(f.map("y").to_arrow().column("y").to_pylist(), key=str) == sorted((y for _, y in want), key=str), name
        assert sorted((r["x"], r["y"]) for r in f.map(lambda r: r).to_arrow().to_pylist()) == want, name


def _null_then_int(r):
    """Partition 0 (i < 5) returns x as None only (a null column), partition 1 integers."""
    return {"i": r["i"], "x": None if r["i"] < 5 else r["i"]}


def test_a_column_typed_apart_by_partitions_of_a_map_reads_after_a_repartition(sp, ten):
    """One partition's x is a null column, the other's int64 (they unify): after repartition(1) or a
    hash partition, SQL read the files by the first file's types (DuckDB: 'failed to cast column x'),
    and a Python map by the first file's too (pyarrow: 'Unsupported cast from int64 to null')."""
    m = _two(sp, ten).map(_null_then_int)
    want = sorted((i if i >= 5 else None for i in range(10)), key=str)
    for f in (m.repartition(1), m.repartition(2, hash_by="i")):
        assert sorted(f.map("x").to_arrow().column("x").to_pylist(), key=str) == want
        assert sorted(f.map(lambda r: {"x": r["x"]}).to_arrow().column("x").to_pylist(), key=str) == want


def _int32_then_uint64_max(t):
    """Partition 0 returns x as int32, partition 1 as uint64 holding 2**64-1 (they unify as int64
    by type, but that value does not fit)."""
    import pyarrow as pa

    first = t.column("i")[0].as_py() < 5
    x = pa.array([1] * t.num_rows, pa.int32()) if first else pa.array([2**64 - 1] * t.num_rows, pa.uint64())
    return pa.table({"i": t.column("i"), "x": x})


def test_a_value_that_does_not_fit_the_files_common_type_names_the_column_and_file(sp, ten):
    """Read by one Python reader (repartition(1)), the files' x unify as int64, which cannot hold
    uint64's 2**64-1: the error names the column, the file and both types (it was pyarrow's bare
    'Integer value 18446744073709551615 not in range', naming neither)."""
    f = _two(sp, ten).map_batches(_int32_then_uint64_max).repartition(1)
    with pytest.raises(Exception) as info:
        f.to_arrow()
    text = str(info.value)
    assert "column 'x' of Parquet file" in text and "is uint64" in text and "type int64" in text, text
