"""The worker process loop of the local executor.

A worker receives ``(seq, node_key, node_blob, body)`` messages on a pipe: ``seq`` numbers the
attempts its driver sent it (1, 2, ...), ``body`` is the pickled ``(task, inputs, attempt)``
without the task's node, and ``node_blob`` the pickled node the first time this worker sees it
(``None`` after that: the worker keeps it by ``node_key``). It runs the attempt
(:func:`~smallpond.execution.attempt.execute_attempt`) and sends back a Completion. It starts with
only what every task needs (the attempt machinery, one log sink for all its attempts); DuckDB and
Arrow are imported by the first task that uses them and stay loaded, so later tasks start in
microseconds and a worker running only Python tasks never pays for them; a worker forked by its
driver (:mod:`~smallpond.execution.worker_fork`) opens DuckDB while it waits for its first task.

Attempts queued behind a running one can be taken back (work stealing): on a second socket, the
control socket, a thread answers the driver's ``[seq, ...]`` with the ones this worker has not
started, and never starts them (:class:`Claims`). The driver sends those to another worker only
after that answer, so an attempt runs once and none is lost.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import socket
import sys
import threading
from typing import Iterable, List, Optional

# (every attempt needs the task module: imported here, a task's fields are rebuilt without an
# import statement per task, which asks the module for a ``__path__`` through its __getattr__)
from smallpond.execution.task import PartitionInfo, TaskId


def _preload() -> None:
    from smallpond.execution import attempt  # noqa: F401


def worker_main(conn, rt_path: str, index: int, *, warm_while_idle: bool = False, control=None) -> None:
    """Serve attempts on ``conn`` until it closes; answer requests to take queued attempts back on
    ``control`` (a connection; None: none can be taken back).

    ``warm_while_idle``: if no attempt is waiting once the worker is set up, import DuckDB and
    open the shared database meanwhile (a forked worker is ready ~40 ms before its driver sends
    the first attempt of a job; a fresh interpreter finds it waiting, and loads DuckDB only for
    a task that uses it).
    """
    import cloudpickle

    from smallpond.execution import stacks
    from smallpond.execution.attempt import install_task_log_sink, run_attempt
    from smallpond.execution.commit import _fast_pickle
    from smallpond.execution.executors.base import Completion
    from smallpond.execution.ops.duckdb import open_shared_database, share_database_in_process
    from smallpond.execution.task import process_owns_random_state

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started_env = dict(os.environ)  # what each job's environment overrides apply to

    def join(rt_path: str, index: int):
        if os.environ != started_env:  # the previous job's overrides
            os.environ.clear()
            os.environ.update(started_env)
        rt = _load_runtime_ctx(rt_path)
        setup_worker_process(rt, f"smallpond-worker-{index}")
        stacks.enable(rt.temp_root)  # where a task is, when the stall warning asks
        install_task_log_sink(rt.file_log_level)
        return rt, local_worker_name(index)

    rt, worker_name = join(rt_path, index)
    process_owns_random_state()
    share_database_in_process()
    nodes = NodeCache()
    claims = Claims()
    if control is not None:
        threading.Thread(target=serve_take_backs, args=(control, claims), name="smallpond-take-back", daemon=True).start()
    if warm_while_idle and not conn.poll(0):
        open_shared_database(rt)

    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if msg == b"stop":
            return
        if msg == PARK:
            if not park(conn):
                return
            continue
        if msg.startswith(JOIN):  # a kept worker's next job (see park)
            from smallpond.execution.attempt_files import forget_input_sizes

            rt, worker_name = join(*pickle.loads(msg[len(JOIN) :]))
            nodes = NodeCache()  # the next job's driver numbers its nodes from 0 again
            forget_input_sizes()
            continue
        seq, node_key, node_blob, body = pickle.loads(msg)
        if node_blob is not None:
            nodes.add(node_key, node_blob)  # kept even if taken back: the driver counts it as sent
        if not claims.start(seq):
            continue  # taken back: another worker runs it
        task, inputs, attempt, memory = decode_attempt(nodes, node_key, body)
        result = load_node(nodes, node_key, task, attempt, worker_name)
        if result is None:
            result = run_attempt(rt, task, inputs, attempt, memory, worker_name)
        try:
            wire = result.to_wire()  # (the driver rebuilds it: see LocalExecutor._receive)
            payload = _fast_pickle(wire) or cloudpickle.dumps(wire)
        except Exception as e:
            from smallpond.errors import TaskError

            payload = cloudpickle.dumps(
                Completion(
                    task.key,
                    attempt,
                    False,
                    None,
                    TaskError(
                        f"cannot send the result back: {e}",
                        task_key=task.key,
                        node=task.node_label,
                        location=task.location,
                        retryable=False,
                    ),
                    worker=worker_name,
                )
            )
        try:
            conn.send_bytes(payload)
        except (BrokenPipeError, OSError):
            return


#: the driver keeps this idle worker for a later job of its process (see
#: :mod:`~smallpond.execution.executors.local_spares`), which answers ``PARKED`` (or ends); then
#: ``JOIN`` + pickled ``(rt_path, index)``
PARK, PARKED, JOIN = b"park", b"parked", b"join:"
#: a kept worker that no job has taken for this long ends itself (seconds)
PARKED_SECONDS = 120.0


def park(conn, seconds: Optional[float] = None) -> bool:
    """Let go of what this worker holds of its job (its DuckDB databases, the memory Arrow keeps
    for reuse), say so, and wait for the next one; False (then end) if a module of the user's was
    loaded here (a node's class: a fresh worker imports it as its file is then), or no job came
    within ``seconds``."""
    from smallpond.execution.module_kinds import user_modules
    from smallpond.execution.ops.duckdb import close_shared_databases

    if user_modules():
        return False
    close_shared_databases()
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    import gc

    gc.collect()
    try:
        conn.send_bytes(PARKED)
        if seconds is None:  # SP_TEST_PARKED_SECONDS: tests only (a parked worker ending itself), inert when unset
            seconds = float(os.environ.get("SP_TEST_PARKED_SECONDS") or PARKED_SECONDS)
        return conn.poll(seconds)
    except (EOFError, OSError):
        return False


class Claims:
    """Which attempts this worker has started and which its driver took back, by ``seq``.

    Messages are read in order, so the attempts not started are those above the last one read.
    The lock makes "start" and "take back" exclusive: an attempt is either started here (and its
    take-back answer leaves it out) or taken back (and skipped when its message is read), never
    both; and it is given up once at most.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read = 0  # the seq of the last message read (run or skipped)
        self._taken: set = set()  # given up, not read yet

    def start(self, seq: int) -> bool:
        """Claim attempt ``seq`` to run it; False if it was taken back (skip it)."""
        with self._lock:
            self._read = seq
            if seq in self._taken:
                self._taken.discard(seq)
                return False
            return True

    def take_back(self, seqs: Iterable[int]) -> List[int]:
        """Give up the attempts of ``seqs`` neither started nor given up before; returns those."""
        with self._lock:
            out = [s for s in seqs if s > self._read and s not in self._taken]
            self._taken.update(out)
            return out


def serve_take_backs(control, claims: Claims) -> None:
    """The control socket's thread: answer each ``[seq, ...]`` with the attempts given up."""
    while True:
        try:
            seqs = pickle.loads(control.recv_bytes())
            control.send_bytes(pickle.dumps(claims.take_back(seqs)))
        except (EOFError, OSError):
            return


class NodeCache:
    """The pickled nodes a worker has received, by key, and the nodes it may reuse.

    smallpond's own nodes are read-only descriptions: one copy serves every task. A user's node
    subclass gets a fresh copy per task, as if it had been sent with it. A node's blob may hold
    the fields its tasks share in front (a template, see
    :class:`~smallpond.execution.executors.local.TaskEncoder`): its tasks then come as their own
    fields only (:func:`decode_attempt`).
    """

    def __init__(self) -> None:
        self._blobs: dict = {}
        self._nodes: dict = {}
        self._templates: dict = {}
        self._unpack_dataset = None

    def __contains__(self, key) -> bool:
        return key in self._blobs

    def add(self, key, blob: bytes) -> None:
        from smallpond.execution.executors.base import TEMPLATE_MARK, unpack_dataset

        self._unpack_dataset = unpack_dataset  # (no import statement per attempt: see inputs)
        if blob[: len(TEMPLATE_MARK)] == TEMPLATE_MARK:
            start = len(TEMPLATE_MARK) + 4
            end = start + int.from_bytes(blob[len(TEMPLATE_MARK) : start], "little")
            self._templates[key] = pickle.loads(blob[start:end])
            blob = blob[end:]
        self._blobs[key] = blob

    def get(self, key):
        node = self._nodes.get(key)
        if node is None:
            from smallpond.execution.executors.base import load_with_import_path

            node = load_with_import_path(self._blobs[key])
            if type(node).__module__.startswith("smallpond."):
                self._nodes[key] = node
        return node

    def inputs(self, packed: list) -> list:
        """The inputs of an attempt that came with its task's own fields, whose datasets travel
        packed (:func:`~smallpond.execution.executors.base.pack_dataset`)."""
        unpack = self._unpack_dataset
        return [unpack(ds) for ds in packed]

    def task(self, key, fields: dict):
        """The task of node ``key`` whose own fields are ``fields`` (see
        :func:`~smallpond.execution.executors.base.task_fields`), the rest from its template."""
        cls, shared = self._templates[key]
        task = cls.__new__(cls)
        state = task.__dict__
        state.update(shared)
        state.update(fields)
        state["id"] = TaskId(fields["id"])
        state["partition_infos"] = tuple([PartitionInfo(*p) for p in fields["partition_infos"]])
        state["node"] = state["runtime_ctx"] = None
        state["plan_components"] = {}
        return task


def decode_attempt(nodes: NodeCache, node_key, body: bytes) -> tuple:
    """``(task without its node, inputs, attempt, memory)`` of an attempt's pickle (see
    :func:`~smallpond.execution.executors.base.encode_attempt`), whose node ``nodes`` has."""
    task, inputs, attempt, memory = pickle.loads(body)
    if type(task) is dict:  # the task's own fields: the rest is in its node's template
        task = nodes.task(node_key, task)
        inputs = nodes.inputs(inputs)  # (packed with them: see encode_attempt)
    return task, inputs, attempt, memory


def load_node(nodes: NodeCache, node_key, task, attempt: int, worker_name: str):
    """Set ``task.node`` from ``nodes``; None, or the failed Completion to send back when the node
    cannot be unpickled here (not retryable: every worker would fail the same way). The usual
    cause is a function the node uses that cloudpickle carried by name, not by value, and that the
    worker cannot import: one defined in the user's script with a decorator such as
    ``functools.lru_cache`` (in a worker, ``__main__`` is not the script)."""
    try:
        task.node = nodes.get(node_key)
        return None
    except Exception as e:
        from smallpond.errors import TaskError
        from smallpond.execution.executors.base import Completion

        error = TaskError(
            f"the worker cannot load the node of this task (its functions and data): {type(e).__name__}: {e}. "
            "A function defined in your script travels by value unless it is wrapped (functools.lru_cache, "
            "functools.cache, other decorators): then it is looked up by name and a worker cannot find it. "
            "Move such a function into a module of its own, importable by the workers.",
            task_key=task.key,
            node=task.node_label,
            location=task.location,
            retryable=False,
        )
        return Completion(task.key, attempt, False, None, error, worker=worker_name)


def setup_worker_process(rt, title: str) -> None:
    """What a worker process (never the user's) sets up: its title, the job's environment
    variables, and stdlib logging routed into the task logs."""
    from smallpond.utility import capture_stdlib_logging

    try:
        import setproctitle  # type: ignore

        setproctitle.setproctitle(title)
    except ImportError:
        pass
    os.makedirs(os.path.join(rt.log_root, "tasks"), exist_ok=True)
    for k, v in rt.env_overrides.items():
        os.environ[k] = v
    limit_blas_threads(os.environ)
    keep_arrow_pages_small(os.environ)
    if rt.enforce_memory_limit:  # the memory watch may end this process (its backend replaces it)
        from smallpond.execution.memory_watch import allow_hard_stop

        allow_hard_stop()
    capture_stdlib_logging()  # user code's stdlib logging lands in the attempt's log too


def local_worker_name(index: int) -> str:
    """The name of local worker ``index`` (``{host}/local-{index}``), as its attempts' events give
    it: also the executor's, for an attempt whose worker it lost (it named it ``local-{index}``,
    a row of its own in the report's timeline)."""
    return f"{socket.gethostname()}/local-{index}"


def worker_hash_seed(rt, environ) -> str:
    """``PYTHONHASHSEED`` of the worker interpreters smallpond starts for ``rt``'s job (local and
    queue workers, Ray's for its attempts).

    Python salts the hash of every ``str`` and ``bytes`` with a random number drawn at interpreter
    start unless this variable says otherwise, and the iteration order of a set of strings follows
    those hashes: a task that writes ``list({"a", "b", "c"})`` would write another order in every
    worker process, in every run. Spark sets it for its Python workers for the same reason. The
    value follows the job's ``random_seed``, as every other random number does; a value set by
    the user (the job's environment overrides, or this process's environment; ``random`` turns
    salting back on) wins. It must be in the environment a worker starts with: set after the
    interpreter starts, it has no effect."""
    for source in (rt.env_overrides, environ):
        if source.get("PYTHONHASHSEED"):
            return source["PYTHONHASHSEED"]
    digest = hashlib.sha256(f"{rt.random_seed}:PYTHONHASHSEED".encode()).digest()
    return str(int.from_bytes(digest[:4], "big"))


#: the thread pools of BLAS libraries (numpy's OpenBLAS, MKL), one thread in a worker unless the
#: user's or the job's environment sets either (then both are left as they are)
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(environ) -> None:
    """Give the BLAS libraries of a worker process one thread, as Dask's nanny and Ray do for
    their workers. Call before numpy is imported.

    A worker runs one task per CPU it reserved, and OpenBLAS otherwise starts a thread per core in
    every process that imports numpy (through pyarrow or pandas, for Arrow and Python tasks), which
    spin for ~0.1 s once started (``perf``: ``blas_thread_server``): CPU taken from the other
    workers at every job's start, and 63 spinning threads per worker on a 64-core machine.
    ``OMP_NUM_THREADS`` is not set: Arrow sizes its own thread pool from it. A task that wants
    threaded BLAS sets ``OPENBLAS_NUM_THREADS`` (in the environment, or the Driver's
    ``--env_variables``).

    Unlike ``MIMALLOC_ALLOW_THP`` (:func:`keep_arrow_pages_small`, an allocator detail the user's
    processes never see), the variables stay in the worker's environment, so a subprocess a task
    starts (``subprocess.run`` in a ``PythonScriptNode``) inherits them and runs its BLAS on one
    thread too. That is deliberate: the subprocess runs inside the task's CPU reservation, and
    it is what the systems scripts come from do to theirs: Ray puts ``OMP_NUM_THREADS`` (the
    task's ``num_cpus``, else 1) in its workers' environment, Dask's nanny its ``*_NUM_THREADS``,
    upstream smallpond ``OMP_NUM_THREADS=2`` in its Ray workers' and ``cpu_limit`` in its
    executors'. A subprocess that wants more threads is given them in its own environment
    (``env=dict(os.environ, OPENBLAS_NUM_THREADS="8")``), or the job sets them for all."""
    if not any(v in environ for v in BLAS_THREAD_VARIABLES):
        for v in BLAS_THREAD_VARIABLES:
            environ[v] = "1"


#: pyarrow's default memory pool (mimalloc) asks for transparent huge pages unless this says no
ARROW_HUGE_PAGES_VARIABLE = "MIMALLOC_ALLOW_THP"
#: in a worker's environment beside MIMALLOC_ALLOW_THP: smallpond set the variable, not the user
ARROW_PAGES_MARK = "SP_ARROW_PAGES_SMALL"
_PR_SET_THP_DISABLE, _PR_GET_THP_DISABLE = 41, 42  # prctl(2)
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def keep_arrow_pages_small(environ) -> bool:
    """Keep pyarrow's memory pool (mimalloc) from asking for transparent huge pages in a worker,
    unless the user's or the job's environment (``environ``, the worker's) sets
    ``MIMALLOC_ALLOW_THP``. Call before pyarrow is imported; returns whether it will act.

    mimalloc 3 (pyarrow 26's default pool) reserves 1 GiB arenas marked ``MADV_HUGEPAGE``, so
    on a kernel whose THP mode is ``madvise`` (the common default) the first touch of each 2 MiB
    of an arena faults in a whole huge page, zeroed by the kernel; mimalloc then purges freed
    memory in smaller pieces, and later allocations fault in huge pages again. A worker streams
    batches through fresh buffers (Parquet pages, ``take``, the writer's), so it paid that
    zeroing over and over: in the tuned GraySort (5M records, 2 workers) ~390 huge-page faults a
    run (~0.8 GB zeroed beyond what 4 KiB pages needed) and ~30% of the job's CPU samples in the
    kernel's ``clear_page_erms`` (``perf``); with the option off, the job's system time fell
    from 1.6-2.5 s to 0.9-1.2 s (4 interleaved runs), its user time unchanged (3.2 s). Random
    gathers over large tables are the other side of it: a ``take`` by a random permutation and a
    ``sort_indices`` of 10M rows spend ~1.2 s less in the kernel and ~1.3 s more in user time
    (TLB misses), ~2% more in all; a job made of those may set ``MIMALLOC_ALLOW_THP=1``. Memory not touched is not charged
    either way; only the kernel's page size for the pool changes.

    The user's own processes never see the setting: mimalloc reads it once, while pyarrow is
    imported (measured: pyarrow 26), so the variable is in the worker's environment only during
    that import (:class:`_ArrowImport`), and a subprocess the user's code starts (a
    ``PythonScriptNode`` running ``subprocess.run``) gets the environment the job started with.
    mimalloc applies the option with ``prctl(PR_SET_THP_DISABLE)``, which children inherit (for
    all of their memory, even across ``exec``); it is undone after the import, unless the kernel's
    THP mode is ``always``, where it is what keeps the worker's arenas small (children of such a
    worker run without huge pages). With the option off mimalloc marks no arena
    ``MADV_HUGEPAGE``, so under ``madvise`` its memory stays in small pages without it.

    A Ray worker process has imported pyarrow before any of smallpond's code runs in it (Ray
    does, to deserialize a task's arguments): there the variable comes with the attempts'
    ``runtime_env`` (:func:`worker_env_vars`), with :data:`ARROW_PAGES_MARK` saying smallpond
    set it, and this removes both and undoes the ``prctl`` (to the setting of the process that
    started the worker, the raylet)."""
    ours = environ.pop(ARROW_PAGES_MARK, None) == "1"
    if ARROW_HUGE_PAGES_VARIABLE in environ and not ours:
        return False  # the user's choice
    if "pyarrow" in sys.modules:  # mimalloc has read its options
        if ours:
            environ.pop(ARROW_HUGE_PAGES_VARIABLE, None)
            _restore_thp(_thp_disabled(os.getppid()))
        return ours
    environ.pop(ARROW_HUGE_PAGES_VARIABLE, None)  # (set again while pyarrow is imported)
    if not any(isinstance(f, _ArrowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ArrowImport())
    return True


def worker_env_vars(rt, environ) -> dict:
    """What a worker process must find in its environment when it starts, for settings read
    before smallpond's code runs in it (Ray's: see :func:`keep_arrow_pages_small`): the job's
    own ``MIMALLOC_ALLOW_THP`` (its environment overrides), else nothing if ``environ`` (the
    driver's) sets it, else ``MIMALLOC_ALLOW_THP=0`` and :data:`ARROW_PAGES_MARK`."""
    if ARROW_HUGE_PAGES_VARIABLE in rt.env_overrides:
        return {ARROW_HUGE_PAGES_VARIABLE: rt.env_overrides[ARROW_HUGE_PAGES_VARIABLE]}
    if ARROW_HUGE_PAGES_VARIABLE in environ:
        return {}
    return {ARROW_HUGE_PAGES_VARIABLE: "0", ARROW_PAGES_MARK: "1"}


class _ArrowImport:
    """An import hook (the first finder of ``sys.meta_path``): the import of ``pyarrow`` runs with
    ``MIMALLOC_ALLOW_THP=0`` in the environment, then the variable is removed, the THP setting
    mimalloc made undone (see :func:`keep_arrow_pages_small`) and the hook taken out. A spec found
    but not loaded (``importlib.util.find_spec``) leaves it in place for the import."""

    def find_spec(self, name, path=None, target=None):
        if name != "pyarrow":
            return None
        for finder in sys.meta_path:  # the spec the import would have found
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        run = getattr(loader, "exec_module", None)
        if run is None:
            return spec

        def exec_module(module):
            loader.exec_module = run
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            if ARROW_HUGE_PAGES_VARIABLE in os.environ:  # set meanwhile, by the user's code: theirs
                return run(module)
            disabled = _thp_disabled()
            os.environ[ARROW_HUGE_PAGES_VARIABLE] = "0"
            try:
                run(module)
            finally:
                os.environ.pop(ARROW_HUGE_PAGES_VARIABLE, None)
                _restore_thp(disabled)

        loader.exec_module = exec_module
        return spec


def _prctl(option: int, arg: int = 0) -> int:
    """prctl(2) on Linux; -1 where it cannot be called."""
    if not sys.platform.startswith("linux"):
        return -1
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        return -1


def _thp_disabled(pid: Optional[int] = None) -> int:
    """1 if process ``pid`` (default: this one) has transparent huge pages turned off
    (``PR_SET_THP_DISABLE``: ``THP_enabled: 0`` in its status), 0 if not, -1 if unknown."""
    if pid is None:
        return _prctl(_PR_GET_THP_DISABLE)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("THP_enabled:"):
                    return 1 - int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def _restore_thp(before: int) -> None:
    """Turn transparent huge pages back on for this process (and the children it starts) if they
    were on ``before`` (1, 0, -1 as :func:`_thp_disabled`) and mimalloc turned them off, unless
    the kernel's mode is ``always`` (see :func:`keep_arrow_pages_small`)."""
    if before == 0 and _thp_disabled() == 1 and not _thp_always():
        _prctl(_PR_SET_THP_DISABLE, 0)


def _thp_always() -> bool:
    try:
        with open(_THP_MODE) as f:
            return "[always]" in f.read()
    except OSError:
        return False


def _load_runtime_ctx(path: str):
    """Load the runtime context, verifying it with the job secret stored beside it."""
    from smallpond.io.filesystem import load

    with open(os.path.join(os.path.dirname(path), "secret"), "rb") as f:
        secret = f.read()
    return load(path, secret=secret)


def die_with_parent(parent: Optional[int] = None) -> None:
    """Linux: have the kernel kill this worker when the process that started it dies (even by
    SIGKILL), so no worker outlives its job running a task nobody will collect.

    ``parent``: that process's PID when known (a forked worker's), else the parent it has now.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid() if parent is None else parent
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def main(argv=None) -> None:
    from multiprocessing.connection import Connection

    argv = sys.argv[1:] if argv is None else argv
    fd, rt_path, index = int(argv[0]), argv[1], int(argv[2])
    control = Connection(int(argv[3])) if len(argv) > 3 else None
    die_with_parent()
    _preload()
    worker_main(Connection(fd), rt_path, index, control=control)


if __name__ == "__main__":
    main()
