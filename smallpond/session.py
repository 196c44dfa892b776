"""Session: the DataFrame API's entry point, its configuration, and the job behind it.

A session owns one logical :class:`~smallpond.logical.node.Context` and one
:class:`~smallpond.execution.job.Job` (runtime context, planner, scheduler, executor), so every
DataFrame of the session shares results: a DataFrame derived from a computed one reuses what was
computed.

Configuration precedence, for each setting: explicit argument, then ``SP_*`` environment
variable, then default.
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Optional, Union

from smallpond.common import SWITCH_OFF, as_flag, env_setting, import_in_background, logger
from smallpond.dataframe import DataFrame, _tag
from smallpond.errors import ParameterError
from smallpond.execution.env_settings import ELASTIC_DEFAULT, elastic_mode, setting
from smallpond.execution.progress import console_listeners
from smallpond.execution.runtime import resolve_job, resolve_task_cache
from smallpond.execution.summary import want_session_summary
from smallpond.logical.base import user_call_site
from smallpond.logical.dataset import ArrowTableDataSet, CsvDataSet, DataSet, JsonDataSet, PandasDataSet, ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, SqlEngineNode


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
    restart: bool = False
    speculative_exec: object = "disable"
    random_seed: Optional[int] = None
    task_cache: Optional[str] = None
    task_cache_max_bytes: Optional[int] = None
    elastic_threads: object = ELASTIC_DEFAULT
    remove_empty_parquet: bool = False
    skip_task_with_empty_input: bool = False

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
        restart=False,
        speculative_exec=None,
        random_seed=None,
        task_cache=None,
        task_cache_max_bytes=None,
        elastic_threads=None,
        remove_empty_parquet=False,
        skip_task_with_empty_input=False,
        **unknown,
    ) -> "Config":
        if unknown:
            # upstream handed extra arguments to the platform launcher; scripts may pass them
            warnings.warn(f"smallpond.init(): ignoring arguments this backend does not use: {sorted(unknown)}", stacklevel=4)
        jid, jt, root = resolve_job(job_id, job_time, data_root)
        seed = setting(random_seed, "random_seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ParameterError(f"random_seed must be an integer, got {seed!r}")
        cache_bound = setting(task_cache_max_bytes, "task_cache_max_bytes", None)
        if cache_bound is not None and (isinstance(cache_bound, bool) or not isinstance(cache_bound, int) or cache_bound < 0):
            raise ParameterError(f"task_cache_max_bytes must be a number of bytes >= 0, got {cache_bound!r}")
        nexec = setting(num_executors, "num_executors", 0)
        if isinstance(nexec, bool) or not isinstance(nexec, int) or nexec < 0:
            raise ParameterError(f"num_executors must be a non-negative integer, got {nexec!r}")
        return Config(
            job_id=str(job_id if job_id else os.environ.get("SP_JOBID") or jid),
            job_time=jt,
            data_root=root,
            num_executors=nexec,
            ray_address=setting(ray_address, "ray_address", None),
            bind_numa_node=_flag("bind_numa_node", setting(bind_numa_node, "bind_numa_node", False) or False),
            platform=setting(platform, "platform", None),
            memory_allocator=setting(memory_allocator, "memory_allocator", "system"),
            remove_output_root=_flag("_remove_output_root", _remove_output_root),
            job_name=job_name,
            console_log_level=setting(console_log_level, "console_log_level", "WARNING"),
            fault_inject_prob=float(setting(fault_inject_prob, "fault_inject_prob", 0.0)),
            max_retry_count=int(setting(max_retry_count, "max_retry_count", 5)),
            max_fail_count=int(setting(max_fail_count, "max_fail_count", 3)),
            restart=_flag("restart", restart),
            speculative_exec=setting(speculative_exec, "speculative_exec", "disable"),
            random_seed=seed,
            task_cache=resolve_task_cache(task_cache, root),
            task_cache_max_bytes=cache_bound,
            elastic_threads=elastic_mode("smallpond.init", setting(elastic_threads, "elastic_threads", None)),
            remove_empty_parquet=_flag("remove_empty_parquet", remove_empty_parquet),
            skip_task_with_empty_input=_flag("skip_task_with_empty_input", skip_task_with_empty_input),
        )


def _flag(name: str, value) -> bool:
    """A yes/no argument of ``smallpond.init`` as a bool (``as_flag``): ``restart="false"``, as a
    command line passes it on, must not restart the job."""
    return as_flag("smallpond.init", name, value)


def spawn_if_asked(platform: Optional[str]) -> None:
    """``SP_SPAWN=1`` (upstream's): run this script once more through ``platform`` (``SP_PLATFORM``;
    default, as upstream: mpirun when it is on the PATH, else a subprocess), with this process's
    ``SP_*`` variables but ``SP_SPAWN``, wait for it, and exit with its status, without running
    anything here.

    Upstream exits 0 as soon as the run is started. Here the platforms start it on this machine
    (a subprocess, or mpirun), so this process waits for it and exits as it did: 0 when the job
    succeeded, its non-zero status (128 + N for a run killed by signal N) when it failed, so a
    scheduler (cron, a CI step, ``&&``) that started the script is not told a failed job
    succeeded. A Ctrl-C or SIGTERM here stops the run it started (exit 130 / 143). A platform that
    starts nothing itself (``manual``) leaves nothing to wait for: exit 0 at once."""
    if os.environ.get("SP_SPAWN") != "1":
        return
    from smallpond.platform import get_platform

    if not os.path.isfile(sys.argv[0]):  # python -c, a notebook, an interactive interpreter
        raise ParameterError(
            f"SP_SPAWN=1 starts the running script again, but this process runs no script file (argv[0] {sys.argv[0]!r})"
        )
    launcher = get_platform(None if platform in (None, "local") else platform)
    # the launched process inherits this environment: without SP_SPAWN, or it would spawn again
    del os.environ["SP_SPAWN"]
    envs = {k: v for k, v in os.environ.items() if k.startswith("SP_")}
    logger.info("SP_SPAWN=1: starting {} {} through {}", sys.argv[0], sys.argv[1:], type(launcher).__name__)
    ids = launcher.start_job(1, entrypoint=sys.argv[0], args=sys.argv[1:], envs=envs)
    sys.exit(_wait_spawned(launcher, ids))


def _wait_spawned(launcher, ids: List[str]) -> int:
    """Wait for the runs ``ids`` that ``launcher`` started; the exit status to report: 0 if every
    one succeeded, else the first failure's (a run killed by signal N: 128 + N). Interrupted
    (Ctrl-C, SIGTERM), stop them and return 130 / 143."""
    import signal

    stopped_by: List[int] = []

    def on_term(signum, frame):
        stopped_by.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # init() called outside the main thread: SIGTERM keeps its handler
        previous = on_term
    code, why = 0, ""
    try:
        for job in ids:
            status = launcher.wait_job(job)
            status = 128 - status if status is not None and status < 0 else status
            if status and not code:
                code = status
    except KeyboardInterrupt:
        code, why = 128 + (stopped_by[0] if stopped_by else signal.SIGINT), "interrupted"
        for job in ids:
            launcher.stop_job(job)
    finally:
        if previous is not on_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if code:
        logger.error(
            "SP_SPAWN=1: the run of {} started through {} {}; exit status {}",
            sys.argv[0],
            type(launcher).__name__,
            f"was {why} and stopped" if why else "failed",
            code,
        )
    return code


_warming = None


def warm_result_imports(modules=None):
    """Import what reading a result needs (``RESULT_IMPORTS`` of :mod:`smallpond.execution.job`:
    pyarrow and its Parquet reader) in a background thread, once per process.

    A session's results are read in this process (``to_arrow``, ``to_pandas``, ``take``), and
    importing pyarrow takes ~60 ms of one core, which a small job would otherwise add to its wall
    time right after its tasks are done. Started once the session's first computation has an
    attempt running (:class:`~smallpond.execution.job.WarmResultImports`), the imports overlap
    the job's tasks, not its start. pandas is left to ``to_pandas``: warmed here it cost
    every session ~0.2 s of CPU, on the cores the first job's worker needs, and on a loaded
    2-core machine ``to_pandas`` was not measurably quicker for it. Python holds a lock per module being
    imported, so a script importing one of these modules meanwhile waits for it to be done rather
    than importing it twice. The thread is not a daemon: an interpreter that exits early waits for it
    (it is never torn down in the middle of an import). ``SP_WARM_IMPORTS=0`` turns it off.
    Returns the thread, or None if nothing was started.
    """
    global _warming
    if _warming is not None or env_setting("SP_WARM_IMPORTS") in SWITCH_OFF:
        return None
    if modules is None:
        from smallpond.execution.job import RESULT_IMPORTS as modules
    _warming = import_in_background(modules)
    return _warming


class Session:
    """Entry point of the DataFrame API; create it with :func:`smallpond.init`."""

    def __init__(self, **kwargs) -> None:
        from smallpond.execution.job import Job, WarmResultImports, make_executor, make_runtime_ctx
        from smallpond.execution.scheduler import Speculation

        self._shutdown_called = False
        self._default_platform = None  # (see _platform)
        self._config = Config.from_args_and_env(**kwargs)
        spawn_if_asked(self._config.platform)
        want_session_summary()  # read at shutdown; a value that does not parse is refused now
        cfg = self._config
        ignored = [
            n
            for n, used in (("bind_numa_node", cfg.bind_numa_node), ("memory_allocator", cfg.memory_allocator != "system"))
            if used
        ]
        if ignored:
            logger.warning(
                "smallpond.init(): {} {} no effect in this build", ", ".join(ignored), "has" if len(ignored) == 1 else "have"
            )
        self._ctx = Context()
        rt = make_runtime_ctx(
            cfg.job_id,
            cfg.job_time,
            cfg.data_root,
            num_executors=cfg.num_executors,  # (bind_numa_node: no effect, warned about above)
            fault_inject_prob=cfg.fault_inject_prob,
            console_log_level=cfg.console_log_level,
            random_seed=cfg.random_seed,
            task_cache=cfg.task_cache or False,
            elastic_threads=cfg.elastic_threads,
            remove_empty_parquet=cfg.remove_empty_parquet,
            skip_task_with_empty_input=cfg.skip_task_with_empty_input,
        )
        # with a Ray address every task runs on that Ray cluster; with a platform, on the queue
        # backend's executors; without either, embedded
        backend = "ray" if cfg.ray_address else "local"
        self._job = Job(
            rt,
            executor=make_executor(
                rt, cfg.num_executors or None, backend=backend, ray_address=cfg.ray_address, platform=cfg.platform
            ),
            max_retry_count=cfg.max_retry_count,
            max_fail_count=cfg.max_fail_count,
            # pyarrow is imported once the first computation's first attempt runs: imported
            # from here on, its ~60 ms held the GIL while this process planned and sent it
            listeners=[*console_listeners(), WarmResultImports(start=warm_result_imports)],
            name=cfg.job_name,
            restart=cfg.restart,
            speculation=Speculation.of(cfg.speculative_exec),
            task_cache_max_bytes=cfg.task_cache_max_bytes,
        )
        self._nodes: List[Any] = []
        self._optimized: Dict[int, Any] = {}
        self._schemas: Dict[int, Any] = {}  # id(node) -> pyarrow.Schema (see DataFrame.schema)
        self._job.start()
        self._pid = os.getpid()  # (a forked child's exit is not this session's end)
        atexit.register(self._shutdown_at_exit)

    # -- properties ------------------------------------------------------------------------------
    @property
    def runtime_ctx(self):
        return self._job.rt

    _runtime_ctx = runtime_ctx

    @property
    def config(self) -> Config:
        return self._config

    @property
    def _platform(self):
        """The session's :class:`~smallpond.platform.Platform`, as upstream's ``Session._platform``:
        the one that starts its executors on the queue backend (``init(platform=...)``), else the
        one upstream's session would have had (``SP_SPAWN``'s: ``MPI`` when ``mpirun`` is on the
        PATH, else the base ``Platform``), through which an embedded or Ray session starts nothing."""
        executor = self._job.executor
        platform = getattr(executor, "platform", None) if executor is not None else None
        if platform is None:
            from smallpond.platform import get_platform

            if self._default_platform is None:
                self._default_platform = get_platform(None)
            platform = self._default_platform
        return platform

    @property
    def _node_to_tasks(self):
        return self._job.planner.node_to_tasks if self._job.planner else {}

    @property
    def _failed(self) -> bool:
        return self._job.failed

    @_failed.setter
    def _failed(self, value: bool) -> None:
        self._job.failed = value

    # -- sources ---------------------------------------------------------------------------------
    def read_csv(self, paths: Union[str, List[str]], schema: Dict[str, str], delim: str = ",") -> DataFrame:
        """Read CSV files (no header) with a schema of column name → DuckDB type.

        Example::

            df = sp.read_csv("urls/*.tsv", schema={"urlstr": "varchar", "valstr": "varchar"}, delim="\\t")
        """
        return self._source(_at_call_site("read_csv", lambda: CsvDataSet(paths, _schema_dict(schema), delim)))

    def read_parquet(
        self,
        paths: Union[str, List[str]],
        recursive: bool = False,
        columns: Optional[List[str]] = None,
        union_by_name: bool = False,
    ) -> DataFrame:
        """Read Parquet files (globs allowed; a leading ``~`` is the home directory).

        ``columns``: the columns to read. As upstream's, an item may also be an SQL expression that
        the caller writes (``"string_split(url, '/')[1] as host"``): an item that is a column of
        the files is quoted and read as that column, whatever characters its name holds; any
        other item that DuckDB parses as a select item is run as the caller's SQL.
        """
        return self._source(
            _at_call_site(
                "read_parquet",
                lambda: ParquetDataSet(paths, columns=columns, union_by_name=union_by_name, recursive=recursive),
            )
        )

    def read_json(self, paths: Union[str, List[str]], schema: Dict[str, str]) -> DataFrame:
        """Read newline-delimited JSON files with a schema of column name → DuckDB type."""
        return self._source(_at_call_site("read_json", lambda: JsonDataSet(paths, _schema_dict(schema))))

    def from_items(self, items: List[Any]) -> DataFrame:
        """A DataFrame from Python values: dicts become columns, other values a column ``item``.

        The columns of dicts are their keys, in the order first met; a dict without a key has a
        null there.

        >>> sp.from_items([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]).take_all()
        [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'y'}]
        >>> sp.from_items([{"a": 1}, {"b": "y"}]).take_all()
        [{'a': 1, 'b': None}, {'a': None, 'b': 'y'}]
        >>> sp.from_items([3, 4]).take_all()
        [{'item': 3}, {'item': 4}]
        """
        import pyarrow as pa

        from smallpond.io.pyvalues import plain_array

        def column(values: list):  # (plain values without importing pandas, as pa.array does)
            array = plain_array(values)
            return array if array is not None else pa.array(values)

        if not isinstance(items, (list, tuple)) or not items:
            raise ParameterError(f"from_items needs a non-empty list, got {type(items).__name__}")
        try:
            if isinstance(items[0], dict):
                odd = next((i for i, item in enumerate(items) if not isinstance(item, dict)), None)
                if odd is not None:
                    raise ParameterError(
                        f"from_items: item 0 is a dict but item {odd} is {type(items[odd]).__name__} {items[odd]!r:.80}"
                    )
                # pa.Table.from_pylist takes the columns of the first dict only: the keys other
                # dicts add were dropped without a word
                names = dict.fromkeys(key for item in items for key in item)
                if any(not isinstance(key, str) for key in names):
                    raise ParameterError(f"from_items: the keys of dict items are column names (str), got {list(names)!r:.120}")
                table = pa.table({key: column([item.get(key) for item in items]) for key in names})
            else:
                table = pa.table({"item": column(list(items))})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ParameterError(
                f"from_items: the items do not make a table (values of one column must be of one type): {e}"
            ) from e
        return self.from_arrow(table)

    def from_pandas(self, df) -> DataFrame:
        """A DataFrame from a pandas DataFrame (written to Parquet when first computed), as ``df``
        is at this call: a copy is taken, so later changes to ``df`` do not reach it."""
        pd = sys.modules.get("pandas")  # (not imported: df cannot be a pandas DataFrame)
        if pd is None or not isinstance(df, pd.DataFrame):
            hint = "; a pyarrow Table goes to from_arrow()" if _is_arrow_table(df) else ""
            raise ParameterError(
                f"Session.from_pandas called at {user_call_site()}: needs a pandas.DataFrame, got {type(df).__name__}{hint}"
            )
        # a snapshot: the frame is lazy, and the caller's df may change before (or after) it runs;
        # to_pandas() and to_arrow() must both give the rows as they were at this call
        return self._source(PandasDataSet(df.copy(deep=True)))

    def from_arrow(self, table) -> DataFrame:
        """A DataFrame from a pyarrow Table or RecordBatch (written to Parquet when first computed)."""
        pa = sys.modules.get("pyarrow")
        if pa is not None and isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not _is_arrow_table(table):
            # it failed when the source task ran (AttributeError: ... has no attribute 'num_rows')
            pd = sys.modules.get("pandas")
            hint = "; a pandas DataFrame goes to from_pandas()" if pd is not None and isinstance(table, pd.DataFrame) else ""
            raise ParameterError(
                f"Session.from_arrow called at {user_call_site()}: needs a pyarrow.Table, got {type(table).__name__}{hint}"
            )
        return self._source(ArrowTableDataSet(table))

    def _source(self, dataset: DataSet) -> DataFrame:
        return DataFrame(self, DataSourceNode(self._ctx, dataset))

    # -- SQL -------------------------------------------------------------------------------------
    def partial_sql(self, query: str, *inputs: DataFrame, **kwargs) -> DataFrame:
        """Run ``query`` once per partition; ``{0}``, ``{1}``, ... name the inputs.

        Inputs with the same partitioning are matched partition by partition; an input with a
        single partition is given to every partition of the other. With no input the query runs
        once. The query is a format string: literal braces are written ``{{`` and ``}}``, and
        :func:`smallpond.common.escape_braces` doubles those of a value pasted in
        (``"... where s = " + escape_braces(quote_literal(value))``).

        >>> sp.partial_sql("select * from range(3)").to_pandas()["range"].tolist()
        [0, 1, 2]
        >>> df = sp.from_items([{"host": "a"}, {"host": "b"}, {"host": "a"}])
        >>> sp.partial_sql("select host, count(*) as n from {0} group by host order by host", df).take_all()
        [{'host': 'a', 'n': 2}, {'host': 'b', 'n': 1}]
        """
        for i, df in enumerate(inputs):
            if not isinstance(df, DataFrame):
                raise ParameterError(f"partial_sql input {i} must be a DataFrame, got {type(df).__name__}")
        plan = _tag(SqlEngineNode(self._ctx, tuple(df.plan for df in inputs), query, **kwargs), "partial_sql")
        return DataFrame(self, plan, recompute=any(df.need_recompute for df in inputs))

    # -- execution -------------------------------------------------------------------------------
    def wait(self, *dfs: DataFrame) -> None:
        """Compute several DataFrames together."""
        for i, df in enumerate(dfs):
            if not isinstance(df, DataFrame):
                raise ParameterError(
                    f"Session.wait called at {user_call_site()}: argument {i} must be a DataFrame, "
                    f"got {type(df).__name__} {df!r:.80}"
                )
            if df.session is not self:
                # it ran in this session's job, and its own session computed it again when asked
                raise ParameterError(
                    f"Session.wait called at {user_call_site()}: argument {i} ({df}) is a DataFrame of another "
                    "session; call wait on that session"
                )
        self._compute_frames(list(dfs))

    def _compute_frames(self, dfs: List[DataFrame]) -> List[List[DataSet]]:
        from smallpond.logical.optimizer import optimize

        if self._shutdown_called:
            raise ParameterError("this session has been shut down; call smallpond.init() for a new one")
        for df in dfs:
            # recompute(): this frame's own node runs again once (and what consumes it); frames
            # derived from it inherit the flag and rerun their own node in turn
            if df.need_recompute and not getattr(df, "_recomputed", False):
                self._job.invalidate(df.plan)
                self._job.invalidate(self._optimized.get(id(df.plan), df.plan))
                df._recomputed = True
        frozen = set(self._node_to_tasks)
        nodes = []
        for df in dfs:
            opt = optimize(df.plan, frozen, self._optimized)
            df.optimized_plan = opt
            nodes.append(opt)
        return self._run_nodes(nodes)

    def _run_nodes(self, nodes: List[Any]) -> List[List[Any]]:
        """Plan and run nodes; returns each node's output datasets in partition order."""
        from smallpond.errors import JobFailed
        from smallpond.execution.publication import check_not_overwritten

        job = self._job
        if job.scheduler is not None and job.scheduler.state.overwritten:  # planned anew only then
            check_not_overwritten(job.scheduler.state, job.planner.tasks, [t for n in nodes for t in job.planner.plan(n)])
        try:
            return self._job.run_nodes(nodes)
        except JobFailed as e:
            # surface the failed task itself: it names the node, the call site, the SQL
            raise (e.errors[0] if e.errors else e) from None

    def _is_done(self, node) -> bool:
        return self._job.is_done(node)

    def graph(self):
        """A DOT description of every node created in this session (``.source`` is the text)."""
        from smallpond.logical.node import dot_graph

        return dot_graph(self._nodes)

    def dump_graph(self, path: Optional[str] = None) -> Optional[str]:
        """Write the session graph as DOT text to ``path`` (default ``log/graph.dot``) and, when
        Graphviz ``dot`` exists, a PNG beside it. Returns the PNG's path, or None without Graphviz."""
        path = path or os.path.join(self.runtime_ctx.log_root, "graph.dot")
        return self.graph().render(path)

    def dump_timeline(self, path: Optional[str] = None) -> Optional[str]:
        """Write the timeline of the tasks run so far as Chrome trace JSON (open it in Perfetto or
        ``chrome://tracing``): one track per worker, one slice per attempt, failed ones included.
        Default path: ``log/timeline_exec.json``. Returns the path written.

        The run report ``log/report.html`` (written at shutdown) shows the same timeline.
        """
        import json

        from smallpond.execution.events import JobHistory, chrome_trace
        from smallpond.io.filesystem import atomic_write_text

        rt = self.runtime_ctx
        path = path or os.path.join(rt.log_root, "timeline_exec.json")
        events = self._job.events
        if events is not None:
            events.flush()
        run = (events.history if events is not None else JobHistory()).last
        trace = chrome_trace(run) if run is not None else {"traceEvents": []}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_text(path, json.dumps(trace))
        return path

    def summary(self):
        """The summary of this session's job so far: tasks run, resumed, retried and failed, wall
        time per node, bytes read and written, and where the logs and the run report are.

        Printed to stderr at shutdown when stderr is a terminal or ``SP_SUMMARY=1``.
        """
        return self._job.summary()

    # -- lifecycle -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop workers and write ``log/.STATUS``; on success remove queue/, temp/, staging/."""
        if self._shutdown_called:
            return
        self._shutdown_called = True
        self._job.finish(remove_intermediates=True, remove_output_root=self._config.remove_output_root)
        try:
            atexit.unregister(self._shutdown_at_exit)
        except Exception:
            pass
        if want_session_summary():  # a failed computation's error reached the user's code already
            sys.stderr.write(self._job.summary(show_error=False))
            sys.stderr.flush()

    def _shutdown_at_exit(self) -> None:
        """:meth:`shutdown` as the interpreter exits: its workers are stopped, none kept for a job
        that cannot come (:func:`~smallpond.execution.executors.local_spares.process_ending`)."""
        from smallpond.execution.executors import local_spares

        if os.getpid() != getattr(self, "_pid", os.getpid()):
            # a child the user forked, ending through the interpreter's exit: shutting down here
            # removed the parent's job folder under its running session and stopped its workers
            return
        local_spares.process_ending()
        self.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._failed = True
        self.shutdown()


def _at_call_site(op: str, make):
    """``make()`` (a dataset built from a user's arguments), its ParameterError naming
    ``Session.{op}`` and the user's call site unless it names it already."""
    try:
        return make()
    except ParameterError as e:
        site = user_call_site()
        if site in str(e):
            raise
        raise type(e)(f"Session.{op} called at {site}: {e}") from None


def _schema_dict(schema):
    """A mapping ``schema`` as a dict; anything else as it is, for the dataset to refuse by name
    (``dict(['a'])`` raised a bare ValueError about a dictionary update sequence)."""
    from collections.abc import Mapping

    return dict(schema) if isinstance(schema, Mapping) else schema


def _is_arrow_table(value) -> bool:
    pa = sys.modules.get("pyarrow")  # (not imported: value cannot be a pyarrow Table)
    return pa is not None and isinstance(value, pa.Table)


#: upstream's name for the engine part of a session (``smallpond.session.SessionBase``)
SessionBase = Session
