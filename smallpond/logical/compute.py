"""Compute nodes: SQL (DuckDB) and Python/Arrow/pandas user code, one task per partition.

Inputs are matched partition by partition with the broadcast rule: the input with the most
partition dimensions is the main one, and every other input must be partitioned on a subset of
its dimensions with the same counts (a single-partition input goes to every task).
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Callable, Iterable, List, Optional, Sequence, Union

from smallpond.common import DEFAULT_BATCH_SIZE, DEFAULT_ROW_GROUP_SIZE
from smallpond.errors import ParameterError
from smallpond.logical.base import TASK_PLACEHOLDERS, TOPLEVEL_DIMENSION, Context, Node, user_stacklevel


def _check_parquet_options(node: Node, row_group_size, compression, compression_level) -> None:
    if row_group_size is not None and (not isinstance(row_group_size, int) or row_group_size <= 0):
        raise ParameterError(node._msg(f"parquet_row_group_size must be a positive integer, got {row_group_size!r}"))
    valid = (None, "ZSTD", "SNAPPY", "GZIP", "LZ4", "BROTLI", "UNCOMPRESSED", "NONE", "LZ4_RAW")
    if compression is not None and str(compression).upper() not in valid:
        raise ParameterError(node._msg(f"parquet_compression must be one of {list(valid)}, got {compression!r}"))


def _notes_temp_directory(init):
    """``SqlEngineNode.__init__``, noting whether ``enable_temp_directory`` was given at all.

    Upstream 0.15 spills into the task's temp directory only with ``True`` and sets DuckDB's
    ``temp_directory`` to ``''`` (no spilling) with ``False``, its default. smallpond's tasks spill
    unless told not to (a sort larger than ``memory_limit`` finishes on its first attempt), so an
    explicit ``False`` is honoured and the default is not; the signature keeps upstream's default,
    hence the keyword is looked for here."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.spill_to_disk = "enable_temp_directory" not in kwargs or bool(kwargs["enable_temp_directory"])

    return __init__


