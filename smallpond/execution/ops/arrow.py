"""Tasks that run user Python: scripts, Arrow/pandas compute, streaming and batch functions.

Readers: Parquet inputs are read with pyarrow (exact batch sizes across file boundaries); other
inputs, expression columns and ``use_duckdb_reader=True`` go through DuckDB.
"""

from __future__ import annotations

import os
from itertools import zip_longest
from typing import List, Optional

from smallpond.errors import UserCodeError
from smallpond.execution.task import StreamOutput, Task
from smallpond.io.parquet import ParquetWriterOptions
from smallpond.logical.dataset import DataSet, FileSet, ParquetDataSet


def _list_output(output_dir: str) -> DataSet:
    files = []
    for root, _dirs, names in os.walk(output_dir):
        files.extend(os.path.join(root, n) for n in names if not n.startswith("."))
    files.sort()
    if files and all(f.endswith(".parquet") for f in files):
        return ParquetDataSet.from_files(files)
    if not files:
        return ParquetDataSet.from_files([])
    return FileSet.from_files(files)


class PythonScriptTask(Task):
    def run(self, runtime_ctx, inputs, output_dir):
        ok = self.node.process(runtime_ctx, inputs, output_dir)
        if ok is False:
            raise UserCodeError(f"{type(self.node).__name__}.process returned False")
        return _list_output(output_dir)


class _ParquetSink:
    """Writes tables into ``{prefix}-{i:05d}.parquet`` files, one file per checkpoint."""

    def __init__(self, task: Task, output_dir: str, schema_hint=None) -> None:
        self.task = task
        self.output_dir = output_dir
        self.writer = None
        self.schema = None
        self.file_index = 0
        self.rows = 0
        self.schema_hint = schema_hint
        options = ParquetWriterOptions.of(task.node)
        self.kw = options.pyarrow()
        self.row_group_size = options.row_group_size

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise UserCodeError(f"process function must return a pyarrow Table, got {type(table).__name__}")
        if self.writer is None:
            md = dict(table.schema.metadata or {})
            md.update({k.encode(): v.encode() for k, v in self.task.parquet_kv_metadata().items()})
            self.schema = table.schema.with_metadata(md)
            path = os.path.join(self.output_dir, f"{self.task.output_filename}-{self.file_index:05d}.parquet")
            self.writer = pq.ParquetWriter(path, self.schema, **self.kw)
        if not table.schema.equals(self.schema, check_metadata=False):
            try:
                table = table.select(self.schema.names).cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
                raise UserCodeError(
                    f"output batch schema {table.schema} does not match the first batch's schema {self.schema}: {e}"
                ) from None
        else:
            table = table.replace_schema_metadata(self.schema.metadata)
        self.writer.write_table(table, row_group_size=self.row_group_size)
        self.rows += table.num_rows

    def checkpoint(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.file_index += 1

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is not None:
            self.writer.close()
            self.writer = None
        elif self.file_index == 0 and self.schema_hint is not None:
            path = os.path.join(self.output_dir, f"{self.task.output_filename}-00000.parquet")
            pq.write_table(self.schema_hint.empty_table(), path)


def _needs_duckdb(node, ds: DataSet) -> bool:
    if node.use_duckdb_reader or not isinstance(ds, ParquetDataSet):
        return True
    return bool(ds.generated_columns) or ds._has_expressions() or (ds.union_by_name and ds.columns is None and ds.num_files > 1)


class ArrowComputeTask(Task):
    def _load_tables(self, runtime_ctx, inputs: List[DataSet]):
        import duckdb

        tables = []
        conn: Optional[object] = None
        for ds in inputs:
            if _needs_duckdb(self.node, ds):
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
        if result is None:
            return ParquetDataSet.from_files([])
        result = self._convert_out(result)
        sink = _ParquetSink(self, output_dir)
        sink.write(result)
        sink.close()
        self.stats["rows"] = sink.rows
        return _list_output(output_dir)


class PandasComputeTask(ArrowComputeTask):
    def _convert_in(self, tables):
        return [t.to_pandas() for t in tables]

    def _convert_out(self, result):
        import pyarrow as pa

        return pa.Table.from_pandas(result, preserve_index=False)


class ArrowStreamTask(Task):
    schema_hint = None

    def _readers(self, runtime_ctx, inputs: List[DataSet]):
        import duckdb

        readers = []
        self._conn = None
        for ds in inputs:
            if _needs_duckdb(self.node, ds):
                self._conn = self._conn or duckdb.connect()
                readers.append(ds.to_batch_reader(self.node.streaming_batch_size, conn=self._conn))
            else:
                readers.append(ds.to_batch_reader(self.node.streaming_batch_size))
        return readers

    def _outputs(self, runtime_ctx, readers):
        return self.node.process(runtime_ctx, readers)

    def run(self, runtime_ctx, inputs, output_dir):
        import pyarrow as pa

        readers = self._readers(runtime_ctx, inputs)
        sink = _ParquetSink(self, output_dir, getattr(self.node, "output_schema", None))
        outputs = self._outputs(runtime_ctx, readers)
        if outputs is not None:
            for out in outputs:
                if isinstance(out, StreamOutput):
                    if out.output_table is not None and out.output_table.num_rows > 0:
                        sink.write(out.output_table)
                    if out.force_checkpoint and out.batch_indices:
                        sink.checkpoint()
                elif out is not None:
                    if isinstance(out, (pa.Table, pa.RecordBatch)) and out.num_rows == 0 and sink.writer is not None:
                        continue
                    sink.write(out)
        sink.close()
        self.stats["rows"] = sink.rows
        return _list_output(output_dir)


class ArrowBatchTask(ArrowStreamTask):
    def _convert_in(self, tables):
        return tables

    def _convert_out(self, result):
        return result

    def _outputs(self, runtime_ctx, readers):
        import pyarrow as pa

        iters = [iter(r) for r in readers]
        empties = [r.schema.empty_table() for r in readers]
        for batches in zip_longest(*iters):
            tables = [pa.Table.from_batches([b]) if b is not None else empties[i] for i, b in enumerate(batches)]
            result = self.node.process(runtime_ctx, self._convert_in(tables))
            if result is not None:
                yield self._convert_out(result)


class PandasBatchTask(ArrowBatchTask):
    def _convert_in(self, tables):
        return [t.to_pandas() for t in tables]

    def _convert_out(self, result):
        import pyarrow as pa

        return pa.Table.from_pandas(result, preserve_index=False)
