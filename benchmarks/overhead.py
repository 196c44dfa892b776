"""Per-task overhead and start-up time of the embedded backend (and the Ray backend's overhead, and
the queue backend's, whose executors ``--platform`` starts: ``base`` subprocesses or ``mpi``).

1. Throughput: N tiny tasks, the N one-row partitions of a tiny Parquet file
   (``DataSetPartitionNode(N, partition_by_rows=True)``), each run by a ``PythonScriptNode`` that
   writes a one-line file (``--kind python``, the default) or a ``SqlEngineNode`` that copies its
   row to Parquet (``--kind sql``). Reported: tasks per second over the whole ``run_job`` call
   (planning, worker start-up, scheduling, commits, shutdown). With ``--kind sql`` the DuckDB
   figure is the same N statements run one after another on one connection with as many threads
   as smallpond has executors (``COPY (SELECT * FROM file LIMIT 1 OFFSET i) TO ...``, with the SQL
   node's Parquet writer options: both sides write ZSTD level 3 without dictionary pages), i.e. the
   same tiny work without a framework around it, and the ratio compares the two. A Python task
   does other work than a statement, so ``--kind python`` reports tasks per second only.
2. Start-up: in a fresh subprocess, the seconds from just before ``import smallpond`` to the first
   result of a one-task job, written both ways users write it: with nodes
   (``SqlEngineNode("select count(*) from {0}")`` through ``run_job``, then
   ``final_output.to_arrow_table()``) and with the DataFrame API (``smallpond.init()``, then
   ``sp.partial_sql(..., sp.read_parquet(path)).to_arrow()``); DuckDB: from ``import duckdb`` to
   the same count as an Arrow table (``to_arrow_table()``: all sides import pyarrow and hand the
   user the same kind of result). The task cache is on, as by default, in a fresh folder.

With ``--backend ray`` the same jobs run as Ray tasks: on a private Ray instance of
``--executors`` CPUs started once before the timed runs (``--ray-address local``, the default), or
on a running cluster (``--ray-address host:port``). The benchmark process stays connected for all
repeats, as a long-lived driver would, so from the second repeat on the Ray worker processes
are warm; every timed run still includes its data-root check on every node. Start-up is not
measured on Ray (it is the embedded default's figure: booting a Ray instance takes seconds).

Validation: the job's output holds exactly one result per task, carrying the task's row.

Run::

    python -m benchmarks.overhead --tasks 2000 --repeat 3
    python -m benchmarks.overhead --tasks 2000 --repeat 3 --backend ray
    python -m benchmarks.overhead --tasks 2000 --repeat 3 --platform mpi   # the queue backend
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid
from typing import Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


class ValidationError(AssertionError):
    """The tasks' outputs are not one result per task."""


def make_input(data_dir: str, num_rows: int) -> str:
    """A Parquet file with ``num_rows`` rows ``(id, name)``, created once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(data_dir, f"tiny-{num_rows}.parquet")
    if not os.path.exists(path):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        pq.write_table(
            pa.table({"id": list(range(num_rows)), "name": [f"row-{i}" for i in range(num_rows)]}),
            tmp,
            row_group_size=max(1, num_rows),
        )
        os.rename(tmp, path)
    return path


def write_row_count(runtime_ctx, input_datasets, output_path) -> bool:
    """The tiny Python task: write the id of the partition's first row to a text file."""
    ds = input_datasets[0]
    first = ds.resolved_row_ranges[0].begin if ds.resolved_row_ranges else -1
    with open(os.path.join(output_path, "row.txt"), "w") as f:
        f.write(f"{first}\n")
    return True


def overhead_plan(input_path: str, num_tasks: int, kind: str = "python"):
    """``num_tasks`` one-row partitions of ``input_path``, each processed by a tiny task."""
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode, SqlEngineNode

    if kind not in ("python", "sql"):
        raise ValueError(f"kind must be one of ['python', 'sql'], got {kind!r}")
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([input_path], root_dir=None))
    parts = DataSetPartitionNode(ctx, (src,), num_tasks, partition_by_rows=True)
    if kind == "python":
        node = PythonScriptNode(ctx, (parts,), process_func=write_row_count, output_name="tiny")
    else:
        node = SqlEngineNode(ctx, (parts,), "select * from {0}", per_thread_output=False, output_name="tiny")
    return LogicalPlan(ctx, node)


