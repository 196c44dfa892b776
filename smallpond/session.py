"""Session: configuration, the job's data root, and the engine behind DataFrames.

A session owns one logical :class:`~smallpond.logical.node.Context`, one runtime context (the job
root), one planner (node → tasks memo) and one scheduler with its executor, so every DataFrame of
the session shares results: a DataFrame derived from a computed one reuses what was computed.

Configuration precedence, for each setting: explicit argument, then ``SP_*`` environment
variable, then default.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Optional, Union

from smallpond.errors import ParameterError


@dataclass
class Config:
    job_id: str
    job_time: datetime
    data_root: str
    num_executors: int
    ray_address: Optional[str]
    bind_numa_node: bool
    platform: Optional[str]
    memory_allocator: str
    remove_output_root: bool
    job_name: Optional[str] = None
    console_log_level: str = "WARNING"
    fault_inject_prob: float = 0.0
    max_retry_count: int = 5
    max_fail_count: int = 3

    @staticmethod
    def from_args_and_env(
        job_id=None,
        job_time=None,
        job_name=None,
        data_root=None,
        num_executors=None,
        ray_address=None,
        bind_numa_node=None,
        platform=None,
        memory_allocator=None,
        _remove_output_root=True,
        console_log_level=None,
        fault_inject_prob=None,
        max_retry_count=None,
        max_fail_count=None,
        **unknown,
    ) -> "Config":
        if unknown:
            # upstream handed extra arguments to the platform launcher; scripts may pass them
            import warnings

            warnings.warn(f"smallpond.init(): ignoring arguments this backend does not use: {sorted(unknown)}", stacklevel=4)
        env = os.environ

        def pick(arg, var, default, convert=lambda x: x):
            if arg is not None:
                return arg
            if var in env and env[var] != "":
                try:
                    return convert(env[var])
                except ValueError:
                    raise ParameterError(f"environment variable {var}={env[var]!r} is not valid") from None
            return default

        jid = pick(job_id, "SP_JOBID", None) or str(uuid.uuid4())
        jt = pick(job_time, "SP_JOB_TIME", None, datetime.fromisoformat)
        if isinstance(jt, (int, float)):
            jt = datetime.fromtimestamp(jt)
        elif isinstance(jt, str):
            jt = datetime.fromisoformat(jt)
        root = pick(data_root, "SP_DATA_ROOT", None)
        if root is None:
            root = os.path.join(os.path.expanduser("~"), ".smallpond", "data")
        nexec = pick(num_executors, "SP_NUM_EXECUTORS", 0, int)
        if not isinstance(nexec, int) or nexec < 0:
            raise ParameterError(f"num_executors must be a non-negative integer, got {nexec!r}")
        return Config(
            job_id=str(jid),
            job_time=jt,
            data_root=os.path.abspath(root),
            num_executors=nexec,
            ray_address=pick(ray_address, "SP_RAY_ADDRESS", None),
            bind_numa_node=bool(pick(bind_numa_node, "SP_BIND_NUMA_NODE", False, lambda v: v == "1")),
            platform=pick(platform, "SP_PLATFORM", None),
            memory_allocator=pick(memory_allocator, "SP_MEMORY_ALLOCATOR", "system"),
            remove_output_root=_remove_output_root,
            job_name=job_name,
            console_log_level=pick(console_log_level, "SP_CONSOLE_LOG_LEVEL", "WARNING"),
            fault_inject_prob=float(pick(fault_inject_prob, "SP_FAULT_INJECT_PROB", 0.0, float)),
            max_retry_count=int(pick(max_retry_count, "SP_MAX_RETRY_COUNT", 5, int)),
            max_fail_count=int(pick(max_fail_count, "SP_MAX_FAIL_COUNT", 3, int)),
        )


class SessionBase:
    """The engine part of a session: runtime context, planner, scheduler, executor."""

    def __init__(self, **kwargs) -> None:
        from loguru import logger

        from smallpond.execution.job import make_runtime_ctx
        from smallpond.logical.node import Context

        self._shutdown_called = False
        self._config = Config.from_args_and_env(**kwargs)
        cfg = self._config
        if cfg.ray_address:
            logger.warning("ray_address={} given, but this build runs embedded only; running on this machine", cfg.ray_address)
        if cfg.platform not in (None, "", "base", "local"):
            logger.warning("platform={!r} is not supported by the embedded backend; running on this machine", cfg.platform)
        self._ctx = Context()
        self._runtime_ctx = make_runtime_ctx(
            cfg.job_id,
            cfg.job_time,
            cfg.data_root,
            num_executors=cfg.num_executors,
            bind_numa_node=cfg.bind_numa_node,
            fault_inject_prob=cfg.fault_inject_prob,
            console_log_level=cfg.console_log_level,
        )
        self._runtime_ctx.initialize()
        self._log_sinks = _setup_session_logging(self._runtime_ctx)
        self._nodes: List[Any] = []
        self._failed = False
        self._planner = None
        self._scheduler = None
        self._executor = None
        self._optimized: Dict[int, Any] = {}
        from smallpond.execution.scheduler import write_status

        write_status(self._runtime_ctx, "running")
        self._start_executor()
        atexit.register(self.shutdown)
        logger.info("smallpond session {} at {}", self._runtime_ctx.job_id, self._runtime_ctx.job_root)

    # -- properties ------------------------------------------------------------------------------
    @property
    def runtime_ctx(self):
        return self._runtime_ctx

    @property
    def config(self) -> Config:
        return self._config

    @property
    def _node_to_tasks(self):
        return self._planner.node_to_tasks if self._planner else {}

    # -- engine ----------------------------------------------------------------------------------
    def _start_executor(self) -> None:
        from smallpond.execution.executors.local import LocalExecutor
        from smallpond.execution.planner import Planner
        from smallpond.execution.scheduler import Scheduler

        rt = self._runtime_ctx
        nworkers = self._config.num_executors or None
        self._executor = LocalExecutor(rt, nworkers)
        self._executor.start()  # workers boot while the user's script builds its DataFrames
        self._planner = Planner(rt, parallelism=self._executor.num_workers)
        self._scheduler = Scheduler(
            rt,
            self._executor,
            max_retry_count=self._config.max_retry_count,
            max_fail_count=self._config.max_fail_count,
            progress=_make_progress(),
        )

    def _run_nodes(self, nodes: List[Any]) -> List[List[Any]]:
        """Plan and run nodes; returns each node's output datasets in partition order."""
        from smallpond.errors import JobFailed

        if self._shutdown_called:
            raise ParameterError("this session has been shut down; call smallpond.init() for a new one")
        task_lists = [self._planner.plan(n) for n in nodes]
        targets = [t for ts in task_lists for t in ts]
        try:
            results = self._scheduler.run(targets, self._planner.tasks)
        except JobFailed as e:
            self._failed = True
            self._forget_unfinished_work()
            # surface the failed task itself: it names the node, the call site, the SQL
            raise (e.errors[0] if e.errors else e) from None
        except BaseException:
            self._failed = True
            self._forget_unfinished_work()
            raise
        if self._scheduler.progress:
            self._scheduler.progress(None, 0.0)
        return [[results[t.key] for t in ts] for ts in task_lists]

    def _forget_unfinished_work(self) -> None:
        """After a failed computation, keep only finished results in the scheduler.

        The failed tasks and the work queued for that computation are dropped, so a later
        computation in the same session (a notebook cell after an error) neither re-raises the old
        error nor runs the failed work again unless it needs it; a DataFrame computed again after
        a failure retries its failed tasks.
        """
        from smallpond.execution.scheduler import SchedState

        old = self._scheduler.state
        fresh = SchedState()
        fresh.done = old.done
        fresh.resumed = old.resumed
        fresh.executed = old.executed
        fresh.consumers = old.consumers  # so recompute() still reaches what consumed a result
        self._scheduler.state = fresh

    def _is_done(self, node) -> bool:
        tasks = self._planner.node_to_tasks.get(id(node)) if self._planner else None
        if not tasks:
            return False
        done = self._scheduler.state.done
        return all(t.key in done for t in tasks)

    def _invalidate(self, node) -> None:
        """Forget results of ``node`` and of every planned task downstream of it."""
        from smallpond.execution.attempt import commit_path
        from smallpond.io.filesystem import remove_path

        tasks = self._planner.node_to_tasks.get(id(node)) or []
        st = self._scheduler.state
        stack = [t.key for t in tasks]
        seen = set()
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            st.done.pop(key, None)
            st.resumed.discard(key)
            remove_path(commit_path(self._runtime_ctx, key))
            for c in st.consumers.get(key, []):
                stack.append(c)
        for key in seen:
            if key in st.tasks:
                del st.tasks[key]
                st.waiting.pop(key, None)

    def dump_timeline(self, path: Optional[str] = None) -> Optional[str]:
        """Write the timeline of the tasks run so far as Chrome trace JSON (open it in Perfetto or
        ``chrome://tracing``). Default path: ``log/timeline_exec.json``. Returns the path written.

        Each finished task is one event, from its commit record: start = commit time - elapsed.
        Tasks resumed from an earlier run appear with the time they originally ran.
        """
        import json

        from smallpond.execution.attempt import commit_path
        from smallpond.io.filesystem import atomic_write_text, load

        rt = self._runtime_ctx
        path = path or os.path.join(rt.log_root, "timeline_exec.json")
        events = []
        tasks = self._scheduler.state.tasks if self._scheduler is not None else {}
        for key, task in sorted(tasks.items(), key=lambda kv: int(kv[1].id)):
            record_path = commit_path(rt, key)
            try:
                record = load(record_path, secret=rt.secret)
                end = os.path.getmtime(record_path)
            except Exception:
                continue  # not run, inline (metadata-only) or cleaned up
            elapsed = float(record.get("elapsed") or 0.0)
            events.append(
                {
                    "name": key,
                    "cat": task.node_label,
                    "ph": "X",
                    "ts": int((end - elapsed) * 1e6),
                    "dur": int(elapsed * 1e6),
                    "pid": int(task.node_id),
                    "tid": int(task.id),
                    "args": {"attempt": record.get("attempt", 0), "partition": [str(p) for p in task.partition_infos]},
                }
            )
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_text(path, json.dumps({"traceEvents": events}))
        return path

    # -- lifecycle -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop workers and write ``log/.STATUS``; on success remove queue/, temp/, staging/."""
        if self._shutdown_called:
            return
        self._shutdown_called = True
        from smallpond.execution.scheduler import cleanup_temp_dirs, write_status

        if self._executor is not None:
            self._executor.shutdown()
        rt = self._runtime_ctx
        if self._failed:
            write_status(rt, "failure")
        else:
            write_status(rt, "success")
            cleanup_temp_dirs(rt)
            rt.cleanup(remove_output_root=self._config.remove_output_root)
        try:
            atexit.unregister(self.shutdown)
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._failed = True
        self.shutdown()


