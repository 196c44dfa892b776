"""The Ray backend: every attempt is one Ray task on a Ray cluster.

Our scheduler keeps every decision (what runs, retries, memory after out-of-memory, checkpoints,
resume, fault injection); Ray only places attempts on nodes and runs them. So each attempt is
submitted with ``max_retries=0`` and ``retry_exceptions=False``, and runs
:func:`~smallpond.execution.attempt.run_attempt` exactly as a local worker does: temp dir, run,
atomic rename, signed commit record on the shared data root. A killed driver resumes from those
records, on Ray as embedded.

Invariants:

* **Resources.** An attempt asks Ray for ``num_cpus=task.cpu_limit`` and ``memory=`` the memory
  the scheduler gave it, both clamped to the largest node that runs tasks (a request no node can
  meet would wait forever), with one warning per node.
* **Nodes.** The nodes that take part are the alive ones with CPUs (a head started with
  ``--num-cpus 0`` runs no attempt); they are logged at start and re-read about once a second, so
  the capacity follows nodes joining and leaving. Without ``num_workers`` the whole cluster is used.
* **The data root.** At start every taking-part node runs a task pinned to it that reads a marker
  written under the job folder and writes a reply; a node that cannot see or write the data root
  fails the start within seconds, naming the node (id, IP, host name). A node joining later is
  checked the same way, and the job fails if it cannot see the data root. (This check, which is no
  attempt, is the one task Ray retries itself: when its worker process dies, the node may be fine.)
* **Lost workers.** A Ray worker, raylet or node that dies under an attempt (``WorkerCrashedError``,
  ``NodeDiedError``, ``OwnerDiedError``, ``ObjectLostError``, ``RayActorError``, ...) is reported as a
  :class:`~smallpond.errors.WorkerLost` Completion, which the scheduler retries elsewhere; Ray's
  out-of-memory killer becomes :class:`~smallpond.errors.OutOfMemory`.
* **The user's code as it is now.** A session's computations may follow an edit of a module its
  tasks import, which a Ray worker process keeps loaded (:meth:`RayExecutor.restart_workers`). On
  a connection this executor made, it reconnects: a new Ray job has new worker processes. On a
  connection the user made (``ray.init`` before), which it must not end, its attempts carry a
  ``runtime_env`` of their own (the environment variable :data:`WORKER_GENERATION`): Ray runs
  them only in worker processes started for that environment, never in the user's own or in
  those of an earlier session, and a restart takes a new generation, so new worker processes.
* **Cancelling asks, and never through Ray.** ``ray.cancel`` on an attempt that may be running,
  forced or not, races in Ray 2.60 with the attempt's reply, and Ray's core worker then aborts
  the driver ("Tried to complete task that was not pending"). So a cancelled attempt is marked on
  the shared data root and forgotten; the worker process sees the mark within a fraction of a
  second and stops it: a KeyboardInterrupt in its code, an interrupt of its DuckDB queries, and
  no commit record after that, whatever its code does
  (:mod:`~smallpond.execution.executors.cancel_marks`).
* **Shipping.** The runtime context and each node are put into Ray's object store once per job
  and node; an attempt carries references to them and its own small pickled body. A Ray worker
  process sets itself up once per job (task log sink, environment overrides, the driver's working
  directory, one shared DuckDB database), as a local worker process does; each node carries the
  driver's import path (:func:`~smallpond.execution.executors.base.load_with_import_path`).

Addresses (``smallpond.init(ray_address=...)``, ``SP_RAY_ADDRESS``, the Driver's ``--ray_address``):
``"host:port"`` (or ``"ray://host:port"``) connects to that cluster; ``"auto"`` to the cluster
started on this machine with ``ray start``; ``"local"`` starts a private single-machine Ray
instance for this job; ``None`` is Ray's own default (``RAY_ADDRESS``, else the latest cluster
started on this machine, else a new local instance). A process already connected to Ray is
used as it is. :meth:`RayExecutor.shutdown` disconnects only if it connected, which also stops a
local instance it started; it never stops a cluster it did not start.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import cloudpickle
import ray
import ray.exceptions as rex
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from smallpond.common import logger
from smallpond.errors import ClusterError, OutOfMemory, WorkerLost
from smallpond.execution.attempt import run_attempt, to_task_error
from smallpond.execution.executors.base import Capacity, Completion, Executor, encode_attempt, pickle_node_for_workers
from smallpond.execution.executors.cancel_marks import CancelMarks, CancelWatch
from smallpond.execution.executors.local import QUEUE_BEHIND_SECONDS, _pickle_error
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import Task

#: Ray errors meaning the process or machine running an attempt is gone (retry elsewhere)
LOST_ERRORS = (
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.OwnerDiedError,
    rex.ObjectLostError,
    rex.RayActorError,
    rex.LocalRayletDiedError,
    rex.TaskUnschedulableError,
    rex.RuntimeEnvSetupError,
    rex.RaySystemError,
)

#: the environment variable that tags the worker processes of one generation of attempts on a
#: Ray connection the user made (Ray starts new worker processes for a new value)
WORKER_GENERATION = "SMALLPOND_WORKER_GENERATION"
#: seconds between two reads of the cluster's nodes while a job runs
NODE_REFRESH_SECONDS = 1.0
#: seconds every node has to answer the data-root check
CHECK_TIMEOUT_SECONDS = 60.0
#: seconds a worker has to take a stack request (say it is answering): its watcher polls every
#: 0.2 s and then waits for the GIL and, on a loaded machine, for a CPU (as the queue backend's 2 s)
STACKS_WAIT = 2.0
#: how many times Ray runs a data-root check again whose worker process died
CHECK_WORKER_RETRIES = 2
#: seconds to reach a cluster's address before connecting (ray.init waits minutes for a dead one)
REACH_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class RayNode:
    """A Ray node that runs attempts: its id, address, CPUs and memory (Ray's ``memory`` resource)."""

    node_id: str
    ip: str
    hostname: str
    cpus: int
    memory: int

    def __str__(self) -> str:
        return f"node {self.node_id} at {self.ip} ({self.hostname})"


def connect(address: Optional[str]) -> bool:
    """Connect this process to Ray at ``address`` (see the module docstring for what values mean).

    Returns True if this call connected (so the caller disconnects at the end), False if the
    process was connected already.
    """
    if ray.is_initialized():
        return False
    _reach(address)
    kwargs = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address or None, **kwargs)
    except ConnectionError as e:
        raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {e}") from e
    return True