def validate_outputs(exec_plan, num_tasks: int, kind: str) -> None:
    """One result per task, and together they hold every row id once."""
    root = exec_plan.logical_plan.root_node
    tasks = [t for t in exec_plan.tasks.values() if t.node_id == int(root.id)]
    if len(tasks) != num_tasks:
        raise ValidationError(f"{len(tasks)} tasks planned, expected {num_tasks}")
    ids: List[int] = []
    for t in tasks:
        ds = exec_plan.results.get(t.key)
        if ds is None:
            raise ValidationError(f"{t.key} has no result")
        files = ds.resolved_paths
        if len(files) != 1:
            raise ValidationError(f"{t.key} wrote {len(files)} files, expected 1")
        if kind == "python":
            with open(files[0]) as f:
                ids.append(int(f.read()))
        else:
            import pyarrow.parquet as pq

            ids.extend(pq.read_table(files[0], columns=["id"]).column("id").to_pylist())
    if sorted(ids) != list(range(num_tasks)):
        raise ValidationError(f"the tasks' outputs hold ids {sorted(ids)[:5]}..., expected 0..{num_tasks - 1} once each")


def duckdb_tiny_statements(
    input_path: str, output_dir: str, num_tasks: int, threads: int = 1, writer_options: Optional[str] = None
) -> None:
    """The tiny SQL tasks' work as ``num_tasks`` statements on one connection; ``writer_options``:
    the COPY options (default: those of the SQL node of :func:`overhead_plan`, i.e. smallpond's
    default writer options, ZSTD level 3 without dictionary pages), so both sides write the same
    Parquet format."""
    if writer_options is None:
        from smallpond.io.parquet import ParquetWriterOptions

        writer_options = ParquetWriterOptions().duckdb()
    conn = common.duckdb_connect(threads)
    try:
        for i in range(num_tasks):
            conn.execute(
                f"COPY (SELECT * FROM read_parquet('{input_path}') LIMIT 1 OFFSET {i}) TO '{output_dir}/{i}.parquet' ({writer_options})"
            )
    finally:
        conn.close()


_FIRST_RESULT_SMALLPOND = r"""
import sys, time, json
t0 = time.perf_counter()
import smallpond
from smallpond.execution.job import make_executor, make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode
ctx = Context()
node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([sys.argv[1]], root_dir=None)),), "select count(*) as n from {0}")
rt = make_runtime_ctx(None, None, sys.argv[2], console_log_level="WARNING")
rt.task_cache = rt.job_root + "/task_cache"  # on, as by default, but empty: repeats never reuse
platform = sys.argv[4] or None
executor = make_executor(rt, int(sys.argv[3]), platform=platform) if platform else None
result = run_job(LogicalPlan(ctx, node), rt, num_workers=int(sys.argv[3]), executor=executor).final_output.to_arrow_table()
n = result.column("n")[0].as_py()
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": n, "job_root": rt.job_root, "result": type(result).__module__ + "." + type(result).__name__}))
"""

_FIRST_RESULT_DATAFRAME = r"""
import sys, time, json, os, uuid
t0 = time.perf_counter()
import smallpond
# the task cache on, as by default, but in a fresh folder: repeats never reuse
cache = os.path.join(sys.argv[2], "first-result-cache-" + uuid.uuid4().hex[:12])
sp = smallpond.init(data_root=sys.argv[2], num_executors=int(sys.argv[3]), platform=sys.argv[4] or None, task_cache=cache)
result = sp.partial_sql("select count(*) as n from {0}", sp.read_parquet(sys.argv[1])).to_arrow()
n = result.column("n")[0].as_py()
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rows": n, "job_root": sp.runtime_ctx.job_root, "cache": cache, "result": type(result).__module__ + "." + type(result).__name__}))
"""