def _setup_session_logging(rt) -> list:
    from loguru import logger

    try:
        logger.remove(0)  # loguru's default stderr sink: replace it with one at our console level
        ids = [logger.add(sys.stderr, level=rt.console_log_level)]
    except ValueError:
        ids = []
    ids.append(
        logger.add(os.path.join(rt.log_root, f"{rt.exec_id}.log"), level=rt.file_log_level, rotation="100 MB", retention=5)
    )
    return ids


def _make_progress():
    """A progress line on stderr, only on a terminal; ``SP_PROGRESS=0`` turns it off."""
    if os.environ.get("SP_PROGRESS", "1") in ("0", "false", "off", "no"):
        return None
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return None
    state = {"last": 0.0, "shown": False}

    def show(st, elapsed: float) -> None:
        now = time.time()
        if st is None:
            if state["shown"]:
                sys.stderr.write("\r\x1b[2K")
                sys.stderr.flush()
                state["shown"] = False
            return
        if now - state["last"] < 0.2:
            return
        state["last"] = now
        per_node: Dict[str, List[int]] = {}
        for key, t in st.tasks.items():
            if t.exec_on_scheduler:
                continue
            c = per_node.setdefault(t.node_label, [0, 0])
            c[1] += 1
            c[0] += key in st.done
        done = sum(c[0] for c in per_node.values())
        total = sum(c[1] for c in per_node.values())
        active = [f"{name.split('-')[0]} {c[0]}/{c[1]}" for name, c in per_node.items() if c[0] < c[1]][:3]
        line = f"smallpond: {done}/{total} tasks  {elapsed:5.1f}s  " + "  ".join(active)
        sys.stderr.write("\r\x1b[2K" + line[:160])
        sys.stderr.flush()
        state["shown"] = True

    return show


_ = Union
