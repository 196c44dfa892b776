"""Scale on paper: plan and schedule a GraySort-shaped plan of N tasks against an instant executor.

The plan is the shape of a large sort: ``P`` data partitions each generate records
(``SqlEngineNode``), a ``ShuffleNode`` routes them into ``C`` sort partitions (``P`` producers,
``C`` consumers), and ``C`` sort tasks (``SqlEngineNode ... order by``) follow; ``C`` is chosen so the
plan has about N tasks. It goes through the real planner and the real scheduler (retries,
priorities, resource accounting, listeners) with the task cache on, as a job has it by default
(``--task-cache off`` measures without it); only the executor is replaced by one that completes
every attempt at once with a description of the files the task would have written (no I/O, no
worker), in the task's own output directory as a worker names them: every producer's files have
paths of their own, and the sorts' cache keys identify a file of each producer. What is measured
is the engine's own cost: planning seconds, scheduling seconds, the scheduler's peak memory (max
RSS of a fresh process per size), and the per-task cost.

Each consumer depends on all ``P`` producers, so the scheduler's work per task is proportional to
``P`` (the producers a sort reads from), not to the plan's size: with ``P`` fixed, the per-task
cost must stay flat from 10k to 100k tasks.

Run::

    python -m benchmarks.scale --tasks 10k,30k,100k --producers 64
    python -m benchmarks.scale --tasks 10k,30k,100k --task-cache off
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

CHILD = r"""
import json, resource, sys, time, uuid
sys.path.insert(0, sys.argv[1])
from benchmarks.scale import measure
print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], task_cache=sys.argv[5] == "on")))
"""


def gray_sort_shaped_plan(producers: int, consumers: int):
    """``P`` generating partitions → shuffle into ``C`` → ``C`` sorts (a LogicalPlan)."""
    import pyarrow as pa

    from smallpond.logical.dataset import ArrowTableDataSet
    from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, ShuffleNode, SqlEngineNode

    ctx = Context()
    source = DataSourceNode(ctx, ArrowTableDataSet(pa.table({"seed": list(range(producers))})))
    parts = DataSetPartitionNode(ctx, (source,), producers)
    gen = SqlEngineNode(ctx, (parts,), f"select *, hash(seed) % {consumers} as bucket from {{0}}")
    shuffled = ShuffleNode(ctx, (gen,), consumers, data_partition_column="bucket")
    ordered = SqlEngineNode(ctx, (shuffled,), "select * from {0} order by seed")
    return LogicalPlan(ctx, ordered)


def measure(num_tasks: int, producers: int, data_root: str, task_cache: bool = True) -> dict:
    """Plan and schedule a plan of about ``num_tasks`` tasks; returns seconds and peak memory.

    ``task_cache``: the scheduler keys, looks up and indexes every task in a task cache (a folder
    of this job's), as a job does by default.
    """
    import pickle
    import resource
    import time
    import uuid

    from smallpond.execution.cache_keys import JobCache
    from smallpond.execution.executors.base import Capacity, Completion, Executor
    from smallpond.execution.job import make_runtime_ctx
    from smallpond.execution.ops.partition import HashPartitionTask
    from smallpond.execution.ops.structural import MaterializeSourceTask
    from smallpond.execution.planner import Planner
    from smallpond.execution.scheduler import Scheduler
    from smallpond.logical.dataset import ParquetDataSet, PartitionedDataSet

    # tasks: 1 source + 1 split + P partitions (inline) + P generators + P producers + C consumers (inline) + C sorts
    consumers = max(1, (num_tasks - 2 - 3 * producers) // 2)

    class InstantExecutor(Executor):
        """Completes every attempt at once with the description of the files it would write, in
        its own output directory (``{output base}.0.{token}``, as a worker's attempt names it)."""

        name = "instant"

        def __init__(self, rt) -> None:
            self.rt = rt
            self.done: List[Completion] = []
            self.blobs: dict = {}

        @property
        def capacity(self) -> Capacity:
            return Capacity(producers, producers, producers << 30)

        def free_slots(self) -> int:
            return producers

        def submit(self, task, inputs, attempt, *, memory, queue=False) -> None:
            # the scheduler receives a task's output as a worker sends it: pickled. One pickle per
            # kind of task, its output directory replaced by each task's (of the same length: the
            # task keys of a node have one width)
            out_dir = f"{task.output_base(self.rt)}.{attempt}.00000000"
            if isinstance(task, HashPartitionTask):
                kind = ("partitioned", task.node.npartitions, len(out_dir))
            elif isinstance(task, MaterializeSourceTask):
                kind = ("source", producers, len(out_dir))
            else:
                kind = ("file", 1, len(out_dir))
            template = self.blobs.get(kind)
            if template is None:
                if kind[0] == "partitioned":
                    out = PartitionedDataSet(
                        [ParquetDataSet.from_files([f"{out_dir}/bucket={i}/0.parquet"]) for i in range(kind[1])]
                    )
                else:
                    out = ParquetDataSet.from_files([f"{out_dir}/{i}.parquet" for i in range(kind[1])])
                template = self.blobs[kind] = (out_dir.encode(), pickle.dumps(out))
            blob = template[1].replace(template[0], out_dir.encode())
            self.done.append(Completion(task.key, attempt, True, pickle.loads(blob), worker="instant"))

        def poll(self, timeout):
            out, self.done = self.done, []
            return out

        def cancel(self, key, attempt=None) -> None:
            pass

        def shutdown(self) -> None:
            pass

    rt = make_runtime_ctx(str(uuid.uuid4()), None, data_root)
    rt.task_cache = os.path.join(rt.job_root, "task_cache") if task_cache else None
    rt.initialize()
    plan = gray_sort_shaped_plan(producers, consumers)
    t0 = time.perf_counter()
    exec_plan = Planner(rt, parallelism=producers).create_exec_plan(plan)
    t1 = time.perf_counter()
    scheduler = Scheduler(rt, InstantExecutor(rt), cache=JobCache(rt) if task_cache else None)
    scheduler.run([exec_plan.root_task], exec_plan.tasks)
    t2 = time.perf_counter()
    tasks = len(exec_plan.tasks)
    if len(scheduler.state.done) != tasks:
        raise AssertionError(f"{len(scheduler.state.done)} of {tasks} tasks done")
    return {
        "tasks": tasks,
        "producers": producers,
        "consumers": consumers,
        "task_cache": task_cache,
        "plan_seconds": t1 - t0,
        "schedule_seconds": t2 - t1,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="10k,30k,100k", help="plan sizes, comma-separated (default 10k,30k,100k)")
    p.add_argument("--producers", type=int, default=64, help="shuffle producers = data partitions (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="runs per size; medians are reported (default 3)")
    p.add_argument("--data-dir", default=common.DEFAULT_DATA_DIR)
    p.add_argument(
        "--task-cache",
        choices=("on", "off"),
        default="on",
        help="key, look up and index every task in a task cache, as a job does by default (default on)",
    )
    p.add_argument("--append-results", action="store_true")
    args = p.parse_args(argv)
    sizes = [common.parse_count(s) for s in args.tasks.split(",")]
    root = os.path.join(args.data_dir, "scale-root")
    common.print_header(
        "scale: plan + schedule against an instant executor",
        {"sizes": sizes, "producers": args.producers, "task cache": args.task_cache},
    )
    rows = []
    for n in sizes:
        runs = []
        for _ in range(args.repeat):
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, common.REPO_ROOT, str(n), str(args.producers), root, args.task_cache],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r["plan_seconds"] + r["schedule_seconds"])
        med = runs[len(runs) // 2]
        total = med["plan_seconds"] + med["schedule_seconds"]
        per_task_us = total / med["tasks"] * 1e6
        peak = max(r["peak_rss_bytes"] for r in runs)
        rows.append((med["tasks"], med["plan_seconds"], med["schedule_seconds"], per_task_us, peak))
        print(
            f"{med['tasks']:>7} tasks ({med['producers']} producers x {med['consumers']} consumers): "
            f"plan {med['plan_seconds']:.2f} s, schedule {med['schedule_seconds']:.2f} s, "
            f"{per_task_us:.0f} us/task, peak RSS {common.human_bytes(peak)} (median of {len(runs)})"
        )
        if args.append_results:
            common.append_results(
                "scale",
                f"GraySort-shaped plan, {med['tasks']} tasks ({med['producers']} x {med['consumers']}), instant executor, task cache {args.task_cache}",
                f"plan {med['plan_seconds']:.2f} s + schedule {med['schedule_seconds']:.2f} s, peak {common.human_bytes(peak)}",
                "—",
                f"{per_task_us:.0f} us/task",
            )
    common.remove(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
