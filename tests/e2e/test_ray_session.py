"""Acceptance on Ray: the README quick start through ``smallpond.init(ray_address=...)`` on a real
two-worker-node cluster gives the embedded result with its tasks on the worker nodes;
``SP_RAY_ADDRESS`` runs the quick-start example there unchanged; the Driver's ``--ray_address``
selects Ray; the Driver's ``ray`` mode runs a plan rooted at a ``RootNode`` (several outputs) on the
worker nodes and resumes it; ``shutdown()`` disconnects from a cluster it did not start and stops one it did.

Every scenario runs as a user runs it: a fresh Python process.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import uuid

import duckdb
import pytest

from tests.ray_cluster import get_cluster

pytestmark = pytest.mark.ray

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUICKSTART = """
import glob, json, os, sys
import smallpond
from smallpond.io.filesystem import load

address, prices, output, data_root = sys.argv[1:5]
sp = smallpond.init(ray_address=address or None, data_root=data_root)
df = sp.read_parquet(prices)
df = df.repartition(3, hash_by="ticker")
df = sp.partial_sql("SELECT ticker, min(price), max(price) FROM {0} GROUP BY ticker", df)
df.write_parquet(output)
result = df.to_pandas().sort_values("ticker")
rt = sp.runtime_ctx
records = [load(p, secret=rt.secret) for p in glob.glob(os.path.join(rt.completed_task_dir, "*.commit"))]
workers = [r["worker"] for r in records if r.get("worker")]  # (a sink commits at publication, in the driver)
sp.shutdown()
print(json.dumps({"rows": result.values.tolist(), "workers": workers}))
"""


def run_python(code_or_path, *args, env_extra=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, SP_PROGRESS="0", **(env_extra or {}))
    argv = [code_or_path] if os.path.exists(code_or_path) else ["-c", code_or_path]
    return subprocess.run([sys.executable, *argv, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def make_prices(path: str, rows: int = 20_000) -> None:
    duckdb.sql(
        f"COPY (SELECT 'T' || (range % 50) AS ticker, (hash(range) % 100000) / 100.0 AS price FROM range({rows})) TO '{path}'"
    )


def test_quickstart_on_the_cluster_runs_on_worker_nodes_with_the_embedded_result(tmp_path):
    cluster = get_cluster()
    prices = str(tmp_path / "prices.parquet")
    make_prices(prices)
    runs = {}
    for name, address in [("ray", cluster.address), ("embedded", "")]:
        proc = run_python(QUICKSTART, address, prices, str(tmp_path / f"out-{name}"), str(tmp_path / f"root-{name}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["ray"]["rows"] == runs["embedded"]["rows"]
    assert len(runs["ray"]["rows"]) == 50
    workers = runs["ray"]["workers"]
    assert len(workers) >= 4  # the hash partition, the three SQL tasks, the sink...
    nodes = {w.split("/ray-node-")[1].split("/")[0] for w in workers}
    assert nodes <= set(cluster.worker_node_ids()), (nodes, cluster.worker_node_ids())
    assert cluster.head_node_id not in nodes
    assert all("/local-" in w for w in runs["embedded"]["workers"])


def test_sp_ray_address_runs_the_quickstart_example_unchanged(tmp_path):
    cluster = get_cluster()
    prices = str(tmp_path / "prices.parquet")
    make_prices(prices)
    data_root = str(tmp_path / "sp_data")
    env = {"SP_RAY_ADDRESS": cluster.address, "SP_DATA_ROOT": data_root}
    proc = run_python(os.path.join(REPO, "examples", "quickstart.py"), prices, str(tmp_path / "output"), env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = duckdb.sql(f"select * from read_parquet('{tmp_path}/output/*.parquet') order by ticker").fetchall()
    want = duckdb.sql(f"select ticker, min(price), max(price) from '{prices}' group by ticker order by ticker").fetchall()
    assert got == want
    (log,) = glob.glob(os.path.join(data_root, "*", "log", "*.log"))
    text = open(log).read()
    assert f"on ray at {cluster.address}" in text
    # without num_executors the whole cluster takes part, and the log names its nodes
    assert "2 node(s) run tasks" in text and all(n in text for n in cluster.worker_node_ids())


def test_driver_ray_address_selects_ray_in_scheduler_mode(tmp_path):
    cluster = get_cluster()
    from tests.datagen import generate_mock_urls

    urls = generate_mock_urls(str(tmp_path / "urls"), nfiles=2, nlines=20)
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    example = os.path.join(REPO, "examples", "sort_mock_urls.py")
    args = ["scheduler", "--job_id", job_id, "--data_root", data_root, "--ray_address", cluster.address]
    proc = run_python(example, *args, "-i", *urls, "-n", "2", "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (log,) = glob.glob(os.path.join(data_root, f"*.{job_id}", "log", "scheduler.log"))
    assert f"on ray at {cluster.address}" in open(log).read()


ROOTED_AT_ROOT_NODE = """
import glob, json, os, sys
from smallpond.execution.driver import Driver
from smallpond.io.filesystem import load
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context, DataSetPartitionNode, DataSinkNode, DataSourceNode, LogicalPlan, PythonScriptNode, RootNode, SqlEngineNode,
)


