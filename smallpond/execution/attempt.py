"""Running one attempt of one task: temp dir → run → atomic rename → commit record.

Invariant: a task is complete if and only if its commit record
``staging/completed_tasks/{key}.commit`` exists. The record is written (atomically, signed) only
after the output directory has been renamed to its final name, so a crash at any point leaves
either a committed task or garbage in a ``*.tmp-*`` directory that is ignored and cleaned. The
records themselves are written and read by :mod:`~smallpond.execution.commit`.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time
import traceback
from typing import Callable, List, Optional, Tuple

from smallpond.common import logger
from smallpond.errors import ColumnNotFoundError, TaskError, classify
from smallpond.execution import resource_use
from smallpond.execution.attempt_files import bytes_read, bytes_written, input_files, unreadable_intermediates
from smallpond.execution.commit import _load_record, commit_path, write_commit
from smallpond.execution.executors.base import Completion
from smallpond.execution.joblog import log_stamp
from smallpond.execution.partition_schemas import output_read_by_name
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import Task, crash_point, seeded_random
from smallpond.io.filesystem import (
    APPEND_FLAGS,
    close_quietly,
    remove_path,
    unique_suffix,
    write_all,
)
from smallpond.io.paths import release_file_aliases
from smallpond.logical.dataset import DataSet


def to_task_error(task: Task, attempt: int, exc: BaseException, inputs: List[DataSet]) -> TaskError:
    if isinstance(exc, TaskError):
        return exc
    try:
        ctx = task.error_context()
    except Exception:
        ctx = {}
    # the query as the user wrote it (placeholders and all) is what they can find in their script
    sql = ctx.get("sql") or getattr(exc, "sql", None) or getattr(task, "_current_sql", None)
    message = _describe(exc)
    return TaskError(
        message,
        node=task.node_label,
        location=task.location,
        task_key=task.key,
        attempt=attempt,
        sql=sql,
        input_files=input_files(inputs),
        decision=classify(exc),
        cause_type=type(exc).__name__,
        details="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )


def _describe(exc: BaseException) -> str:
    """The first line of a task's failure: the exception, and for an exit of the task's own code
    what it did (an empty ``SystemExit`` message reads as nothing happened)."""
    if isinstance(exc, SystemExit):
        return (
            f"SystemExit: the task's code called sys.exit({exc.code!r}); a task cannot end its worker "
            "process (raise an exception to fail the task)"
        )
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt: the task's code raised KeyboardInterrupt"
    return f"{type(exc).__name__}: {exc}"


def is_code_exit(exc: BaseException) -> bool:
    """Whether a SystemExit or KeyboardInterrupt raised in a worker process while an attempt ran
    came from the task's code (a failure of the task, like any exception).

    A worker process ignores SIGINT, and Ray stops a worker of its own with a SystemExit that
    carries ``ray_terminate_msg`` (that one ends the process: its attempt is lost, not failed).
    """
    return isinstance(exc, (SystemExit, KeyboardInterrupt)) and not hasattr(exc, "ray_terminate_msg")


def run_inline(rt: RuntimeContext, task: Task, inputs: List[DataSet]) -> DataSet:
    """Run a metadata-only task in the scheduler process."""
    task.runtime_ctx = rt
    try:
        return task.run(rt, inputs, None)
    except Exception as e:
        raise to_task_error(task, task.retry_count, e, inputs) from e


class TaskLogSink:
    """A loguru sink that writes each attempt's records to that attempt's own log file.

    Workers add one of these per process (:func:`install_task_log_sink`) instead of one loguru
    file sink per attempt: adding a loguru handler costs about a millisecond (it inspects the
    interpreter's library paths every time), more than a tiny task itself.

    An attempt's file ``log/tasks/{key}.{attempt}.log`` is created by its first record other than
    its start and done lines (a record of its task's code or of smallpond, a warning, a failure)
    and begins with its start line. Every attempt's start and done lines are appended to the
    process's own log, ``log/workers/{host}-{pid}.log``, opened once, as Spark's executors log
    "Running task" and "Finished task". So an attempt that logs nothing else (most tiny tasks)
    leaves no file of its own: a file creation saved per task, which on this project's test VM
    costs 20-500 us of CPU (a journal-less ext4) and on a shared filesystem a metadata round trip.
    ``smallpond logs JOB TASK`` finds either.
    """

    def __init__(self, level_no: int = 0) -> None:
        self._path: Optional[str] = None
        self._log_root = ""  # the folder holding the running attempt's tasks/ folder
        self._fd: Optional[int] = None
        self._start_line: Optional[str] = None  # written to the attempt's file when it is created
        self._process_log: Optional[Tuple[str, int, str]] = None  # (log root, fd, path) of the process's log
        self.level_no = level_no

    def begin(self, path: str) -> None:
        self.end()
        self._path = path
        # the attempts' folder is {log root}/tasks: the log root, for the process's log (per line)
        self._log_root = path.rpartition(os.sep)[0].rpartition(os.sep)[0]

    def end(self) -> None:
        if self._fd is not None:
            close_quietly(self._fd)
        self._fd = None
        self._path = None
        self._start_line = None

    def close(self) -> None:
        """End the attempt (if any) and close the process's log (a Ray worker installs a new
        sink for each job it serves)."""
        self.end()
        self._close_process_log()

    def _close_process_log(self) -> None:
        if self._process_log is not None:
            close_quietly(self._process_log[1])
            self._process_log = None

    def write(self, message: str) -> None:
        """Append one record to the attempt's file (created now if need be), unbuffered (a
        running task's log can be read as it grows), with plain system calls (a Python file
        object costs more than a tiny task's records)."""
        if self._path is None:
            return
        if self._fd is None:
            self._fd = _open_append(self._path)
            if self._start_line is not None:
                message = self._start_line + message
                self._start_line = None
        write_all(self._fd, message.encode("utf-8", "backslashreplace"))

    def flush(self) -> None:
        pass  # nothing is buffered

    def start(self, text: str) -> None:
        """The attempt's start line: into the process's log now, into the attempt's file when
        that is created."""
        if self.level_no <= 20 and self._path is not None:
            line = _info_line(text)
            self._write_process_log(line)
            self._start_line = line

    def done(self, text: str) -> None:
        """The attempt's done line: into the process's log, and into the attempt's file if it has one."""
        if self.level_no <= 20 and self._path is not None:
            line = _info_line(text)
            self._write_process_log(line)
            if self._fd is not None:
                write_all(self._fd, line.encode("utf-8", "backslashreplace"))

    def log_relpath(self) -> Optional[str]:
        """Where the running attempt's lines are, relative to the log root: its own file, or
        the process's log (None if neither holds a line of it: above the INFO level)."""
        if self._path is None:
            return None
        if self._fd is not None:
            return f"tasks/{os.path.basename(self._path)}"
        if self._process_log is not None and self._process_log[0] == self._log_root:
            return f"{PROCESS_LOG_DIR}/{os.path.basename(self._process_log[2])}"
        return None

    def _write_process_log(self, line: str) -> None:
        # a process serves one job at a time, but a Ray worker serves many jobs (log roots) in turn
        log_root = self._log_root
        if self._process_log is None or self._process_log[0] != log_root:
            self._close_process_log()
            import socket

            path = os.path.join(log_root, PROCESS_LOG_DIR, f"{socket.gethostname()}-{os.getpid()}.log")
            self._process_log = (log_root, _open_append(path), path)
        write_all(self._process_log[1], line.encode("utf-8", "backslashreplace"))


#: where each worker process's log of its attempts' start and done lines is, under the log root
PROCESS_LOG_DIR = "workers"


def logged_attempts(log_root: str) -> List[Tuple[str, int]]:
    """Every attempt started in a job's folder, as sorted ``(task key, attempt)``, once per start
    (a job run again may start an attempt number again): from the start lines in the worker
    processes' logs (``workers/``) and in the attempts' own files (``tasks/``), which hold the
    start lines of attempts run outside a worker process too."""
    from collections import Counter

    start = re.compile(r" - start (\S+) attempt (\d+) ")

    def starts(folder: str) -> Counter:
        counts: Counter = Counter()
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            with open(os.path.join(folder, name), errors="replace") as f:
                for line in f:
                    m = start.search(line)
                    if m:
                        counts[(m.group(1), int(m.group(2)))] += 1
        return counts

    in_workers = starts(os.path.join(log_root, PROCESS_LOG_DIR))
    in_files = starts(os.path.join(log_root, "tasks"))
    # an attempt with a file of its own has its start line in both places
    return sorted(a for a in set(in_workers) | set(in_files) for _ in range(max(in_workers[a], in_files[a])))


def _open_append(path: str) -> int:
    try:
        return os.open(path, APPEND_FLAGS, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, APPEND_FLAGS, 0o666)


def _info_line(text: str) -> str:
    """An INFO line in loguru's default format, made directly (a loguru call is ~0.3 ms)."""
    return f"{log_stamp()} | INFO     | smallpond.execution.attempt:execute_attempt - {text}\n"


_process_log_sink: Optional[TaskLogSink] = None


def install_task_log_sink(level: str) -> TaskLogSink:
    """Route this worker process's log records during attempts to per-attempt files (call once).

    Both smallpond's logger and loguru's global one (which user code in tasks logs to) write
    there; the global logger's other sinks are removed, which only a worker process may do.
    """
    from smallpond.common import LEVEL_NUMBERS, logger, when_loguru_is_imported

    global _process_log_sink
    level_no = LEVEL_NUMBERS.get(level.upper()) if isinstance(level, str) else int(level)
    if level_no is None:  # a level of the user's own: loguru knows its number
        level_no = logger.level(level).no
    sink = TaskLogSink(level_no)
    if _process_log_sink is not None:
        _process_log_sink.close()
    _process_log_sink = sink

    def route() -> None:
        from loguru import logger as global_logger

        # smallpond's logger through its own remove(), which also drops its default console sink
        for lg in [logger] if logger._get() is global_logger else [logger, global_logger]:
            lg.remove()
            lg.add(sink, level=level, enqueue=False, colorize=False)

    # the start and done lines are written by the sink itself: loguru is loaded (~55 ms) only
    # when a task, or smallpond on a rarer path, logs through it
    when_loguru_is_imported(route)
    return sink


#: set in a worker process whose backend cancels an attempt by asking it (Ray): whether the running
#: attempt was cancelled. A cancelled attempt never commits, and leaves no output directory behind
cancel_check: Optional[Callable[[], bool]] = None


def execute_attempt(
    rt: RuntimeContext,
    task: Task,
    inputs: List[DataSet],
    attempt: int,
    *,
    memory: int,
    worker: str = "",
    stats: Optional[dict] = None,
) -> DataSet:
    """Run one attempt with ``memory`` bytes and commit it. Raises TaskError on failure.

    The attempt runs on a copy of ``task`` carrying the attempt's number and effective memory
    limit, so the caller's task object (the scheduler's, when it runs tasks itself) is unchanged.
    What the attempt measured (``rows`` and ``bytes`` written, bytes of input files ``read``) is
    put into ``stats``.
    """
    task = copy.copy(task)
    task.memory_limit = int(memory)
    task.stats = stats if stats is not None else {}
    task.retry_count = attempt
    task.runtime_ctx = rt
    task.input_datasets = list(inputs)  # (upstream's Task.input_datasets, read by some scripts)
    rt.current_task = task
    log_path = os.path.join(rt.log_root, "tasks", f"{task.key}.{attempt}.log")
    sink = _process_log_sink
    sink_id = None
    if sink is not None:
        sink.begin(log_path)
    else:  # not in a worker (e.g. the scheduler running tasks itself): a sink for this attempt
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        from smallpond.common import loguru_file_path

        sink_id = logger.add(loguru_file_path(log_path), level=rt.file_log_level, enqueue=False)
    start = time.time()
    cpu_start = time.process_time()
    # in a worker, which runs one attempt at a time, the process's CPU and peak memory are the attempt's
    measured = sink is not None
    peak_known = measured and resource_use.start_peak()
    tmp = final = watch = None
    try:
        started = f"start {task.key} attempt {attempt} of {task.node_label} partitions={list(task.partition_infos)} inputs={len(inputs)}"
        if task.threads:
            started += f" threads={task.threads} (elastic)"
        if sink_id is None:
            sink.start(started)
        else:
            logger.info(started)
        while _folder_notes:
            logger.warning(_folder_notes.pop(0))
        task.inject_fault()
        if rt.enforce_memory_limit:  # a thread that stops the attempt once it uses more than ``memory``
            from smallpond.execution.memory_watch import watch_attempt

            watch = watch_attempt(rt, task, attempt, task.memory_limit)
        if task.writes_output:
            # each attempt writes into a directory of its own, renamed from a temp name once every
            # file is complete; the commit record says which attempt's directory is the output
            token = f"{attempt}.{unique_suffix()}"
            final = f"{task.final_output_abspath}.{token}"
            tmp = f"{task.final_output_abspath}.tmp-{token}"
            try:
                os.mkdir(tmp)  # its node's output folder exists after the node's first task
            except FileNotFoundError:
                os.makedirs(tmp)
            task._runtime_output_abspath = tmp
            with seeded_random(task):
                ds = task.run(rt, inputs, tmp)
            _end_memory_watch(watch)
            task.inject_fault()
            os.rename(tmp, final)
            tmp = None
            crash_point("after_rename", task.key, task.retry_count)
            ds._rebase(task._runtime_output_abspath, final)
        else:
            with seeded_random(task):
                ds = task.run(rt, inputs, None)
            _end_memory_watch(watch)
            task.inject_fault()
        if output_read_by_name(task.node, inputs):
            ds.mark_read_by_name()  # (before its commit record and cache entry hold it)
        elapsed = time.time() - start
        _record_use(task.stats, task.memory_limit, cpu_start if measured else None, peak_known)
        task.stats["bytes"] = bytes_written(ds)
        task.stats["read"] = bytes_read(inputs)
        crash_point("before_commit", task.key, task.retry_count)
        if cancel_check is not None and cancel_check():  # its code went on (a swallowed interrupt, a long query)
            raise TaskError(f"{task.key} attempt {attempt} was cancelled before it committed", task_key=task.key, retryable=False)
        if not task.commits_on_publication:
            extra = dict(started=start, worker=worker, stats=task.stats, output_dir=final, cache_key=task.cache_key)
            entry = None
            if task.cache_key is not None:  # the commit record is the cache entry's record too (one file fewer)
                cache = _task_cache()
                entry = cache.commit_entry(rt, task, ds, final)  # never raises
                if entry is not None:
                    extra.update(cache=entry[0], cache_secret=entry[1])
            winner = write_commit(rt, task, ds, attempt, elapsed, **extra)
            if winner is not None:  # another attempt committed first: its output is the task's
                if final is not None:
                    remove_path(final)
                ds = winner["dataset"]
                logger.info("{} attempt {} lost to attempt {}, which committed first", task.key, attempt, winner.get("attempt"))
            elif task.cache_key is not None:
                shared = None if entry is None else (entry[0], commit_path(rt, task.key))
                cache.insert_after_commit(rt, task, ds, final, shared)  # never raises
            try:
                task.on_committed(rt)  # the task is complete (by this attempt or the winner)
            except Exception as e:  # what is left behind is cleaned with staging/
                logger.warning("{}: cleaning up after the commit failed: {!r}", task.key, e)
        done = f"done {task.key} attempt {attempt} in {elapsed:.3f}s (process CPU {time.process_time() - cpu_start:.3f}s)"
        if sink_id is None:
            sink.done(done)
            where = sink.log_relpath()
            if where is not None:
                task.stats["log"] = where
        else:
            logger.info(done)
        return ds
    except BaseException as e:
        if "memory" not in task.stats:  # what a failed attempt used (an out-of-memory one's peak, say)
            _record_use(task.stats, task.memory_limit, cpu_start if measured else None, peak_known)
        if final is not None and tmp is None:  # renamed into place: removed now unless its task's record names it
            record = _load_record(rt, commit_path(rt, task.key))
            if record is None or record.get("output_dir") != final:
                remove_path(final)
        oom = watch.end() if watch is not None else None
        if oom is not None:  # the watch's interrupt, or what it caused (an interrupted query), is running out of memory
            e = oom.with_traceback(e.__traceback__)
        if not isinstance(e, (KeyboardInterrupt, SystemExit, TaskError)):
            e = _lacking_first_columns(inputs, e)
        err = to_task_error(task, attempt, e, inputs)
        if cancel_check is not None and cancel_check():
            logger.info("cancelled {} attempt {} ({}): the scheduler stopped it", task.key, attempt, type(e).__name__)
            raise err from e
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            logger.error("failed {} attempt {}: {}\n{}", task.key, attempt, err.message, err.details)
            raise
        if not isinstance(e, TaskError) and inputs:
            err.corrupt_inputs = unreadable_intermediates(rt, inputs, e)
        logger.error("failed {} attempt {}: {}\n{}", task.key, attempt, err.message, err.details)
        if err.corrupt_inputs:
            logger.error(
                "{} input file(s) written by earlier tasks cannot be read: {}", len(err.corrupt_inputs), err.corrupt_inputs[:5]
            )
        raise err from e
    finally:
        if sink_id is not None:
            logger.remove(sink_id)
        elif sink is not None:
            sink.end()
        rt.current_task = None
        release_file_aliases()
        if tmp is not None:
            remove_path(tmp)
        temp = task.temp_abspath
        if os.path.lexists(temp):  # one stat for the usual case: the task used no scratch space
            remove_path(temp)
        sys.stdout.flush()


def _lacking_first_columns(inputs: List[DataSet], e: BaseException) -> BaseException:
    """``e``, or the error naming the input file that lacks a column of the first file of the set
    it was split from, caused by ``e`` when ``e`` is for want of that column (DuckDB names it in
    quotes: 'column "b" ... could not be found in file'; a pyarrow reader: a column not found); any other failure of a task over such a
    file (a query that does not read the column, a cast, running out of memory) is its own."""
    if isinstance(e, ColumnNotFoundError) and getattr(e, "lacking", None):
        return e  # (a reader's own error of that kind)
    text = str(e)
    for ds in inputs:
        lacking = getattr(ds, "lacks_first_columns", None)
        found = lacking() if lacking is not None else None
        if found is not None and (isinstance(e, ColumnNotFoundError) or any(f'"{c}"' in text for c in found.lacking)):
            found.__cause__ = e
            return found.with_traceback(e.__traceback__)
    return e


def _task_cache():
    """:mod:`smallpond.execution.cache`, imported by the first attempt that uses the task cache (an
    import statement per attempt costs more than a tiny task's own code)."""
    global _cache_module
    if _cache_module is None:
        from smallpond.execution import cache

        _cache_module = cache
    return _cache_module


_cache_module = None


def _record_use(stats: dict, reserved: int, cpu_start: Optional[float], peak_known: bool) -> None:
    """Put what the attempt used into its ``stats``: the memory reserved for it, and in a worker
    its CPU seconds and peak memory (:mod:`~smallpond.execution.resource_use`)."""
    stats["memory"] = int(reserved)
    if cpu_start is not None:
        stats["cpu"] = round(time.process_time() - cpu_start, 3)
    if peak_known:
        stats["peak_memory"] = resource_use.peak_since_start()


def _end_memory_watch(watch) -> None:
    """Stop watching the memory of an attempt whose code returned; raise its OutOfMemory if the
    watch stopped it (code that swallowed the interrupt never commits)."""
    oom = watch.end() if watch is not None else None
    if oom is not None:
        raise oom


_worker_folder: Optional[str] = None  # this worker's folder before its first attempt ("": none)
_missing_folders: set = set()  # nodes' folders that could not be entered (said once each)
_folder_notes: List[str] = []  # what enter_node_folder has to say, for the attempt's log


def enter_node_folder(task: Task) -> None:
    """Make the folder ``task``'s node was built in (``Node.created_cwd``) this worker's current
    one, so that a relative path in the node's SQL or code means what it meant to the script at
    that line, after an ``os.chdir`` too. Where that folder is not there (another host, removed
    since), the attempt runs in the worker's own folder (the driver's when it started the workers;
    a queue executor's where it was started), as nodes built before this existed do. Only in
    worker processes, which run one attempt at a time: never in the scheduler's."""
    global _worker_folder
    if _worker_folder is None:
        try:
            _worker_folder = os.getcwd()
        except OSError:
            _worker_folder = ""
    folder = getattr(task.node, "created_cwd", None)
    for where in (folder, _worker_folder):
        if where:
            try:
                os.chdir(where)
                return
            except OSError as e:
                if where == folder and folder not in _missing_folders:
                    # a relative path in its SQL or code now means a file of another folder: said in
                    # the attempt's log once it is open (execute_attempt)
                    _missing_folders.add(folder)
                    _folder_notes.append(
                        f"{task.key} of {getattr(task, 'node_label', 'its node')}: the folder it was built in, {folder}, "
                        f"cannot be entered ({e.strerror or e}); it runs in {_worker_folder or 'the worker process current folder'}, "
                        "where a relative path in its SQL or code may name another file"
                    )


def run_attempt(rt: RuntimeContext, task: Task, inputs: List[DataSet], attempt: int, memory: int, worker: str):
    """Run one attempt and describe its outcome as a Completion (what every backend sends back).

    Never raises for a failed attempt (the error travels in the Completion, with the decision
    already made from its original class). Runs in a worker process (local, queue or Ray), where
    a ``sys.exit()`` or a KeyboardInterrupt of the task's code fails the attempt as any exception
    does (:func:`is_code_exit`), instead of ending the worker: the job then reports what the code
    did, not a lost worker or a cancelled Ray task. (In the scheduler's process, which
    :func:`execute_attempt` also serves, they pass through: there they may be the user's Ctrl-C.)
    """
    enter_node_folder(task)
    start = time.time()
    stats: dict = {}
    try:
        ds = execute_attempt(rt, task, inputs, attempt, memory=memory, worker=worker, stats=stats)
    except TaskError as e:
        return Completion(task.key, attempt, False, None, e, time.time() - start, worker, start, stats)
    except (SystemExit, KeyboardInterrupt) as e:
        if not is_code_exit(e):
            raise
        if rt.enforce_memory_limit:  # the memory watch's interrupt, raised as the attempt was failing otherwise
            from smallpond.execution.memory_watch import error_of

            e = error_of(e)
        error = to_task_error(task, attempt, e, inputs)
        return Completion(task.key, attempt, False, None, error, time.time() - start, worker, start, stats)
    return Completion(task.key, attempt, True, ds, None, time.time() - start, worker, start, stats)