_FIRST_RESULT_DUCKDB = r"""
import sys, time, json
t0 = time.perf_counter()
import duckdb
# the same result as smallpond's side: an Arrow table (so pyarrow is imported on both sides)
table = duckdb.connect().execute(f"select count(*) as n from read_parquet('{sys.argv[1]}')").to_arrow_table()
n = table.column("n")[0].as_py()
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": n, "result": type(table).__module__ + "." + type(table).__name__}))
"""


def cpu_per_task(timings: "common.Timings", side: str, tasks: int) -> float:
    """Median CPU milliseconds a task (or statement) of ``side``."""
    return statistics.median(timings.cpus[side]) / tasks * 1e3


def first_result_seconds(code: str, *args: str) -> Dict:
    """Run ``code`` in a fresh interpreter; it prints a JSON object with ``seconds``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([common.REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"first-result subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def connect_ray(address: str, cpus: int) -> str:
    """Connect this process to Ray once for all repeats; ``local`` starts a private instance of ``cpus`` CPUs."""
    import ray

    if address == "local":
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        return f"a private local instance, {cpus} CPUs"
    ray.init(address=address, log_to_driver=False)
    return f"the cluster at {address}, {int(ray.cluster_resources().get('CPU', 0))} CPUs"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--tasks", type=common.parse_count, default=2000, help="tiny tasks (default 2000)")
    p.add_argument("--kind", choices=("python", "sql"), default="python", help="what each tiny task runs (default python)")
    p.add_argument("--skip-startup", action="store_true", help="skip the import-to-first-result measurement")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="where tasks run (default local)")
    p.add_argument("--ray-address", default="local", help="with --backend ray: a cluster, or local (default) for a private one")
    p.add_argument(
        "--platform",
        choices=("base", "mpi"),
        default=None,
        help="run on the queue backend, --executors executors started by this platform (default: embedded)",
    )
    common.add_common_arguments(p)
    args = p.parse_args(argv)
    from smallpond.io.parquet import ParquetWriterOptions

    if args.backend == "ray":
        args.skip_startup = True
        ray_where = connect_ray(args.ray_address, args.executors)

    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    jobs = os.path.join(data_dir, "jobs")
    input_path = make_input(data_dir, args.tasks)
    if args.platform and args.backend == "ray":
        p.error("--platform (the queue backend) and --backend ray select different backends; give one")
    where = f"ray ({ray_where})" if args.backend == "ray" else f"queue backend ({args.platform})" if args.platform else "embedded"
    common.print_header(
        "overhead",
        {
            "tiny tasks": f"{args.tasks:,} ({args.kind})",
            "executors": args.executors,
            "backend": where,
            "machine": common.machine(),
        },
    )
    timings = common.Timings()
    leftovers = common.Leftovers(args.keep)
    compare = args.kind == "sql"  # the same work on both sides; Python tasks are reported as tasks/s only
    # the Python tasks run in fresh worker interpreters (user code gets the job's hash seed), and
    # the start-up runs start fresh ones too: none may compile smallpond's sources on the way
    # (an editable checkout with PYTHONDONTWRITEBYTECODE, as on this machine, would in every
    # worker: ~80 ms of CPU each, ~0.04-0.08 ms a task of a 2,000-task run)
    common.compile_bytecode()
    for rep in range(args.repeat):
        plan = overhead_plan(input_path, args.tasks, args.kind)
        with common.CpuTime() as cpu:
            secs, exec_plan = common.timed(
                common.run_plan, plan, jobs, args.executors, backend=args.backend, platform=args.platform
            )
        timings.add("smallpond", secs)
        timings.cpus.setdefault("smallpond", []).append(cpu.seconds)
        timings.cpus.setdefault("smallpond-here", []).append(cpu.here)
        if args.validate:
            validate_outputs(exec_plan, args.tasks, args.kind)
        leftovers.add(common.job_root_of(exec_plan))
        line = f"   run {rep + 1}: smallpond {timings.runs['smallpond'][-1]:.2f}s ({args.tasks / timings.runs['smallpond'][-1]:.0f} tasks/s)"
        if compare:
            out = os.path.join(data_dir, f"duckdb-tiny-{uuid.uuid4().hex[:8]}")
            os.makedirs(out)
            options = ParquetWriterOptions.of(plan.root_node).duckdb()  # what the SQL tasks write
            with common.CpuTime() as cpu:
                secs, _ = common.timed(duckdb_tiny_statements, input_path, out, args.tasks, args.executors, options)
            timings.add("duckdb", secs)
            timings.cpus.setdefault("duckdb", []).append(cpu.seconds)
            leftovers.add(out)
            line += f", DuckDB {timings.runs['duckdb'][-1]:.2f}s"
        print(line, flush=True)
        if not args.skip_startup:
            sp = first_result_seconds(_FIRST_RESULT_SMALLPOND, input_path, jobs, str(args.executors), args.platform or "")
            if sp["rows"] != args.tasks:
                raise ValidationError(f"first result counted {sp['rows']} rows, expected {args.tasks}")
            leftovers.add(sp["job_root"])
            df = first_result_seconds(_FIRST_RESULT_DATAFRAME, input_path, jobs, str(args.executors), args.platform or "")
            leftovers.add(df["job_root"])
            leftovers.add(df["cache"])
            dd = first_result_seconds(_FIRST_RESULT_DUCKDB, input_path)
            if not dd["rows"] == df["rows"] == args.tasks or not dd["result"] == df["result"] == sp["result"]:
                raise ValidationError(f"the first results differ: smallpond {sp}, its DataFrame API {df}, DuckDB {dd}")
            timings.add("startup-smallpond", sp["seconds"])
            timings.add("startup-dataframe", df["seconds"])
            timings.add("startup-duckdb", dd["seconds"])
            print(
                f"   run {rep + 1}: import to first result: smallpond nodes {sp['seconds']:.2f}s, "
                f"DataFrame {df['seconds']:.2f}s, DuckDB {dd['seconds']:.2f}s",
                flush=True,
            )

    leftovers.remove_all()
    sp = timings.median("smallpond")
    sp_cpu = cpu_per_task(timings, "smallpond", args.tasks)
    here = cpu_per_task(timings, "smallpond-here", args.tasks)
    print(
        f"smallpond: {args.tasks} tasks, {timings.describe('smallpond')}: {args.tasks / sp:.0f} tasks/s; "
        f"CPU {sp_cpu:.2f} ms a task ({here:.2f} in this process, the rest in the workers)"
    )
    if compare:
        dd = timings.median("duckdb")
        dd_cpu = cpu_per_task(timings, "duckdb", args.tasks)
        print(
            f"DuckDB:    {args.tasks} statements, {timings.describe('duckdb')}: {args.tasks / dd:.0f} statements/s; CPU {dd_cpu:.2f} ms a statement"
        )
        print(f"ratio smallpond/DuckDB (time): {sp / dd:.2f}")
    if not args.skip_startup:
        ssp, sdf, sdd = (timings.median(k) for k in ("startup-smallpond", "startup-dataframe", "startup-duckdb"))
        print(
            f"import to first result: smallpond nodes {timings.describe('startup-smallpond')}; "
            f"DataFrame {timings.describe('startup-dataframe')}; DuckDB {timings.describe('startup-duckdb')}; "
            f"ratios {ssp / sdd:.2f} (nodes), {sdf / sdd:.2f} (DataFrame)"
        )
    if args.append_results:
        common.append_results(
            "overhead",
            f"{args.tasks:,} tiny {args.kind} tasks, {args.executors} executors"
            + (f", Ray backend ({ray_where})" if args.backend == "ray" else f", {where}" if args.platform else ""),
            f"{args.tasks / sp:.0f} tasks/s ({sp:.2f} s), CPU {sp_cpu:.2f} ms/task",
            f"{args.tasks / dd:.0f} statements/s ({dd:.2f} s), CPU {dd_cpu:.2f} ms/statement" if compare else "— (other work)",
            f"{sp / dd:.2f}" if compare else "—",
        )
        if not args.skip_startup:
            for api, secs in (("", ssp), (", DataFrame API", sdf)):
                common.append_results(
                    "startup",
                    "import to first result of a 1-task job" + api + (f", {where}" if args.platform else ""),
                    f"{secs:.2f} s",
                    f"{sdd:.2f} s",
                    f"{secs / sdd:.2f}",
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