class SqlEngineNode(Node):
    """Run DuckDB SQL once per partition of the inputs.

    ``{0}``, ``{1}``, ... in the query name the inputs' partitions. Other placeholders:
    ``{rand_seed}``, ``{batch_index}``, ``{query_index}``, ``{cpu_limit}``, ``{memory_limit}``,
    ``{output_filename}`` and each partition dimension (e.g. ``{__data_partition__}``). Literal
    braces are written ``{{ }}``. With several queries, all run on one connection and only the
    last one's result is the output.

    DuckDB spills to the task's temp directory when it reaches ``memory_limit``, unless
    ``enable_temp_directory=False`` is given (as upstream 0.15, whose default it is: such a task
    that runs out of memory is retried with more).

    Example::

        SqlEngineNode(ctx, (source,), "select host, count(*) from {0} group by host")
    """

    max_udf_cpu_limit = 3
    default_cpu_limit = 1
    default_memory_limit = None
    default_row_group_size = DEFAULT_ROW_GROUP_SIZE
    enable_resource_boost = True
    # may DuckDB spill to the task's temp directory (see _notes_temp_directory)
    spill_to_disk = True

    @_notes_temp_directory
    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        sql_query: Union[str, Iterable[str]],
        *,
        udfs: Optional[List] = None,
        per_thread_output: bool = True,
        materialize_output: bool = True,
        materialize_in_memory: bool = False,
        relax_memory_if_oom: Optional[bool] = None,
        batched_processing: bool = False,
        extension_paths: Optional[List[str]] = None,
        udf_module_paths: Optional[List[str]] = None,
        enable_temp_directory: bool = False,
        parquet_row_group_size: Optional[int] = None,
        parquet_dictionary_encoding: Union[bool, List[str]] = False,
        parquet_compression: Optional[str] = "ZSTD",
        parquet_compression_level: Optional[int] = 3,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: Optional[int] = None,
        memory_limit: Optional[int] = None,
        cpu_overcommit_ratio: float = 1.0,
        memory_overcommit_ratio: float = 0.9,
        gpu_limit: float = 0,
    ) -> None:
        cpu_limit = cpu_limit if cpu_limit is not None else self.default_cpu_limit
        memory_limit = memory_limit if memory_limit is not None else self.default_memory_limit
        super().__init__(ctx, input_deps, output_name, output_path, cpu_limit, gpu_limit, memory_limit)
        queries = [sql_query] if isinstance(sql_query, str) else list(sql_query) if sql_query is not None else []
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ParameterError(self._msg(f"sql_query must be a non-empty SQL string or list of strings, got {sql_query!r}"))
        for q in queries:
            _check_format(self, q)
            _check_placeholders(self, q)
        if relax_memory_if_oom is not None:
            # stacklevel 3: the user's line, past _notes_temp_directory's wrapper
            warnings.warn("relax_memory_if_oom is deprecated: memory is always relaxed on OOM", DeprecationWarning, stacklevel=3)
        _check_parquet_options(self, parquet_row_group_size, parquet_compression, parquet_compression_level)
        self.sql_queries: List[str] = queries
        self.udfs = list(udfs or [])
        if self.udfs and self.cpu_limit > self.max_udf_cpu_limit:
            warnings.warn(
                f"{self!r}: cpu_limit {self.cpu_limit} lowered to {self.max_udf_cpu_limit} for Python UDFs", stacklevel=3
            )
            self.cpu_limit = self.max_udf_cpu_limit
        for spec in self.udfs:
            from smallpond.logical.duckdb_names import builtin_function_names
            from smallpond.logical.udf import PythonUDFContext, udf_context_from_spec

            c = udf_context_from_spec(spec, ctx.udfs)  # validate now, at build time
            if isinstance(c, PythonUDFContext) and c.name.lower() in builtin_function_names():
                warnings.warn(
                    self._msg(
                        f"the Python UDF {c.name!r} has the name of a DuckDB built-in function: a call whose "
                        "argument types the built-in takes runs the built-in, not your function (and one with "
                        "exactly its types is refused); give it a name of its own, "
                        f"@udf(..., name='my_{c.name}') or ctx.create_function('my_{c.name}', ...)"
                    ),
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
        self.per_thread_output = self._flag("per_thread_output", per_thread_output)
        self.materialize_output = self._flag("materialize_output", materialize_output)
        self.materialize_in_memory = self._flag("materialize_in_memory", materialize_in_memory)
        self.batched_processing = self._flag("batched_processing", batched_processing) and len(self.input_deps) == 1
        self.extension_paths = list(extension_paths or [])
        self.udf_module_paths = list(udf_module_paths or [])
        self.enable_temp_directory = self._flag("enable_temp_directory", enable_temp_directory)
        self.parquet_row_group_size = parquet_row_group_size or self.default_row_group_size
        self.parquet_dictionary_encoding = parquet_dictionary_encoding
        self.parquet_compression = parquet_compression
        self.parquet_compression_level = parquet_compression_level
        self.cpu_overcommit_ratio = cpu_overcommit_ratio
        self.memory_overcommit_ratio = memory_overcommit_ratio
        self.udf_contexts = {}
        for spec in self.udfs:
            from smallpond.logical.udf import udf_context_from_spec

            c = udf_context_from_spec(spec, ctx.udfs)
            self.udf_contexts[getattr(c, "name", str(spec))] = c
        for p in self.extension_paths:
            from smallpond.logical.udf import DuckDbExtensionContext

            self.udf_contexts[p] = DuckDbExtensionContext(p, p)
        for p in self.udf_module_paths:
            from smallpond.logical.udf import ExternalModuleContext

            self.udf_contexts[p] = ExternalModuleContext(p, p)

    @property
    def oneline_query(self) -> str:
        return "; ".join(" ".join(q.split()) for q in self.sql_queries)

    # the overcommit ratios and the temp directory switch tune resources, not results;
    # udf_contexts enters through fingerprint_params (only when there are UDFs)
    fingerprint_exclude = Node.fingerprint_exclude | {
        "udf_contexts",
        "cpu_overcommit_ratio",
        "memory_overcommit_ratio",
        "enable_temp_directory",
        "spill_to_disk",
    }

    def fingerprint_params(self) -> dict:
        """The node's parameters and, when it has UDFs, what they resolve to: ``udfs`` may hold
        only a name registered with ``ctx.create_function`` (its function and types are in the
        context) or a module's path (its file, see :meth:`fingerprint_files`)."""
        params = super().fingerprint_params()
        if self.udf_contexts:  # (absent otherwise: the fingerprints of nodes without UDFs stay)
            params["udf_contexts"] = self.udf_contexts
        return params

    def fingerprint_files(self) -> List[str]:
        """The UDF modules and DuckDB extension files the node loads (their contents are digested;
        the modules a UDF module imports in turn are not)."""
        return sorted({path for c in self.udf_contexts.values() for path in c.files()})


def _check_format(node: Node, query: str) -> None:
    import string

    try:
        list(string.Formatter().parse(query))
    except ValueError as e:
        raise ParameterError(
            node._msg(f"cannot parse placeholders in SQL ({e}); write literal braces as '{{{{' and '}}}}': {query}")
        ) from None


def _check_placeholders(node: Node, query: str) -> None:
    """Fail at build time, naming the node and where it was created, if ``query`` uses a
    placeholder no task of the node will have: an input ``{k}`` beyond its inputs, or a name that is
    neither a task placeholder nor a partition dimension of an ancestor (``{3}`` in a regular
    expression's ``'[0-9]{3}'``, ``{"a": 1}`` in a JSON literal). The tasks format the query with
    the same rules (``str.format``), so what passes here cannot fail there for this reason."""
    nin = len(node.input_deps)
    views = [f"__input_{k}" for k in range(nin)]
    named = dict.fromkeys((*TASK_PLACEHOLDERS, TOPLEVEL_DIMENSION), 0)
    failures = (KeyError, IndexError, ValueError, AttributeError, TypeError)
    try:
        query.format(*views, **named)
        return
    except failures:  # perhaps a partition dimension: the input's partitioning is asked only now
        named.update(dict.fromkeys(_task_dimensions(node), 0))
    try:
        query.format(*views, **named)
        return
    except failures as e:
        import string

        used = sorted({f for _, f, _, _ in string.Formatter().parse(query) if f})
        bases = {f: re.split(r"[.\[]", f)[0] for f in used}
        bad = [f for f, b in bases.items() if (int(b) >= nin if b.isdigit() else b not in named)]
        what = ", ".join("{" + f + "}" for f in bad) if bad else str(e)
        inputs = f"{{0}}..{{{nin - 1}}}" if nin else "none"
        names = sorted(n for n in named if n != TOPLEVEL_DIMENSION)
        raise ParameterError(
            node._msg(
                f"unknown placeholder {what} in SQL: the node has {nin} input(s) ({inputs}) and named placeholders {names}. "
                f"Write literal braces as '{{{{' and '}}}}': {query}"
            )
        ) from None


def _task_dimensions(node: Node) -> set:
    """The partition dimensions a task of ``node`` has: those of its input's partitioning (a
    partition that is not nested replaces the dimensions before it, so an ancestor's dimension
    is not necessarily one of them). Every ancestor's when the partitioning cannot be told here
    (inputs that do not fit together: building the node reports that)."""
    try:
        return {d for d, _ in node._main_input_shape()}
    except Exception:
        return _ancestor_dimensions(node)


def _ancestor_dimensions(node: Node) -> set:
    """The partition dimensions of every node ``node`` reads from (directly or not)."""
    dims, seen, stack = set(), set(), list(node.input_deps)
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        dim = getattr(n, "dimension", None)
        if isinstance(dim, str):
            dims.add(dim)
        stack.extend(getattr(n, "input_deps", ()))
    return dims


class PythonScriptNode(Node):
    """Run ``process_func(runtime_ctx, input_datasets, output_path) -> bool`` once per partition.

    The function writes any files it likes into ``output_path``; they become the output. Returning
    False fails the task. Alternatively subclass and override :meth:`process`, or (upstream's way)
    override :meth:`spawn` to return a ``PythonScriptTask`` subclass whose ``process`` does it.
    """

    honoured_task_hooks = ("spawn",)

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        *,
        process_func: Optional[Callable] = None,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: int = 1,
        gpu_limit: float = 0,
        memory_limit: Optional[int] = None,
    ) -> None:
        super().__init__(ctx, input_deps, output_name, output_path, cpu_limit, gpu_limit, memory_limit)
        if process_func is not None and not callable(process_func):
            raise ParameterError(self._msg(f"process_func must be callable, got {process_func!r}"))
        self.process_func = process_func

    def process(self, runtime_ctx, input_datasets, output_path: str) -> bool:
        if self.process_func is None:
            raise NotImplementedError(f"{type(self).__name__} needs process_func or an overridden process()")
        return self.process_func(runtime_ctx, input_datasets, output_path)

    def spawn(self, *args, **kwargs):
        """Upstream 0.15's hook: override it to return ``MyTask(*args, **kwargs)``, an instance of a
        subclass of ``smallpond.execution.task.PythonScriptTask`` whose ``process(runtime_ctx,
        input_datasets, output_path) -> bool`` does the work. Each attempt calls it in the worker.

        This base method is not a default to extend (the logical layer builds no tasks): calling it
        (``super().spawn(...)``) raises; build the task class directly instead."""
        raise NotImplementedError(
            f"{type(self).__name__}.spawn: PythonScriptNode.spawn builds no task here; return your "
            "PythonScriptTask subclass built with the same arguments instead (MyTask(*args, **kwargs), "
            "with: from smallpond.execution.task import PythonScriptTask)"
        )


