"""A job's identity, its folder layout and its settings.

* :func:`resolve_job` is the one place that turns what the user gave (arguments, ``SP_*``
  environment variables, defaults) into a job id, a job time and an absolute data root.
* :class:`JobLayout` is where a job's files live, and nothing else:
  ``{data_root}/{job_time:%Y-%m-%d-%H-%M-%S}.{job_id}/`` with ``config/ log/ queue/ staging/
  output/ temp/``.
* :class:`RuntimeContext` holds the knobs a job runs with (seeds, fault injection, log levels,
  resource caps) and its layout. It is pickled to every worker, so it holds no open resources.

The per-job secret that signs every pickle crossing the shared filesystem lives in
``config/secret``, created owner-only (``0600`` in a ``0700`` folder): only the user who started
the job (and root) can read it, and so only they can forge a record the job would load. An
existing folder is resumed only after :mod:`smallpond.execution.ownership` checked that it is
safely the current user's and still has its secret (:meth:`RuntimeContext.initialize`).
"""

from __future__ import annotations

import glob
import os
import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from smallpond.common import MB, TB
from smallpond.errors import ParameterError

if TYPE_CHECKING:
    from smallpond.execution.executors.base import Capacity

DEFAULT_DATA_ROOT = os.path.join("~", ".smallpond", "data")
#: The job seed when none is given. A constant (upstream derived it from the job id): the same plan
#: on the same inputs draws the same random numbers in every job, so its outputs are reproducible
#: and reusable from the task cache. Pass ``random_seed`` (``init(random_seed=...)``, the Driver's
#: ``--random_seed``, ``SP_RANDOM_SEED``) to draw others; it is part of every task's fingerprint.
DEFAULT_RANDOM_SEED = 0x5EED
JOB_TIME_FORMAT = "%Y-%m-%d-%H-%M-%S"
#: The name of a job folder under the data root, ``{job_time:JOB_TIME_FORMAT}.{job_id}`` (see
#: :class:`JobLayout`; a job id is always a UUID, :func:`parse_job_id`), matched with ``fullmatch``:
#: group 1 the job time, group 2 the job id. The one pattern of it: the catalog finds job folders
#: with it, the sinks refuse outputs inside them and look for their interrupted publications.
JOB_FOLDER_NAME = re.compile(
    r"(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)


class JobId(uuid.UUID):
    @staticmethod
    def new() -> "JobId":
        return JobId(hex=uuid.uuid4().hex)


def _env(var: str) -> Optional[str]:
    value = os.environ.get(var)
    return value if value else None


def parse_job_id(job_id) -> JobId:
    """A job id from a UUID, or from any other string (mapped to a stable UUID)."""
    if isinstance(job_id, uuid.UUID):
        return JobId(bytes=job_id.bytes)
    text = str(job_id)
    try:
        return JobId(hex=text)
    except ValueError:
        return JobId(bytes=uuid.uuid5(uuid.NAMESPACE_URL, text).bytes)


def parse_job_time(job_time) -> datetime:
    """A job time from a ``datetime``, an ISO string or epoch seconds."""
    if isinstance(job_time, datetime):
        return job_time
    if isinstance(job_time, (int, float)) and not isinstance(job_time, bool):
        return datetime.fromtimestamp(job_time)
    if isinstance(job_time, str):
        try:
            return datetime.fromisoformat(job_time)
        except ValueError:
            pass
        try:  # epoch seconds as text (SP_JOB_TIME, or the --job_time an executor command carries)
            return datetime.fromtimestamp(float(job_time))
        except (ValueError, OverflowError, OSError):
            raise ParameterError(f"job_time must be an ISO date-time or epoch seconds, got {job_time!r}") from None
    raise ParameterError(f"job_time must be a datetime, an ISO string or epoch seconds, got {job_time!r}")


def find_job_time(data_root: str, job_id: str) -> Optional[datetime]:
    """The job time of an existing job folder for ``job_id`` under ``data_root`` (the newest of
    the current user's; folders of other users are skipped with a warning: they are never resumed)."""
    roots = sorted(glob.glob(os.path.join(glob.escape(os.path.abspath(data_root)), f"*.{job_id}")))
    for r in reversed(roots):
        stamp = os.path.basename(r)[: -len(job_id) - 1]
        try:
            jt = datetime.strptime(stamp, JOB_TIME_FORMAT)
        except ValueError:
            continue
        try:
            owner = os.lstat(r).st_uid
        except OSError:
            continue
        if owner != os.geteuid():
            from smallpond.common import logger

            logger.warning("ignoring job folder {}: it is owned by uid {}, not by you; it will not be resumed", r, owner)
            continue
        return jt
    return None


def resolve_data_root(data_root=None) -> str:
    """The absolute data root: ``data_root``, else ``SP_DATA_ROOT``, else ``~/.smallpond/data``."""
    return os.path.abspath(os.path.expanduser(data_root or _env("SP_DATA_ROOT") or DEFAULT_DATA_ROOT))


def resolve_job(job_id=None, job_time=None, data_root=None) -> Tuple[JobId, datetime, str]:
    """(job id, job time, absolute data root) from arguments, then ``SP_*`` variables, then defaults.

    * data root: ``data_root``, ``SP_DATA_ROOT``, ``~/.smallpond/data``;
    * job id: ``job_id``, ``SP_JOBID``, a new UUID; a string that is not a UUID names a stable one;
    * job time: ``job_time``, ``SP_JOB_TIME``, the time of an existing job with this id under the
      data root (so the same id resumes it), now.
    """
    root = resolve_data_root(data_root)
    raw_id = job_id if job_id not in (None, "") else _env("SP_JOBID")
    jid = parse_job_id(raw_id) if raw_id is not None else JobId.new()
    raw_time = job_time if job_time is not None else _env("SP_JOB_TIME")
    if raw_time is not None:
        try:
            jt = parse_job_time(raw_time)
        except ParameterError as e:
            if job_time is not None:
                raise
            raise ParameterError(f"environment variable SP_JOB_TIME={raw_time!r} is not valid: {e}") from None
    else:
        jt = find_job_time(root, str(jid)) or datetime.now()
    return jid, jt, root


#: Each user's own folder under a data root: ``.smallpond/users/{uid}`` (made and checked by
#: :mod:`smallpond.execution.user_folder`), holding the key, the sinks' records and the task cache.
SMALLPOND_DIRNAME, USERS_DIRNAME = ".smallpond", "users"
#: In a user's folder: the records of published results, the task cache when no other place is given.
SINKS_DIRNAME, TASK_CACHE_DIRNAME = "sinks", "task_cache"
#: Where an earlier smallpond kept the task cache (one for all users; moved by its owner's next job).
LEGACY_TASK_CACHE_DIRNAME = ".task_cache"


def this_uid() -> int:
    """The user whose folder this process uses (the owner of what it creates)."""
    return os.geteuid() if hasattr(os, "geteuid") else 0


def user_dir(data_root: str) -> str:
    """This user's folder under ``data_root`` (the one place that names it; no I/O)."""
    root = os.path.abspath(os.path.expanduser(data_root))
    return os.path.join(root, SMALLPOND_DIRNAME, USERS_DIRNAME, str(this_uid()))


_OFF = ("off", "false", "0", "no", "none", "disable", "disabled")
_ON = ("on", "true", "1", "yes", "default", "enable", "enabled")


def resolve_task_cache(value, data_root: str) -> Optional[str]:
    """The task cache folder (absolute) from an argument, else ``SP_TASK_CACHE``, else the default
    ``task_cache`` in this user's folder (:func:`user_dir`); None when the cache is turned off (``False``, ``"off"``).

    The one place that decides where the task cache is (see :mod:`smallpond.execution.cache`).
    """
    if value is None:
        value = _env("SP_TASK_CACHE")
    if value is None or value is True:
        return os.path.join(user_dir(data_root), TASK_CACHE_DIRNAME)
    if value is False:
        return None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value).strip()
        if text.lower() in _OFF:
            return None
        if text.lower() in _ON:
            return os.path.join(user_dir(data_root), TASK_CACHE_DIRNAME)
        return os.path.abspath(os.path.expanduser(text))
    raise ParameterError(f"task_cache must be a folder path, True (the default place) or False/'off', got {value!r}")


