"""The executor contract shared by every backend (local worker processes, Ray, the file queue).

The scheduler owns every decision (what runs, when, with how much memory, whether to retry); a
backend only moves attempts to workers and brings their outcomes back. The scheduler never
knows which backend it drives: everything it needs is here.

Life cycle::

    executor.start()                      # may return before workers are ready
    executor.capacity                     # Capacity(num_workers, num_cpus, memory): what it offers
    executor.attempt_limits()             # (CPUs, bytes): the most one attempt can be given
    executor.free_slots()                 # how many more attempts could start now
    executor.submit(task, inputs, attempt, memory=...)
    executor.poll(timeout) -> [Completion, ...]
    executor.started() -> [(key, attempt), ...]   # queued attempts that have started since
    executor.cancel(key, attempt)         # abandon an attempt; no Completion is reported for it
    executor.attempt_places()             # which attempts in flight have started, and where (logs)
    executor.record_outcome(status)      # the job's status, just before it ends (optional)
    executor.shutdown()

Rules every backend keeps:

* **One attempt, one outcome.** Every submitted attempt is reported exactly once by ``poll``,
  unless it was cancelled. ``(key, attempt)`` identifies it; the same task may have two attempts
  running at once (a speculative copy), and they are independent.
* **A lost worker is an outcome, not a hang.** When the process, Ray worker or node running an
  attempt dies, the attempt is reported as failed with :class:`~smallpond.errors.WorkerLost`
  (retryable) within a bounded time; the backend replaces the worker if it can.
* **Resources.** ``memory`` passed to ``submit`` is the attempt's effective memory limit, decided
  by the scheduler (it grows after an out-of-memory failure); the task's ``cpu_limit`` is its
  CPU count. The backend runs the attempt with these limits (DuckDB ``threads`` and
  ``memory_limit``; Ray ``num_cpus`` and ``memory``), never changing the scheduler's task object.
  ``attempt_limits()`` is the most one attempt can get (one machine's CPUs and memory): the
  planner clamps tasks to it, and the scheduler never raises an attempt's memory above it. A
  backend whose machines changed since planning clamps what it is given again, with a warning.
* **Capacity may change.** Workers or nodes may join or leave while a job runs (a Ray cluster,
  queue executors started by hand, a lost executor); ``capacity`` then returns a new value, and
  the scheduler reads it every round (it must be cheap). A backend whose capacity never changes
  returns the same object every time. It may be zero workers at first: the scheduler then waits
  in ``poll``, and a backend whose workers can no longer come raises from ``poll`` with the
  reason instead of leaving the scheduler waiting.
* **Serialization errors are the caller's.** If a task cannot be sent (an unpicklable user
  function), ``submit`` raises :class:`~smallpond.errors.TaskError` (not retryable) at once.
* **Pipelining is optional.** ``queue_slots`` is how many workers would accept an attempt queued
  behind their current short one (``submit(..., queue=True)``); backends without it return 0. A
  backend that pipelines does not let a queued attempt wait behind one that turned long while a
  worker idles: it moves it (once, and only if it had not started; see the local backend). A
  queued attempt uses no CPU or memory until it starts, behind the one it waited for or on the
  worker it moved to: ``started`` tells the scheduler, which counts its resources from then on.
  Cancelling one that has not started takes it back; only a started attempt is killed.
* **A quiet start may come first.** A backend whose ``start`` logs nothing and waits on nothing
  (spawning local processes) sets ``starts_quietly``: a job then starts it before its log sinks,
  so the workers boot meanwhile. Others are started once the job's log file is open.
* **Data never flows through the executor.** Attempts read and write files on the shared data
  root; a Completion carries only the output's description.
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from smallpond.common import logger
from smallpond.execution.commit import _fast_pickle
from smallpond.execution.task import Task
from smallpond.io.rowrange import RowRange
from smallpond.logical.dataset import ParquetDataSet


@dataclass
class Completion:
    """A finished attempt: ``ok`` with the output ``dataset``, or not ok with ``error``.

    ``worker`` names the worker that ran it and ``started`` is when it began there (epoch
    seconds), for timelines; ``stats`` holds what the attempt measured (``rows`` and ``bytes``
    written, ``read``: bytes of its input files) when it knows.
    """

    key: str
    attempt: int
    ok: bool
    dataset: Any = None
    error: Optional[BaseException] = None
    elapsed: float = 0.0
    worker: str = ""
    started: float = 0.0
    stats: Dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> tuple:
        """Its fields as a plain tuple, in their order (``Completion(*wire)`` rebuilds it): what a
        local worker sends back. Pickled, a class costs its reader an import look-up and its
        writer more (~33k instructions a completion both ways, callgrind)."""
        return (
            self.key,
            self.attempt,
            self.ok,
            pack_dataset(self.dataset),
            self.error,
            self.elapsed,
            self.worker,
            self.started,
            self.stats,
        )

    @staticmethod
    def from_wire(wire: tuple) -> "Completion":
        """The Completion :meth:`to_wire` described."""
        done = Completion(*wire)
        done.dataset = unpack_dataset(done.dataset)
        return done


#: a RowRange's fields, in the order of its constructor (see :func:`pack_dataset`)
_ROW_RANGE_FIELDS = ("path", "data_size", "file_num_rows", "begin", "end")


def pack_dataset(ds):
    """A dataset as it travels between a driver and the workers it started (the same code), in an
    attempt's inputs and its outcome: a plain ParquetDataSet as a 1-tuple of its fields, its row
    ranges as tuples of theirs (:func:`unpack_dataset` rebuilds it); any other dataset (or None)
    as itself. Pickled, each class a message names costs its writer an import look-up (~10k
    instructions) and its reader another (~5k), and an object more than a tuple: an attempt of a
    tiny task over a row range (a ParquetDataSet and a RowRange in, a ParquetDataSet out) cost
    ~47k instructions more, driver and worker together (callgrind, hunt-s41/tiny41/wire_micro.py).
    The driver and its workers run the same code (as for task templates): a queue executor of
    another smallpond version cannot read these attempts."""
    if type(ds) is not ParquetDataSet:
        return ds
    state = ds.__dict__
    ranges = state.get("_resolved_row_ranges")
    if ranges:
        state = dict(state)
        state["_resolved_row_ranges"] = [
            tuple([r.path, r.data_size, r.file_num_rows, r.begin, r.end]) if type(r) is RowRange and len(r.__dict__) == 5 else r
            for r in ranges
        ]
    return (state,)


def unpack_dataset(packed):
    """The dataset :func:`pack_dataset` packed (anything else as it is)."""
    if type(packed) is not tuple:
        return packed
    state = packed[0]
    ranges = state.get("_resolved_row_ranges")
    if ranges:
        state["_resolved_row_ranges"] = [RowRange(*r) if type(r) is tuple else r for r in ranges]
    ds = ParquetDataSet.__new__(ParquetDataSet)
    ds.__dict__.update(state)
    return ds


@dataclass(frozen=True)
class Capacity:
    """What a backend offers: workers (attempts at once), CPU units and bytes of memory."""

    num_workers: int
    num_cpus: int
    memory: int

    @property
    def memory_per_cpu(self) -> int:
        return self.memory // max(1, self.num_cpus)


class Executor:
    """Base class of the backends; see the module docstring for the contract."""

    #: a short name for logs and the run report ("local", "ray", "queue")
    name: str = "base"
    #: :meth:`start` logs nothing and cannot wait on anything: a job starts it before its log
    #: sinks, so workers boot while the scheduler sets up (local processes: ~0.1 s sooner)
    starts_quietly: bool = False

    @property
    def capacity(self) -> Capacity:
        """The CPUs, memory and workers this backend offers now (changes as workers join or leave)."""
        raise NotImplementedError

    # upstream-style shorthands, derived from the capacity
    @property
    def num_cpus(self) -> int:
        return self.capacity.num_cpus

    @property
    def memory(self) -> int:
        return self.capacity.memory

    def attempt_limits(self) -> Tuple[int, int]:
        """(CPUs, bytes of memory): the most one attempt can be given (one worker machine's)."""
        c = self.capacity
        return c.num_cpus, c.memory

    def start(self) -> None:
        """Make workers ready (may return before they are)."""

    def expect_tasks_at_once(self, tasks: int) -> None:
        """A hint, told before :meth:`start` when the job's plan is known: it never has more than
        ``tasks`` attempts runnable at once (retries and speculative copies aside). A backend that
        starts workers ahead of the tasks may start no more than that; others need not override it."""

    def free_slots(self) -> int:
        """How many more attempts could start now without queueing."""
        raise NotImplementedError

    def queue_slots(self) -> int:
        """Workers that would take an attempt queued behind their current short one."""
        return 0

    def submit(self, task: Task, inputs: list, attempt: int, *, memory: int, queue: bool = False) -> None:
        """Start attempt ``attempt`` of ``task`` on ``inputs`` (a list of DataSets) with ``memory`` bytes.

        Raises :class:`~smallpond.errors.TaskError` if the task cannot be sent to a worker.
        """
        raise NotImplementedError

    def poll(self, timeout: float) -> List[Completion]:
        """Outcomes of attempts finished since the last call, waiting up to ``timeout`` seconds for one."""
        raise NotImplementedError

    def started(self) -> List[Tuple[str, int]]:
        """The attempts submitted with ``queue=True`` that have started since the last call (the
        attempt they waited behind ended, or they moved to a worker of their own), as far as the
        backend knows: from then on they use their CPUs and memory. One that ends before the
        backend saw it start may be left out. Backends that do not pipeline return []."""
        return []

    def cancel(self, key: str, attempt: Optional[int] = None) -> None:
        """Abandon an attempt of ``key`` (every attempt if ``attempt`` is None); it is not reported."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop the workers this backend started. Idempotent."""
        raise NotImplementedError

    def record_outcome(self, outcome: str) -> None:
        """The run's outcome (the job status: ``"success"``, ``"interrupted"`` or ``"failure"``),
        told just before ``shutdown`` by the job that ends. A backend whose workers outlive the run
        (queue executors started by hand) passes it on to them; others need not override it."""

    def restart_workers(self, why: str) -> None:
        """Replace the worker processes, which may hold modules of the user's code as they were
        when first imported (``why`` says which file changed since): the next attempts must run
        the code as it is now, the code their cache keys name. A backend that cannot replace them
        says so; its results may then come from the old code."""
        logger.warning(
            "{}: {}; the workers of this backend are not restarted between runs, so tasks that import it may still run "
            "its old code: restart the session",
            type(self).__name__,
            why,
        )

    def forget_nodes(self, nodes) -> None:
        """Drop what the backend keeps of ``nodes`` between attempts (each node is pickled once):
        their tasks are planned again (``DataFrame.recompute()``) and travel as the nodes are now,
        with the current values of what their functions read. Backends that keep nothing per
        node need not override it."""

    def attempt_places(self) -> Dict[Tuple[str, int], Tuple[bool, str]]:
        """Where the attempts in flight are, for the stall warning (:mod:`~smallpond.execution.stall`):
        ``(key, attempt) -> (started, where)``; ``started`` is False for one submitted that waits
        for a worker (queued behind another attempt, or not taken by an executor yet). An attempt
        a backend cannot place is left out (it counts as running). Asked rarely; may read files."""
        return {}

    def attempt_stacks(self, attempts: Sequence[Tuple[str, int]]) -> Dict[Tuple[str, int], str]:
        """The Python stack of each of ``attempts`` that runs (for the stall warning): the frames
        of the thread running it, innermost first. A backend that cannot tell leaves attempts
        out. Asked rarely; may take a second."""
        return {}

    def describe(self) -> str:
        """One line for logs: the backend and where its workers are."""
        c = self.capacity
        return f"{self.name}: {c.num_workers} worker(s), {c.num_cpus} CPU(s), {c.memory // (1 << 20)} MiB"


_KEEP_FILES_PICKLER = None
#: the start of a node's blob that holds the fields its tasks share in front (see
#: :class:`~smallpond.execution.executors.local.TaskEncoder`); a plain blob starts with the length
#: of its import path, 4 bytes that are never these
TEMPLATE_MARK = b"SPT\xff"


def pickle_node_for_workers(node) -> bytes:
    """A node as workers receive it: :func:`pickle_for_workers` after the driver's import path,
    read by :func:`load_with_import_path` (in :class:`~smallpond.execution.worker.NodeCache`,
    every backend's workers)."""
    paths = b"\0".join(os.fsencode(p) for p in sys.path if p)
    return len(paths).to_bytes(4, "little") + paths + pickle_for_workers(node)


def encode_attempt(task: Task, inputs: list, attempt: int, memory: int, template: Optional[tuple] = None) -> bytes:
    """Pickle ``(task without its node and its cache-key components, inputs, attempt, memory)``;
    nodes travel separately, once. Given its node's ``template`` (:func:`template_of`, which
    the worker has with the node), the task travels as a dict of its own fields
    (:func:`task_fields`) instead.

    The worker side is :class:`smallpond.execution.worker.NodeCache` (nodes, templates) and
    :func:`smallpond.execution.worker.decode_attempt`.
    """
    fields = task_fields(task, template) if template is not None else None
    if fields is not None:
        message = (fields, [pack_dataset(ds) for ds in inputs], attempt, memory)
        return _fast_pickle(message) or _cloudpickle(message)
    node, components = task.node, task.plan_components
    task.node = None
    task.plan_components = {}  # what the scheduler's cache keys are made of: the worker has the key
    try:
        message = (task, inputs, attempt, memory)
        return _fast_pickle(message) or _cloudpickle(message)
    finally:
        task.node = node
        task.plan_components = components


def _cloudpickle(obj) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(obj)


#: values a template holds: immutable, so one copy serves every task of the node in a worker
_SHARED_TYPES = (str, int, float, bool, type(None), bytes)
#: fields that differ from task to task (never in a template), and those no worker receives
_OWN_FIELDS = frozenset(("id", "key", "partition_infos", "input_keys", "fingerprint", "cache_key", "retry_count"))
_NOT_SENT = frozenset(("node", "plan_components", "runtime_ctx", "_py_rng", "_np_rng", "input_datasets"))


def template_of(task: Task) -> Optional[tuple]:
    """``(task class, {field: value})``: the fields of ``task`` its node's other tasks share
    (immutable values, not its own fields), sent once with the node; None for a class of the
    user's (or one that pickles itself its own way): its tasks travel whole."""
    cls = type(task)
    if (
        not cls.__module__.startswith("smallpond.")
        or cls.__getstate__ is not Task.__getstate__
        or getattr(cls, "__setstate__", None) is not None
        or cls.__reduce_ex__ is not object.__reduce_ex__
        or cls.__reduce__ is not object.__reduce__
    ):
        return None
    shared = {k: v for k, v in task.__dict__.items() if k not in _OWN_FIELDS and k not in _NOT_SENT and type(v) in _SHARED_TYPES}
    return cls, shared


def task_fields(task: Task, template: tuple) -> Optional[dict]:
    """The fields of ``task`` its worker rebuilds it from with ``template`` (those that differ
    from it; the id and partition infos as plain values, pickled without their classes), or
    None if ``task`` does not fit it (another class, or lacking one of its fields)."""
    cls, shared = template
    state = task.__dict__
    if type(task) is not cls or not shared.keys() <= state.keys():
        return None
    missing = object()
    fields = {}
    for k, v in state.items():
        t = shared.get(k, missing)
        if t is v or (type(t) is type(v) and t == v) or k in _NOT_SENT:
            continue
        fields[k] = v
    fields["id"] = int(task.id)
    fields["partition_infos"] = tuple((p.index, p.npartitions, p.dimension) for p in task.partition_infos)
    return fields


def with_template(blob: bytes, template: Optional[tuple]) -> bytes:
    """A node's blob with the shared fields of its tasks in front (see
    :class:`~smallpond.execution.executors.local.TaskEncoder`)."""
    if template is None:
        return blob
    head = pickle.dumps(template, protocol=pickle.HIGHEST_PROTOCOL)
    return TEMPLATE_MARK + len(head).to_bytes(4, "little") + head + blob


def load_with_import_path(blob: bytes):
    """Unpickle a node of :func:`pickle_node_for_workers`, once the entries of the driver's import
    path this process lacks are in front of its own. A function of a user module travels by
    reference (module and name) and the worker imports it where the driver found it: also in a
    folder the script put on ``sys.path`` itself, after the workers started or that a Ray
    cluster's workers were never told of (embedded and queue workers start with the driver's path
    as it was then, Ray's with Ray's own)."""
    import pickle

    n = int.from_bytes(blob[:4], "little")
    paths = [os.fsdecode(p) for p in bytes(blob[4 : 4 + n]).split(b"\0")] if n else []
    missing = [p for p in dict.fromkeys(paths) if p not in sys.path]
    if missing:
        sys.path[0:0] = missing
    return pickle.loads(memoryview(blob)[4 + n :])


def pickle_for_workers(obj) -> bytes:
    """``cloudpickle.dumps(obj)`` for sending to workers, keeping the source file of the functions
    it pickles by value (those of the user's script): cloudpickle writes ``<dynamic-code>`` in
    their place, so a traceback or a stack from a worker would show ``File "<dynamic-code>", line
    7`` instead of the script's path and the line's text."""
    global _KEEP_FILES_PICKLER
    import io
    import pickle

    if _KEEP_FILES_PICKLER is None:
        import types

        import cloudpickle

        class KeepFiles(cloudpickle.Pickler):
            def reducer_override(self, o):
                if type(o) is types.CodeType:
                    reduce = self.dispatch_table.get(types.CodeType)
                    if reduce is not None:
                        rebuild, args = reduce(o)
                        return rebuild, tuple(o.co_filename if isinstance(a, str) and a == "<dynamic-code>" else a for a in args)
                return super().reducer_override(o)

        _KEEP_FILES_PICKLER = KeepFiles
    buf = io.BytesIO()
    _KEEP_FILES_PICKLER(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()