def _reach(address: Optional[str]) -> None:
    """Fail at once if ``host:port`` takes no connection (``ray.init`` would retry for minutes)."""
    address = address or os.environ.get("RAY_ADDRESS")  # what Ray itself would use
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray judges it
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_SECONDS).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {e}") from e


def task_nodes(gone: Set[str] = frozenset()) -> Dict[str, RayNode]:
    """The alive nodes with CPUs, by node id (from ``ray.nodes()``), except those known ``gone``."""
    out: Dict[str, RayNode] = {}
    for n in ray.nodes():
        if not n.get("Alive") or n["NodeID"] in gone:
            continue
        res = n.get("Resources") or {}
        cpus = int(res.get("CPU", 0))
        if cpus <= 0:
            continue
        out[n["NodeID"]] = RayNode(
            n["NodeID"], n.get("NodeManagerAddress", "?"), n.get("NodeManagerHostname", "?"), cpus, int(res.get("memory", 0))
        )
    return out


# -- the data-root check ---------------------------------------------------------------------------


def _read_marker(marker: str, token: str, reply_dir: str) -> dict:
    """On a node: read the driver's marker and answer in ``reply_dir`` (the node's view of the data root)."""
    node_id = ray.get_runtime_context().get_node_id()
    try:
        with open(marker) as f:
            seen = f.read()
        if seen != token:
            return {"error": f"{marker} holds other content there: that node sees another filesystem at this path"}
        with open(os.path.join(reply_dir, f"{node_id}.reply"), "w") as f:
            f.write(token)
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"error": None}


_read_marker_remote = ray.remote(_read_marker)


