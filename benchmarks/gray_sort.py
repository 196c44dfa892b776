"""GraySort: sort 100-byte records by their 10-byte keys, against one DuckDB ``ORDER BY``.

Data: GraySort-format records generated here (no gensort binary), deterministically from a seed:
a 10-byte random binary key, then a 90-byte payload laid out like gensort's (``00 11``, the record
number in 32 ASCII hex digits, ``88 99 AA BB``, 48 filler hex digits, ``CC DD EE FF``). Stored as
Parquet with columns ``key: fixed_size_binary(10)`` and ``payload: fixed_size_binary(90)``, written
by parallel smallpond tasks (not timed; cached under ``--data-dir``).

The smallpond plan (:func:`gray_sort_plan`)::

    DataSourceNode(input files) → DataSetPartitionNode(one partition per file)
      → RangePartitionNode: buckets = ranges of the key's first 16 bits, split evenly
                     (arrow engine; uncompressed intermediate files). ``--partitioner
                     expression``: a ShuffleNode computing the same bucket with an expression
      → ArrowComputeNode: the bucket sorted by key (:func:`_sort_by_key`: numpy sorts the key's
                     first 8 bytes as an integer), one file per partition. ``--sort-engine
                     duckdb``: a SqlEngineNode ``select key, payload from {0} order by key``

With ``--plan user`` the plan is the one the reference's examples write (:func:`user_sort_plan`):
``DataSetPartitionNode(20)`` → a ``SqlEngineNode`` adding the same range bucket → ``ShuffleNode``
→ ``SqlEngineNode(order by key)`` → ``DataSinkNode``, every node with its defaults (ZSTD Parquet;
the engine writes its staging files uncompressed); DuckDB then writes the sort node's format.

Both report the peak RSS of the whole process tree (the workers included), sampled; give
``--memory-limit`` to bound every task and see the peak stay within what the tasks were given.

Buckets are ranges of the key, so the partitions read in partition order are globally sorted.
Validation (like ``valsort``, :func:`validate_sorted`): keys are non-decreasing across all output
files in partition order, and the record count and an order-independent checksum (sum of
per-record hashes) equal the input's. The DuckDB baseline is ``COPY (SELECT ... ORDER BY key) TO
one Parquet file`` over the same input, with the same threads (one per executor), the same
total memory and the same Parquet writer options (compression; dictionary encoding only with
``--dictionary``, the SqlEngineNode default being off); its output is validated the same way.

Run::

    python -m benchmarks.gray_sort --records 5M --partitions 16 --repeat 3
    python -m benchmarks.gray_sort --records 20M --partitions 16 --plan user --memory-limit 1GB --repeat 3
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import uuid
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

RECORD_BYTES = 100
KEY_BYTES = 10
PAYLOAD_BYTES = RECORD_BYTES - KEY_BYTES
#: records per generated chunk; chunk boundaries (and so the data) do not depend on file counts
CHUNK_RECORDS = 1 << 18


class ValidationError(AssertionError):
    """The output is not a sorted permutation of the input."""


# -- data ----------------------------------------------------------------------------------------
def generate_records(seed: int, begin: int, count: int):
    """Records ``begin .. begin+count`` of the data set for ``seed``, as an Arrow table."""
    import numpy as np
    import pyarrow as pa

    hexdigits = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
    rng = np.random.default_rng([seed, begin])
    rec = np.empty((count, RECORD_BYTES), dtype=np.uint8)
    rec[:, :10] = rng.integers(0, 256, size=(count, 10), dtype=np.uint8)
    rec[:, 10:12] = (0x00, 0x11)
    idx = np.arange(begin, begin + count, dtype=np.uint64)
    rec[:, 12:28] = ord("0")
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    rec[:, 28:44] = hexdigits[((idx[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]
    rec[:, 44:48] = (0x88, 0x99, 0xAA, 0xBB)
    rec[:, 48:96] = hexdigits[rng.integers(0, 16, size=(count, 48), dtype=np.uint8)]
    rec[:, 96:100] = (0xCC, 0xDD, 0xEE, 0xFF)
    keys = pa.py_buffer(np.ascontiguousarray(rec[:, :KEY_BYTES]))
    payload = pa.py_buffer(np.ascontiguousarray(rec[:, KEY_BYTES:]))
    return pa.table(
        {
            "key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(KEY_BYTES), count, [None, keys]),
            "payload": pa.FixedSizeBinaryArray.from_buffers(pa.binary(PAYLOAD_BYTES), count, [None, payload]),
        }
    )


def _chunks(num_records: int) -> List[tuple]:
    return [(b, min(CHUNK_RECORDS, num_records - b)) for b in range(0, num_records, CHUNK_RECORDS)]


def _generate_partition(runtime_ctx, tables, seed: int):
    import pyarrow as pa

    ranges = tables[0].to_pylist()
    if not ranges:
        return None
    return pa.concat_tables([generate_records(seed, r["begin"], r["count"]) for r in ranges])


def generation_plan(num_records: int, num_files: int, seed: int):
    """A plan writing the records as ``num_files`` Parquet files (output name ``gray_records``)."""
    import pyarrow as pa

    from smallpond.logical.dataset import ArrowTableDataSet
    from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSourceNode, LogicalPlan

    chunks = _chunks(num_records)
    num_files = max(1, min(num_files, len(chunks)))
    ranges = pa.table({"begin": [b for b, _ in chunks], "count": [c for _, c in chunks]})
    ctx = Context()
    src = DataSourceNode(ctx, ArrowTableDataSet(ranges))
    parts = DataSetPartitionNode(ctx, (src,), num_files, partition_by_rows=True) if num_files > 1 else src
    gen = ArrowComputeNode(
        ctx,
        (parts,),
        process_func=functools.partial(_generate_partition, seed=seed),
        parquet_compression=None,
        parquet_row_group_size=CHUNK_RECORDS,
        output_name="gray_records",
    )
    return LogicalPlan(ctx, gen)


def generate_input(data_dir: str, num_records: int, num_files: int, seed: int, executors: int) -> List[str]:
    """The input files for these parameters, generated once and cached under ``data_dir``."""
    target = os.path.join(data_dir, f"graysort-{num_records}r-{num_files}f-seed{seed}")
    marker = os.path.join(target, "_SUCCESS")
    if os.path.exists(marker):
        with open(marker) as f:
            return [os.path.join(target, p) for p in json.load(f)["files"]]
    common.remove(target)
    jobs = os.path.join(data_dir, "jobs")
    plan = common.run_plan(generation_plan(num_records, num_files, seed), jobs, executors)
    tmp = target + f".tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    files = []
    for i, path in enumerate(plan.get_output("gray_records").resolved_paths):
        name = f"part-{i:05d}.parquet"
        os.rename(path, os.path.join(tmp, name))
        files.append(name)
    with open(os.path.join(tmp, "_SUCCESS"), "w") as f:
        json.dump({"records": num_records, "seed": seed, "files": files}, f)
    os.rename(tmp, target)
    common.remove(common.job_root_of(plan))
    return [os.path.join(target, p) for p in files]


# -- the sort ------------------------------------------------------------------------------------
def bucket_expression(npartitions: int, key: str = "key") -> str:
    """SQL for the range bucket of a key: its first 16 bits scaled to ``[0, npartitions)``."""
    if not 1 <= npartitions <= 1 << 16:
        raise ValueError(f"npartitions must be in [1, 65536], got {npartitions}")
    return f"(({key}[1:2]::BIT::INTEGER * {npartitions}) >> 16)"


def split_points(npartitions: int) -> List[bytes]:
    """The ``npartitions - 1`` split points giving the buckets of :func:`bucket_expression`:
    bucket ``i`` starts at the keys whose first 16 bits are ``ceil(i * 65536 / npartitions)``
    (a 2-byte prefix sorts before every 10-byte key that starts with it)."""
    if not 1 <= npartitions <= 1 << 16:
        raise ValueError(f"npartitions must be in [1, 65536], got {npartitions}")
    firsts = [-(-i * (1 << 16) // npartitions) for i in range(1, npartitions)]
    return [bytes([v >> 8, v & 0xFF]) for v in firsts]


def gray_sort_plan(
    input_paths: Sequence[str],
    num_sort_partitions: int,
    *,
    shuffle_cpu_limit: int = 1,
    shuffle_memory_limit: Optional[int] = None,
    sort_cpu_limit: int = 1,
    sort_memory_limit: Optional[int] = None,
    compression: Optional[str] = "snappy",
    dictionary: bool = False,
    shuffle_engine: str = "arrow",
    output_name: str = "sorted_records",
    partitioner: str = "range",
    sort_engine: str = "arrow",
):
    """Range-shuffle the records into ``num_sort_partitions`` buckets, then sort each bucket.

    ``partitioner="range"`` (the default) shuffles with a ``RangePartitionNode`` over the split
    points of :func:`split_points` (DuckDB compares each key with log2(P) of them: ~45 ns a
    record); ``"expression"`` with a ``ShuffleNode`` whose partition column is
    :func:`bucket_expression` (a blob-to-bit-to-integer cast: ~95 ns a record), the plan measured
    before 2026-12-03. Both put every record in the same bucket.

    The shuffle gets one producer per input file (a ``DataSetPartitionNode`` by files). Over the
    input as one partition the planner makes 8 producers of equal row counts, which split 4 files
    in the middle of a row group: that row group is read and decoded by both producers, and the
    4 extra tasks each close 16 more staging files, which 16 sort tasks then open. Measured on
    5M records, 2 workers (DuckDB 2.0.1, pyarrow 26): the shuffle's task CPU fell from 1.8-2.0 s
    to 1.5 s, the sort's stayed 3.2-3.3 s.

    ``sort_engine="arrow"`` (the default) sorts each bucket with :func:`_sort_by_key` in an
    ``ArrowComputeNode``; ``"duckdb"`` with a ``SqlEngineNode``'s ``ORDER BY key``, the plan
    measured before 2026-12-05. Both write the same Parquet options. Measured on 5M records, 2
    workers: the 16 sorts' task CPU fell from 3.4-3.6 s (DuckDB) to 1.9-2.1 s; of a bucket's
    ~0.16 s with Arrow's ``sort_indices`` on the binary key, 63 ms were the sort, 11 ms with numpy.
    """
    if sort_engine not in ("arrow", "duckdb"):
        raise ValueError(f"sort_engine must be 'arrow' or 'duckdb', got {sort_engine!r}")
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import (
        Context,
        DataSetPartitionNode,
        DataSourceNode,
        LogicalPlan,
        RangePartitionNode,
        ShuffleNode,
        SqlEngineNode,
    )

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(list(input_paths), root_dir=None))
    if len(input_paths) > 1:
        src = DataSetPartitionNode(ctx, (src,), npartitions=len(input_paths))
    shuffle = dict(dimension="bucket", engine_type=shuffle_engine, cpu_limit=shuffle_cpu_limit, memory_limit=shuffle_memory_limit)
    if partitioner == "range":
        # staging files only the sort reads: the engine writes them uncompressed
        shuffled = RangePartitionNode(ctx, (src,), split_points(num_sort_partitions), key_column="key", **shuffle)
    elif partitioner == "expression":
        shuffled = ShuffleNode(
            ctx,
            (src,),
            num_sort_partitions,
            data_partition_column=bucket_expression(num_sort_partitions),
            parquet_compression=None,  # intermediate data: random bytes do not compress
            **shuffle,
        )
    else:
        raise ValueError(f"partitioner must be 'range' or 'expression', got {partitioner!r}")
    # both sorts write the same Parquet (compression, no dictionary unless asked)
    sort = dict(
        parquet_compression=compression,
        parquet_compression_level=None,
        parquet_dictionary_encoding=dictionary,
        output_name=output_name,
        cpu_limit=sort_cpu_limit,
        memory_limit=sort_memory_limit,
    )
    if sort_engine == "arrow":
        from smallpond.logical.node import ArrowComputeNode

        ordered = ArrowComputeNode(ctx, (shuffled,), process_func=_sort_by_key, **sort)
    else:
        ordered = SqlEngineNode(ctx, (shuffled,), "select key, payload from {0} order by key", per_thread_output=False, **sort)
    return LogicalPlan(ctx, ordered)


def _sort_by_key(runtime_ctx, tables):
    """The tuned plan's sort (``--sort-engine arrow``): the records of one bucket in key order.

    GraySort keys are 10 bytes compared as unsigned bytes. Their first 8 bytes, read as a
    big-endian integer, order them exactly unless two keys share those 8 bytes; numpy sorts
    those integers, and only if two are equal (about once in 2^64/n^2 buckets) is the order
    taken from all 10 bytes (a lexsort of the 8-byte prefix and the last 2 bytes). Anything
    else (other key types, NULL keys) is sorted by Arrow's ``sort_indices``. The permutation is
    applied with one Arrow ``take``; the result has the column types DuckDB writes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = tables[0].combine_chunks()
    key = table.column("key")
    if table.num_rows < 2:
        return _as_duckdb_writes(table)
    if key.type != pa.binary(KEY_BYTES) or key.null_count or key.num_chunks != 1:
        return _as_duckdb_writes(table.take(pc.sort_indices(table, sort_keys=[("key", "ascending")])))
    chunk = key.chunk(0)
    raw = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)
    raw = raw[chunk.offset * KEY_BYTES : (chunk.offset + len(chunk)) * KEY_BYTES].reshape(-1, KEY_BYTES)
    high = np.ascontiguousarray(raw[:, :8]).view(">u8").ravel().astype(np.uint64)
    order = np.argsort(high)
    ranked = high[order]
    if bool((ranked[1:] == ranked[:-1]).any()):
        low = np.ascontiguousarray(raw[:, 8:]).view(">u2").ravel().astype(np.uint16)
        order = np.lexsort((low, high))
    order = np.ascontiguousarray(order, dtype=np.int64)
    return _as_duckdb_writes(table.take(pa.Array.from_buffers(pa.int64(), len(order), [None, pa.py_buffer(order)])))