def sink_records_dir(data_root: str) -> str:
    """Where publications keep what they wrote into each destination outside a job folder (see
    :mod:`smallpond.execution.ops.sink_record`): in this user's folder under the data root, shared
    by this user's jobs, never inside a result folder (the one place that decides it)."""
    return os.path.join(user_dir(data_root), SINKS_DIRNAME)


def every_sink_records_dir(data_root: str) -> List[str]:
    """The records folders of every user under ``data_root`` that this process can read, this
    user's first (:func:`sink_records_dir`; the others by their uid's folder name)."""
    mine = sink_records_dir(data_root)
    users = os.path.dirname(user_dir(data_root))
    try:
        names = sorted(n for n in os.listdir(users) if n.isdigit())
    except OSError:
        names = []
    others = [os.path.join(users, n, SINKS_DIRNAME) for n in names]
    return [mine] + [d for d in others if d != mine and os.access(d, os.R_OK | os.X_OK)]


class JobLayout:
    """The folders of one job under the data root (no I/O except :meth:`create`)."""

    def __init__(self, data_root: str, job_time: datetime, job_id: uuid.UUID) -> None:
        self.data_root = os.path.abspath(data_root)
        self.job_root = os.path.join(self.data_root, f"{job_time:{JOB_TIME_FORMAT}}.{job_id}")

    def _sub(self, *parts: str) -> str:
        # asked for on every attempt (commit records, logs): joined once per layout
        memo = self.__dict__.setdefault("_joined", {})
        path = memo.get(parts)
        if path is None:
            path = memo[parts] = os.path.join(self.job_root, *parts)
        return path

    @property
    def config_root(self) -> str:
        return self._sub("config")

    @property
    def log_root(self) -> str:
        return self._sub("log")

    @property
    def queue_root(self) -> str:
        return self._sub("queue")

    @property
    def staging_root(self) -> str:
        return self._sub("staging")

    @property
    def output_root(self) -> str:
        return self._sub("output")

    @property
    def temp_root(self) -> str:
        return self._sub("temp")

    @property
    def completed_task_dir(self) -> str:
        return self._sub("staging", "completed_tasks")

    @property
    def started_task_dir(self) -> str:
        return self._sub("staging", "started_tasks")

    @property
    def published_records_dir(self) -> str:
        """The sinks' commit records while staging/ is removed (ops/sink.py, park_publication_records)."""
        return self._sub("config", "published")

    @property
    def sink_records_dir(self) -> str:
        """Not in the job folder: the records of every job of this user under the data root (ops/sink_record.py)."""
        return sink_records_dir(self.data_root)

    @property
    def secret_path(self) -> str:
        return self._sub("config", "secret")

    @property
    def job_status_path(self) -> str:
        return self._sub("log", ".STATUS")

    @property
    def runtime_ctx_path(self) -> str:
        return self._sub("config", "runtime_ctx.pickle")

    @property
    def logical_plan_path(self) -> str:
        return self._sub("config", "logical_plan.pickle")

    @property
    def exec_plan_path(self) -> str:
        return self._sub("config", "exec_plan.pickle")

    @property
    def sched_state_path(self) -> str:
        return self._sub("config", "sched_state.pickle")

    @property
    def plan_graph_path(self) -> str:
        """Base path of the plan graph (``log/graph``; ``.dot`` / ``.png`` are appended)."""
        return self._sub("log", "graph")

    @property
    def ray_log_path(self) -> str:
        return self._sub("log", "ray.log")

    @property
    def folders(self) -> Tuple[str, ...]:
        return (
            self.config_root,
            self.log_root,
            self.queue_root,
            self.staging_root,
            self.output_root,
            self.temp_root,
            self.completed_task_dir,
        )

    def create(self) -> None:
        """Create the folders, owner-only."""
        for d in self.folders:
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(self.job_root, 0o700)