def worker_runtime_env(rt: RuntimeContext) -> Optional[dict]:
    """The Ray runtime environment of the job's attempts: what must be in the environment a
    worker process starts with, its ``PYTHONHASHSEED``
    (:func:`~smallpond.execution.worker.worker_hash_seed`) and the Arrow memory setting
    (:func:`~smallpond.execution.worker.worker_env_vars`). Ray starts workers for it and keeps
    them for the next attempts; the data-root checks use it too, so the first attempts find them
    started. A variable the Ray job's own runtime environment sets is left to it (Ray merges
    ``env_vars`` key by key); None if nothing is left."""
    from smallpond.execution.worker import ARROW_HUGE_PAGES_VARIABLE, worker_env_vars, worker_hash_seed

    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    env_vars = {}
    if "PYTHONHASHSEED" not in job_env:
        env_vars["PYTHONHASHSEED"] = worker_hash_seed(rt, os.environ)
    if ARROW_HUGE_PAGES_VARIABLE not in job_env:
        env_vars.update(worker_env_vars(rt, os.environ))
    return {"env_vars": env_vars} if env_vars else None


def start_node_checks(rt: RuntimeContext, nodes: List[RayNode]) -> Tuple[str, str, Dict[object, RayNode]]:
    """Write a marker under the job folder and start one check task pinned to each node.

    Returns (the check folder, its token, {ref: node}); :func:`finish_node_checks` reads the answers.
    """
    token = uuid.uuid4().hex
    folder = os.path.join(rt.temp_root, f"ray-node-check-{token[:12]}")
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, "marker")
    with open(marker, "w") as f:
        f.write(token)
    refs = {}
    for node in nodes:
        ref = _read_marker_remote.options(
            num_cpus=0,
            # Ray runs the check again if its worker process dies (killed, out of memory): a dead
            # worker says nothing of its node, which was taken for gone (a one-node cluster then
            # failed the job, "no alive node"); a dead node still fails it, as unschedulable
            max_retries=CHECK_WORKER_RETRIES,
            name="smallpond-data-root-check",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            runtime_env=worker_runtime_env(rt),
        ).remote(marker, token, folder)
        refs[ref] = node
    return folder, token, refs


def finish_node_checks(
    rt: RuntimeContext, folder: str, token: str, refs: Dict[object, RayNode], ready: List
) -> Tuple[List[str], Set[str]]:
    """(the problems found by the finished check tasks ``ready``, one line per failing node; the ids
    of nodes that died meanwhile).

    A node killed shortly before is listed as alive until Ray's health checks notice (seconds);
    a check pinned to it fails as unschedulable. That node is gone, not unable to see the data root.
    """
    problems = []
    gone: Set[str] = set()
    for ref in ready:
        node = refs[ref]
        try:
            error = ray.get(ref)["error"]
        except (rex.TaskUnschedulableError, rex.NodeDiedError, rex.WorkerCrashedError, rex.LocalRayletDiedError) as e:
            logger.warning("Ray {} is gone (its data-root check: {}); it takes no part", node, _first_line(e))
            gone.add(node.node_id)
            continue
        except rex.RayError as e:
            error = f"the check task failed there: {type(e).__name__}: {str(e).strip().splitlines()[-1]}"
        if error is None:
            reply = os.path.join(folder, f"{node.node_id}.reply")
            try:
                with open(reply) as f:
                    if f.read() != token:
                        error = f"what it wrote to {reply} is not what this machine reads there"
            except OSError:
                error = f"it wrote {reply}, but this machine does not see it (not a shared filesystem)"
        if error is not None:
            problems.append(f"{node}: {error}")
    return problems, gone


def check_nodes(rt: RuntimeContext, nodes: List[RayNode], timeout: float = CHECK_TIMEOUT_SECONDS) -> Set[str]:
    """Raise :class:`ClusterError` naming every node in ``nodes`` that cannot read and write the data root.

    Returns the ids of the nodes found dead meanwhile.
    """
    from smallpond.io.filesystem import remove_path

    if not nodes:
        return set()
    folder, token, refs = start_node_checks(rt, nodes)
    try:
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        problems, gone = finish_node_checks(rt, folder, token, refs, ready)
        for ref in pending:  # left as they are (see the module docstring on ray.cancel)
            problems.append(f"{refs[ref]}: did not answer within {timeout:.0f} s")
    finally:
        remove_path(folder)
    if problems:
        raise ClusterError(
            f"{len(problems)} Ray node(s) cannot use the data root {rt.data_root} (every node that runs tasks must "
            "see it at the same path, on a shared filesystem):\n  " + "\n  ".join(problems)
        )
    return gone


# -- the worker side ---------------------------------------------------------------------------------

_worker_job: Dict[str, object] = {"key": None, "rt": None, "name": "", "cancelled": ""}
_worker_nodes = None  # a NodeCache, created with the first attempt
_watch: Optional[CancelWatch] = None  # stops a cancelled attempt (one per process)


