"""Checkpoints of streaming tasks: a killed ``ArrowStreamNode`` / ``ArrowBatchNode`` /
``PandasBatchNode`` task (or a DataFrame Python map) resumes from its last checkpoint, not from its
first batch.

A task checkpoints after an output when ``secs_checkpoint_interval`` seconds have passed since
the last one, or when the output is a ``StreamOutput(force_checkpoint=True)`` with non-empty
``batch_indices``. A checkpoint closes the output file being written and records it with the
input position it covers. Layout, under the job folder::

    staging/stream_checkpoints/{task key}/
        progress                      the signed progress record (replaced atomically)
        {attempt}-{n}-{tag}.parquet   the output files completed so far (hard links, or copies
                                      across file systems, of the attempt's closed files)

The record holds the task's fingerprint, the files in output order, per input the rows consumed
(and batches, for the logs), and the states of the random generators the task's code draws from
(:meth:`Task.random_states`) when the checkpoint was taken.

Invariants:

* a file is listed only once it is closed, fsynced and linked here, and the directory entry is
  fsynced, before the record naming it replaces the previous one (temp name, then rename): after a
  crash at any instant the record is the previous or the new one, and names only complete files;
* a record is used only by a task with the same fingerprint (the same node parameters, user code,
  partition and inputs); anything else finds a stale checkpoint, removes it and starts over;
* a resumed attempt links the recorded files into its own output directory (in their order, under
  its own names, so they are published by its atomic rename like every other file of it) and
  its inputs skip the rows consumed, so every input row reaches the output exactly once;
* a resumed attempt puts the random generators back in the recorded states before its process
  function sees a row, so the rows after the checkpoint get the numbers an uninterrupted attempt
  gives them (a record of the earlier format, without states, resumes with the attempt's seeding);
* the checkpoint is removed once the task's commit record exists (its files are then part of the
  committed output).

The input position of a checkpoint is what the output written so far covers: with
``StreamOutput(batch_indices=[...])``, the batches up to the highest index given (batch ``i`` of
every input, counted from the first batch of this attempt); otherwise every batch the process
function has taken from its readers. A function that reads ahead of what it yields must pass
``batch_indices`` for its checkpoints to be exact; the generators' states are those at the
checkpoint, so numbers it drew for rows after that position are not drawn again on resume.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import List, Optional, Sequence

from smallpond.io.filesystem import SignatureError, dump, link_or_copy, load, remove_path

CHECKPOINT_DIR = "stream_checkpoints"
PREFETCH_THREAD = "smallpond-prefetch"
_RECORD = "progress"


def checkpoint_dir(rt, task_key: str) -> str:
    return os.path.join(rt.staging_root, CHECKPOINT_DIR, task_key)


class StreamCheckpoint:
    """The checkpoint of one streaming task (see the module docstring)."""

    def __init__(self, rt, task) -> None:
        self.rt = rt
        self.task = task
        self.dir = checkpoint_dir(rt, task.key)
        self.files: List[str] = []  # names in self.dir, in output order
        self.enabled = bool(task.fingerprint)  # a task the planner did not make cannot be matched

    # -- resume ----------------------------------------------------------------------------------
    def resume(self, output_dir: str, ninputs: int) -> Optional[dict]:
        """Restore the last checkpoint of this task into ``output_dir``; None if there is none.

        Returns the record (``rows``/``batches`` consumed per input, ``output_rows``, and
        ``random_states`` unless it is of the earlier format); the files it names are now in
        ``output_dir`` as ``{output_filename}-{i:05d}.parquet``, i = 0, 1, ...
        """
        from smallpond.common import logger

        if not self.enabled or not os.path.isdir(self.dir):
            return None
        path = os.path.join(self.dir, _RECORD)
        record = None
        if os.path.exists(path):
            try:
                record = load(path, secret=self.rt.secret)
            except SignatureError:
                raise
            except Exception as e:  # torn or unreadable: as if absent
                logger.warning(
                    "{}: unreadable stream checkpoint {} ({!r}); starting from the first batch", self.task.key, path, e
                )
        if record is not None and (record.get("fingerprint") != self.task.fingerprint or len(record.get("rows", ())) != ninputs):
            logger.info(
                "{}: the stream checkpoint is of another version of this task; starting from the first batch", self.task.key
            )
            record = None
        if record is not None and not all(os.path.exists(os.path.join(self.dir, f)) for f in record["files"]):
            logger.warning("{}: files of the stream checkpoint are missing; starting from the first batch", self.task.key)
            record = None
        if record is None:
            remove_path(self.dir)
            return None
        for i, name in enumerate(record["files"]):
            link_or_copy(os.path.join(self.dir, name), os.path.join(output_dir, f"{self.task.output_filename}-{i:05d}.parquet"))
        self.files = list(record["files"])
        logger.info(
            "{}: resuming from a stream checkpoint of attempt {}: {} file(s), {} row(s) written; input rows skipped {}",
            self.task.key,
            record.get("attempt"),
            len(self.files),
            record.get("output_rows"),
            record["rows"],
        )
        return record

    # -- save ------------------------------------------------------------------------------------
    def save(self, closed_paths: Sequence[str], rows: Sequence[int], batches: Sequence[int], output_rows: int) -> None:
        """Record that the files ``closed_paths`` (all the output so far, in order) cover the first
        ``rows[j]`` rows of input ``j``."""
        if not self.enabled:
            return
        # the process function is suspended at the output just written: these are the states the
        # rows after ``rows`` start from
        random_states = self.task.random_states()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        new = closed_paths[len(self.files) :]
        for path in new:
            _fsync_file(path)
            name = f"{self.task.retry_count}-{len(self.files):05d}-{uuid.uuid4().hex[:8]}.parquet"
            link_or_copy(path, os.path.join(self.dir, name))
            if os.path.exists(os.path.join(self.dir, name)):
                _fsync_file(os.path.join(self.dir, name))
            self.files.append(name)
        if new:
            _fsync_dir(self.dir)
        record = {
            "key": self.task.key,
            "fingerprint": self.task.fingerprint,
            "files": list(self.files),
            "rows": [int(r) for r in rows],
            "batches": [int(b) for b in batches],
            "output_rows": int(output_rows),
            "attempt": self.task.retry_count,
            "random_states": random_states,
            "saved": time.time(),
        }
        dump(record, os.path.join(self.dir, _RECORD), secret=self.rt.secret)

    def remove(self) -> None:
        remove_path(self.dir)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def default_checkpoint_interval(node) -> float:
    """Upstream's default: ``ceil(180 / min(6, gpu_limit + 2, cpu_limit))`` seconds."""
    import math

    return float(math.ceil(180 / max(1e-9, min(6, node.gpu_limit + 2, node.cpu_limit))))