def count_rows(runtime_ctx, input_datasets, output_path):
    with open(os.path.join(output_path, "rows.txt"), "w") as f:
        f.write(str(sum(ds.num_rows for ds in input_datasets)))
    return True


driver = Driver()
driver.add_argument("-i", "--input")
driver.add_argument("-o", "--output")
args = driver.get_arguments()
ctx = Context()
parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([args["input"]])),), 2)
evens = SqlEngineNode(ctx, (parts,), "select * from {0} where a % 2 = 0", output_name="evens")
odds = SqlEngineNode(ctx, (parts,), "select * from {0} where a % 2 = 1")
sink = DataSinkNode(ctx, (odds,), output_path=args["output"], type="copy")
counted = PythonScriptNode(ctx, (odds,), process_func=count_rows, output_name="counted")
plan = LogicalPlan(ctx, RootNode(ctx, (evens, sink, counted)))
ep = driver.run(plan, stop_process_on_done=False)
rt = ep.ctx
records = [load(p, secret=rt.secret) for p in glob.glob(os.path.join(rt.completed_task_dir, "*.commit"))]
print(json.dumps({
    "evens": ep.get_output("evens").num_rows,
    "counted": sorted(open(p).read() for p in ep.get_output("counted").resolved_paths),
    "workers": [r["worker"] for r in records if r.get("worker")],
}))
"""


def test_driver_ray_mode_runs_a_plan_rooted_at_a_root_node(tmp_path):
    """Upstream's ``ray`` mode computes ``plan.root_node`` (reference §4.5), and scripts with several
    outputs root their plan at a ``RootNode``: every branch runs as Ray tasks on the worker nodes,
    each output is published, the job exits 0, and the same command again resumes every task."""
    cluster = get_cluster()
    data = str(tmp_path / "in.parquet")
    duckdb.sql(f"COPY (SELECT range AS a FROM range(100)) TO '{data}'")
    script = tmp_path / "rooted.py"
    script.write_text(ROOTED_AT_ROOT_NODE)
    out, data_root, job_id = str(tmp_path / "out"), str(tmp_path / "root"), str(uuid.uuid4())
    argv = ["ray", "--ray_address", cluster.address, "--job_id", job_id, "--data_root", data_root, "-i", data, "-o", out]
    proc = run_python(str(script), *argv, env_extra={"SP_TASK_CACHE": "off"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["evens"] == 50 and got["counted"] == ["0", "50"]  # (one file: partitions by files are 1 + 0 files)
    assert sorted(duckdb.sql(f"select a from read_parquet('{out}/*.parquet')").fetchnumpy()["a"].tolist()) == list(
        range(1, 100, 2)
    )
    nodes = {w.split("/ray-node-")[1].split("/")[0] for w in got["workers"]}
    assert nodes and nodes <= set(cluster.worker_node_ids()), (nodes, cluster.worker_node_ids())
    assert len(got["workers"]) >= 6  # two tasks for each of the three branches
    (log,) = glob.glob(os.path.join(data_root, f"*.{job_id}", "log", "scheduler.log"))
    assert f"on ray at {cluster.address}" in open(log).read()
    again = run_python(str(script), *argv, env_extra={"SP_TASK_CACHE": "off"})
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.search(r"tasks +0 run, (\d+) resumed", again.stderr)  # (the summary's line)
    assert resumed and int(resumed.group(1)) >= 6, again.stderr[-3000:]


def test_driver_ray_mode_without_an_address_runs_on_a_private_instance(tmp_path):
    """Upstream's ray mode ran ``smallpond.init()``, which without ``SP_RAY_ADDRESS`` started a
    private Ray instance (``ray.init(address="local")``, reference §1.2 and §4.5). With a cluster
    running on this machine (the test cluster), ``python script.py ray`` without an address must not
    join it (Ray's own default would: the latest cluster started here), and still run every task."""
    cluster = get_cluster()
    data = str(tmp_path / "in.parquet")
    duckdb.sql(f"COPY (SELECT range AS a FROM range(100)) TO '{data}'")
    script = tmp_path / "rooted.py"
    script.write_text(ROOTED_AT_ROOT_NODE)
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SP_RAY_ADDRESS")}
    env.update(SP_PROGRESS="0", SP_TASK_CACHE="off")
    argv = ["ray", "--job_id", job_id, "--data_root", data_root, "-i", data, "-o", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["evens"] == 50 and got["counted"] == ["0", "50"]
    nodes = {w.split("/ray-node-")[1].split("/")[0] for w in got["workers"]}
    assert nodes and not nodes & set(cluster.worker_node_ids()), (nodes, cluster.worker_node_ids())
    (log,) = glob.glob(os.path.join(data_root, f"*.{job_id}", "log", "scheduler.log"))
    text = open(log).read()
    assert "on ray at local" in text and cluster.address not in text


SHUTDOWN = """
import sys, ray, smallpond
address, data_root, connect_first = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if connect_first:
    ray.init(address=address, log_to_driver=False)
sp = smallpond.init(ray_address=address, data_root=data_root)
assert sp.from_items([1, 2, 3]).count() == 3
sp.shutdown()
print("connected" if ray.is_initialized() else "disconnected")
"""


def test_shutdown_disconnects_only_what_it_connected_and_leaves_the_cluster_running(tmp_path):
    cluster = get_cluster()
    for connect_first, expected in [("0", "disconnected"), ("1", "connected")]:
        proc = run_python(SHUTDOWN, cluster.address, str(tmp_path / f"root{connect_first}"), connect_first)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == expected
    # a cluster it did not start keeps running: every process of the head and the worker nodes
    assert all(node.remaining_processes_alive() for node in [cluster.cluster.head_node, *cluster.workers])


LOCAL = """
import sys, psutil, ray, smallpond
sp = smallpond.init(ray_address="local", data_root=sys.argv[1], num_executors=1)
assert sp.from_items([1, 2, 3]).count() == 3
ray_processes = [p for p in psutil.Process().children(recursive=True) if "raylet" in p.name() or "gcs_server" in p.name()]
assert ray_processes, "no private Ray instance was started"
sp.shutdown()
gone, alive = psutil.wait_procs(ray_processes, timeout=30)
print(len(ray_processes), len(alive), ray.is_initialized())
"""


def test_ray_address_local_starts_a_private_instance_and_shutdown_stops_it(tmp_path):
    pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra (CI installs it)")
    proc = run_python(LOCAL, str(tmp_path / "root"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    started, alive, connected = proc.stdout.strip().splitlines()[-1].split()
    assert int(started) >= 2 and alive == "0" and connected == "False"