def _setup_worker(job_ref) -> RuntimeContext:
    """Set this Ray worker process up for the job of ``job_ref`` (once per process and job)."""
    global _worker_nodes, _watch
    key = job_ref.hex()
    if _worker_job["key"] == key:
        return _worker_job["rt"]
    from smallpond.execution import attempt
    from smallpond.execution.attempt import install_task_log_sink
    from smallpond.execution.ops.duckdb import interrupt_connections, share_database_in_process
    from smallpond.execution.worker import NodeCache, setup_worker_process

    job = cloudpickle.loads(ray.get(job_ref))
    rt: RuntimeContext = job["rt"]
    setup_worker_process(rt, "smallpond-ray-worker")
    install_task_log_sink(rt.file_log_level)
    share_database_in_process()
    if _watch is None:
        _watch = CancelWatch(interrupt_connections)
    attempt.cancel_check = _watch.cancelled  # no commit record once cancelled
    if os.path.isdir(job["cwd"]):  # relative paths in a plan mean what they mean to the driver
        os.chdir(job["cwd"])
    ctx = ray.get_runtime_context()
    name = f"{ray.util.get_node_ip_address()}/ray-node-{ctx.get_node_id()}/pid-{os.getpid()}"
    _worker_job.update(key=key, rt=rt, name=name, cancelled=job["cancelled"])
    _worker_nodes = NodeCache()
    return rt


def _attempt_on_worker(job_box: list, node_box: list, body: bytes) -> Completion:
    """A Ray task: one attempt. ``job_box``/``node_box`` hold object refs, resolved here once per process."""
    rt = _setup_worker(job_box[0])
    node_ref = node_box[0]
    node_key = node_ref.hex()
    if node_key not in _worker_nodes:
        _worker_nodes.add(node_key, ray.get(node_ref))
    from smallpond.execution.ops.duckdb import track_connections
    from smallpond.execution.worker import decode_attempt, load_node

    task, inputs, attempt, memory = decode_attempt(_worker_nodes, node_key, body)
    failed = load_node(_worker_nodes, node_key, task, attempt, _worker_job["name"])
    if failed is not None:
        return failed
    track_connections()  # this attempt's, interrupted if it is cancelled
    _watch.begin(_worker_job["cancelled"], task.key, attempt)
    try:
        return run_attempt(rt, task, inputs, attempt, memory, _worker_job["name"])
    finally:
        _watch.end()
        track_connections()


_attempt_remote = ray.remote(_attempt_on_worker)


# -- the driver side ---------------------------------------------------------------------------------


