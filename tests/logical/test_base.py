"""smallpond.logical.base: what a node's fingerprint parameters are (Node.fingerprint_params)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSinkNode,
    DataSourceNode,
    LogicalPlan,
    RangePartitionNode,
)


class AboveThreshold(ArrowComputeNode):
    """A user's node keeping its parameter in a private attribute."""

    def __init__(self, ctx, deps, threshold):
        super().__init__(ctx, deps)
        self._threshold = threshold

    def process(self, runtime_ctx, input_tables):
        t = input_tables[0]
        return t.filter(pc.greater(t["id"], self._threshold))


def test_a_user_subclass_private_attribute_is_a_parameter_smallpond_private_state_is_not():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    assert AboveThreshold(ctx, (src,), 7).fingerprint_params()["_threshold"] == 7
    ranged = RangePartitionNode(ctx, (src,), [10, 20])
    assert ranged._default_limits and "_default_limits" not in ranged.fingerprint_params()


def test_a_changed_private_parameter_is_not_served_from_the_task_cache(tmp_path):
    """Two jobs sharing a data root (and so its task cache): only ``_threshold`` differs."""
    source = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"id": pa.array(range(1000), pa.int64())}), source)

    def rows_above(threshold: int, job: str) -> int:
        ctx = Context()
        node = AboveThreshold(ctx, (DataSourceNode(ctx, ParquetDataSet([source])),), threshold)
        plan = LogicalPlan(ctx, DataSinkNode(ctx, (node,), str(tmp_path / f"out-{job}")))
        ep = run_job(plan, make_runtime_ctx(job, None, str(tmp_path / "root")))
        return ep.final_output.to_arrow_table().num_rows

    assert rows_above(100, "first") == 899
    assert rows_above(900, "second") == 99, "the first job's output was reused though _threshold changed"


def test_yes_no_parameters_read_the_text_false_as_false():
    # a value passed on from a command line or a config file ("false") was kept as text, which is
    # true: hive_partitioning="false" wrote a hive layout, random_shuffle="false" shuffled,
    # recursive="false" read every subfolder
    import numpy as np
    import pytest

    from smallpond.errors import ParameterError
    from smallpond.logical.node import (
        ArrowComputeNode,
        ArrowStreamNode,
        Context,
        DataSourceNode,
        EvenlyDistributedPartitionNode,
        HashPartitionNode,
        SqlEngineNode,
    )

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([], recursive="false"))
    assert src.dataset.recursive is False and ParquetDataSet([], recursive="TRUE").recursive is True
    cases = [
        (HashPartitionNode, dict(npartitions=2, hash_columns=["a"]), "hive_partitioning"),
        (HashPartitionNode, dict(npartitions=2, hash_columns=["a"]), "random_shuffle"),
        (HashPartitionNode, dict(npartitions=2, hash_columns=["a"]), "use_parquet_writer"),
        (HashPartitionNode, dict(npartitions=2, hash_columns=["a"]), "drop_partition_column"),
        (HashPartitionNode, dict(npartitions=2, hash_columns=["a"], dimension="d"), "nested"),
        (EvenlyDistributedPartitionNode, dict(npartitions=2), "partition_by_rows"),
        (EvenlyDistributedPartitionNode, dict(npartitions=2), "random_shuffle"),
        (SqlEngineNode, dict(sql_query="select * from {0}"), "per_thread_output"),
        (SqlEngineNode, dict(sql_query="select * from {0}"), "materialize_in_memory"),
        (SqlEngineNode, dict(sql_query="select * from {0}"), "batched_processing"),
        (SqlEngineNode, dict(sql_query="select * from {0}"), "enable_temp_directory"),
        (ArrowComputeNode, dict(), "use_duckdb_reader"),
        (ArrowStreamNode, dict(cpu_limit=2), "background_io_thread"),
    ]
    for cls, kwargs, name in cases:
        assert getattr(cls(ctx, (src,), **kwargs, **{name: "false"}), name) is False, (cls, name)
        assert getattr(cls(ctx, (src,), **kwargs, **{name: "True"}), name) is True, (cls, name)
        with pytest.raises(
            ParameterError, match=rf"{cls.__name__} created at .*test_base.py:\d+: {name} must be True or False, got 'no'"
        ):
            cls(ctx, (src,), **kwargs, **{name: "no"})
        # what upstream took as a flag is not refused: None (falsy there), NumPy's 0/1, a "1"
        for value, flag in ((None, False), (np.int64(0), False), (np.int64(1), True), ("1", True), ("0", False)):
            assert getattr(cls(ctx, (src,), **kwargs, **{name: value}), name) is flag, (cls, name, value)
    assert ParquetDataSet([], recursive=None).recursive is False


def test_a_users_script_in_a_folder_named_like_importlib_is_still_the_users_line(tmp_path):
    # frames whose file path held 'importlib' anywhere were skipped as the import machinery's: a
    # script in ~/importlib_demo/ was never named, the warning and the call site pointed past it
    import warnings

    from smallpond.logical.base import user_call_site

    script = str(tmp_path / "importlib_demo" / "run.py")
    code = compile(
        "from smallpond.logical.dataset import ParquetDataSet\nsite = call_site()\nParquetDataSet(['d/**/*.parquet'])\n",
        script,
        "exec",
    )
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        scope = {"call_site": user_call_site}
        exec(code, scope)
    assert scope["site"] == f"{script}:2"
    stars = [w for w in got if "'**'" in str(w.message)]
    assert stars and stars[0].filename == script and stars[0].lineno == 3
