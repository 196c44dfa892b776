"""Tasks that run user Python: scripts, Arrow/pandas compute, streaming and batch functions.

Readers: Parquet inputs are read with pyarrow (exact batch sizes across file boundaries); other
inputs, expression columns and ``use_duckdb_reader=True`` go through DuckDB.
"""

from __future__ import annotations

import os
from itertools import zip_longest
from typing import List, Optional, Sequence

from smallpond.errors import UserCodeError
from smallpond.execution.task import StreamOutput, Task
from smallpond.io.parquet import ParquetWriterOptions
from smallpond.logical.dataset import DataSet, FileSet, ParquetDataSet


def _files_under(folder: str, out: List[str]) -> None:
    """The files under ``folder``, as ``os.walk`` finds them (subfolders included, links to folders
    not followed), dot files left out; one ``scandir`` per folder."""
    try:
        entries = os.scandir(folder)
    except OSError:
        return
    with entries:
        for e in entries:
            if e.is_dir():
                if not e.is_symlink():
                    _files_under(e.path, out)
            elif not e.name.startswith("."):
                out.append(e.path)


def _list_output(output_dir: str) -> DataSet:
    files: List[str] = []
    _files_under(output_dir, files)
    files.sort()
    if files and all(f.endswith(".parquet") for f in files):
        return ParquetDataSet.from_files(files)
    if not files:
        return ParquetDataSet.from_files([])
    return FileSet.from_files(files)


class PythonScriptTask(Task):
    """A :class:`~smallpond.logical.node.PythonScriptNode`'s work on one partition.

    Upstream 0.15 scripts may subclass it (``from smallpond.execution.task import PythonScriptTask``),
    override :meth:`process`, and have their node's ``spawn(*args, **kwargs)`` return
    ``MyTask(*args, **kwargs)``: each attempt then calls ``spawn`` with this task's constructor
    arguments and runs the returned task's ``process``, with ``runtime_ctx.task`` that task.
    """

    runs_user_python = True

    def process(self, runtime_ctx, input_datasets: List[DataSet], output_path: str) -> bool:
        """Write this partition's output files into ``output_path``; False fails the task. By
        default: the node's ``process`` (its ``process_func``)."""
        return self.node.process(runtime_ctx, input_datasets, output_path)

    def run(self, runtime_ctx, inputs, output_dir):
        worker = self._spawned() if _spawns(self.node) else self
        runtime_ctx.current_task = worker
        try:
            ok = worker.process(runtime_ctx, inputs, output_dir)
        finally:
            runtime_ctx.current_task = self
        if ok is False:  # a failure the code reported itself: retried (it may be transient)
            from smallpond.errors import ReportedFailure

            what = f"{type(worker).__name__}.process" if worker is not self else f"{type(self.node).__name__}.process"
            raise ReportedFailure(f"{what} returned False")
        return _list_output(output_dir)

    def _spawned(self) -> "PythonScriptTask":
        """The task the node's ``spawn`` builds from this task's constructor arguments, carrying
        this attempt's state (key, attempt number, limits, runtime context, inputs); attributes its
        own constructor set otherwise (the script's parameters) are kept."""
        node = self.node
        args = (node, int(self.id), list(self.partition_infos), list(self.input_keys))
        spawned = node.spawn(*args)
        if not isinstance(spawned, PythonScriptTask):
            raise UserCodeError(
                f"{type(node).__name__}.spawn() must return an instance of a PythonScriptTask subclass "
                f"(from smallpond.execution.task import PythonScriptTask; build it with the arguments spawn is "
                f"given: MyTask(*args, **kwargs)), got {type(spawned).__name__}"
            )
        fresh = PythonScriptTask(*args).__dict__
        mine = spawned.__dict__
        for k, v in self.__dict__.items():
            if k == "key" or k not in mine or _same(mine[k], fresh.get(k, _UNSET)):
                mine[k] = v
        return spawned