class RayExecutor(Executor):
    """Attempts as Ray tasks on the cluster at ``address``.

    Args:
        runtime_ctx: the job's runtime context (its data root must be shared by every node).
        address: the Ray address (see the module docstring); None is Ray's default.
        num_workers: at most this many attempts at once (default: one per CPU of the cluster).
        check_timeout: seconds every node has to answer the data-root check.

    Example::

        executor = RayExecutor(rt, "10.0.0.5:6379")
        run_job(plan, rt, executor=executor)
    """

    name = "ray"

    def __init__(
        self,
        runtime_ctx: RuntimeContext,
        address: Optional[str] = None,
        num_workers: Optional[int] = None,
        *,
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self.rt = runtime_ctx
        self.address = address
        self.max_workers = num_workers if num_workers and num_workers > 0 else None
        self.check_timeout = check_timeout
        self.nodes: Dict[str, RayNode] = {}
        self._capacity = Capacity(0, 0, 0)
        self._connected_here = False
        self._marks: Optional[CancelMarks] = None
        self._generation: Optional[str] = None  # on the user's connection: this run's worker generation
        self._started = False
        self._job_ref = None
        self._runtime_env: Optional[dict] = None
        self._inflight: Dict[Tuple[str, int], Tuple[object, Task]] = {}  # (key, attempt) -> (ref, task)
        self._by_ref: Dict[object, Tuple[str, int]] = {}
        # a node is put into the object store once; held with the node, so an id() is not reused
        self._node_refs: Dict[int, Tuple[object, object]] = {}
        self._warned: Set[int] = set()
        self._next_refresh = 0.0
        self._checks: Optional[Tuple[str, str, Dict[object, RayNode]]] = None  # one round at a time
        self._unchecked: Set[str] = set()  # joined, not checked yet
        self._gone: Set[str] = set()  # nodes found dead while Ray still listed them as alive
        self._node_times: Dict[int, List[float]] = {}  # node id -> [attempts, total seconds]

    # -- capacity ----------------------------------------------------------------------------------
    @property
    def capacity(self) -> Capacity:
        return self._capacity

    def attempt_limits(self) -> Tuple[int, int]:
        if not self.nodes:  # not started, or every node left: nothing to clamp against
            return 1, self.rt.usable_memory_size
        return max(n.cpus for n in self.nodes.values()), max(n.memory for n in self.nodes.values())

    def _set_nodes(self, nodes: Dict[str, RayNode]) -> None:
        self.nodes = nodes
        cpus = sum(n.cpus for n in nodes.values())
        workers = min(self.max_workers, cpus) if self.max_workers else cpus
        capacity = Capacity(workers, cpus, sum(n.memory for n in nodes.values()))
        if capacity != self._capacity:
            self._capacity = capacity

    def _refresh_nodes(self) -> None:
        """Re-read the cluster's nodes; check the data root on nodes that joined."""
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + NODE_REFRESH_SECONDS
        self._collect_checks()
        self._start_checks()
        nodes = task_nodes(self._gone)
        if nodes.keys() == self.nodes.keys():
            return
        joined = [nodes[k] for k in nodes.keys() - self.nodes.keys()]
        for k in self.nodes.keys() - nodes.keys():
            logger.warning("Ray {} left the cluster; attempts running there are retried elsewhere", self.nodes[k])
        for n in joined:
            logger.info("Ray {} joined the cluster with {} CPU(s)", n, n.cpus)
        self._set_nodes(nodes)
        self._unchecked |= {n.node_id for n in joined}
        self._start_checks()

    def _start_checks(self) -> None:
        """Check the data root on the nodes that joined (one round at a time; joiners wait their turn)."""
        todo = [self.nodes[k] for k in self._unchecked if k in self.nodes]
        self._unchecked = set()
        if todo and self._checks is None:
            self._checks = start_node_checks(self.rt, todo)
        else:
            self._unchecked = {n.node_id for n in todo}

    def _collect_checks(self) -> None:
        if self._checks is None:
            return
        from smallpond.io.filesystem import remove_path

        folder, token, refs = self._checks
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        if len(ready) < len(refs):
            return  # still starting; a node that never answers runs nothing either
        self._checks = None
        problems, gone = finish_node_checks(self.rt, folder, token, refs, ready)
        remove_path(folder)
        if gone:
            self._gone |= gone
            self._set_nodes({k: n for k, n in self.nodes.items() if k not in gone})
        if problems:
            raise ClusterError(
                f"a Ray node that joined cannot use the data root {self.rt.data_root}:\n  " + "\n  ".join(problems)
            )
        self._start_checks()

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._connected_here = connect(self.address)
        # on the user's connection, worker processes of our own: others may hold an older version
        # of the user's modules (a session before this one, the user's own tasks)
        self._generation = None if self._connected_here else uuid.uuid4().hex
        try:
            self._runtime_env = worker_runtime_env(self.rt)
            nodes = task_nodes()
            self._gone = check_nodes(self.rt, list(nodes.values()), self.check_timeout)
            nodes = {k: n for k, n in nodes.items() if k not in self._gone}
            if not nodes:
                raise ClusterError(f"the Ray cluster at {self.address or 'the default address'} has no alive node with CPUs")
            self._set_nodes(nodes)
            logger.info(
                "Ray cluster {}: {} node(s) run tasks: {}",
                self.address or "(default address)",
                len(nodes),
                "; ".join(f"{n} with {n.cpus} CPU(s), {n.memory >> 20} MiB" for n in nodes.values()),
            )
            # one folder of cancel marks per start: a rerun's attempt 0 is not the cancelled attempt 0 of a run before
            self._marks = CancelMarks(os.path.join(self.rt.temp_root, f"ray-cancelled-{uuid.uuid4().hex[:12]}"))
            job = {"rt": self.rt, "cwd": os.getcwd(), "cancelled": self._marks.folder}
            _ = self.rt.secret  # loaded now, so workers get it with the context
            self._job_ref = ray.put(cloudpickle.dumps(job))
        except BaseException:
            self._disconnect()
            raise
        self._next_refresh = time.monotonic() + NODE_REFRESH_SECONDS
        self._started = True

    def _disconnect(self) -> None:
        if self._connected_here and ray.is_initialized():
            ray.shutdown()
        self._connected_here = False

    def forget_nodes(self, nodes) -> None:
        for node in nodes:
            self._node_refs.pop(id(node), None)

    def restart_workers(self, why: str) -> None:
        if not self._started:
            return
        if not (self._connected_here and ray.is_initialized()):
            # the connection is the user's: its Ray job and its worker processes live on, so
            # attempts from now on run in worker processes of a new generation
            self._generation = uuid.uuid4().hex
            logger.info("Ray: {}; later attempts run in new worker processes (generation {})", why, self._generation[:8])
            return
        logger.info("reconnecting to Ray ({}): a new Ray job has fresh worker processes", why)
        self.shutdown()
        self.start()

    def shutdown(self) -> None:
        # attempts still running are stopped: by Ray itself when this executor made the connection
        # (the disconnect ends the Ray job, whose worker processes Ray then kills), else each is
        # cancelled (by its mark: see the module docstring)
        if not (self._connected_here and ray.is_initialized()):
            for key, attempt in list(self._inflight):
                self.cancel(key, attempt)
        self._inflight.clear()
        self._by_ref.clear()
        self._node_refs.clear()
        self._job_ref = None
        self._checks = None
        self._unchecked = set()
        self._started = False
        self._disconnect()

    def describe(self) -> str:
        c = self.capacity
        return (
            f"ray at {self.address or '(default address)'}: {len(self.nodes)} node(s), {c.num_workers} worker slot(s), "
            f"{c.num_cpus} CPU(s), {c.memory >> 20} MiB"
        )

    # -- attempts ----------------------------------------------------------------------------------
    def free_slots(self) -> int:
        return max(0, self._capacity.num_workers - len(self._inflight))

    def queue_slots(self) -> int:
        """While every attempt in flight is of a node whose attempts are short, Ray may hold one
        more attempt per worker slot, started by Ray the moment a CPU frees (no round trip to us)."""
        extra = 2 * self._capacity.num_workers - len(self._inflight)
        if extra <= 0 or not self._inflight:
            return 0
        for _, task in self._inflight.values():
            stats = self._node_times.get(task.node_id)
            if stats is None or stats[0] < 2 or stats[1] / stats[0] >= QUEUE_BEHIND_SECONDS:
                return 0
        return extra

    def _clamp(self, task: Task, memory: int) -> Tuple[int, int]:
        """(CPUs, memory) for an attempt: what it asks, at most what the largest fitting node has."""
        asked = task.threads or task.cpu_limit  # elastic threads reserve their CPUs in Ray too
        cpus = min(asked, max((n.cpus for n in self.nodes.values()), default=1))
        node_memory = max((n.memory for n in self.nodes.values() if n.cpus >= cpus), default=0)
        mem = min(int(memory), node_memory) if node_memory > 0 else int(memory)
        if (cpus, mem) != (asked, int(memory)) and task.node_id not in self._warned:
            self._warned.add(task.node_id)
            logger.warning(
                "{}: asks {} CPU(s) and {} bytes, more than any Ray node has; clamped to {} CPU(s) and {} bytes",
                task.node_label,
                asked,
                int(memory),
                cpus,
                mem,
            )
        return cpus, mem

    def submit(self, task: Task, inputs: list, attempt: int, *, memory: int, queue: bool = False) -> None:
        """Start attempt ``attempt`` of ``task`` as a Ray task (``queue``: Ray holds it until a CPU frees)."""
        if not self._started:
            self.start()
        cpus, mem = self._clamp(task, memory)
        node = task.node
        try:
            entry = self._node_refs.get(id(node))
            if entry is None:
                entry = (ray.put(pickle_node_for_workers(node)), node)
                self._node_refs[id(node)] = entry
            body = encode_attempt(task, inputs, attempt, mem)
        except Exception as e:
            raise _pickle_error(task, attempt, e) from e
        options = dict(num_cpus=cpus, memory=mem, max_retries=0, retry_exceptions=False, name=task.key)
        env_vars = dict((self._runtime_env or {}).get("env_vars") or {})  # the workers' hash seed
        if self._generation is not None:
            env_vars[WORKER_GENERATION] = self._generation
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars}  # merged with the job's
        ref = _attempt_remote.options(**options).remote([self._job_ref], [entry[0]], body)
        self._inflight[(task.key, attempt)] = (ref, task)
        self._by_ref[ref] = (task.key, attempt)

    def poll(self, timeout: float) -> List[Completion]:
        out: List[Completion] = []
        self._refresh_nodes()
        if not self._by_ref:
            return out
        refs = list(self._by_ref)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and len(refs) > 1:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            key, attempt = self._by_ref.pop(ref)
            _, task = self._inflight.pop((key, attempt))
            c = self._outcome(ref, task, attempt)
            stats = self._node_times.setdefault(task.node_id, [0, 0.0])
            stats[0] += 1
            stats[1] += c.elapsed
            out.append(c)
        return out

    def _outcome(self, ref, task: Task, attempt: int) -> Completion:
        """The Completion of a finished Ray task; Ray's failures become our errors."""
        try:
            return ray.get(ref)
        except rex.OutOfMemoryError as e:
            error: BaseException = OutOfMemory(f"Ray's memory monitor killed the worker running {task.key}: {_first_line(e)}")
        except LOST_ERRORS as e:
            error = self._memory_watch_note(task.key, attempt)  # the memory watch ended the worker
            if error is None:
                logger.warning("Ray lost the worker running {} attempt {}: {}", task.key, attempt, _first_line(e))
                error = WorkerLost(f"the Ray worker or node running {task.key} died ({type(e).__name__}: {_first_line(e)})")
        except rex.RayTaskError as e:  # raised outside run_attempt (setting the worker up)
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            error = to_task_error(task, attempt, cause, [])
        except rex.RayError as e:
            error = WorkerLost(f"Ray could not run {task.key}: {type(e).__name__}: {_first_line(e)}")
        return Completion(task.key, attempt, False, None, error)

    def _memory_watch_note(self, key: str, attempt: int) -> Optional[OutOfMemory]:
        """The OutOfMemory of an attempt whose worker process the memory watch ended (its code,
        running in C, did not stop when interrupted: ``enforce_memory_limit``), or None."""
        if not self.rt.enforce_memory_limit:
            return None
        from smallpond.execution.memory_watch import take_note

        return take_note(self.rt.log_root, key, attempt)

    def attempt_stacks(self, attempts) -> Dict[Tuple[str, int], str]:
        """Each running attempt's stack, dumped by its worker's :class:`CancelWatch` on request (a
        request file beside the cancel marks). A worker that has not said it is answering within
        :data:`STACKS_WAIT` (still waiting for a Ray worker, or stuck in C code holding the GIL) is left out;
        one that has (its watcher, a Python thread, may wait long for the GIL) is waited for up
        to :data:`~smallpond.execution.stacks.PATIENCE` seconds."""
        from smallpond.execution import stacks

        asked = set()
        for key, attempt in attempts:
            if (key, attempt) in self._inflight:
                try:
                    self._marks.request_stack(key, attempt)
                    asked.add((key, attempt))
                except OSError:
                    pass
        out: Dict[Tuple[str, int], str] = {}

        def answered(ka) -> Optional[bool]:
            text, answering = self._marks.stack_answer(*ka)
            if text is not None:
                out[ka] = stacks.attempt_frames(text)
                return True
            return None if answering else False

        for ka in stacks.await_answers(asked, answered, STACKS_WAIT, patience=stacks.PATIENCE):
            self._marks.withdraw_stack(*ka)
        return out

    def cancel(self, key: str, attempt: Optional[int] = None) -> None:
        """Mark the attempt cancelled, for its worker to stop it (not ``ray.cancel``: see the
        module docstring); its outcome is not reported."""
        for k, a in [ka for ka in self._inflight if ka[0] == key and (attempt is None or ka[1] == attempt)]:
            ref, _ = self._inflight.pop((k, a))
            self._by_ref.pop(ref, None)
            try:
                self._marks.mark(k, a)
            except OSError as e:  # it runs to its end then; a loser's commit finds the winner's record
                logger.warning("could not mark {} attempt {} cancelled: {}", k, a, e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["RayExecutor", "RayNode", "connect", "task_nodes", "check_nodes", "LOST_ERRORS"]
