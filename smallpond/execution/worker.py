"""The worker process loop of the local executor.

A worker receives ``(node_key, node_blob, body)`` messages on a pipe: ``body`` is the pickled
``(task, inputs, attempt)`` without the task's node, and ``node_blob`` the pickled node the first
time this worker sees it (``None`` after that: the worker keeps it by ``node_key``). It runs the
attempt (:func:`~smallpond.execution.attempt.execute_attempt`) and sends back a Completion. It starts with
only what every task needs (the attempt machinery, one log sink for all its attempts); DuckDB and
Arrow are imported by the first task that uses them and stay loaded, so later tasks start in
microseconds and a worker running only Python tasks never pays for them.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time


def _preload() -> None:
    from smallpond.execution import attempt  # noqa: F401


def worker_main(conn, rt_path: str, index: int) -> None:
    import cloudpickle
    from loguru import logger

    from smallpond.execution.attempt import _fast_pickle, execute_attempt, install_task_log_sink
    from smallpond.execution.executors.base import Completion
    from smallpond.execution.ops.sql import share_database_in_process

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rt = _load_runtime_ctx(rt_path)
    logger.remove()  # the worker logs into each attempt's log file; the scheduler reports failures
    os.makedirs(os.path.join(rt.log_root, "tasks"), exist_ok=True)
    install_task_log_sink(rt.file_log_level)
    share_database_in_process()
    from smallpond.utility import capture_stdlib_logging

    capture_stdlib_logging()  # user code's stdlib logging lands in the attempt's log too
    try:
        import setproctitle  # type: ignore

        setproctitle.setproctitle(f"smallpond-worker-{index}")
    except ImportError:
        pass
    for k, v in rt.env_overrides.items():
        os.environ[k] = v
    node_blobs: dict = {}
    nodes: dict = {}

    def _node(key):
        node = nodes.get(key)
        if node is None:
            node = pickle.loads(node_blobs[key])
            # smallpond's own nodes are read-only descriptions: one copy serves every task; a
            # user's node subclass gets a fresh copy per task, as if it had been sent with it
            if type(node).__module__.startswith("smallpond."):
                nodes[key] = node
        return node

    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if msg == b"stop":
            return
        node_key, node_blob, body = pickle.loads(msg)
        if node_blob is not None:
            node_blobs[node_key] = node_blob
        task, inputs, attempt = pickle.loads(body)
        task.node = _node(node_key)
        start = time.time()
        try:
            ds = execute_attempt(rt, task, inputs, attempt)
            result = Completion(task.key, attempt, True, ds, None, time.time() - start)
        except Exception as e:  # execute_attempt raises TaskError from the original
            err = e.__cause__ if not hasattr(e, "retryable") and e.__cause__ is not None else e
            result = Completion(task.key, attempt, False, None, err, time.time() - start)
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
                )
            )
        try:
            conn.send_bytes(payload)
        except (BrokenPipeError, OSError):
            return


def _load_runtime_ctx(path: str):
    """Load the runtime context, verifying it with the job secret stored beside it."""
    from smallpond.io.filesystem import load

    with open(os.path.join(os.path.dirname(path), "secret"), "rb") as f:
        secret = f.read()
    return load(path, secret=secret)


def main(argv=None) -> None:
    from multiprocessing.connection import Connection

    argv = sys.argv[1:] if argv is None else argv
    fd, rt_path, index = int(argv[0]), argv[1], int(argv[2])
    _preload()
    worker_main(Connection(fd), rt_path, index)


if __name__ == "__main__":
    main()
