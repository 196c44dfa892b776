"""Partition nodes: they change how data is split into partitions.

Non-nested partitioning replaces the input's dimensions with one new dimension of
``npartitions``; nested partitioning adds a dimension under each existing partition, giving
``input partitions x npartitions`` partitions.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Union

from smallpond.common import DATA_PARTITION_COLUMN_NAME, GB
from smallpond.errors import ParameterError, PlanError
from smallpond.logical.base import Context, Node, Shape, call_site_msg, created_at, node_at, validate_dimension
from smallpond.logical.dataset import CsvDataSet, DataSet, JsonDataSet
from smallpond.logical.structural import ConsolidateNode, DataSourceNode

_IDENT_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

#: Producer tasks of a hash/shuffle/range partitioning whose input is a single partition (it is
#: split into this many pieces by files, or by rows when it has fewer files). A constant, not the
#: number of workers: the producers' files are the output's files, and the same plan writes the
#: same files on every machine. Override it per node with ``num_producers=``.
SINGLE_INPUT_PRODUCERS = 8


class PartitionNode(Node):
    """Base class of the partition nodes.

    Args:
        npartitions: number of partitions to create (per input partition when ``nested``).
        dimension: name of the partition dimension (``__data_partition__`` by default), usable as
            a ``{dimension}`` placeholder in SQL.
        nested: add the dimension under the input's partitions instead of replacing them.
    """

    max_num_producer_tasks = 100
    max_card_of_producers_x_consumers = 4_096_000

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        npartitions: int,
        dimension: Optional[str] = None,
        nested: bool = False,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: int = 1,
        memory_limit: Optional[int] = None,
    ) -> None:
        super().__init__(ctx, input_deps, output_name, output_path, cpu_limit, 0, memory_limit)
        nested = self._flag("nested", nested)
        if isinstance(npartitions, bool) or not isinstance(npartitions, int) or npartitions <= 0:
            raise ParameterError(self._msg(f"npartitions must be a positive integer, got {npartitions!r}"))
        if nested and dimension is None:
            raise ParameterError(self._msg("a nested partition needs a dimension name"))
        dimension = dimension if dimension is not None else DATA_PARTITION_COLUMN_NAME
        validate_dimension(self, dimension)
        if not self.input_deps:
            raise ParameterError(self._msg("a partition node needs at least one input"))
        self.npartitions = npartitions
        self.dimension = dimension
        self.nested = nested

    def partition_shape(self) -> Shape:
        shapes = [d.partition_shape() for d in self.input_deps]
        if any(s != shapes[0] for s in shapes):
            raise PlanError(self._msg(f"all inputs of a partition node must share one partitioning, got {shapes}"))
        if not self.nested:
            return ((self.dimension, self.npartitions),)
        if any(dim == self.dimension for dim, _ in shapes[0]):
            raise PlanError(self._msg(f"nested dimension {self.dimension!r} already exists in the input"))
        return shapes[0] + ((self.dimension, self.npartitions),)


class EvenlyDistributedPartitionNode(PartitionNode):
    """Split the input into partitions of near-equal size, by files (default) or by rows.

    The split is computed from metadata only; no data is moved.
    """

    max_num_producer_tasks = 1
    passes_input_files = True

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        npartitions: int,
        dimension: Optional[str] = None,
        nested: bool = False,
        *,
        partition_by_rows: bool = False,
        random_shuffle: bool = False,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: int = 1,
        memory_limit: Optional[int] = None,
    ) -> None:
        super().__init__(ctx, input_deps, npartitions, dimension, nested, output_name, output_path, cpu_limit, memory_limit)
        self.partition_by_rows = self._flag("partition_by_rows", partition_by_rows) and npartitions > 1
        self.random_shuffle = self._flag("random_shuffle", random_shuffle)
        if self.partition_by_rows:
            # splitting by rows reads Parquet row groups: a CSV or JSON source can only be split
            # by files (its tasks would fail with this, after everything before them ran)
            for dep in self.input_deps:
                ds = dep.dataset if isinstance(dep, DataSourceNode) else None
                if isinstance(ds, (CsvDataSet, JsonDataSet)):
                    raise ParameterError(
                        f"{node_at(self)}: partition_by_rows needs Parquet input, but {node_at(dep)} reads "
                        f"{type(ds).__name__}; partition it by files (partition_by_rows=False), or convert it to Parquet first"
                    )


class LoadPartitionedDataSetNode(PartitionNode):
    """Load data already partitioned by a column (KV metadata, hive path or the column value)."""

    max_num_producer_tasks = 10

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        npartitions: int,
        dimension: Optional[str] = None,
        nested: bool = False,
        data_partition_column: Optional[str] = None,
        hive_partitioning: bool = False,
        cpu_limit: int = 1,
        memory_limit: Optional[int] = None,
    ) -> None:
        if dimension is None and data_partition_column is None:
            raise ParameterError(call_site_msg("LoadPartitionedDataSetNode", "needs a dimension or a data_partition_column"))
        super().__init__(
            ctx, input_deps, npartitions, dimension or data_partition_column, nested, None, None, cpu_limit, memory_limit
        )
        self.data_partition_column = data_partition_column or self.dimension
        self.hive_partitioning = self._flag("hive_partitioning", hive_partitioning)


def DataSetPartitionNode(
    ctx: Context,
    input_deps: Sequence[Node],
    npartitions: int,
    *,
    partition_by_rows: bool = False,
    random_shuffle: bool = False,
    data_partition_column: Optional[str] = None,
) -> Node:
    """Partition by files/rows, or by an existing partition column.

    With ``npartitions == 1`` the result is a single partition with no dimension, which is
    broadcast to every partition of another input when joined.
    """
    if data_partition_column is not None:
        if partition_by_rows:
            raise ParameterError(
                call_site_msg("DataSetPartitionNode", "partition_by_rows and data_partition_column cannot both be set")
            )
        return LoadPartitionedDataSetNode(
            ctx, input_deps, npartitions, dimension=data_partition_column, data_partition_column=data_partition_column
        )
    node = EvenlyDistributedPartitionNode(
        ctx, input_deps, npartitions, partition_by_rows=partition_by_rows, random_shuffle=random_shuffle
    )
    if npartitions == 1:
        return ConsolidateNode(ctx, node, [])
    return node


_NAME_LIST = re.compile(r"\s*[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+\s*")


def _split_name_lists(keys: Sequence[str]) -> List[str]:
    """``hash_columns`` with each item that is a comma-separated list of plain names (``"a, b"``)
    split into those names: upstream 0.15 pasted its keys into ``concat_ws('##', ...)``, where
    ``"a, b"`` hashed two columns, and scripts pass it so. Other text with commas stays one key
    (refused as no single expression unless it is a column)."""
    out: List[str] = []
    for k in keys:
        if _NAME_LIST.fullmatch(k):
            out.extend(p.strip() for p in k.split(","))
        else:
            out.append(k)
    return out


class HashPartitionNode(PartitionNode):
    """Partition rows by a hash of ``hash_columns`` in one DuckDB pass per producer.

    Args:
        hash_columns: columns (or SQL expressions) to hash.
        data_partition_column: name of the column holding the partition index.
        random_shuffle: send each row to a random partition instead of hashing.
        shuffle_only: the partition index is the value of ``data_partition_column`` (or of the SQL
            expression it names); it must lie in ``[0, npartitions)``.
        drop_partition_column: leave the partition column out of the output files.
        hive_partitioning: write ``{column}={k}/`` directories.
        engine_type: ``"duckdb"`` (default, one ``COPY ... PARTITION_BY`` pass) or ``"arrow"``
            (Arrow batches); both assign every row alike. A hash partition of at least 64 MB of
            plain Parquet is written the arrow way by either (a tenth less CPU), one file per
            partition and producer: the arrow engine's ``{prefix}-{k}.parquet`` (upstream's), the
            default engine's in its COPY's shape (``{prefix}-{k}.{i}.parquet`` names, row groups
            of 122,880 rows unless the COPY's byte limit cuts them sooner; see the README).
        num_producers: producer tasks (not in upstream 0.15). Default: one per input partition, or
            :data:`SINGLE_INPUT_PRODUCERS` for a single input partition; never the worker count,
            so the output files are the same on every machine. With fewer producers than input
            partitions, producer ``j`` reads input partitions ``j, j + n, ...`` (a file
            partitioning fills its first partitions, so blocks would leave producers idle).
    """

    default_cpu_limit = 1
    default_memory_limit = None
    default_data_partition_column = DATA_PARTITION_COLUMN_NAME
    default_engine_type = "duckdb"
    max_num_producer_tasks = 1000
    default_num_producers = SINGLE_INPUT_PRODUCERS
    enable_resource_boost = True

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        npartitions: int,
        hash_columns: Optional[Union[str, List[str]]] = None,
        data_partition_column: Optional[str] = None,
        *,
        dimension: Optional[str] = None,
        nested: bool = False,
        engine_type: Optional[str] = None,
        random_shuffle: bool = False,
        shuffle_only: bool = False,
        drop_partition_column: bool = False,
        use_parquet_writer: bool = False,
        hive_partitioning: bool = False,
        parquet_row_group_size: Optional[int] = None,
        parquet_dictionary_encoding: bool = False,
        parquet_compression: Optional[str] = "ZSTD",
        parquet_compression_level: Optional[int] = 3,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: Optional[int] = None,
        memory_limit: Optional[int] = None,
        num_producers: Optional[int] = None,
    ) -> None:
        data_partition_column = data_partition_column or self.default_data_partition_column
        if dimension is None:
            # the dimension is named after the column; a shuffle by an SQL expression
            # (``"item % 10"``, accepted upstream) gets the default dimension name instead
            is_name = _IDENT_RE.fullmatch(data_partition_column) is not None
            dimension = data_partition_column if is_name else DATA_PARTITION_COLUMN_NAME
        super().__init__(
            ctx,
            input_deps,
            npartitions,
            dimension,
            nested,
            output_name,
            output_path,
            cpu_limit if cpu_limit is not None else self.default_cpu_limit,
            memory_limit if memory_limit is not None else self.default_memory_limit,
        )
        engine_type = engine_type or self.default_engine_type
        if engine_type not in ("duckdb", "arrow"):
            raise ParameterError(self._msg(f"engine_type must be one of ['duckdb', 'arrow'], got {engine_type!r}"))
        if random_shuffle and shuffle_only:
            raise ParameterError(self._msg("random_shuffle and shuffle_only cannot both be set"))
        if isinstance(hash_columns, str):
            hash_columns = [hash_columns]
        elif hash_columns is not None and not isinstance(hash_columns, (list, tuple)):
            raise ParameterError(self._msg(f"hash_columns must be a column name or a list of them, got {hash_columns!r}"))
        if not random_shuffle and not shuffle_only and not hash_columns:
            raise ParameterError(self._msg("hash_columns is required unless random_shuffle or shuffle_only is set"))
        if hash_columns is not None and not all(isinstance(c, str) and c for c in hash_columns):
            raise ParameterError(self._msg(f"hash_columns must be column names, got {hash_columns!r}"))
        if num_producers is not None and (
            isinstance(num_producers, bool) or not isinstance(num_producers, int) or num_producers <= 0
        ):
            raise ParameterError(self._msg(f"num_producers must be a positive integer or None, got {num_producers!r}"))
        self.num_producers = num_producers
        self.hash_columns = _split_name_lists(hash_columns) if hash_columns else []
        self.data_partition_column = data_partition_column
        self.engine_type = engine_type
        self.random_shuffle = self._flag("random_shuffle", random_shuffle)
        self.shuffle_only = self._flag("shuffle_only", shuffle_only)
        self.drop_partition_column = self._flag("drop_partition_column", drop_partition_column)
        self.use_parquet_writer = self._flag("use_parquet_writer", use_parquet_writer)
        self.hive_partitioning = self._flag("hive_partitioning", hive_partitioning)
        self.parquet_row_group_size = parquet_row_group_size
        self.parquet_dictionary_encoding = parquet_dictionary_encoding
        self.parquet_compression = parquet_compression
        self.parquet_compression_level = parquet_compression_level


class ShuffleNode(HashPartitionNode):
    """Route each row to the partition given by ``data_partition_column`` (a column or SQL expression).

    The key names its partition by a whole number 0..npartitions-1: an integer, a boolean (0 or
    1), or a float or decimal holding a whole number (1.0). Any other key fails the task, in both
    engines: one that is not whole (1.5, NaN: never rounded), NULL, out of range, or no number
    (a string, even of digits; a date).
    """

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        npartitions: int,
        data_partition_column: Optional[str] = None,
        *,
        dimension: Optional[str] = None,
        nested: bool = False,
        engine_type: Optional[str] = None,
        use_parquet_writer: bool = False,
        hive_partitioning: bool = False,
        parquet_row_group_size: Optional[int] = None,
        parquet_dictionary_encoding: bool = False,
        parquet_compression: Optional[str] = "ZSTD",
        parquet_compression_level: Optional[int] = 3,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: Optional[int] = None,
        memory_limit: Optional[int] = None,
        num_producers: Optional[int] = None,
    ) -> None:
        if data_partition_column is not None and not (isinstance(data_partition_column, str) and data_partition_column.strip()):
            # (an empty one would silently become the default column, then fail to bind when it runs)
            raise ParameterError(
                call_site_msg(
                    "ShuffleNode",
                    f"data_partition_column must be a column name or SQL expression, got {data_partition_column!r}",
                )
            )
        super().__init__(
            ctx,
            input_deps,
            npartitions,
            None,
            data_partition_column,
            dimension=dimension,
            nested=nested,
            engine_type=engine_type,
            shuffle_only=True,
            use_parquet_writer=use_parquet_writer,
            hive_partitioning=hive_partitioning,
            parquet_row_group_size=parquet_row_group_size,
            parquet_dictionary_encoding=parquet_dictionary_encoding,
            parquet_compression=parquet_compression,
            parquet_compression_level=parquet_compression_level,
            output_name=output_name,
            output_path=output_path,
            cpu_limit=cpu_limit,
            memory_limit=memory_limit,
            num_producers=num_producers,
        )


class RepeatPartitionNode(PartitionNode):
    """Every one of the ``npartitions`` nested partitions is the whole input partition."""

    passes_input_files = True

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        npartitions: int,
        dimension: str,
        cpu_limit: int = 1,
        memory_limit: Optional[int] = None,
    ) -> None:
        super().__init__(ctx, input_deps, npartitions, dimension, True, None, None, cpu_limit, memory_limit)


class UserDefinedPartitionNode(PartitionNode):
    """Override :meth:`partition` to split each input dataset into ``npartitions`` datasets."""

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        npartitions: int,
        dimension: Optional[str] = None,
        nested: bool = False,
        cpu_limit: int = 1,
        memory_limit: Optional[int] = None,
    ) -> None:
        super().__init__(ctx, input_deps, npartitions, dimension, nested, None, None, cpu_limit, memory_limit)

    def partition(self, runtime_ctx, dataset: DataSet) -> List[DataSet]:
        raise NotImplementedError(f"{type(self).__name__} must override partition(runtime_ctx, dataset)")


class UserPartitionedDataSourceNode(UserDefinedPartitionNode):
    """A source whose partitions are given explicitly as a list of datasets."""

    max_num_producer_tasks = 1

    def __init__(self, ctx: Context, partitioned_datasets: List[DataSet], dimension: Optional[str] = None) -> None:
        if not partitioned_datasets or not all(isinstance(d, DataSet) for d in partitioned_datasets):
            raise ParameterError(
                call_site_msg(
                    "UserPartitionedDataSourceNode",
                    f"partitioned_datasets must be a non-empty list of DataSet, got {partitioned_datasets!r}",
                )
            )
        super().__init__(ctx, [DataSourceNode(ctx, None)], len(partitioned_datasets), dimension)
        self.partitioned_datasets = list(partitioned_datasets)

    def partition(self, runtime_ctx, dataset: DataSet) -> List[DataSet]:
        return self.partitioned_datasets


class RangePartitionNode(PartitionNode):
    """Partition rows by ranges of a key: partition ``i`` holds keys ``k`` with
    ``split_points[i-1] <= k < split_points[i]`` (the first partition has no lower bound, the last
    no upper bound), so partitions sorted one by one and concatenated in order are globally sorted.

    A key equal to a split point goes to the partition above it. NULL keys go to the last
    partition (as ``ORDER BY`` puts NULLs last in DuckDB); so does NaN, which DuckDB orders after
    every other number. Equal split points are allowed: the partitions between them stay empty.

    Args:
        split_points: sorted boundaries, ``npartitions - 1`` of them (empty: one partition). Python
            values comparable with the key column (numbers, strings, bytes, dates, ...).
        key_column: the column holding the key; by default the input's first column.
        npartitions: instead of ``split_points`` (an extension): compute ``npartitions - 1`` split
            points from a reservoir sample of the key column, so that the partitions are as
            balanced as the data allows; keys that repeat a lot (skew) are never split across
            partitions, so the other partitions share the rest.
        sample_size: rows in that sample (default ``max(20000, 1000 * npartitions)``, at most 1M).
        engine_type: ``"duckdb"`` (default) or ``"arrow"``; both assign every row alike.

    Example::

        RangePartitionNode(ctx, (source,), [100, 200])                          # 3 partitions
        RangePartitionNode(ctx, (source,), npartitions=16, key_column="ts")     # sampled
    """

    max_num_producer_tasks = 1000
    enable_resource_boost = True

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        split_points: Optional[Sequence] = None,
        dimension: Optional[str] = None,
        nested: bool = False,
        output_name: Optional[str] = None,
        output_path: Optional[str] = None,
        cpu_limit: int = 16,
        memory_limit: Optional[int] = 128 * GB,
        *,
        key_column: Optional[str] = None,
        npartitions: Optional[int] = None,
        sample_size: Optional[int] = None,
        engine_type: Optional[str] = None,
    ) -> None:
        from smallpond.logical.base import user_call_site

        where = created_at("RangePartitionNode", user_call_site())
        if split_points is None and npartitions is None:
            raise ParameterError(f"{where}: give split_points, or npartitions to compute them by sampling")
        if split_points is not None:
            split_points = _check_split_points(where, split_points)
            if npartitions is not None and npartitions != len(split_points) + 1:
                raise ParameterError(
                    f"{where}: npartitions={npartitions!r} does not match {len(split_points)} split points "
                    f"({len(split_points) + 1} partitions); give one or the other"
                )
            npartitions = len(split_points) + 1
        super().__init__(ctx, input_deps, npartitions, dimension, nested, output_name, output_path, cpu_limit, memory_limit)
        if key_column is not None and (not isinstance(key_column, str) or not key_column):
            raise ParameterError(self._msg(f"key_column must be a column name, got {key_column!r}"))
        if sample_size is not None and (isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size <= 0):
            raise ParameterError(self._msg(f"sample_size must be a positive integer, got {sample_size!r}"))
        engine_type = engine_type or HashPartitionNode.default_engine_type
        if engine_type not in ("duckdb", "arrow"):
            raise ParameterError(self._msg(f"engine_type must be one of ['duckdb', 'arrow'], got {engine_type!r}"))
        self.split_points = split_points
        self.key_column = key_column
        self.sample_size = sample_size or min(1_000_000, max(20_000, 1000 * self.npartitions))
        self.engine_type = engine_type
        # what the partition producers (shared with HashPartitionNode) read
        self.data_partition_column = self.dimension
        self.drop_partition_column = True
        self.hash_columns: List[str] = []
        self.random_shuffle = False
        self.shuffle_only = False
        self.hive_partitioning = False
        self.use_parquet_writer = False
        self.parquet_row_group_size = None
        self.parquet_dictionary_encoding = False
        self.parquet_compression = "ZSTD"
        self.parquet_compression_level = 3
        # upstream's defaults ask for a whole big machine; on a smaller one they are clamped quietly
        self._default_limits = {
            name
            for name, value, default in (("cpu_limit", cpu_limit, 16), ("memory_limit", memory_limit, 128 * GB))
            if value == default
        }

    # which resource limits were left at their defaults: how a clamp is reported, not a result
    fingerprint_exclude = PartitionNode.fingerprint_exclude | {"_default_limits"}

    @property
    def sampled(self) -> bool:
        """True if the split points are computed from a sample at run time."""
        return self.split_points is None


def _check_split_points(where: str, split_points) -> list:
    if isinstance(split_points, (str, bytes)) or not hasattr(split_points, "__iter__"):
        raise ParameterError(f"{where}: split_points must be a list of values, got {split_points!r}")
    points = list(split_points)
    if any(p is None for p in points):
        raise ParameterError(f"{where}: split_points must not contain None, got {points!r}")
    if any(isinstance(p, float) and p != p for p in points):
        raise ParameterError(f"{where}: split_points must not contain NaN, got {points!r}")
    try:
        ordered = all(not (b < a) for a, b in zip(points, points[1:]))
    except TypeError as e:
        raise ParameterError(f"{where}: split_points must be values of one comparable type, got {points!r} ({e})") from None
    if not ordered:
        raise ParameterError(f"{where}: split_points must be sorted in ascending order, got {points!r}")
    return points