def _as_duckdb_writes(table):
    """``table`` with its fixed-size binary columns as variable-size binary: DuckDB reads them as
    BLOB and writes Parquet BYTE_ARRAY values (4-byte length + bytes), pyarrow FIXED_LEN_BYTE_ARRAY
    ones (8% fewer bytes for these records). Cast, the sort writes the format DuckDB's does."""
    import pyarrow as pa

    schema = pa.schema([pa.field(f.name, pa.binary()) if pa.types.is_fixed_size_binary(f.type) else f for f in table.schema])
    return table.cast(schema) if schema != table.schema else table


USER_DATA_PARTITIONS = 20


def user_sort_plan(input_paths: Sequence[str], num_sort_partitions: int, output_path: str, *, memory_limit: Optional[int] = None):
    """The sort as the reference's examples write it, with every node's defaults (ZSTD Parquet)::

        DataSetPartitionNode(20) → SqlEngineNode adding the range bucket
          → ShuffleNode(P, data_partition_column="bucket") → SqlEngineNode(order by key)
          → DataSinkNode(output_path)

    Returns ``(plan, sort node)``; ``memory_limit`` (if given) is set on every task, as a user
    bounding the job would."""
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import (
        Context,
        DataSetPartitionNode,
        DataSinkNode,
        DataSourceNode,
        LogicalPlan,
        ShuffleNode,
        SqlEngineNode,
    )

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(list(input_paths), root_dir=None))
    parts = DataSetPartitionNode(ctx, (src,), npartitions=USER_DATA_PARTITIONS)
    bucketed = SqlEngineNode(
        ctx,
        (parts,),
        f"select {bucket_expression(num_sort_partitions)} as bucket, key, payload from {{0}}",
        memory_limit=memory_limit,
    )
    shuffled = ShuffleNode(ctx, (bucketed,), num_sort_partitions, data_partition_column="bucket", memory_limit=memory_limit)
    ordered = SqlEngineNode(ctx, (shuffled,), "select key, payload from {0} order by key", memory_limit=memory_limit)
    sink = DataSinkNode(ctx, (ordered,), output_path)
    return LogicalPlan(ctx, sink), ordered


