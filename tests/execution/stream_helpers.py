"""Streaming process functions for the checkpoint tests (importable by worker processes).

Each records every batch it processes as a line ``{attempt} {first id}`` in a counter file, so a
test can tell which batches each attempt processed.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from smallpond.execution.ops.stream_checkpoint import PREFETCH_THREAD
from smallpond.execution.task import StreamOutput


def record(counter: str, line: str) -> None:
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def counted_lines(counter: str):
    if not os.path.exists(counter):
        return []
    with open(counter) as f:
        return [tuple(int(x) for x in line.split()) for line in f if line.strip()]


def doubled(batch) -> pa.Table:
    t = pa.Table.from_batches([batch])
    return t.append_column("doubled", pc.multiply(t["id"], 2))


def stream_with_forced_checkpoint(runtime_ctx, readers, counter, checkpoint_at, fail_at=None, hang_at=None, hang_marker=None):
    """Yields each batch doubled; forces a checkpoint after batch ``checkpoint_at``. On attempt 0,
    fails (retryable) at batch ``fail_at``; while ``hang_marker`` does not exist, blocks at batch
    ``hang_at`` (so a test can kill the job there)."""
    task = runtime_ctx.task
    for i, batch in enumerate(readers[0]):
        record(counter, f"{task.retry_count} {batch.column('id')[0].as_py()}")
        if fail_at is not None and i == fail_at and task.retry_count == 0:
            raise OSError("simulated I/O failure in the middle of the stream")
        if hang_at is not None and i == hang_at and hang_marker and not os.path.exists(hang_marker):
            with open(hang_marker + ".waiting", "w") as f:
                f.write(str(os.getpid()))
            while True:
                time.sleep(0.1)
        yield StreamOutput(doubled(batch), batch_indices=[i], force_checkpoint=(i == checkpoint_at))


def stream_plain_tables(runtime_ctx, readers, counter, fail_at, expect_prefetch=False):
    """Yields plain tables (no batch_indices): time-based checkpoints cover the batches taken."""
    task = runtime_ctx.task
    for i, batch in enumerate(readers[0]):
        if expect_prefetch and i == 0:  # the reader thread is then busy with the next batch
            assert any(t.name == PREFETCH_THREAD for t in threading.enumerate()), "no background reader"
        record(counter, f"{task.retry_count} {batch.column('id')[0].as_py()}")
        if i == fail_at and task.retry_count == 0:
            raise OSError("simulated I/O failure in the middle of the stream")
        yield doubled(batch)


def batch_doubled(runtime_ctx, tables, counter, fail_at):
    """An ArrowBatchNode function (one call per aligned batch)."""
    task = runtime_ctx.task
    t = tables[0]
    first = t.column("id")[0].as_py()
    record(counter, f"{task.retry_count} {first}")
    if first == fail_at and task.retry_count == 0:
        raise OSError("simulated I/O failure in the middle of the stream")
    return t.append_column("doubled", pc.multiply(t["id"], 2))


RANDOM_COLUMNS = ("py", "np", "task_py", "task_np")


def stream_random(runtime_ctx, readers, draws, checkpoint_at, fail_at=None):
    """Yields each batch with a number per row from every generator the task's code may use
    (Python's and NumPy's global ones, the task's own two); forces a checkpoint after batch
    ``checkpoint_at`` and, on attempt 0, fails at batch ``fail_at`` after drawing its numbers. Every
    row's numbers are appended to ``draws`` as a JSON line ``[attempt, id, py, np, task_py, task_np]``."""
    task = runtime_ctx.task
    for i, batch in enumerate(readers[0]):
        ids = batch.column("id").to_pylist()
        cols = {
            "py": [random.random() for _ in ids],
            "np": np.random.random(len(ids)).tolist(),
            "task_py": [task.python_random_gen.random() for _ in ids],
            "task_np": task.numpy_random_gen.random(len(ids)).tolist(),
        }
        lines = [json.dumps([task.retry_count, x, *(cols[c][k] for c in RANDOM_COLUMNS)]) for k, x in enumerate(ids)]
        record(draws, "\n".join(lines))
        if fail_at is not None and i == fail_at and task.retry_count == 0:
            raise OSError("simulated I/O failure in the middle of the stream")
        table = pa.table({"id": ids, **{c: pa.array(v, pa.float64()) for c, v in cols.items()}})
        yield StreamOutput(table, batch_indices=[i], force_checkpoint=(i == checkpoint_at))


def drawn(draws: str):
    """The lines of ``stream_random``'s ``draws`` file: ``{(attempt, id): (py, np, task_py, task_np)}``."""
    with open(draws) as f:
        return {(a, x): tuple(v) for a, x, *v in map(json.loads, f)}