class ArrowComputeNode(Node):
    """Run ``process_func(runtime_ctx, tables: List[pa.Table]) -> pa.Table`` once per partition.

    Each input partition is loaded whole. Returning None writes nothing.

    ``output_schema`` (a ``pyarrow.Schema``) declares the output's columns: every output is
    written with it (a table is cast only where no value changes; another column set or a value
    that does not fit fails the task), and a partition that produces nothing writes an empty file
    with these columns. Without it, such a partition's output has no file and no columns (SQL
    after it cannot name them), since what a function would return cannot be known.
    """

    default_row_group_size = DEFAULT_ROW_GROUP_SIZE
    #: set only when given, so plans made without it keep their fingerprints
    output_schema = None

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        *,
        process_func: Optional[Callable] = None,
        parquet_row_group_size: Optional[int] = None,
        parquet_dictionary_encoding: bool = False,
        parquet_compression: Optional[str] = "ZSTD",
        parquet_compression_level: Optional[int] = 3,
        use_duckdb_reader: bool = False,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: int = 1,
        gpu_limit: float = 0,
        memory_limit: Optional[int] = None,
        output_schema=None,
    ) -> None:
        super().__init__(ctx, input_deps, output_name, output_path, cpu_limit, gpu_limit, memory_limit)
        if process_func is not None and not callable(process_func):
            raise ParameterError(self._msg(f"process_func must be callable, got {process_func!r}"))
        _check_parquet_options(self, parquet_row_group_size, parquet_compression, parquet_compression_level)
        if output_schema is not None:
            import pyarrow as pa

            if not isinstance(output_schema, pa.Schema):
                raise ParameterError(self._msg(f"output_schema must be a pyarrow.Schema, got {output_schema!r}"))
            self.output_schema = output_schema
        self.process_func = process_func
        self.parquet_row_group_size = parquet_row_group_size
        self.parquet_dictionary_encoding = parquet_dictionary_encoding
        self.parquet_compression = parquet_compression
        self.parquet_compression_level = parquet_compression_level
        self.use_duckdb_reader = self._flag("use_duckdb_reader", use_duckdb_reader)

    def process(self, runtime_ctx, input_tables):
        if self.process_func is None:
            raise NotImplementedError(f"{type(self).__name__} needs process_func or an overridden process()")
        return self.process_func(runtime_ctx, input_tables)