class UpstreamOnly:
    """An attribute upstream 0.15 had that this build cannot give: reading it raises an
    AttributeError saying why (``getattr(obj, name, default)`` still gives the default).

    A non-data descriptor rather than a ``__getattr__``: lookups of other missing names (``getattr(
    task, "_x", None)``, frequent in the scheduler) stay as cheap as without it, and assigning the
    name on an instance still works."""

    def __init__(self, what: str, why: str) -> None:
        self.what, self.why = what, why

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        raise AttributeError(f"{type(obj).__name__}.{self.name} ({self.what}) is not available: {self.why}")


_PLANNED_IDS = (
    "task ids come from the planner's walk of the plan, the same in every run; a running task has its own as runtime_ctx.task.id"
)


#: RuntimeContext parameters (upstream's) that change nothing in this build: their default, and why.
#: A value other than the default gives one warning naming them.
NO_EFFECT_PARAMS = {
    "bind_numa_node": (False, "this build does not bind workers to NUMA nodes"),
    "max_usable_gpu_count": (1024, "no GPU is assigned to a task"),
    "secs_wq_poll_interval": (0.5, "queue executors wait for work on their own schedule, SP_QUEUE_HEARTBEAT"),
    "secs_executor_probe_interval": (30, "a lost queue executor is noticed after SP_QUEUE_TIMEOUT seconds"),
    "max_num_missed_probes": (6, "a lost queue executor is noticed after SP_QUEUE_TIMEOUT seconds"),
    "enable_profiling": (False, "no profile is taken; log/report.html has each attempt's CPU time and peak memory"),
    "enable_diagnostic_metrics": (False, "no diagnostic metrics are collected; see log/report.html"),
    "shared_log_root": (None, "logs are written under the job folder's log/ only"),
}


