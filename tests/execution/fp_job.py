"""A job whose user code captures the values that used to break fingerprints (run as a script).

    python fp_job.py DATA_ROOT JOB_ID INPUT.parquet

Prints one JSON line: the planner's task fingerprints, how many tasks run on workers and how
many were resumed from commit records, and the job's result rows. ``FP_FACTOR`` (environment) sets a
module-level constant that one process function reads.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading

import numpy as np
import pandas as pd
import pyarrow as pa

from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan, RootNode, SqlEngineNode
from smallpond.logical.udf import UDFType

FACTOR = int(os.environ.get("FP_FACTOR", "2"))


class Tree:
    """An object graph with cycles (a parent and children pointing back at it)."""

    def __init__(self, n: int) -> None:
        self.parent = None
        self.me = self
        self.children = [Tree.__new__(Tree) for _ in range(n)]
        for c in self.children:
            c.parent, c.me, c.children = self, c, []


class Client:
    """Holds a lock, which it drops when pickled (as clients of services do)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.lock = threading.Lock()

    def __getstate__(self):
        return {"offset": self.offset}

    def __setstate__(self, state):
        self.offset = state["offset"]
        self.lock = threading.Lock()


def make_scaler():
    import pyarrow.compute as pc  # a module captured by the closure below

    tree = Tree(3)
    weights = np.arange(200_000, dtype=np.float64)  # a large array
    frame = pd.DataFrame({"k": ["a", "b"], "v": [1, 2]})
    tags = {"x", "y", "z"}
    client = Client(1)

    def scale(runtime_ctx, tables, step):
        t = tables[0]
        assert len(tree.children) == 3 and tree.children[0].parent is tree
        assert weights[3] == 3.0 and frame["v"].sum() == 3 and "x" in tags
        with client.lock:
            return t.append_column("scaled", pc.add(pc.multiply(t["id"], step), client.offset))

    return functools.partial(scale, step=10)


def times_factor(runtime_ctx, tables):
    t = tables[0]
    return pa.table({"id": t["id"], "f": pa.array([v * FACTOR for v in t["id"].to_pylist()], pa.int64())})


def plus_one(x):
    return x + 1


def main(data_root: str, job_id: str, path: str) -> None:
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([path]))
    a = ArrowComputeNode(ctx, (src,), process_func=make_scaler(), output_name="scaled")
    b = ArrowComputeNode(ctx, (src,), process_func=times_factor, output_name="factor")
    # a UDF registered by name: its function enters the fingerprint
    ctx.create_function("plus_one", plus_one, [UDFType.BIGINT], UDFType.BIGINT)
    c = SqlEngineNode(ctx, (src,), "select id, plus_one(id) as p from {0}", udfs=["plus_one"], output_name="udf")
    plan = LogicalPlan(ctx, RootNode(ctx, [a, b, c]))
    ep = run_job(plan, make_runtime_ctx(job_id, None, data_root))
    rows = {name: ep.get_output(name).to_arrow_table().to_pylist() for name in ("scaled", "factor", "udf")}
    fps = {k: t.fingerprint for k, t in ep.tasks.items()}
    on_workers = sum(not t.exec_on_scheduler for t in ep.tasks.values())
    out = {"fingerprints": fps, "on_workers": on_workers, "resumed": ep.num_resumed, "rows": rows}
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