def sorted_output_files(exec_plan, node=None) -> List[str]:
    """The sort node's output files, in partition order (the order that must be sorted)."""
    root = node if node is not None else exec_plan.logical_plan.root_node
    tasks = [t for t in exec_plan.tasks.values() if t.node_id == int(root.id) and t.key in exec_plan.results]

    def index(t) -> int:
        return next(p.index for p in t.partition_infos if p.dimension == "bucket")

    files: List[str] = []
    for t in sorted(tasks, key=index):
        files.extend(exec_plan.results[t.key].resolved_paths)
    return files


# -- validation ----------------------------------------------------------------------------------
def summarize(paths: Sequence[str], threads: int = 2) -> Dict[str, int]:
    """Record count and an order-independent checksum (sum of per-record hashes)."""
    conn = common.duckdb_connect(threads)
    try:
        n, checksum = conn.execute(
            f"SELECT count(*), coalesce(sum(hash(key, payload)), 0)::VARCHAR FROM read_parquet({common.sql_list(list(paths))})"
        ).fetchone()
    finally:
        conn.close()
    return {"records": int(n), "checksum": int(checksum)}


def check_order(paths_in_order: Sequence[str]) -> Dict[str, int]:
    """Keys must not decrease within and across files. Returns records and duplicate keys seen."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    last = None
    records = duplicates = 0
    for path in paths_in_order:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            keys = pf.read_row_group(rg, columns=["key"]).column("key").combine_chunks()
            if len(keys) == 0:
                continue
            if last is not None and keys[0].as_py() < last:
                raise ValidationError(f"{path} row group {rg}: first key {keys[0].as_py().hex()} < previous key {last.hex()}")
            if len(keys) > 1:
                bad = pc.less(keys[1:], keys[:-1])
                if pc.any(bad).as_py():
                    at = pc.index(bad, True).as_py()
                    raise ValidationError(f"{path} row group {rg}: key at row {at + 1} is smaller than the one before it")
                duplicates += pc.sum(pc.equal(keys[1:], keys[:-1])).as_py() or 0
            if last is not None and keys[0].as_py() == last:
                duplicates += 1
            last = keys[-1].as_py()
            records += len(keys)
    return {"records": records, "duplicates": duplicates}


def validate_sorted(input_summary: Dict[str, int], output_files_in_order: Sequence[str]) -> Dict[str, int]:
    """valsort: global order, and count and checksum equal to the input's. Raises ValidationError."""
    order = check_order(output_files_in_order)
    out = summarize(output_files_in_order)
    if out["records"] != input_summary["records"] or order["records"] != input_summary["records"]:
        raise ValidationError(f"record count {out['records']} != input's {input_summary['records']}")
    if out["checksum"] != input_summary["checksum"]:
        raise ValidationError(f"checksum {out['checksum']:x} != input's {input_summary['checksum']:x}")
    return {**out, "duplicates": order["duplicates"]}


