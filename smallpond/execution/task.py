"""Task identity, partition infos, and the Task base class (the runtime context is in
:mod:`smallpond.execution.runtime`; it is importable from here, as upstream scripts do).

A task is one unit of work: a node's work on one partition. Its ``id`` comes from the planner's
deterministic walk; its ``fingerprint`` digests the node's parameters, the partition and the
fingerprints of its inputs (a partition of a split by files fixed by the plan: the files it
reads, :mod:`smallpond.execution.plan_splits`), so a checkpoint is reused only for the very same work.

A task runs as ``run(runtime_ctx, input_datasets, output_dir) -> DataSet``; it writes files into
``output_dir`` (a private temp directory) and returns a DataSet describing them. The attempt
wrapper (:mod:`smallpond.execution.attempt`) renames the directory into place and commits.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from smallpond.common import PARQUET_METADATA_KEY_PREFIX, RunAfterExec, imported_module
from smallpond.execution.runtime import JobId, RuntimeContext, UpstreamOnly
from smallpond.logical.dataset import DataSet

__all__ = ["JobId", "TaskId", "TaskRuntimeId", "PartitionInfo", "RuntimeContext", "StreamOutput", "Task"]


_UPSTREAM_TASK = "an attribute of upstream smallpond's tasks"


class TaskId(int):
    def __str__(self) -> str:
        return f"{int(self):06d}"

    def __reduce__(self):
        # a plain call: pickle's default for an int subclass goes through copyreg (~2 us a task,
        # each way, on every attempt sent to a worker)
        return (TaskId, (int(self),))


def crash_point(point: str, task_key: str, attempt: int = 0) -> None:
    """Tests only: ``SP_TEST_CRASH_AT={point}:{task key prefix}`` kills this process at ``point``
    of the first attempt of each matching task (a crash between two steps of a commit, or of a
    task-cache insertion). Inert when the variable is unset."""
    spec = os.environ.get("SP_TEST_CRASH_AT")
    if not spec or attempt > 0:
        return
    where, _, prefix = spec.partition(":")
    if where == point and task_key.startswith(prefix):
        os._exit(86)


@dataclass(frozen=True)
class TaskRuntimeId:
    id: int
    epoch: int
    retry: int

    def __str__(self) -> str:
        return f"{self.id:06d}.{self.epoch}.{self.retry}"


class PartitionInfo:
    """Position of a task in one partition dimension. Equality uses (dimension, index) only."""

    toplevel_dimension = "@toplevel@"
    default_dimension = "__data_partition__"
    __slots__ = ("index", "npartitions", "dimension")

    def __init__(self, index: int = 0, npartitions: int = 1, dimension: str = "@toplevel@") -> None:
        self.index = index
        self.npartitions = npartitions
        self.dimension = dimension

    def __eq__(self, other) -> bool:
        return isinstance(other, PartitionInfo) and (self.dimension, self.index) == (other.dimension, other.index)

    def __hash__(self) -> int:
        return hash((self.dimension, self.index))

    def __lt__(self, other: "PartitionInfo") -> bool:
        return (self.dimension, self.index) < (other.dimension, other.index)

    def __str__(self) -> str:
        return f"{self.dimension}[{self.index}/{self.npartitions}]"

    __repr__ = __str__

    def __reduce__(self):
        # a plain constructor call: the default for a class with __slots__ goes through copyreg
        # and the two methods below (~3 us a partition, each way, on every attempt sent to a
        # worker); those stay for pickles written before
        return (PartitionInfo, (self.index, self.npartitions, self.dimension))

    def __getstate__(self):
        return (self.index, self.npartitions, self.dimension)

    def __setstate__(self, state):
        self.index, self.npartitions, self.dimension = state


@dataclass
class StreamOutput:
    """An output table of a streaming task, optionally marking a checkpoint after it."""

    output_table: Any
    batch_indices: Optional[List[int]] = None
    force_checkpoint: bool = False


class Task:
    """One node's work on one partition.

    Subclasses implement :meth:`run`. Tasks with ``exec_on_scheduler = True`` only rearrange
    dataset descriptions (merge, split, projection) and run inline in the scheduler.
    """

    exec_on_scheduler = False
    #: True if the task's output is a set of files it wrote (False for pass-through tasks).
    writes_output = True
    #: True if the task is complete only once its job publishes it (sinks): the publication, not
    #: the attempt, writes its commit record (see :mod:`smallpond.execution.ops.sink`)
    commits_on_publication = False
    #: True if only smallpond's own tasks read this task's files (decided by the planner): they are
    #: written in the staging format (:meth:`ParquetWriterOptions.for_task`), not the node's
    staging = False
    #: DuckDB threads of the running attempt, when the scheduler gave it more than ``cpu_limit``
    #: (elastic threads, see :meth:`may_use_more_threads`); None: ``cpu_limit``
    threads: Optional[int] = None
    #: the attempt takes its ``threads`` only once it has shown that its output cannot depend on
    #: them (:meth:`may_be_row_wise`, :mod:`smallpond.execution.ops.elastic`)
    threads_checked = False

    #: the task runs the user's Python code (a function, a script, Python UDFs in its SQL), which
    #: may draw from NumPy's global generator: it is imported and seeded for the task's attempts
    runs_user_python = False

    def may_use_more_threads(self) -> bool:
        """True if the task's SQL orders its rows, so more DuckDB threads than ``cpu_limit`` change at
        most the order of rows with equal sort keys, and values of aggregates in that SQL (a
        floating-point sum, the order inside ``list()``); the scheduler may then give it idle CPUs
        (elastic threads, when the job turns them on). False by default."""
        return False

    def may_be_row_wise(self) -> bool:
        """True if the task might write the same bytes whatever its DuckDB threads (it checks its
        plan when it runs: :mod:`smallpond.execution.ops.elastic`), so the scheduler may offer it
        idle CPUs by default (``elastic_threads="safe"``). A cheap look, asked once per node."""
        return False

    def __init__(self, node, task_id: int, partition_infos: List[PartitionInfo], input_keys: List[str]) -> None:
        self.id = TaskId(task_id)
        self.key = f"{type(self).__name__}-{self.id}"
        self.node = node
        self.node_id = int(node.id)
        self.node_label = node.label
        self.location = node.location
        self.partition_infos: Tuple[PartitionInfo, ...] = tuple(
            sorted(partition_infos, key=lambda p: (p.dimension != "@toplevel@", p.dimension))
        )
        self.input_keys = list(input_keys)
        self.cpu_limit = node.cpu_limit
        self.gpu_limit = node.gpu_limit
        self.memory_limit = node.memory_limit
        self.output_name = node.output_name
        self.output_path = node.output_path
        self.fingerprint = ""
        #: what the fingerprint digests besides the inputs (the planner fills it in): the task
        #: class, the node's parameter digest, the partition and the seed
        self.plan_components: Dict[str, Any] = {}
        #: the task-cache key of this task's inputs as they are, set by the scheduler when the
        #: task is about to run (None: the task is not put in the cache)
        self.cache_key: Optional[str] = None
        #: replace the cache's entry for this key (the user asked to recompute the task)
        self.cache_replace = False
        self.retry_count = 0
        self.runtime_ctx: Optional[RuntimeContext] = None
        self.perf_metrics: Dict[str, float] = {}
        #: what the running attempt measured (``rows``, ``bytes`` written); reset per attempt
        self.stats: Dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{self.key}({self.node_label})"

    # -- what users see in process functions ----------------------------------------------------
    @property
    def partition_infos_as_dict(self) -> Dict[str, int]:
        return {p.dimension: p.index for p in self.partition_infos}

    @property
    def partition_dims(self) -> List[str]:
        return [p.dimension for p in self.partition_infos]

    def get_partition_info(self, dimension: str) -> Optional[PartitionInfo]:
        return next((p for p in self.partition_infos if p.dimension == dimension), None)

    @property
    def default_output_name(self) -> str:
        return f"{type(self.node).__name__}.{self.node_id:06d}"

    @property
    def output_filename(self) -> str:
        """The prefix of every file the task writes: ``{output name or Node.id}-{task id}``.

        It names neither the job nor the attempt (upstream's ``{name}-{job}.{id}.{epoch}.{retry}``
        did): each attempt writes into a directory of its own, and the same plan gives the same
        file names in every job, so its outputs are byte-identical, names included.
        """
        return f"{self.output_name or self.default_output_name}-{self.id}"

    def output_base(self, rt: RuntimeContext) -> str:
        """Where the task's output directories go in job ``rt``: each attempt (or reuse from the
        task cache) writes ``{output_base}.{attempt}.{token}``."""
        name = self.output_name or self.default_output_name
        if self.output_path:
            return os.path.join(self.output_path, name, self.key)
        if self.output_name:
            return os.path.join(rt.output_root, name, self.key)
        return os.path.join(rt.staging_root, name, self.key)

    @property
    def final_output_abspath(self) -> str:
        return self.output_base(self.runtime_ctx)

    @property
    def runtime_output_abspath(self) -> str:
        return getattr(self, "_runtime_output_abspath", None) or self.final_output_abspath

    @property
    def temp_abspath(self) -> str:
        return os.path.join(self.runtime_ctx.temp_root, f"{self.key}.{self.retry_count}")

    @property
    def random_seed_bytes(self) -> bytes:
        """The task's own seed: a digest of the job's ``random_seed`` and the task id (the same in
        every run of the same plan with the same seed, different for every task)."""
        seed = self.runtime_ctx.random_seed if self.runtime_ctx else 0
        return hashlib.sha256(f"{seed}:{int(self.id)}".encode()).digest()

    @property
    def rand_seed_uint32(self) -> int:
        return int.from_bytes(self.random_seed_bytes[:4], "big")

    @property
    def rand_seed_float(self) -> float:
        return self.rand_seed_uint32 / 2**32

    @property
    def python_random_gen(self) -> random.Random:
        if not hasattr(self, "_py_rng"):
            self._py_rng = random.Random(self.random_seed_bytes)
        return self._py_rng

    @property
    def numpy_random_gen(self):
        if not hasattr(self, "_np_rng"):
            import numpy as np

            self._np_rng = np.random.default_rng(int.from_bytes(self.random_seed_bytes, "big"))
        return self._np_rng

    def random_states(self) -> Dict[str, Any]:
        """The states of the generators the task's code draws from, for a stream checkpoint: Python's
        global ``random``, NumPy's global generator (if numpy is imported) and the task's own
        :attr:`python_random_gen` / :attr:`numpy_random_gen` (those created so far)."""
        states: Dict[str, Any] = {"random": random.getstate()}
        np = imported_module("numpy")  # not one another thread is importing
        if np is not None:
            states["numpy"] = np.random.get_state()
        if "_py_rng" in self.__dict__:
            states["task_random"] = self._py_rng.getstate()
        if "_np_rng" in self.__dict__:
            states["task_numpy"] = self._np_rng.bit_generator.state
        return states

    def restore_random_states(self, states: Dict[str, Any]) -> None:
        """Put the generators back in ``states`` (from :meth:`random_states`), so the numbers drawn
        next are those the attempt that saved them would have drawn next."""
        random.setstate(states["random"])
        if "numpy" in states:
            import numpy as np

            np.random.set_state(states["numpy"])
        if "task_random" in states:
            self.python_random_gen.setstate(states["task_random"])
        if "task_numpy" in states:
            self.numpy_random_gen.bit_generator.state = states["task_numpy"]

    def random_uint32(self) -> int:
        return self.python_random_gen.getrandbits(32)

    def random_float(self) -> float:
        return self.python_random_gen.random()

    # GPUs: this build places no task on a GPU. A task that asked for none gets the answers of a
    # machine without GPUs; one that asked for some cannot be told which GPU is its own.
    def _no_gpu_placement(self, what: str):
        raise NotImplementedError(
            f"{what}: {self.key} of {self.node_label} asked for gpu_limit={self.gpu_limit}, but this build of smallpond "
            "does not assign GPUs to tasks; select the device in your own code (e.g. CUDA_VISIBLE_DEVICES)"
        )

    @property
    def local_rank(self) -> int:
        """Rank of the task's first GPU: 0 for a task without GPUs."""
        if self.gpu_limit > 0:
            self._no_gpu_placement("local_rank")
        return 0

    @property
    def local_gpu(self):
        """The task's GPU: None for a task without GPUs."""
        if self.gpu_limit > 0:
            self._no_gpu_placement("local_gpu")
        return None

    @property
    def local_gpu_ranks(self) -> List[int]:
        """Ranks of the task's GPUs: empty for a task without GPUs."""
        if self.gpu_limit > 0:
            self._no_gpu_placement("local_gpu_ranks")
        return []

    def inject_fault(self) -> None:
        """Raise :class:`InjectedFault` with probability ``fault_inject_prob`` (first two attempts only)."""
        rt = self.runtime_ctx
        if rt is None or rt.fault_inject_prob <= 0 or self.retry_count >= 2:
            return
        # drawn from the OS, not a module-level generator: forked workers would share its state
        # and draw the same numbers, so whole jobs would see no fault at all
        if int.from_bytes(os.urandom(7), "big") / float(1 << 56) < rt.fault_inject_prob:
            from smallpond.errors import InjectedFault

            raise InjectedFault(f"injected fault in {self.key} attempt {self.retry_count}")

    def add_elapsed_time(self, metric_name: Optional[str] = None) -> None:
        import time

        now = time.time()
        last = getattr(self, "_last_ts", None)
        if metric_name and last is not None:
            self.perf_metrics[metric_name] = self.perf_metrics.get(metric_name, 0.0) + (now - last)
        self._last_ts = now

    # -- upstream 0.15's task attributes that scripts read (``runtime_ctx.task.<name>``) ----------
    @property
    def ctx(self) -> Optional[RuntimeContext]:
        """The job's runtime context (upstream's ``Task.ctx``; the same object as ``runtime_ctx``)."""
        return self.runtime_ctx

    @property
    def runtime_id(self) -> TaskRuntimeId:
        """``TaskRuntimeId(id, epoch, retry)`` of the running attempt. The epoch is always 0: upstream
        counted scheduler restarts in it, and this build tells attempts apart by ``retry`` alone."""
        return TaskRuntimeId(int(self.id), 0, self.retry_count)

    @property
    def input_deps(self) -> Dict[str, None]:
        """The keys of the tasks whose outputs this one reads, in input order, each mapped to None
        (what upstream's tasks held once dispatched; the inputs themselves are ``input_datasets``)."""
        return dict.fromkeys(self.input_keys)

    # upstream's task attributes that cannot be honoured here: reading one says why
    output_deps = UpstreamOnly(_UPSTREAM_TASK, "a task does not know which tasks read its output (the scheduler does)")
    status = UpstreamOnly(_UPSTREAM_TASK, "a running task is always incomplete; its outcome is its return value or exception")
    fail_count = UpstreamOnly(_UPSTREAM_TASK, "attempts are numbered by retry_count, which counts failed and lost attempts alike")
    exception = UpstreamOnly(_UPSTREAM_TASK, "a failed attempt's exception is raised, not stored on the task")
    exec_id = UpstreamOnly(_UPSTREAM_TASK, "the worker running an attempt is not exposed to it")
    exec_cq = UpstreamOnly(_UPSTREAM_TASK, "the worker running an attempt is not exposed to it")
    start_time = UpstreamOnly(_UPSTREAM_TASK, "use time.time() in the task's code; the job's event log records attempt times")
    finish_time = UpstreamOnly(_UPSTREAM_TASK, "the job's event log records attempt times")
    dataset = UpstreamOnly(_UPSTREAM_TASK, "the task's output is what its run returns, not an attribute")
    runtime_state = UpstreamOnly(_UPSTREAM_TASK, "stream checkpoints are kept by the stream tasks themselves")

    def parquet_kv_metadata(self, extra: Optional[Dict[str, int]] = None) -> Dict[str, str]:
        """Key-value metadata of the Parquet files the task writes (keys prefixed ``SMALLPOND:``).

        The task key, the node id, each partition dimension's index and ``extra``. Unlike upstream
        0.15 there is no ``__job_id__``: it would make the same plan's outputs differ from job to
        job (and a file reused from the task cache would name a job that did not write it).
        """
        md = {
            PARQUET_METADATA_KEY_PREFIX + "__task_key__": self.key,
            PARQUET_METADATA_KEY_PREFIX + "__node_id__": str(self.node_id),
        }
        for p in self.partition_infos:
            md[PARQUET_METADATA_KEY_PREFIX + p.dimension] = str(p.index)
        for k, v in (extra or {}).items():
            md[PARQUET_METADATA_KEY_PREFIX + k] = str(v)
        return md

    # -- execution -------------------------------------------------------------------------------
    def estimated_cost(self) -> float:
        return 1.0

    def run(self, runtime_ctx: RuntimeContext, inputs: List[DataSet], output_dir: str) -> DataSet:
        raise NotImplementedError

    def error_context(self) -> Dict[str, Any]:
        """Extra fields for a TaskError (e.g. the SQL text)."""
        return {}

    def on_committed(self, runtime_ctx: RuntimeContext) -> None:
        """Called once the task's commit record is written (e.g. to drop a stream checkpoint)."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state["runtime_ctx"] = None
        state.pop("_py_rng", None)
        state.pop("_np_rng", None)
        state.pop("input_datasets", None)  # (an attempt's inputs, set on its own copy of the task)
        return state


_restore_random_state = True


def process_owns_random_state() -> None:
    """Called by smallpond's own worker processes, where only tasks draw from ``random``: each
    attempt seeds it, and the state is not saved and restored around it (which costs as much as
    the seeding)."""
    global _restore_random_state
    _restore_random_state = False


def _numpy_random(import_it: bool):
    """``numpy.random``, whose module-level functions (``np.random.rand()``, ...) draw from NumPy's
    global generator: if it is imported, or else imported when ``import_it`` (the task runs user
    Python, which may import it itself and draw; ~20 ms once per process, numpy.random being
    imported lazily by numpy 2); None if not (a task without user code never draws from it).

    If another thread is importing numpy (``smallpond.init``'s background imports, while the
    driver runs a task itself), this waits for that import to finish, as the task's own ``import
    numpy`` would; seeding is skipped only if what that import leaves has no generator."""
    mod = imported_module("numpy.random")
    if mod is None and import_it:
        try:
            import numpy.random as mod
        except ImportError:
            return None
    return mod if mod is not None and hasattr(mod, "seed") else None


#: the seed of the attempt running in this worker, for NumPy's global generator if the attempt's
#: code imports ``numpy.random`` itself (:class:`_SeedNumpyOnImport`)
_numpy_seed: Optional[bytes] = None


def _numpy_words(seed: bytes) -> List[int]:
    return [int.from_bytes(seed[i : i + 4], "big") for i in range(0, len(seed), 4)]


def _seed_imported_numpy(module) -> None:
    """Seed ``numpy.random`` once its module has run (:class:`_SeedNumpyOnImport`)."""
    if _numpy_seed is not None and hasattr(module, "seed"):
        module.seed(_numpy_words(_numpy_seed))


class _SeedNumpyOnImport:
    """A ``sys.meta_path`` entry of a worker: when an attempt's code imports ``numpy.random`` for
    the first time in the process, the module is seeded with the attempt's seed as soon as it has
    run, as if it had been imported and seeded before the attempt. A worker running only Python
    tasks that never use NumPy then never imports it (~0.1 s of CPU for numpy and its generator
    in each worker: a fifth of the time of 2,000 tiny Python tasks)."""

    _finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "numpy.random" or _numpy_seed is None or self._finding:
            return None
        import importlib.util

        self._finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = RunAfterExec(spec.loader, _seed_imported_numpy)
        return spec


_seed_hook: Optional[_SeedNumpyOnImport] = None


def _seed_numpy_when_imported(seed: Optional[bytes]) -> None:
    """From now on, until called with None, seed ``numpy.random`` with ``seed`` if it gets imported."""
    global _numpy_seed, _seed_hook
    _numpy_seed = seed
    if seed is not None and _seed_hook is None:
        _seed_hook = _SeedNumpyOnImport()
        sys.meta_path.insert(0, _seed_hook)


def _seed_global_generators(task: Task, npr) -> None:
    """Seed Python's ``random`` and NumPy's global generator (``npr``: ``numpy.random``, or None)
    with the task's seed, :attr:`Task.random_seed_bytes`.

    NumPy's legacy seeding takes words of 32 bits: the seed's 32 bytes are 8 of them, so no two
    tasks share a stream unless their seeds are equal."""
    seed = task.random_seed_bytes
    random.seed(seed)
    if npr is not None:
        npr.seed(_numpy_words(seed))


@contextmanager
def seeded_random(task: Task) -> Iterator[None]:
    """Seed the global generators for the task's code (:func:`_seed_global_generators`: Python's
    ``random`` and NumPy's), and restore the caller's states after.

    The seed is the task's (:attr:`Task.random_seed_bytes`: the job's seed and the task id), as for
    :attr:`Task.python_random_gen` and :attr:`Task.numpy_random_gen`, so the same job draws the same
    numbers in every task, on every attempt and in every process, and two tasks draw different
    ones. Generators the task makes itself without a seed (``numpy.random.default_rng()``,
    ``random.Random()``) draw from the OS and cannot be made reproducible. A streaming task that
    resumes from a stream checkpoint then puts every generator back in the state recorded there
    (:meth:`Task.restore_random_states`, inside the block, so after this seeding), and draws what an
    uninterrupted attempt draws. Outside smallpond's workers the caller's states of ``random`` and
    NumPy's global generator are put back after.
    """
    if not _restore_random_state:  # a worker: no caller's state to put back
        npr = _numpy_random(False)
        _seed_global_generators(task, npr)
        if npr is None and task.runs_user_python:  # seeded if the task's code imports it
            _seed_numpy_when_imported(task.random_seed_bytes)
            try:
                yield
            finally:
                _seed_numpy_when_imported(None)
            return
        yield
        return
    npr = _numpy_random(task.runs_user_python)
    state = random.getstate()
    np_state = npr.get_state() if npr is not None else None
    _seed_global_generators(task, npr)
    try:
        yield
    finally:
        random.setstate(state)
        if np_state is not None:
            npr.set_state(np_state)


def __getattr__(name: str):
    # upstream 0.15 scripts import the task classes they subclass from here (``from
    # smallpond.execution.task import PythonScriptTask``, for ``PythonScriptNode.spawn``)
    if name == "PythonScriptTask":
        from smallpond.execution.ops.arrow import PythonScriptTask

        return PythonScriptTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
