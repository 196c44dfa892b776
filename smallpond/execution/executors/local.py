"""The embedded backend: a pool of worker processes on this machine.

Workers are long-lived interpreters that import DuckDB and Arrow once, so a task starts in
microseconds. Each worker runs one attempt at a time; a worker that dies (killed, segfault,
``os._exit``) is noticed when its end of the socket closes, its attempt is reported as
:class:`~smallpond.errors.WorkerLost`, and a fresh worker takes its place.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from multiprocessing.connection import Connection, wait
from typing import Dict, List, Optional, Set, Tuple

import cloudpickle
from loguru import logger

from smallpond.errors import TaskError, WorkerLost
from smallpond.execution.executors.base import Completion, Executor
from smallpond.execution.task import RuntimeContext, Task


class _Worker:
    """A worker: a fresh interpreter running ``python -m smallpond.execution.worker``.

    A fresh interpreter (not ``multiprocessing``) so the user's script is never re-imported in
    the worker: scripts without an ``if __name__ == "__main__"`` guard work. The parent and the
    worker talk over a socket pair; the worker's death closes its end, which wakes the parent.
    """

    def __init__(self, index: int, rt_path: str) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smallpond.execution.worker", str(child_sock.fileno()), rt_path, str(index)],
            pass_fds=(child_sock.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        self.sock = parent_sock
        self.conn = Connection(parent_sock.detach())
        self.running: Optional[Tuple[str, int]] = None
        self.nodes_sent: Set[int] = set()  # node keys this worker has received

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()


class LocalExecutor(Executor):
    """Worker processes on this machine: ``num_workers`` of them (default: usable CPUs)."""

    def __init__(self, runtime_ctx: RuntimeContext, num_workers: Optional[int] = None) -> None:
        self.rt = runtime_ctx
        self.num_workers = max(1, num_workers or runtime_ctx.usable_cpu_count)
        self.num_cpus = max(self.num_workers, runtime_ctx.usable_cpu_count)
        self.memory = runtime_ctx.usable_memory_size
        self._rt_path = os.path.join(runtime_ctx.config_root, "runtime_ctx.pickle")
        self.workers: List[_Worker] = []
        self._next_index = 0
        self._lost: List[Completion] = []
        # a node is pickled once and sent once per worker; tasks travel without it. Keys are
        # held with a reference to the node, so an id() is never reused while it is cached.
        self._node_keys: Dict[int, Tuple[int, object]] = {}
        self._node_blobs: Dict[int, bytes] = {}

    def start(self) -> None:
        from smallpond.io.filesystem import dump

        # always this run's context: a resumed job may run with other settings (environment,
        # fault injection, log levels) than the run that first created the job root
        os.makedirs(os.path.dirname(self._rt_path), exist_ok=True)
        dump(self.rt, self._rt_path, secret=self.rt.secret)
        while len(self.workers) < self.num_workers:
            self._spawn()

    def _spawn(self) -> _Worker:
        w = _Worker(self._next_index, self._rt_path)
        self._next_index += 1
        self.workers.append(w)
        return w

    def free_slots(self) -> int:
        return sum(1 for w in self.workers if w.running is None)

    def _encode(self, task: Task, inputs: list, attempt: int) -> Tuple[int, bytes]:
        """(node key, pickled ``(task without its node, inputs, attempt)``)."""
        from smallpond.execution.attempt import _fast_pickle

        node = task.node
        entry = self._node_keys.get(id(node))
        if entry is None:
            key = len(self._node_keys)
            self._node_blobs[key] = cloudpickle.dumps(node)
            self._node_keys[id(node)] = entry = (key, node)
        task.node = None
        try:
            body = _fast_pickle((task, inputs, attempt)) or cloudpickle.dumps((task, inputs, attempt))
        finally:
            task.node = node
        return entry[0], body

    def submit(self, task: Task, inputs: list, attempt: int) -> None:
        if not self.workers:
            self.start()
        try:
            node_key, body = self._encode(task, inputs, attempt)
        except Exception as e:
            raise _pickle_error(task, attempt, e) from e
        w = next((w for w in self.workers if w.running is None), None)
        if w is None:
            raise RuntimeError("no idle worker")  # the scheduler checks free_slots first
        for _ in range(2):
            try:
                blob = None if node_key in w.nodes_sent else self._node_blobs[node_key]
                w.conn.send_bytes(pickle.dumps((node_key, blob, body), protocol=pickle.HIGHEST_PROTOCOL))
                w.nodes_sent.add(node_key)
            except (BrokenPipeError, OSError):
                # the worker died while idle: nobody would ever answer for this attempt, so
                # send it to a fresh worker instead
                logger.warning("worker {} (pid {}) died while idle; replacing it", w.index, w.pid)
                w = self._replace(w)
                continue
            w.running = (task.key, attempt)
            return
        self._lost.append(Completion(task.key, attempt, False, None, WorkerLost(f"could not send {task.key} to a worker")))

    def poll(self, timeout: float) -> List[Completion]:
        out, self._lost = self._lost, []
        busy = {w.conn: w for w in self.workers if w.running is not None}
        if not busy:
            return out
        for conn in wait(list(busy), timeout=0 if out else timeout):
            w = busy[conn]
            got = None
            try:
                got = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                got = None
            if got is not None:
                w.running = None
                out.append(got)
                continue
            key, attempt = w.running
            w.kill()
            try:
                code = w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            logger.warning("worker {} (pid {}) died with exit code {} while running {}", w.index, w.pid, code, key)
            out.append(
                Completion(
                    key, attempt, False, None, WorkerLost(f"worker process {w.pid} died (exit code {code}) while running {key}")
                )
            )
            w.running = None
            self._replace(w)
        return out

    def _replace(self, w: _Worker) -> _Worker:
        if w in self.workers:
            self.workers.remove(w)
        try:
            w.conn.close()
        except OSError:
            pass
        w.kill()
        try:
            w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return self._spawn()

    def cancel(self, key: str) -> None:
        for w in list(self.workers):
            if w.running is not None and w.running[0] == key:
                w.running = None
                self._replace(w)

    def shutdown(self) -> None:
        # workers hold no state worth a graceful exit: every result is committed on disk, and an
        # interpreter teardown (DuckDB, Arrow) costs ~0.4 s per worker
        for w in self.workers:
            w.kill()
        for w in self.workers:
            try:
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                w.kill()
                w.proc.wait(timeout=5)
            try:
                w.conn.close()
            except OSError:
                pass
        self.workers = []


def _pickle_error(task: Task, attempt: int, e: BaseException) -> TaskError:
    import inspect

    culprit = ""
    node = task.node
    for name in ("process_func", "func", "process"):
        fn = getattr(node, name, None)
        if fn is None or not callable(fn):
            continue
        try:
            cloudpickle.dumps(fn)
        except Exception:
            qual = getattr(fn, "__qualname__", repr(fn))
            try:
                where = f" defined at {inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
            except (TypeError, OSError):
                where = ""
            culprit = f" function {qual!r}{where} cannot be pickled;"
            break
    return TaskError(
        f"Can't pickle task {task.key}:{culprit} {type(e).__name__}: {e}. Please check if your function has "
        "captured unpicklable objects (open files, locks, connections, loggers with file sinks); create them "
        "inside the function instead.\nHINT: DO NOT use externally imported loguru logger in your task. "
        "Please import it within the task.",  # upstream 0.15's hint, word for word (scripts may match it)
        node=task.node_label,
        location=task.location,
        task_key=task.key,
        attempt=attempt,
        retryable=False,
        cause_type=type(e).__name__,
    )