# -- DuckDB baseline -----------------------------------------------------------------------------
def duckdb_sort(
    input_paths: Sequence[str],
    output_path: str,
    *,
    threads: int,
    memory_limit: Optional[int],
    compression: Optional[str],
    temp_dir: str,
    dictionary: bool = False,
    writer_options: Optional[str] = None,
) -> None:
    """``writer_options``: the COPY options to write with (default: from compression and dictionary)."""
    conn = common.duckdb_connect(threads, memory_limit, temp_dir)
    try:
        conn.execute(
            f"COPY (SELECT key, payload FROM read_parquet({common.sql_list(list(input_paths))}) ORDER BY key) "
            f"TO '{output_path}' ({writer_options or common.parquet_writer_options(compression, dictionary)})"
        )
    finally:
        conn.close()


# -- main ----------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    from smallpond.common import MB

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "-n",
        "--records",
        type=common.parse_count,
        default=common.parse_count("5M"),
        help="records of 100 bytes (default 5M = 0.5 GB)",
    )
    p.add_argument("-t", "--partitions", type=int, default=16, help="sort partitions (default 16)")
    p.add_argument("-f", "--input-files", type=int, default=None, help="input Parquet files (default: 2 x executors)")
    p.add_argument(
        "--sort-engine",
        choices=("duckdb", "arrow"),
        default="arrow",
        help="the tuned plan's sort: an ArrowComputeNode sorting by the key's 8-byte prefix (default), "
        "or a SqlEngineNode's ORDER BY",
    )
    p.add_argument("--sort-cpus", type=int, default=1, help="CPUs per sort task (default 1)")
    p.add_argument("--shuffle-cpus", type=int, default=1, help="CPUs per shuffle task (default 1)")
    p.add_argument("--compression", default="snappy", help="output Parquet compression, both sides (default snappy)")
    p.add_argument("--dictionary", action="store_true", help="allow dictionary encoding of the output, both sides (default off)")
    p.add_argument(
        "--shuffle-engine", choices=("arrow", "duckdb"), default="arrow", help="the shuffle's engine_type (default arrow)"
    )
    p.add_argument(
        "--partitioner",
        choices=("range", "expression"),
        default="range",
        help="the tuned plan's shuffle: RangePartitionNode over split points (default), or a ShuffleNode over a bucket expression",
    )
    p.add_argument("--seed", type=int, default=2025)
    common.add_plan_argument(p)
    common.add_common_arguments(p)
    args = p.parse_args(argv)
    user = args.plan == "user"

    import psutil

    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    nfiles = args.input_files or 2 * args.executors
    threads = args.executors  # smallpond's CPU budget: one per worker
    task_memory = args.memory_limit or max(128 * MB, psutil.virtual_memory().total * args.sort_cpus // common.usable_cpus())
    # as much memory as the tasks that run at once get together
    duckdb_memory = min(psutil.virtual_memory().total, max(1, args.executors // args.sort_cpus) * task_memory)
    common.print_header(
        "gray sort",
        {
            "records": f"{args.records:,} ({common.human_bytes(args.records * RECORD_BYTES)})",
            "partitions": args.partitions,
            "executors": args.executors,
            "DuckDB": f"threads={threads}, memory_limit={common.human_bytes(duckdb_memory)}",
            "machine": common.machine(),
        },
    )
    inputs = generate_input(data_dir, args.records, nfiles, args.seed, args.executors)
    common.compile_bytecode()  # workers are fresh interpreters: they load smallpond as installed, compiled
    input_summary = summarize(inputs) if args.validate else None
    jobs = os.path.join(data_dir, "jobs")
    timings = common.Timings()
    leftovers = common.Leftovers(args.keep)
    writer_options = None
    if user:  # DuckDB writes what the user plan's sort node writes (node defaults)
        from smallpond.io.parquet import ParquetWriterOptions

        _, sort_node = user_sort_plan(inputs, args.partitions, os.path.join(data_dir, "unused"))
        writer_options = ParquetWriterOptions.of(sort_node).duckdb()
    for rep in range(args.repeat):
        sort_node = None
        if user:
            sink_dir = os.path.join(data_dir, f"user-sorted-{uuid.uuid4().hex[:8]}")
            plan, sort_node = user_sort_plan(inputs, args.partitions, sink_dir, memory_limit=args.memory_limit)
            leftovers.add(sink_dir)
        else:
            plan = gray_sort_plan(
                inputs,
                args.partitions,
                shuffle_cpu_limit=args.shuffle_cpus,
                shuffle_memory_limit=args.memory_limit,
                sort_cpu_limit=args.sort_cpus,
                sort_memory_limit=args.memory_limit,
                compression=args.compression,
                dictionary=args.dictionary,
                shuffle_engine=args.shuffle_engine,
                partitioner=args.partitioner,
                sort_engine=args.sort_engine,
            )
        exec_plan = timings.measure("smallpond", common.run_plan, plan, jobs, args.executors)
        if args.validate:
            validate_sorted(input_summary, sorted_output_files(exec_plan, sort_node))
        leftovers.add(common.job_root_of(exec_plan))

        out = os.path.join(data_dir, f"duckdb-sorted-{uuid.uuid4().hex[:8]}.parquet")
        timings.measure(
            "duckdb",
            duckdb_sort,
            inputs,
            out,
            threads=threads,
            memory_limit=duckdb_memory,
            compression=args.compression,
            temp_dir=os.path.join(data_dir, "duckdb-temp"),
            dictionary=args.dictionary,
            writer_options=writer_options,
        )
        if args.validate:
            validate_sorted(input_summary, [out])
        leftovers.add(out)
        common.print_run(timings, rep, exec_plan)

    leftovers.remove_all()
    limit = f", memory limit {common.human_bytes(args.memory_limit)} per task" if args.memory_limit else ""
    common.report_time_ratio(
        timings,
        "gray sort (user plan)" if user else "gray sort",
        args.records,
        "records",
        f"{args.records:,} records ({common.human_bytes(args.records * RECORD_BYTES)}), {args.partitions} partitions, "
        f"{args.executors} executors{limit}"
        + (
            f", {USER_DATA_PARTITIONS} data partitions, node defaults (ZSTD)"
            if user
            else f", {args.partitioner} shuffle, {args.sort_engine} sort"
        ),
        args.validate,
        args.append_results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