class ArrowStreamNode(ArrowComputeNode):
    """Run ``process_func(runtime_ctx, readers: List[pa.RecordBatchReader])`` yielding tables.

    Yield ``pa.Table`` or :class:`StreamOutput`; output is written as it is produced.

    A task checkpoints its output and input position every ``secs_checkpoint_interval`` seconds
    (default ``ceil(180 / min(6, gpu_limit + 2, cpu_limit))``) and after a
    ``StreamOutput(..., batch_indices=[i, ...], force_checkpoint=True)``; after a crash or a
    failure it resumes from the last checkpoint, and its readers start after the input rows that
    checkpoint covers: every input row reaches the output once. ``batch_indices`` name the batches
    (counted from the first batch the function receives, in every input alike) that the outputs
    so far complete; without them a checkpoint covers every batch taken from the readers, which
    is exact for a function that yields the output of each batch before taking the next. State
    the function keeps in its own variables is not checkpointed.

    ``background_io_thread`` (with ``cpu_limit > 1``, as upstream) reads the next batch in a
    background thread while the function works on the current one.

    ``output_schema`` declares the output's columns, as for :class:`ArrowComputeNode`; without
    it the first output batch fixes them, and a later batch with other columns, or with values
    that do not fit (1.5 in an int64 column), fails the task. A partition whose function yields
    nothing writes an empty file with ``output_schema``; without one its output has no file and
    no columns.

    Example::

        def tokenize(runtime_ctx, readers):
            for i, batch in enumerate(readers[0]):
                yield StreamOutput(tokenize_batch(batch), batch_indices=[i])

        ArrowStreamNode(ctx, (docs,), process_func=tokenize, streaming_batch_size=10_000, secs_checkpoint_interval=60)
    """

    default_batch_size = DEFAULT_BATCH_SIZE

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        *,
        process_func: Optional[Callable] = None,
        background_io_thread: bool = True,
        streaming_batch_size: Optional[int] = None,
        secs_checkpoint_interval: Optional[int] = None,
        parquet_row_group_size: Optional[int] = None,
        parquet_dictionary_encoding: bool = False,
        parquet_compression: Optional[str] = "ZSTD",
        parquet_compression_level: Optional[int] = 3,
        use_duckdb_reader: bool = False,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: int = 1,
        gpu_limit: float = 0,
        memory_limit: Optional[int] = None,
        output_schema=None,
    ) -> None:
        super().__init__(
            ctx,
            input_deps,
            process_func=process_func,
            parquet_row_group_size=parquet_row_group_size,
            parquet_dictionary_encoding=parquet_dictionary_encoding,
            parquet_compression=parquet_compression,
            parquet_compression_level=parquet_compression_level,
            use_duckdb_reader=use_duckdb_reader,
            output_name=output_name,
            output_path=output_path,
            cpu_limit=cpu_limit,
            gpu_limit=gpu_limit,
            memory_limit=memory_limit,
            output_schema=output_schema,
        )
        if streaming_batch_size is not None and (not isinstance(streaming_batch_size, int) or streaming_batch_size <= 0):
            raise ParameterError(self._msg(f"streaming_batch_size must be a positive integer, got {streaming_batch_size!r}"))
        if secs_checkpoint_interval is not None and (
            isinstance(secs_checkpoint_interval, bool)
            or not isinstance(secs_checkpoint_interval, (int, float))
            or secs_checkpoint_interval < 0
        ):
            raise ParameterError(
                self._msg(f"secs_checkpoint_interval must be a non-negative number of seconds, got {secs_checkpoint_interval!r}")
            )
        # as upstream: the next batch is read in the background only when the task has a CPU to spare
        self.background_io_thread = self._flag("background_io_thread", background_io_thread) and self.cpu_limit > 1
        self.streaming_batch_size = streaming_batch_size or self.default_batch_size
        self.secs_checkpoint_interval = secs_checkpoint_interval

    # how often progress is saved and whether reading overlaps processing change no row (a checkpoint
    # starts a new output file: the file layout follows the timing, see logical/determinism.py)
    fingerprint_exclude = ArrowComputeNode.fingerprint_exclude | {"secs_checkpoint_interval", "background_io_thread"}


class ArrowBatchNode(ArrowStreamNode):
    """Run ``process_func(runtime_ctx, tables: List[pa.Table]) -> pa.Table`` on aligned batches."""


class PandasComputeNode(ArrowComputeNode):
    """Run ``process(runtime_ctx, dfs: List[pd.DataFrame]) -> pd.DataFrame`` once per partition."""


class PandasBatchNode(ArrowStreamNode):
    """Run ``process(runtime_ctx, dfs: List[pd.DataFrame]) -> pd.DataFrame`` on aligned batches."""
