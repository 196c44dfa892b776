"""Task identity, partition infos, the runtime context, and the Task base class.

A task is one unit of work: a node's work on one partition. Its ``id`` comes from the planner's
deterministic walk; its ``fingerprint`` digests the node's parameters, the partition and the
fingerprints of its inputs, so a checkpoint is reused only for the very same work.

A task runs as ``run(runtime_ctx, input_datasets, output_dir) -> DataSet``; it writes files into
``output_dir`` (a private temp directory) and returns a DataSet describing them. The attempt
wrapper (:mod:`smallpond.execution.attempt`) renames the directory into place and commits.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from smallpond.common import GB, MB, PARQUET_METADATA_KEY_PREFIX, TB
from smallpond.logical.dataset import DataSet, ParquetDataSet


class JobId(uuid.UUID):
    @staticmethod
    def new() -> "JobId":
        return JobId(hex=uuid.uuid4().hex)


class TaskId(int):
    def __str__(self) -> str:
        return f"{int(self):06d}"


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

    def __getstate__(self):
        return (self.index, self.npartitions, self.dimension)

    def __setstate__(self, state):
        self.index, self.npartitions, self.dimension = state


class RuntimeContext:
    """Where a job lives and how it runs. Shared (pickled) by the scheduler and every worker.

    The job root is ``{data_root}/{job_time:%Y-%m-%d-%H-%M-%S}.{job_id}`` with the folders
    ``config/ log/ queue/ staging/ output/ temp/``. The per-job secret that signs pickles lives
    in ``config/secret`` (owner-only).
    """

    def __init__(
        self,
        job_id: JobId,
        job_time: datetime,
        data_root: str,
        *,
        num_executors: int = 1,
        random_seed: Optional[int] = None,
        env_overrides: Optional[Dict[str, str]] = None,
        bind_numa_node: bool = False,
        enforce_memory_limit: bool = False,
        max_usable_cpu_count: int = 1024,
        max_usable_gpu_count: int = 1024,
        max_usable_memory_size: int = 16 * TB,
        secs_wq_poll_interval: float = 0.5,
        secs_executor_probe_interval: float = 30,
        max_num_missed_probes: int = 6,
        fault_inject_prob: float = 0.0,
        enable_profiling: bool = False,
        enable_diagnostic_metrics: bool = False,
        remove_empty_parquet: bool = False,
        skip_task_with_empty_input: bool = False,
        shared_log_root: Optional[str] = None,
        console_log_level: str = "INFO",
        file_log_level: str = "DEBUG",
        disable_log_rotation: bool = False,
        output_path: Optional[str] = None,
    ) -> None:
        if not isinstance(job_id, uuid.UUID):
            job_id = JobId(hex=str(job_id))
        if not 0.0 <= fault_inject_prob < 1.0:
            from smallpond.errors import ParameterError

            raise ParameterError(f"fault_inject_prob must be in [0, 1), got {fault_inject_prob!r}")
        self.job_id = job_id
        self.job_time = job_time
        self.data_root = os.path.abspath(data_root)
        self.num_executors = num_executors
        if random_seed is None:
            random_seed = int.from_bytes(hashlib.sha256(job_id.bytes).digest()[:16], "big")
        self.random_seed = random_seed
        self.env_overrides = dict(env_overrides or {})
        self.bind_numa_node = bind_numa_node
        self.enforce_memory_limit = enforce_memory_limit
        self.max_usable_cpu_count = max_usable_cpu_count
        self.max_usable_gpu_count = max_usable_gpu_count
        self.max_usable_memory_size = max_usable_memory_size
        self.secs_wq_poll_interval = secs_wq_poll_interval
        self.secs_executor_probe_interval = secs_executor_probe_interval
        self.max_num_missed_probes = max_num_missed_probes
        self.fault_inject_prob = fault_inject_prob
        self.enable_profiling = enable_profiling
        self.enable_diagnostic_metrics = enable_diagnostic_metrics
        self.remove_empty_parquet = remove_empty_parquet
        self.skip_task_with_empty_input = skip_task_with_empty_input
        self.shared_log_root = shared_log_root
        self.console_log_level = console_log_level
        self.file_log_level = file_log_level
        self.disable_log_rotation = disable_log_rotation
        self.final_output_path = os.path.abspath(output_path) if output_path else None
        self.job_root = os.path.join(self.data_root, f"{job_time:%Y-%m-%d-%H-%M-%S}.{job_id}")
        self.current_task: Optional["Task"] = None
        self._secret: Optional[bytes] = None

    # -- layout ----------------------------------------------------------------------------------
    @property
    def config_root(self) -> str:
        return os.path.join(self.job_root, "config")

    @property
    def log_root(self) -> str:
        return os.path.join(self.job_root, "log")

    @property
    def queue_root(self) -> str:
        return os.path.join(self.job_root, "queue")

    @property
    def staging_root(self) -> str:
        return os.path.join(self.job_root, "staging")

    @property
    def output_root(self) -> str:
        return os.path.join(self.job_root, "output")

    @property
    def temp_root(self) -> str:
        return os.path.join(self.job_root, "temp")

    @property
    def completed_task_dir(self) -> str:
        return os.path.join(self.staging_root, "completed_tasks")

    @property
    def started_task_dir(self) -> str:
        return os.path.join(self.staging_root, "started_tasks")

    @property
    def sched_state_path(self) -> str:
        return os.path.join(self.config_root, "sched_state.pickle")

    @property
    def logcial_plan_graph_path(self) -> str:  # upstream spelling
        """Base path of the plan graph (``log/graph``; ``.dot`` / ``.png`` are appended)."""
        return os.path.join(self.log_root, "graph")

    @property
    def ray_log_path(self) -> str:
        return os.path.join(self.log_root, "ray.log")

    @property
    def job_status_path(self) -> str:
        return os.path.join(self.log_root, ".STATUS")

    @property
    def runtime_ctx_path(self) -> str:
        return os.path.join(self.config_root, "runtime_ctx.pickle")

    @property
    def logical_plan_path(self) -> str:
        return os.path.join(self.config_root, "logical_plan.pickle")

    logcial_plan_path = logical_plan_path  # upstream spelling

    @property
    def exec_plan_path(self) -> str:
        return os.path.join(self.config_root, "exec_plan.pickle")

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            path = os.path.join(self.config_root, "secret")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    self._secret = f.read()
            else:
                from smallpond.io.filesystem import atomic_write_bytes

                os.makedirs(self.config_root, mode=0o700, exist_ok=True)
                key = os.urandom(32)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(key)
                    self._secret = key
                except FileExistsError:
                    with open(path, "rb") as f:
                        self._secret = f.read()
                _ = atomic_write_bytes
        return self._secret

    # -- resources -------------------------------------------------------------------------------
    @property
    def physical_cpu_count(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    @property
    def usable_cpu_count(self) -> int:
        return max(1, min(self.max_usable_cpu_count, self.physical_cpu_count))

    @property
    def total_memory(self) -> int:
        import psutil

        return psutil.virtual_memory().total

    @property
    def available_memory(self) -> int:
        import psutil

        return psutil.virtual_memory().available

    @property
    def usable_memory_size(self) -> int:
        return min(self.max_usable_memory_size, self.total_memory)

    @property
    def usable_gpu_count(self) -> int:
        return 0

    @property
    def numa_node_count(self) -> int:
        """NUMA nodes of this machine as the scheduler uses them (tasks are not bound: always 1)."""
        return 1

    @property
    def numa_node_id(self) -> Optional[int]:
        """The NUMA node this process is bound to; None (no binding in this build)."""
        return None

    def get_local_gpus(self) -> list:
        """GPUs usable by tasks on this machine (GPU scheduling is not supported yet: empty)."""
        return []

    @property
    def secs_executor_probe_timeout(self) -> float:
        return self.secs_executor_probe_interval * self.max_num_missed_probes

    @property
    def task(self) -> Optional["Task"]:
        return self.current_task

    def set_current_task(self, task: Optional["Task"]) -> "RuntimeContext":
        self.current_task = task
        return self

    # -- lifecycle -------------------------------------------------------------------------------
    def initialize(self, exec_id: Optional[str] = None, root_exist_ok: bool = True, cleanup_root: bool = False) -> None:
        """Create the job directories (owner-only) and the per-job secret."""
        from smallpond.io.filesystem import remove_path

        if cleanup_root:
            remove_path(self.job_root)
        if os.path.isdir(self.job_root) and not root_exist_ok:
            raise FileExistsError(f"job root {self.job_root} already exists")
        for d in (
            self.config_root,
            self.log_root,
            self.queue_root,
            self.staging_root,
            self.output_root,
            self.temp_root,
            self.completed_task_dir,
        ):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(self.job_root, 0o700)
        _ = self.secret
        for k, v in self.env_overrides.items():
            os.environ[k] = v
        self.exec_id = exec_id or socket.gethostname()

    def cleanup(self, remove_output_root: bool = True) -> None:
        """Remove queue/, temp/ and staging/ (and output/ if asked) after a successful job."""
        from smallpond.io.filesystem import remove_path

        for d in (self.queue_root, self.temp_root, self.staging_root):
            remove_path(d)
        if remove_output_root:
            remove_path(self.output_root)

    def cleanup_root(self) -> None:
        from smallpond.io.filesystem import remove_path

        remove_path(self.job_root)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["current_task"] = None
        return state

    def __repr__(self) -> str:
        return f"RuntimeContext(job_root={self.job_root!r})"


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
        self.retry_count = 0
        self.runtime_ctx: Optional[RuntimeContext] = None
        self.perf_metrics: Dict[str, float] = {}

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
        return f"{self.output_name or self.default_output_name}-{self.id}.{self.retry_count}"

    @property
    def final_output_abspath(self) -> str:
        rt = self.runtime_ctx
        name = self.output_name or self.default_output_name
        if self.output_path:
            return os.path.join(self.output_path, name, self.key)
        if self.output_name:
            return os.path.join(rt.output_root, name, self.key)
        return os.path.join(rt.staging_root, name, self.key)

    @property
    def runtime_output_abspath(self) -> str:
        return getattr(self, "_runtime_output_abspath", None) or self.final_output_abspath

    @property
    def temp_abspath(self) -> str:
        return os.path.join(self.runtime_ctx.temp_root, f"{self.key}.{self.retry_count}")

    @property
    def random_seed_bytes(self) -> bytes:
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

    def random_uint32(self) -> int:
        return self.python_random_gen.getrandbits(32)

    def random_float(self) -> float:
        return self.python_random_gen.random()

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def local_gpu(self):
        return None

    @property
    def local_gpu_ranks(self) -> List[int]:
        return []

    def inject_fault(self) -> None:
        """Raise :class:`InjectedFault` with probability ``fault_inject_prob`` (first two attempts only)."""
        rt = self.runtime_ctx
        if rt is None or rt.fault_inject_prob <= 0 or self.retry_count >= 2:
            return
        if random.random() < rt.fault_inject_prob:
            from smallpond.errors import InjectedFault

            raise InjectedFault(f"injected fault in {self.key} attempt {self.retry_count}")

    def add_elapsed_time(self, metric_name: Optional[str] = None) -> None:
        import time

        now = time.time()
        last = getattr(self, "_last_ts", None)
        if metric_name and last is not None:
            self.perf_metrics[metric_name] = self.perf_metrics.get(metric_name, 0.0) + (now - last)
        self._last_ts = now

    def parquet_kv_metadata(self, extra: Optional[Dict[str, int]] = None) -> Dict[str, str]:
        md = {
            PARQUET_METADATA_KEY_PREFIX + "__task_key__": self.key,
            PARQUET_METADATA_KEY_PREFIX + "__node_id__": str(self.node_id),
            PARQUET_METADATA_KEY_PREFIX + "__job_id__": str(self.runtime_ctx.job_id) if self.runtime_ctx else "",
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

    def output_dataset(self, output_dir: str) -> DataSet:
        return ParquetDataSet(["*.parquet"], root_dir=output_dir)

    def error_context(self) -> Dict[str, Any]:
        """Extra fields for a TaskError (e.g. the SQL text)."""
        return {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["runtime_ctx"] = None
        state.pop("_py_rng", None)
        state.pop("_np_rng", None)
        return state


def default_memory_limit(rt: RuntimeContext, cpu_limit: int) -> int:
    """A task's share of the machine's memory in proportion to its CPUs (at least 128 MB)."""
    return max(128 * MB, rt.usable_memory_size * cpu_limit // rt.usable_cpu_count)


_ = GB
