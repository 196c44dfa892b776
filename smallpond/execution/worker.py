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
    rt = _load_runtime_ctx(rt_path)
    setup_worker_process(rt, f"smallpond-worker-{index}")
    stacks.enable(rt.temp_root)  # where a task is, when the stall warning asks
    install_task_log_sink(rt.file_log_level)
    process_owns_random_state()
    share_database_in_process()
    worker_name = f"{socket.gethostname()}/local-{index}"
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
        seq, node_key, node_blob, body = pickle.loads(msg)
        if node_blob is not None:
            nodes.add(node_key, node_blob)  # kept even if taken back: the driver counts it as sent
        if not claims.start(seq):
            continue  # taken back: another worker runs it
        task, inputs, attempt, memory = pickle.loads(body)
        result = load_node(nodes, node_key, task, attempt, worker_name)
        if result is None:
            result = run_attempt(rt, task, inputs, attempt, memory, worker_name)
        try:
            payload = _fast_pickle(result) or cloudpickle.dumps(result)
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
    subclass gets a fresh copy per task, as if it had been sent with it.
    """

    def __init__(self) -> None:
        self._blobs: dict = {}
        self._nodes: dict = {}

    def __contains__(self, key) -> bool:
        return key in self._blobs

    def add(self, key, blob: bytes) -> None:
        self._blobs[key] = blob

    def get(self, key):
        node = self._nodes.get(key)
        if node is None:
            node = pickle.loads(self._blobs[key])
            if type(node).__module__.startswith("smallpond."):
                self._nodes[key] = node
        return node


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
    ``--env_variables``)."""
    if not any(v in environ for v in BLAS_THREAD_VARIABLES):
        for v in BLAS_THREAD_VARIABLES:
            environ[v] = "1"


#: pyarrow's default memory pool (mimalloc) asks for transparent huge pages unless this says no
ARROW_HUGE_PAGES_VARIABLE = "MIMALLOC_ALLOW_THP"


def keep_arrow_pages_small(environ) -> None:
    """Keep pyarrow's memory pool (mimalloc) from asking for transparent huge pages in a worker,
    unless the user's or the job's environment sets ``MIMALLOC_ALLOW_THP``. Call before pyarrow
    is imported (mimalloc reads its options once, when pyarrow loads it).

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
    either way; only the kernel's page size for the pool changes."""
    environ.setdefault(ARROW_HUGE_PAGES_VARIABLE, "0")


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