_UNSET = object()


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _spawns(node) -> bool:
    """True if ``node``'s class overrides upstream's ``PythonScriptNode.spawn``."""
    global _script_node
    if _script_node is None:  # (imported once: an import statement per attempt costs ~10k instructions)
        from smallpond.logical.node import PythonScriptNode

        _script_node = PythonScriptNode
    return isinstance(node, _script_node) and type(node).spawn is not _script_node.spawn


_script_node = None


class _ParquetSink:
    """Writes tables into ``{prefix}-{i:05d}.parquet`` files, one file per checkpoint.

    ``closed`` lists the complete files in output order (those restored from a stream checkpoint
    first); :meth:`checkpoint` closes the file being written and starts the next one.
    """

    def __init__(self, task: Task, output_dir: str, schema_hint=None) -> None:
        self.task = task
        self.output_dir = output_dir
        self.writer = None
        self.schema = None
        self.file_index = 0
        self.rows = 0
        self.closed: List[str] = []
        self.schema_hint = schema_hint
        #: where the schema came from, for errors
        self.origin = "the schema of the first output batch"
        self.origin_given = False
        #: a column the schema has and a batch lacks is all nulls (rows as dicts: a missing key is None), else an error
        self.fill_missing = bool(getattr(getattr(task.node, "process_func", None), "fills_missing_columns", False))
        options = ParquetWriterOptions.for_task(task)
        self.kw = options.pyarrow()
        self.row_group_size = options.row_group_size

    def restored(self, nfiles: int, rows: int) -> None:
        """Files ``0..nfiles-1`` (with ``rows`` rows) were restored from a checkpoint: continue after
        them, with their schema."""
        import pyarrow.parquet as pq

        self.closed = [self._path(i) for i in range(nfiles)]
        self.file_index = nfiles
        self.rows = rows
        if nfiles:
            self.schema = pq.read_schema(self.closed[-1])
            self.origin = "the schema of the output files written before the task resumed"

    def _path(self, index: int) -> str:
        return os.path.join(self.output_dir, f"{self.task.output_filename}-{index:05d}.parquet")

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise UserCodeError(f"process function must return a pyarrow Table, got {type(table).__name__}")
        if table.num_columns == 0 and table.num_rows:
            op = getattr(self.task.node, "df_op", None)
            raise UserCodeError(_no_columns(table.num_rows, f"the {op}() function" if op else "the process function"))
        if table.num_columns == 0:
            # no rows of no columns (a function over an input whose columns are unknown, as a
            # Python map's that kept no row): nothing to write; a file of no columns is one
            # DuckDB cannot read ("Need at least one non-root column"), so SQL after it failed
            return
        if self.writer is None:
            if self.schema is None:
                # a first batch's own schema is taken with every column nullable: a column is
                # non-nullable there only because its file had no NULL (DuckDB writes such a
                # column REQUIRED), and a later batch's NULLs failed the write
                base = self.schema_hint if self.schema_hint is not None else _all_nullable(table.schema)
                md = dict(base.metadata or {})
                md.update({k.encode(): v.encode() for k, v in self.task.parquet_kv_metadata().items()})
                self.schema = base.with_metadata(md)
                if self.schema_hint is not None:
                    self.origin, self.origin_given = "the schema given (schema=)", True
            self.writer = pq.ParquetWriter(self._path(self.file_index), self.schema, **self.kw)
        if table.schema.equals(self.schema, check_metadata=False):
            table = table.replace_schema_metadata(self.schema.metadata)
        else:
            from smallpond.io.arrow import conform_table

            # the file already has the schema: a batch that does not fit it fails, values unchanged
            table = conform_table(
                table,
                self.schema,
                fill_missing=self.fill_missing,
                origin=self.origin,
                hint=_types_hint(self.task.node, self.origin_given),
                columns_hint=_columns_hint(self.task.node, self.origin_given, self.fill_missing),
            )
        self.writer.write_table(table, row_group_size=self.row_group_size)
        self.rows += table.num_rows

    def checkpoint(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.closed.append(self._path(self.file_index))
            self.file_index += 1

    @property
    def wrote_nothing(self) -> bool:
        return self.writer is None and self.file_index == 0

    def close(self) -> None:
        import pyarrow.parquet as pq

        from smallpond.io.arrow import empty_table

        if self.writer is not None:
            self.writer.close()
            self.writer = None
        elif self.file_index == 0 and self.schema_hint is not None:
            path = os.path.join(self.output_dir, f"{self.task.output_filename}-00000.parquet")
            md = dict(self.schema_hint.metadata or {})
            md.update({k.encode(): v.encode() for k, v in self.task.parquet_kv_metadata().items()})
            pq.write_table(empty_table(self.schema_hint.with_metadata(md)), path, **self.kw)


def _all_nullable(schema):
    """``schema`` with every top-level field nullable (its metadata kept)."""
    import pyarrow as pa

    if all(f.nullable for f in schema):
        return schema
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def _no_columns(num_rows: int, what: str) -> str:
    """The error for output rows without columns (which Parquet, and so the output, cannot hold)."""
    return (
        f"{what} returned {num_rows} row(s) with no columns: a Parquet file cannot hold rows without "
        "columns, so they would be lost. Return at least one column (e.g. a constant) for each row."
    )


def _types_hint(node, given: bool) -> str:
    """What to do when a column of an output batch has values its type cannot hold."""
    op = getattr(node, "df_op", None)
    if given:
        return f"Give that column a type that holds every value in the schema= of {op}()."
    if op in ("map", "flat_map", "map_batches"):
        return (
            "The first batch's output is already written with that type, so a later batch cannot widen it: "
            f"pass schema= (a pyarrow.Schema giving each column a type that holds all its values) to {op}()."
        )
    return (
        "The first batch's output is already written with that type: make every output batch have the same "
        "column types (e.g. cast it to one pyarrow.Schema)."
    )


def _columns_hint(node, given: bool, fill_missing: bool) -> str:
    """What to do when an output batch has a column too many (or one missing)."""
    op = getattr(node, "df_op", None)
    if fill_missing:  # map / flat_map: rows are dicts, a key a row lacks is null
        if given:
            return f"Add the key to the schema= of {op}() (a row without it gets a null there)."
        return (
            "The first batch's output is already written without it: pass schema= (a pyarrow.Schema naming "
            f"every key the function may return) to {op}(); a row without a key gets a null there."
        )
    which = "those of its schema=" if given else "those of the first batch"
    return f"Return the same columns from every batch ({which}), all nulls where a batch has no values."


def _needs_duckdb(node, ds: DataSet) -> bool:
    if node.use_duckdb_reader or not isinstance(ds, ParquetDataSet):
        return True
    return bool(ds.generated_columns) or ds._has_expressions() or (ds.union_by_name and ds.columns is None and ds.num_files > 1)


class ArrowComputeTask(Task):
    runs_user_python = True

    def _load_tables(self, runtime_ctx, inputs: List[DataSet]):
        tables = []
        conn: Optional[object] = None
        for ds in inputs:
            if _needs_duckdb(self.node, ds):
                # imported only here: a worker whose tasks read Parquet with pyarrow never loads
                # DuckDB (~65 ms of CPU before its first task could run)
                import duckdb

                conn = conn or duckdb.connect()
                conn.execute(f"SET threads = {max(1, self.cpu_limit)}")
                tables.append(ds.to_arrow_table(conn=conn))
            else:
                tables.append(ds.to_arrow_table(max_workers=max(1, self.cpu_limit)))
        return tables

    def _convert_in(self, tables):
        return tables

    def _convert_out(self, result):
        return result

    def run(self, runtime_ctx, inputs, output_dir):
        tables = self._convert_in(self._load_tables(runtime_ctx, inputs))
        result = self.node.process(runtime_ctx, tables)
        # with a declared output schema the output is written with it, and nothing writes an empty file of it
        sink = _ParquetSink(self, output_dir, getattr(self.node, "output_schema", None))
        if result is not None:
            sink.write(self._convert_out(result))
        sink.close()
        self.stats["rows"] = sink.rows
        return _list_output(output_dir)


def _from_pandas(result, node):
    """A pandas node's output as a table, or a clear error naming what it returned instead (pyarrow
    fails on anything else with an unrelated message: 'list' object has no attribute 'is_unique')."""
    import pandas as pd
    import pyarrow as pa

    if not isinstance(result, pd.DataFrame):
        raise UserCodeError(
            f"the process function of {type(node).__name__} must return a pandas DataFrame (or None), "
            f"got {type(result).__module__}.{type(result).__qualname__}"
        )
    return pa.Table.from_pandas(result, preserve_index=False)


class PandasComputeTask(ArrowComputeTask):
    def _convert_in(self, tables):
        return [t.to_pandas() for t in tables]

    def _convert_out(self, result):
        return _from_pandas(result, self.node)


class ArrowStreamTask(Task):
    """Run a streaming process function over batch readers, writing its outputs as they come.

    The task checkpoints (see :mod:`smallpond.execution.ops.stream_checkpoint`): an attempt after
    a crash or a failure resumes from the last checkpoint, skipping the input rows it covers.
    """

    runs_user_python = True
    schema_hint = None

    def _read(self, ds: DataSet):
        if _needs_duckdb(self.node, ds):
            import duckdb

            self._conn = self._conn or duckdb.connect()
            return ds.to_batch_reader(self.node.streaming_batch_size, conn=self._conn)
        return ds.to_batch_reader(self.node.streaming_batch_size)

    def _readers(self, runtime_ctx, inputs: List[DataSet], skip: Sequence[int]):
        from smallpond.execution.ops.stream_checkpoint import CountedInput, skip_rows

        self._conn = None
        prefetch = bool(getattr(self.node, "background_io_thread", False))
        batch = self.node.streaming_batch_size
        return [
            CountedInput(skip_rows(ds, n, self._read, _needs_duckdb(self.node, ds), batch), prefetch=prefetch)
            for ds, n in zip(inputs, skip)
        ]

    def _outputs(self, runtime_ctx, readers):
        return self.node.process(runtime_ctx, readers)

    def run(self, runtime_ctx, inputs, output_dir):
        import time

        import pyarrow as pa

        from smallpond.execution.ops.stream_checkpoint import StreamCheckpoint, default_checkpoint_interval

        node = self.node
        ckpt = StreamCheckpoint(runtime_ctx, self)
        sink = _ParquetSink(self, output_dir, getattr(node, "output_schema", None))
        record = ckpt.resume(output_dir, len(inputs))
        base = [0] * len(inputs)
        if record is not None:
            base = list(record["rows"])
            sink.restored(len(record["files"]), record["output_rows"])
            self.stats["resumed_rows"] = sum(base)
        interval = getattr(node, "secs_checkpoint_interval", None)
        interval = default_checkpoint_interval(node) if interval is None else interval
        counted = self._readers(runtime_ctx, inputs, base)
        if record is not None and record.get("random_states") is not None:
            # after the attempt's seeding (seeded_random), before the function sees a row
            self.restore_random_states(record["random_states"])
        last = time.monotonic()
        try:
            outputs = self._outputs(runtime_ctx, [c.reader for c in counted])
            for out in outputs if outputs is not None else ():
                indices, force = None, False
                if isinstance(out, StreamOutput):
                    indices, force = out.batch_indices, out.force_checkpoint
                    out = out.output_table
                # an empty table is written only while no file has the schema yet
                if out is not None and not (
                    isinstance(out, (pa.Table, pa.RecordBatch)) and out.num_rows == 0 and not sink.wrote_nothing
                ):
                    sink.write(out)
                now = time.monotonic()
                if (force and indices) or now - last >= interval:
                    if indices:
                        top = max(indices)
                        position = [b + c.rows_through(top) for b, c in zip(base, counted)]
                    else:
                        position = [b + c.rows for b, c in zip(base, counted)]
                    sink.checkpoint()
                    ckpt.save(sink.closed, position, [c.batches for c in counted], sink.rows)
                    last = now
            self.stats["batches"] = sum(c.batches for c in counted)
        finally:
            for c in counted:
                c.close()
            if self._conn is not None:
                self._conn.close()
        if sink.wrote_nothing and sink.schema_hint is None:
            sink.schema_hint = self._empty_output_schema(inputs, counted)
        sink.close()
        self.stats["rows"] = sink.rows
        return _list_output(output_dir)

    def on_committed(self, runtime_ctx) -> None:
        from smallpond.execution.ops.stream_checkpoint import StreamCheckpoint

        StreamCheckpoint(runtime_ctx, self).remove()

    def _empty_output_schema(self, inputs: List[DataSet], readers):
        """The output schema of a partition that produced nothing, if its function can tell.

        A function may describe its output given a sample input (``output_schema_for(sample)``:
        the DataFrame's map, flat_map, filter and map_batches do). The sample is a few rows of a
        sibling partition (the input's ``_schema_path``, set by the partitioning) when there is
        one, else an empty table of the input's schema. So a partition with no rows still writes
        a file with the columns of the others, and SQL over it binds them.
        """
        from smallpond.common import logger
        from smallpond.io.arrow import empty_table

        infer = getattr(getattr(self.node, "process_func", None), "output_schema_for", None)
        if infer is None or not inputs:
            return None
        sample = _sample_rows(self.node, inputs[0], _SAMPLE_ROWS)
        what = f"{sample.num_rows} sample row(s) of {inputs[0]._schema_path}" if sample is not None else "an empty input"
        if sample is None:
            if len(readers[0].schema) == 0:
                # the input's columns are unknown too (a Python map before kept no row): what the
                # function makes of no columns (only the columns it adds) is not its output
                return None
            sample = empty_table(readers[0].schema)
        try:
            schema = infer(sample)
        except Exception as e:  # the function could not run on the sample: no schema, as before
            logger.info("{}: no rows, and the output schema could not be inferred from {}: {!r}", self.key, what, e)
            return None
        if schema is not None and len(schema) == 0:
            # (an input of no columns, a Python map's that kept no row): a Parquet file of no
            # columns is one DuckDB cannot read, so SQL after it failed; unknown columns instead
            return None
        if schema is not None:
            logger.info("{}: no rows; output schema inferred from {}: {}", self.key, what, schema.names)
        return schema


_SAMPLE_ROWS = 100


def _sample_rows(node, ds: DataSet, n: int):
    """Up to ``n`` rows of the file ``ds._schema_path`` (another partition's), read as the task
    reads its input; None if there is no such file."""
    path = getattr(ds, "_schema_path", None)
    if not isinstance(ds, ParquetDataSet) or not path or not os.path.exists(path):
        return None
    import pyarrow as pa

    src = ParquetDataSet.from_files([path], columns=ds.columns, generated_columns=ds.generated_columns)
    conn = None
    try:
        if _needs_duckdb(node, src):
            import duckdb

            conn = duckdb.connect()
        batch = next(iter(src.to_batch_reader(n, conn=conn)), None)
    finally:
        if conn is not None:
            conn.close()
    return pa.Table.from_batches([batch]) if batch is not None and batch.num_rows else None


class ArrowBatchTask(ArrowStreamTask):
    def _convert_in(self, tables):
        return tables

    def _convert_out(self, result):
        return result

    def _outputs(self, runtime_ctx, readers):
        import pyarrow as pa

        from smallpond.io.arrow import empty_table

        iters = [iter(r) for r in readers]
        empties = [empty_table(r.schema) for r in readers]
        for i, batches in enumerate(zip_longest(*iters)):
            tables = [pa.Table.from_batches([b]) if b is not None else empties[j] for j, b in enumerate(batches)]
            result = self.node.process(runtime_ctx, self._convert_in(tables))
            # the output of batch i covers exactly batch i of every input: checkpoints are exact
            yield StreamOutput(self._convert_out(result) if result is not None else None, batch_indices=[i])


class PandasBatchTask(ArrowBatchTask):
    def _convert_in(self, tables):
        return [t.to_pandas() for t in tables]

    def _convert_out(self, result):
        return _from_pandas(result, self.node)