class RuntimeContext:
    """How a job runs (settings) and where it lives (:attr:`layout`). Shared by the scheduler and
    every worker (pickled), so it holds settings and paths, never open resources.

    The layout's paths are also attributes here (``job_root``, ``log_root``, ...), as upstream
    scripts read them.
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
        task_cache=None,
        elastic_threads=None,
    ) -> None:
        if not isinstance(job_id, uuid.UUID):
            job_id = parse_job_id(job_id)
        if not 0.0 <= fault_inject_prob < 1.0:
            raise ParameterError(f"fault_inject_prob must be in [0, 1), got {fault_inject_prob!r}")
        given = locals()
        ignored = [
            f"{name} ({why})"
            for name, (default, why) in NO_EFFECT_PARAMS.items()
            if (bool(given[name]) if isinstance(default, bool) else given[name]) != default
        ]
        if ignored:
            import warnings

            verb = "is accepted but has" if len(ignored) == 1 else "are accepted but have"
            warnings.warn(f"RuntimeContext: {', '.join(ignored)} {verb} no effect in this build", stacklevel=2)
        self.job_id = job_id
        self.job_time = job_time
        self.layout = JobLayout(data_root, job_time, job_id)
        self.num_executors = num_executors
        if random_seed is None:
            random_seed = DEFAULT_RANDOM_SEED
        if isinstance(random_seed, bool) or not isinstance(random_seed, int):
            raise ParameterError(f"random_seed must be an integer, got {random_seed!r}")
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
        #: idle CPUs as DuckDB threads for lone tasks: "safe" (None: the default, env_settings.
        #: ELASTIC_DEFAULT) for those whose output bytes cannot depend on them, True for ORDER BY
        #: tasks too, False never (see scheduler.py)
        from smallpond.execution.env_settings import elastic_mode

        self.elastic_threads = elastic_mode("RuntimeContext", elastic_threads)
        self.enable_profiling = enable_profiling
        self.enable_diagnostic_metrics = enable_diagnostic_metrics
        self.remove_empty_parquet = remove_empty_parquet
        self.skip_task_with_empty_input = skip_task_with_empty_input
        self.shared_log_root = shared_log_root
        from smallpond.execution.env_settings import log_level

        levels = {}
        for param, value in (("console_log_level", console_log_level), ("file_log_level", file_log_level)):
            try:
                levels[param] = log_level(value)
            except ValueError as e:
                raise ParameterError(f"{param}: {e}") from None
        self.console_log_level = levels["console_log_level"]
        self.file_log_level = levels["file_log_level"]
        self.disable_log_rotation = disable_log_rotation
        self.final_output_path = os.path.abspath(output_path) if output_path else None
        #: the task cache folder shared by jobs (None: off); see :func:`resolve_task_cache`
        self.task_cache: Optional[str] = resolve_task_cache(task_cache, self.layout.data_root)
        self.exec_id: Optional[str] = None
        self.current_task = None
        self._secret: Optional[bytes] = None

    # -- layout (upstream attribute names) -------------------------------------------------------
    data_root = property(lambda self: self.layout.data_root)
    job_root = property(lambda self: self.layout.job_root)
    config_root = property(lambda self: self.layout.config_root)
    log_root = property(lambda self: self.layout.log_root)
    queue_root = property(lambda self: self.layout.queue_root)
    staging_root = property(lambda self: self.layout.staging_root)
    output_root = property(lambda self: self.layout.output_root)
    temp_root = property(lambda self: self.layout.temp_root)
    completed_task_dir = property(lambda self: self.layout.completed_task_dir)
    published_records_dir = property(lambda self: self.layout.published_records_dir)
    sink_records_dir = property(lambda self: self.layout.sink_records_dir)
    started_task_dir = property(lambda self: self.layout.started_task_dir)
    sched_state_path = property(lambda self: self.layout.sched_state_path)
    job_status_path = property(lambda self: self.layout.job_status_path)
    runtime_ctx_path = property(lambda self: self.layout.runtime_ctx_path)
    logical_plan_path = property(lambda self: self.layout.logical_plan_path)
    logcial_plan_path = logical_plan_path  # upstream spelling
    logcial_plan_graph_path = property(lambda self: self.layout.plan_graph_path)  # upstream spelling
    exec_plan_path = property(lambda self: self.layout.exec_plan_path)
    ray_log_path = property(lambda self: self.layout.ray_log_path)

    @property
    def secret(self) -> bytes:
        """The per-job signing key (``config/secret``), created on first use."""
        if self._secret is None:
            self._secret = _read_or_create_secret(self.layout)
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
        return _total_memory()

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
        """NUMA nodes the scheduler places work on: 1 (this build binds no worker to a NUMA node)."""
        return 1

    @property
    def numa_node_id(self) -> Optional[int]:
        """The NUMA node this process is bound to: None, as this build binds no process."""
        return None

    def get_local_gpus(self) -> list:
        """GPUs this build assigns to tasks: none (it schedules no GPUs; see ``Task.local_gpu``)."""
        return []

    @property
    def secs_executor_probe_timeout(self) -> float:
        return self.secs_executor_probe_interval * self.max_num_missed_probes

    # upstream's task id counter: ids come from the planner here (reading one says so)
    next_task_id = UpstreamOnly("upstream smallpond's task id counter", _PLANNED_IDS)
    new_task_id = UpstreamOnly("upstream smallpond's task id counter", _PLANNED_IDS)

    @property
    def task(self):
        return self.current_task

    def set_current_task(self, task) -> "RuntimeContext":
        self.current_task = task
        return self

    # -- lifecycle -------------------------------------------------------------------------------
    def initialize(
        self, exec_id: Optional[str] = None, root_exist_ok: bool = True, cleanup_root: bool = False, restart: bool = False
    ) -> None:
        """Create the job's folders (owner-only) and its secret. Changes nothing else in this process.

        An existing folder is resumed only if it is safely the current user's and still has its
        secret (:mod:`smallpond.execution.ownership`); ``restart`` moves an existing folder aside
        (``{job_root}.restarted-{time}``) and starts the job afresh; ``cleanup_root`` removes it
        first (:meth:`cleanup_root`). Both are refused while a publication the job began is not
        finished (its journal is there).
        """
        import socket

        from smallpond.execution.ownership import check_job_folder, check_secret, move_aside, warn_if_shared

        if cleanup_root:
            self._remove_root(" without cleanup_root")  # (rerun with it, it would be refused again)
        exists = os.path.lexists(self.job_root)
        if exists and not root_exist_ok:
            raise FileExistsError(f"job root {self.job_root} already exists")
        warn_if_shared(self.data_root)
        if exists and restart:
            move_aside(self.layout)
            self._secret = None
            exists = False
        if exists:
            check_job_folder(self.layout)
            check_secret(self.layout)
        self.layout.create()
        _ = self.secret
        self.exec_id = exec_id or self.exec_id or socket.gethostname()

    def cleanup(self, remove_output_root: bool = True) -> None:
        """Remove queue/, temp/ and staging/ (and output/ if asked) after a successful job.

        All of them: a job's own clean-up (``--remove_output_root``, a session's shutdown) goes
        through :func:`smallpond.execution.retention.remove_intermediates` instead, which keeps
        the files a published result lists. Refused (:class:`~smallpond.execution.ownership.JobFolderError`)
        while a publication the job began is not finished (its journal is there): its rerun
        finishes it from the committed tasks of ``staging/`` and ``output/`` (a manifest sink
        publishes a list of their files); and, before anything goes, where this user could not
        remove all of them (another user's job folder)."""
        from smallpond.execution.ownership import refuse_if_publishing, refuse_unless_removable, remove_or_say

        refuse_if_publishing(self.layout, "clean up", "", "clean it up")
        folders = [self.queue_root, self.temp_root, self.staging_root] + ([self.output_root] if remove_output_root else [])
        refuse_unless_removable(self.layout, "clean up", folders)  # (another user's job: a clear refusal, nothing removed)
        remove_or_say(self.layout, "clean up", folders)  # (all of them, whatever one of them left)

    def cleanup_root(self) -> None:
        """Remove the whole job folder, unless a run of the job holds its job lock (a
        :class:`~smallpond.execution.ownership.JobFolderError` names it; the lock is held while
        the folder goes, so no run starts in it meanwhile), or an earlier run began publishing and
        did not finish (its ``config/publication.journal`` is there): removed, that publication
        could never be finished and its destinations would keep a result no record vouches for,
        so the error names the journal and what to do (as a restart is refused). Refused as well,
        before anything goes, where this user could not remove all of it (another user's job
        folder: :func:`~smallpond.execution.ownership.refuse_unless_removable`); what still could
        not be removed is named (a :class:`~smallpond.execution.ownership.JobFolderError`)."""
        self._remove_root("")

    def _remove_root(self, rerun: str) -> None:
        from smallpond.execution.ownership import (
            JobFolderError,
            JobLock,
            lock_state,
            refuse_if_publishing,
            refuse_unless_removable,
            remove_or_say,
        )

        # first: another user's folder (or one its owner closed) is refused naming it, before its
        # lock is asked for (which cannot be taken there) and before anything is removed
        refuse_unless_removable(self.layout, "remove the folder of", [self.job_root])
        # (not through a link: remove_path removes the link only, and the lock would stay there)
        own = os.path.isdir(self.layout.config_root) and not os.path.islink(self.job_root)
        lock = JobLock(self.layout) if own else None

        def take() -> None:
            try:
                lock.acquire()
            except OSError as e:  # (a JobFolderError names the run that holds it)
                raise JobFolderError(
                    f"cannot remove the folder of job {self.job_root}: nothing was removed, because its job lock "
                    f"{lock.path} could not be taken ({e.strerror or e}): run this as a user who can write {self.config_root}"
                ) from e

        try:
            if lock is not None and lock_state(self.job_root)[0] in ("alive", "elsewhere"):
                take()  # refused, naming the run (taken if it ended meanwhile)
            # before the lock is taken over: a refusal leaves a killed run's lock (its status says killed)
            refuse_if_publishing(self.layout, "remove the folder of", rerun, "remove its folder")
            if lock is not None and not lock.held:
                take()  # held while the folder goes: no run starts in it meanwhile
                refuse_if_publishing(self.layout, "remove the folder of", rerun, "remove its folder")
            remove_or_say(self.layout, "remove the folder of", [self.job_root])
        finally:
            if lock is not None:
                lock.release()  # (gone with the folder, unless the removal stopped short)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["current_task"] = None
        return state

    def __repr__(self) -> str:
        return f"RuntimeContext(job_root={self.job_root!r})"


def _read_or_create_secret(layout: JobLayout) -> bytes:
    path = layout.secret_path
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    os.makedirs(layout.config_root, mode=0o700, exist_ok=True)
    key = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this job created it first
        with open(path, "rb") as f:
            return f.read()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


_total_memory_cache: Optional[int] = None


def _total_memory() -> int:
    """The machine's memory in bytes (psutil's ``virtual_memory().total``: ``MemTotal`` on Linux,
    which is the physical pages times the page size that ``sysconf`` gives, without importing
    psutil at a job's start)."""
    global _total_memory_cache
    if _total_memory_cache is None:
        try:
            _total_memory_cache = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no such sysconf names (Windows)
            import psutil

            _total_memory_cache = psutil.virtual_memory().total
    return _total_memory_cache


def default_memory_limit(capacity: "Capacity", cpu_limit: int) -> int:
    """A task's share of the backend's memory in proportion to its CPUs (at least 128 MB).

    The one function that decides the memory of a task that did not ask for a limit; the
    scheduler calls it once per task and passes the result along with every attempt.
    """
    return max(128 * MB, capacity.memory * cpu_limit // max(1, capacity.num_cpus))