class CountedInput:
    """A reader handed to a process function, counting the batches and rows it has taken.

    ``rows_at[k]`` is the number of rows in the first ``k`` batches taken. With ``prefetch`` the
    next batch is read in a background thread while the function works on the current one
    (``background_io_thread``); counting still happens when the function takes a batch.
    """

    def __init__(self, reader, prefetch: bool = False) -> None:
        import pyarrow as pa

        self.schema = reader.schema
        self.rows_at = [0]
        self._source = reader
        self._prefetch = prefetch
        self._gen = self._batches()
        self.reader = pa.RecordBatchReader.from_batches(reader.schema, self._gen)

    def _batches(self):
        if not self._prefetch:
            for b in self._source:
                self.rows_at.append(self.rows_at[-1] + b.num_rows)
                yield b
            return
        from smallpond.utility import ConcurrentIter, ConcurrentIterError

        with ConcurrentIter(self._source, max_buffer_size=1, name=PREFETCH_THREAD) as batches:
            try:
                for b in batches:
                    self.rows_at.append(self.rows_at[-1] + b.num_rows)
                    yield b
            except ConcurrentIterError as e:  # the reader's own error, so it is classified as such
                raise (e.__cause__ or e) from None

    @property
    def batches(self) -> int:
        return len(self.rows_at) - 1

    @property
    def rows(self) -> int:
        return self.rows_at[-1]

    def rows_through(self, batch_index: int) -> int:
        """Rows in batches ``0..batch_index`` (as many as were taken)."""
        return self.rows_at[min(batch_index + 1, len(self.rows_at) - 1)]

    def close(self) -> None:
        self._gen.close()  # stops a prefetching thread


def skip_rows(ds, n: int, read, via_duckdb: bool, batch_size: int):
    """A batch reader over ``ds`` without its first ``n`` rows (``read(ds)`` builds the task's reader).

    Parquet read by pyarrow starts at the row (row ranges: nothing before it is read); a DuckDB
    reader reads the skipped rows and drops them (its row order is deterministic). Batches keep
    their exact size from the new start.
    """
    import copy

    from smallpond.io.arrow import rebatch
    from smallpond.logical.dataset import ParquetDataSet

    if n <= 0:
        return read(ds)
    if isinstance(ds, ParquetDataSet) and not via_duckdb:
        ranges, left = [], n
        for r in ds.resolved_row_ranges:
            if left >= r.num_rows:
                left -= r.num_rows
                continue
            r = copy.copy(r)
            r.begin += left
            left = 0
            ranges.append(r)
        rest = ds._with_paths(sorted({r.path for r in ranges}))
        rest._resolved_row_ranges = ranges
        return read(rest)
    return rebatch(_drop_rows(read(ds), n), batch_size)


def _drop_rows(reader, n: int):
    import pyarrow as pa

    def gen():
        left = n
        for b in reader:
            if left >= b.num_rows:
                left -= b.num_rows
                continue
            if left:
                b = b.slice(left)
                left = 0
            yield b

    return pa.RecordBatchReader.from_batches(reader.schema, gen())
