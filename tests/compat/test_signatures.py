"""Public signatures checked against the ones recorded for upstream smallpond 0.15.

Names, positional order, keyword-only markers and defaults must match (see ``_sig.py`` for the
exact rule); we may add optional parameters.
"""

from __future__ import annotations

import inspect

import pytest

import smallpond
from smallpond.dataframe import DataFrame, Session
from smallpond.errors import ParameterError
from smallpond.execution.driver import Driver
from smallpond.execution.manager import JobManager
from smallpond.execution.planner import ExecutionPlan, Planner
from smallpond.execution.task import PartitionInfo, RuntimeContext, StreamOutput
from smallpond.io import arrow as arrow_io
from smallpond.logical import dataset as ds
from smallpond.logical import node as nd
from smallpond.logical import udf as udfmod
from smallpond.logical.dot import Digraph
from smallpond.logical.optimizer import Optimizer
from smallpond.logical.visitor import LogicalPlanVisitor
from tests.compat._sig import signature_problems

PARQUET_OPTS = (
    'parquet_row_group_size=None, parquet_dictionary_encoding=False, parquet_compression="ZSTD", parquet_compression_level=3'
)

SIGNATURES = {
    # -- entry point ---------------------------------------------------------------------------
    "smallpond.init": (
        smallpond.init,
        "job_id=None, job_time=None, job_name=None, data_root=None, num_executors=None, ray_address=None, "
        "bind_numa_node=None, platform=None, _remove_output_root=True, **kwargs",
    ),
    # -- Session -------------------------------------------------------------------------------
    "Session.read_csv": (Session.read_csv, 'paths, schema, delim=","'),
    "Session.read_parquet": (Session.read_parquet, "paths, recursive=False, columns=None, union_by_name=False"),
    "Session.read_json": (Session.read_json, "paths, schema"),
    "Session.from_items": (Session.from_items, "items"),
    "Session.from_pandas": (Session.from_pandas, "df"),
    "Session.from_arrow": (Session.from_arrow, "table"),
    "Session.partial_sql": (Session.partial_sql, "query, *inputs, **kwargs"),
    "Session.wait": (Session.wait, "*dfs"),
    "Session.graph": (Session.graph, ""),
    "Session.dump_graph": (Session.dump_graph, "path=None"),
    "Session.dump_timeline": (Session.dump_timeline, "path=None"),
    "Session.shutdown": (Session.shutdown, ""),
    # -- DataFrame -----------------------------------------------------------------------------
    "DataFrame": (DataFrame.__init__, "session, plan, recompute=False"),
    "DataFrame.repartition": (DataFrame.repartition, "npartitions, hash_by=None, by=None, by_rows=False, **kwargs"),
    "DataFrame.random_shuffle": (DataFrame.random_shuffle, "**kwargs"),
    "DataFrame.partial_sort": (DataFrame.partial_sort, "by, **kwargs"),
    "DataFrame.filter": (DataFrame.filter, "sql_or_func, **kwargs"),
    "DataFrame.map": (DataFrame.map, "sql_or_func, *, schema=None, **kwargs"),
    "DataFrame.flat_map": (DataFrame.flat_map, "sql_or_func, *, schema=None, **kwargs"),
    "DataFrame.map_batches": (DataFrame.map_batches, "func, *, batch_size=122880, **kwargs"),
    "DataFrame.limit": (DataFrame.limit, "limit"),
    "DataFrame.recompute": (DataFrame.recompute, ""),
    "DataFrame.write_parquet": (DataFrame.write_parquet, "path"),
    "DataFrame.write_parquet_lazy": (DataFrame.write_parquet_lazy, "path"),
    "DataFrame.compute": (DataFrame.compute, ""),
    "DataFrame.is_computed": (DataFrame.is_computed, ""),
    "DataFrame.count": (DataFrame.count, ""),
    "DataFrame.take": (DataFrame.take, "limit"),
    "DataFrame.take_all": (DataFrame.take_all, ""),
    "DataFrame.to_pandas": (DataFrame.to_pandas, ""),
    "DataFrame.to_arrow": (DataFrame.to_arrow, ""),
    # -- logical context and nodes ------------------------------------------------------------
    "Context": (nd.Context.__init__, ""),
    "Context.create_function": (nd.Context.create_function, "name, func, params, return_type, use_arrow_type=False"),
    "Context.create_external_module": (nd.Context.create_external_module, "module_path, name=None"),
    "Context.create_duckdb_extension": (nd.Context.create_duckdb_extension, "extension_path, name=None"),
    "Node": (
        nd.Node.__init__,
        "ctx, input_deps, output_name=None, output_path=None, cpu_limit=1, gpu_limit=0, memory_limit=None",
    ),
    "DataSourceNode": (nd.DataSourceNode.__init__, "ctx, dataset"),
    "DataSinkNode": (
        nd.DataSinkNode.__init__,
        'ctx, input_deps, output_path, type="link", manifest_only=False, is_final_node=False',
    ),
    "RootNode": (nd.RootNode.__init__, "ctx, input_deps"),
    "ConsolidateNode": (nd.ConsolidateNode.__init__, "ctx, input_dep, dimensions"),
    "UnionNode": (nd.UnionNode.__init__, "ctx, input_deps"),
    "ProjectionNode": (
        nd.ProjectionNode.__init__,
        "ctx, input_dep, columns=None, generated_columns=None, union_by_name=None",
    ),
    "LimitNode": (nd.LimitNode.__init__, "ctx, input_dep, limit"),
    "SqlEngineNode": (
        nd.SqlEngineNode.__init__,
        "ctx, input_deps, sql_query, *, udfs=None, per_thread_output=True, materialize_output=True, "
        "materialize_in_memory=False, relax_memory_if_oom=None, batched_processing=False, extension_paths=None, "
        "udf_module_paths=None, enable_temp_directory=False, " + PARQUET_OPTS + ", output_name=None, output_path=None, "
        "cpu_limit=None, memory_limit=None, cpu_overcommit_ratio=1.0, memory_overcommit_ratio=0.9",
    ),
    "PythonScriptNode": (
        nd.PythonScriptNode.__init__,
        "ctx, input_deps, *, process_func=None, output_name=None, output_path=None, cpu_limit=1, gpu_limit=0, memory_limit=None",
    ),
    "ArrowComputeNode": (
        nd.ArrowComputeNode.__init__,
        "ctx, input_deps, *, process_func=None, " + PARQUET_OPTS + ", use_duckdb_reader=False, output_name=None, "
        "output_path=None, cpu_limit=1, gpu_limit=0, memory_limit=None",
    ),
    "ArrowStreamNode": (
        nd.ArrowStreamNode.__init__,
        "ctx, input_deps, *, process_func=None, background_io_thread=True, streaming_batch_size=None, "
        "secs_checkpoint_interval=None, " + PARQUET_OPTS + ", use_duckdb_reader=False, output_name=None, output_path=None, "
        "cpu_limit=1, gpu_limit=0, memory_limit=None",
    ),
    "PartitionNode": (
        nd.PartitionNode.__init__,
        "ctx, input_deps, npartitions, dimension=None, nested=False, output_name=None, output_path=None, cpu_limit=1, memory_limit=None",
    ),
    "EvenlyDistributedPartitionNode": (
        nd.EvenlyDistributedPartitionNode.__init__,
        "ctx, input_deps, npartitions, dimension=None, nested=False, *, partition_by_rows=False, random_shuffle=False, "
        "output_name=None, output_path=None, cpu_limit=1, memory_limit=None",
    ),
    "DataSetPartitionNode": (
        nd.DataSetPartitionNode,
        "ctx, input_deps, npartitions, *, partition_by_rows=False, random_shuffle=False, data_partition_column=None",
    ),
    "HashPartitionNode": (
        nd.HashPartitionNode.__init__,
        "ctx, input_deps, npartitions, hash_columns=None, data_partition_column=None, *, dimension=None, nested=False, "
        "engine_type=None, random_shuffle=False, shuffle_only=False, drop_partition_column=False, use_parquet_writer=False, "
        "hive_partitioning=False, " + PARQUET_OPTS + ", output_name=None, output_path=None, cpu_limit=None, memory_limit=None",
    ),
    "ShuffleNode": (
        nd.ShuffleNode.__init__,
        "ctx, input_deps, npartitions, data_partition_column=None, *, dimension=None, nested=False, engine_type=None, "
        "use_parquet_writer=False, hive_partitioning=False, " + PARQUET_OPTS + ", output_name=None, output_path=None, "
        "cpu_limit=None, memory_limit=None",
    ),
    "LoadPartitionedDataSetNode": (
        nd.LoadPartitionedDataSetNode.__init__,
        "ctx, input_deps, npartitions, dimension=None, nested=False, data_partition_column=None, hive_partitioning=False, "
        "cpu_limit=1, memory_limit=None",
    ),
    "RepeatPartitionNode": (
        nd.RepeatPartitionNode.__init__,
        "ctx, input_deps, npartitions, dimension, cpu_limit=1, memory_limit=None",
    ),
    "UserDefinedPartitionNode": (
        nd.UserDefinedPartitionNode.__init__,
        "ctx, input_deps, npartitions, dimension=None, nested=False, cpu_limit=1, memory_limit=None",
    ),
    "UserPartitionedDataSourceNode": (nd.UserPartitionedDataSourceNode.__init__, "ctx, partitioned_datasets, dimension=None"),
    "LogicalPlan": (nd.LogicalPlan.__init__, "ctx, root_node"),
    # -- datasets ------------------------------------------------------------------------------
    "DataSet": (ds.DataSet.__init__, 'paths, root_dir="", recursive=False, columns=None, union_by_name=False'),
    "FileSet": (ds.FileSet.__init__, 'paths, root_dir="", recursive=False, columns=None, union_by_name=False'),
    "CsvDataSet": (
        ds.CsvDataSet.__init__,
        'paths, schema, delim=",", max_line_size=None, parallel=True, header=False, root_dir="", recursive=False, '
        "columns=None, union_by_name=False",
    ),
    "JsonDataSet": (
        ds.JsonDataSet.__init__,
        'paths, schema, format="newline_delimited", max_object_size=1*GB, root_dir="", recursive=False, columns=None, '
        "union_by_name=False",
    ),
    "ParquetDataSet": (
        ds.ParquetDataSet.__init__,
        'paths, root_dir="", recursive=False, columns=None, generated_columns=None, union_by_name=False',
    ),
    "PartitionedDataSet": (ds.PartitionedDataSet.__init__, "datasets"),
    "SqlQueryDataSet": (ds.SqlQueryDataSet.__init__, "sql_query, query_builder=None"),
    "ArrowTableDataSet": (ds.ArrowTableDataSet.__init__, "table"),
    "PandasDataSet": (ds.PandasDataSet.__init__, "df"),
    "DataSet.reset": (ds.DataSet.reset, 'paths=None, root_dir="", recursive=None'),
    "DataSet.sql_query_fragment": (ds.DataSet.sql_query_fragment, "filesystem=None, conn=None"),
    "DataSet.to_arrow_table": (ds.DataSet.to_arrow_table, "max_workers=16, filesystem=None, conn=None"),
    "DataSet.to_batch_reader": (ds.DataSet.to_batch_reader, "batch_size=122880, filesystem=None, conn=None"),
    "DataSet.to_pandas": (ds.DataSet.to_pandas, ""),
    "DataSet.log": (ds.DataSet.log, "num_rows=200"),
    "DataSet.partition_by_files": (ds.DataSet.partition_by_files, "npartition, random_shuffle=False"),
    "ParquetDataSet.partition_by_rows": (ds.ParquetDataSet.partition_by_rows, "npartition, random_shuffle=False"),
    "ParquetDataSet.load_partitioned_datasets": (
        ds.ParquetDataSet.load_partitioned_datasets,
        "npartition, data_partition_column, hive_partitioning=False",
    ),
    "ParquetDataSet.create_from": (ds.ParquetDataSet.create_from, 'table, output_dir, filename="data"'),
    "ParquetDataSet.remove_empty_files": (ds.ParquetDataSet.remove_empty_files, ""),
    # -- execution: what user code sees --------------------------------------------------------
    "RuntimeContext": (
        RuntimeContext.__init__,
        "job_id, job_time, data_root, *, num_executors=1, random_seed=None, env_overrides=None, bind_numa_node=False, "
        "enforce_memory_limit=False, max_usable_cpu_count=1024, max_usable_gpu_count=1024, max_usable_memory_size=16*TB, "
        "secs_wq_poll_interval=0.5, secs_executor_probe_interval=30, max_num_missed_probes=6, fault_inject_prob=0.0, "
        "enable_profiling=False, enable_diagnostic_metrics=False, remove_empty_parquet=False, skip_task_with_empty_input=False, "
        'shared_log_root=None, console_log_level="INFO", file_log_level="DEBUG", disable_log_rotation=False, output_path=None',
    ),
    "RuntimeContext.initialize": (RuntimeContext.initialize, "exec_id, root_exist_ok=True, cleanup_root=False"),
    "RuntimeContext.cleanup": (RuntimeContext.cleanup, "remove_output_root=True"),
    "PartitionInfo": (PartitionInfo.__init__, 'index=0, npartitions=1, dimension="@toplevel@"'),
    "StreamOutput": (StreamOutput.__init__, "output_table, batch_indices=None, force_checkpoint=False"),
    "Planner": (Planner.__init__, "runtime_ctx"),
    "Planner.create_exec_plan": (Planner.create_exec_plan, "logical_plan, manifest_only_final_results=True"),
    "Driver": (Driver.__init__, ""),
    "Driver.parse_arguments": (Driver.parse_arguments, "args=None"),
    "Driver.get_user_arguments": (Driver.get_user_arguments, "to_dict=True"),
    "Driver.get_arguments": (Driver.get_arguments, "to_dict=True"),
    "Driver.get_driver_arguments": (Driver.get_driver_arguments, "to_dict=True"),
    "Driver.run": (Driver.run, "plan, stop_process_on_done=True, tags=None"),
    "JobManager": (JobManager.__init__, 'data_root=None, python_venv=None, task_image="default", platform=None'),
    "JobManager.run": (
        JobManager.run,
        'plan, job_id=None, job_time=None, job_name="smallpond", job_priority=None, num_executors=1, '
        'num_executors_per_task=5, resource_group="localhost", env_variables=None, sidecars=None, user_tags=None, '
        'random_seed=None, max_retry_count=5, max_fail_count=3, prioritize_retry=False, speculative_exec="enable", '
        "stop_executor_on_failure=False, fail_fast_on_failure=False, nonzero_exitcode_as_oom=False, "
        "fault_inject_prob=0.0, enable_profiling=False, enable_diagnostic_metrics=False, enable_sched_state_dump=False, "
        "remove_empty_parquet=False, remove_output_root=False, skip_task_with_empty_input=False, "
        'manifest_only_final_results=True, memory_allocator="mimalloc", memory_purge_delay=10000, bind_numa_node=False, '
        'enforce_memory_limit=False, share_log_analytics=None, console_log_level="INFO", file_log_level="DEBUG", '
        "disable_log_rotation=False, sched_state_observers=None, output_path=None, **kwargs",
    ),
    # -- UDFs ----------------------------------------------------------------------------------
    "udf": (udfmod.udf, "params, return_type, use_arrow_type=False, name=None"),
    "UserDefinedFunction": (udfmod.UserDefinedFunction.__init__, "name, func, params, return_type, use_arrow_type=False"),
    "PythonUDFContext": (udfmod.PythonUDFContext.__init__, "name, func, params, return_type, use_arrow_type"),
    "ExternalModuleContext": (udfmod.ExternalModuleContext.__init__, "name, module_path"),
    "DuckDbExtensionContext": (udfmod.DuckDbExtensionContext.__init__, "name, extension_path"),
    "UDFStructType": (udfmod.UDFStructType.__init__, "fields"),
    "UDFListType": (udfmod.UDFListType.__init__, "child"),
    "UDFMapType": (udfmod.UDFMapType.__init__, "key, value"),
    # -- plans (§2.11; graphviz.Digraph.render's own parameters for the graph)
    "LogicalPlanVisitor.visit": (LogicalPlanVisitor.visit, "node, depth=0"),
    "LogicalPlanVisitor.generic_visit": (LogicalPlanVisitor.generic_visit, "node, depth"),
    "Optimizer": (Optimizer.__init__, "exclude_nodes"),
    "Optimizer.visit": (Optimizer.visit, "node, depth=0"),
    "LogicalPlan.graph().render": (
        Digraph.render,
        "filename=None, directory=None, view=False, cleanup=False, format=None, renderer=None, formatter=None, "
        "neato_no_op=None, quiet=False, quiet_view=False",
    ),
    # -- io.arrow (§5.2; read_parquet_files_into_table's is not recorded: ours is load_from_parquet_files' without max_workers)
    "read_parquet_files_into_table": (arrow_io.read_parquet_files_into_table, "paths_or_ranges, columns=None, filesystem=None"),
    "load_from_parquet_files": (
        arrow_io.load_from_parquet_files,
        "paths_or_ranges, columns=None, max_workers=16, filesystem=None",
    ),
    "build_batch_reader_from_files": (
        arrow_io.build_batch_reader_from_files,
        "paths_or_ranges, *, columns=None, batch_size=122880, max_batch_byte_size=None, filesystem=None",
    ),
    "parquet_write_table": (arrow_io.parquet_write_table, "table, where, filesystem=None, **kwargs"),
    "dump_to_parquet_files": (
        arrow_io.dump_to_parquet_files,
        'table, output_dir, filename="data", compression="ZSTD", compression_level=3, row_group_size=122880, '
        "row_group_bytes=122880 * 4 * KB, use_dictionary=False, max_workers=16, filesystem=None",
    ),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature_matches_upstream(name):
    func, text = SIGNATURES[name]
    assert signature_problems(func, text) == [], f"{name}{inspect.signature(func)}"


def test_range_partition_node_signature():
    """Upstream's signature, defaults included (cpu_limit=16, memory_limit=128GB: clamped quietly to
    the machine); ours adds keyword-only ``key_column``, ``npartitions``, ``sample_size`` and
    ``engine_type``, and makes ``split_points`` optional (``npartitions`` samples them instead)."""
    problems = signature_problems(
        nd.RangePartitionNode.__init__,
        "ctx, input_deps, split_points, dimension=None, nested=False, output_name=None, output_path=None, cpu_limit=16, memory_limit=128*GB",
    )
    assert problems == []


def test_sql_engine_node_gpu_limit_is_an_addition():
    """Upstream silently dropped gpu_limit on SqlEngineNode (§8.20); ours accepts it, keyword-only."""
    p = inspect.signature(nd.SqlEngineNode.__init__).parameters["gpu_limit"]
    assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == 0


def test_subclass_nodes_inherit_constructors():
    # upstream: ArrowBatchNode(ArrowStreamNode), PandasComputeNode(ArrowComputeNode), PandasBatchNode(ArrowStreamNode),
    # LimitNode(SqlEngineNode), ShuffleNode(HashPartitionNode), UserPartitionedDataSourceNode(UserDefinedPartitionNode)
    assert issubclass(nd.ArrowBatchNode, nd.ArrowStreamNode)
    assert issubclass(nd.PandasComputeNode, nd.ArrowComputeNode)
    assert issubclass(nd.PandasBatchNode, nd.ArrowStreamNode)
    assert issubclass(nd.LimitNode, nd.SqlEngineNode)
    assert issubclass(nd.ShuffleNode, nd.HashPartitionNode)
    assert issubclass(nd.UserPartitionedDataSourceNode, nd.UserDefinedPartitionNode)
    for sub in (
        nd.EvenlyDistributedPartitionNode,
        nd.HashPartitionNode,
        nd.LoadPartitionedDataSetNode,
        nd.RepeatPartitionNode,
        nd.UserDefinedPartitionNode,
        nd.RangePartitionNode,
    ):
        assert issubclass(sub, nd.PartitionNode)
    for sub in (
        nd.SqlEngineNode,
        nd.PythonScriptNode,
        nd.ArrowComputeNode,
        nd.DataSourceNode,
        nd.DataSinkNode,
        nd.PartitionNode,
        nd.ConsolidateNode,
        nd.UnionNode,
        nd.RootNode,
        nd.ProjectionNode,
    ):
        assert issubclass(sub, nd.Node)
    for sub in (
        ds.FileSet,
        ds.CsvDataSet,
        ds.JsonDataSet,
        ds.ParquetDataSet,
        ds.PartitionedDataSet,
        ds.SqlQueryDataSet,
        ds.ArrowTableDataSet,
        ds.PandasDataSet,
    ):
        assert issubclass(sub, ds.DataSet)


def test_class_attributes():
    assert nd.SqlEngineNode.max_udf_cpu_limit == 3
    assert nd.SqlEngineNode.default_cpu_limit == 1
    assert nd.SqlEngineNode.default_memory_limit is None
    assert nd.SqlEngineNode.default_row_group_size == 122880
    assert nd.SqlEngineNode.enable_resource_boost is True
    assert nd.Node.enable_resource_boost is False
    assert nd.PartitionNode.max_num_producer_tasks == 100
    assert nd.PartitionNode.max_card_of_producers_x_consumers == 4_096_000
    assert nd.EvenlyDistributedPartitionNode.max_num_producer_tasks == 1
    assert nd.LoadPartitionedDataSetNode.max_num_producer_tasks == 10
    assert nd.UserPartitionedDataSourceNode.max_num_producer_tasks == 1
    assert nd.HashPartitionNode.default_cpu_limit == 1
    assert nd.HashPartitionNode.default_memory_limit is None
    assert nd.HashPartitionNode.default_data_partition_column == "__data_partition__"
    assert nd.HashPartitionNode.default_engine_type == "duckdb"
    assert nd.HashPartitionNode.max_num_producer_tasks == 1000
    assert nd.HashPartitionNode.enable_resource_boost is True
    assert PartitionInfo.toplevel_dimension == "@toplevel@"
    assert PartitionInfo.default_dimension == "__data_partition__"


def test_public_members_exist():
    session_members = [
        "read_csv",
        "read_parquet",
        "read_json",
        "from_items",
        "from_pandas",
        "from_arrow",
        "partial_sql",
        "wait",
        "graph",
        "dump_graph",
        "dump_timeline",
        "shutdown",
        "runtime_ctx",
        "config",
    ]
    for m in session_members:
        assert hasattr(Session, m), m
    for m in ["session", "plan", "optimized_plan", "need_recompute"]:
        assert m in inspect.signature(DataFrame.__init__).parameters or m in DataFrame.__init__.__code__.co_names, m
    dataset_props = [
        "num_files",
        "num_rows",
        "empty",
        "union_by_name",
        "udfs",
        "absolute_paths",
        "resolved_paths",
        "merge",
        "reset",
        "partition_by_files",
        "to_arrow_table",
        "to_batch_reader",
        "to_pandas",
        "log",
        "sql_query_fragment",
    ]
    for m in dataset_props:
        assert hasattr(ds.DataSet, m), m
    for m in [
        "resolved_row_ranges",
        "estimated_data_size",
        "partition_by_rows",
        "partition_by_size",
        "create_from",
        "load_partitioned_datasets",
        "_read_partition_key",
        "remove_empty_files",
    ]:
        assert hasattr(ds.ParquetDataSet, m), m
    assert isinstance(inspect.getattr_static(ds.DataSet, "merge"), staticmethod)
    assert isinstance(inspect.getattr_static(ds.ParquetDataSet, "create_from"), staticmethod)
    assert isinstance(inspect.getattr_static(ds.ParquetDataSet, "_read_partition_key"), staticmethod)
    for m in [
        "final_output",
        "final_output_path",
        "successful",
        "leaves",
        "tasks",
        "named_outputs",
        "get_output",
        "analyzed_logical_plan",
    ]:
        assert hasattr(ExecutionPlan, m) or m in ExecutionPlan.__init__.__code__.co_names, m
    for m in ["mode", "job_id", "data_root", "num_executors", "add_argument"]:
        assert hasattr(Driver, m), m
    for m in ["explain_str", "graph", "nodes"]:
        assert hasattr(nd.LogicalPlan, m), m
    for m in ["slim_copy", "add_perf_metrics", "get_perf_stats", "num_partitions"]:
        assert hasattr(nd.Node, m), m
    assert hasattr(nd.SqlEngineNode, "oneline_query")
    assert isinstance(nd.NodeId(7), int) and str(nd.NodeId(7)) == "000007"


def test_udf_types():
    names = [
        "SQLNULL",
        "BOOLEAN",
        "TINYINT",
        "UTINYINT",
        "SMALLINT",
        "USMALLINT",
        "INTEGER",
        "UINTEGER",
        "BIGINT",
        "UBIGINT",
        "HUGEINT",
        "UUID",
        "FLOAT",
        "DOUBLE",
        "DATE",
        "TIMESTAMP",
        "TIMESTAMP_MS",
        "TIMESTAMP_NS",
        "TIMESTAMP_S",
        "TIME",
        "TIME_TZ",
        "TIMESTAMP_TZ",
        "VARCHAR",
        "BLOB",
        "BIT",
        "INTERVAL",
    ]
    for n in names:
        assert hasattr(udfmod.UDFType, n), n
    # upstream's documentation used UDFType.INT, which did not exist (§8.13); ours accepts it as INTEGER
    assert udfmod.UDFType.INT is udfmod.UDFType.INTEGER
    assert udfmod.UDFAnyParameters() is not None
    for n in ["UDFContext", "PythonUDFContext", "ExternalModuleContext", "DuckDbExtensionContext", "UserDefinedFunction", "udf"]:
        assert hasattr(udfmod, n)
    # smallpond.common star-imports logical.udf
    import smallpond.common as common

    assert common.UDFType is udfmod.UDFType and common.udf is udfmod.udf
    assert not hasattr(smallpond, "udf") or smallpond.udf is udfmod.udf


def test_node_perf_stats():
    ctx = nd.Context()
    node = nd.DataSourceNode(ctx, None)
    assert node.get_perf_stats("elapsed") is None
    for v in range(1, 101):
        node.add_perf_metrics("elapsed", float(v))
    st = node.get_perf_stats("elapsed")
    assert (st.cnt, st.sum, st.min, st.max, st.avg) == (100, 5050.0, 1.0, 100.0, 50.5)
    assert st.p50 <= st.p75 <= st.p95 <= st.p99 <= 100.0


def test_node_create_task_and_spawn_are_refused_when_the_node_is_built():
    """Node.create_task / a node's spawn returned upstream's internal Task classes (built by
    upstream's planner with its own constructor arguments); our planner builds tasks itself and
    never calls them, except PythonScriptNode.spawn (tests/compat/test_upstream_scripts.py). A node
    class that overrides one of the others is refused where the node is built, naming the node and
    the line, instead of failing each task with 'needs process_func'."""

    class SpawningNode(nd.ArrowComputeNode):
        def spawn(self, *args, **kwargs):
            raise AssertionError("never called")

    class TaskBuildingNode(nd.ArrowComputeNode):
        def create_task(self, *args, **kwargs):
            raise AssertionError("never called")

    ctx = nd.Context()
    src = nd.DataSourceNode(ctx, ds.ParquetDataSet([]))
    for cls, hook in ((SpawningNode, "spawn"), (TaskBuildingNode, "create_task")):
        with pytest.raises(
            ParameterError, match=rf"{cls.__name__} created at .*test_signatures.py:\d+: .*overrides {hook}\(\).*process\(\)"
        ):
            cls(ctx, (src,))


def test_upstream_import_paths():
    """The modules upstream scripts import public names from."""
    from smallpond.execution.planner import Planner as OurPlanner
    from smallpond.logical.planner import ExecutionPlan as UpstreamExecutionPlan
    from smallpond.logical.planner import Planner as UpstreamPlanner

    assert UpstreamPlanner is OurPlanner and UpstreamExecutionPlan is ExecutionPlan
    import smallpond.logical.node as node_module
    from smallpond.contrib.copy_table import CopyArrowTable, StreamCopy  # noqa: F401
    from smallpond.contrib.log_dataset import LogDataSet  # noqa: F401
    from smallpond.execution.driver import Driver as D  # noqa: F401
    from smallpond.execution.task import JobId, PartitionInfo, RuntimeContext, StreamOutput, TaskId, TaskRuntimeId  # noqa: F401

    assert all(hasattr(node_module, n) for n in node_module.__all__)
    from smallpond.session import Config, SessionBase  # noqa: F401

    assert issubclass(Session, SessionBase)
