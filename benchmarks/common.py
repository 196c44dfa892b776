"""What every benchmark shares: arguments, repeats and medians, the DuckDB baseline connection,
running a plan on the embedded backend, and the ``RESULTS.md`` table.

Timings are wall-clock seconds of whole operations as a user sees them: for smallpond, the
``run_job`` call (planning, worker start-up, tasks, commits, shutdown); for DuckDB, opening a
connection and running one statement. Repeats of the two are interleaved, so a noisy neighbour on
the machine slows both sides alike, and the reported figure is the median of the repeats. Dirty
pages are written back before each timed run (``os.sync``), and outputs are removed only after
the last run (see :class:`Leftovers`), so no run pays for another's I/O.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_PATH = os.path.join(REPO_ROOT, "benchmarks", "RESULTS.md")
DEFAULT_DATA_DIR = os.path.join(REPO_ROOT, "bench-data")  # gitignored

RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Rows are appended by `--append-results`. Figures are medians of `--repeat` interleaved runs;\n"
    "ratio = smallpond's time / DuckDB's time for the same work (lower is better). Both sides of a\n"
    "row ran on the same machine in the same session; absolute times on a shared VM vary by 20% or\n"
    "more between sessions, so compare ratios within a row. `commit` is the commit of the code measured,\n"
    "with `+dirty` when `smallpond/` or `benchmarks/` (other than this file) had uncommitted changes.\n\n"
    "| date | benchmark | command | data | machine | smallpond | DuckDB | ratio | commit |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_BYTE_SUFFIXES = {
    "": 1,
    "B": 1,
    "K": 2**10,
    "KB": 2**10,
    "M": 2**20,
    "MB": 2**20,
    "G": 2**30,
    "GB": 2**30,
    "T": 2**40,
    "TB": 2**40,
}


def parse_count(text: str) -> int:
    """``"5M"`` → 5000000 (decimal suffixes K, M, G, T)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a count like 5000000 or 5M, got {text!r}")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2).upper()])


def parse_bytes(text: str) -> int:
    """``"64MB"`` → 67108864 (binary suffixes K/KB, M/MB, G/GB, T/TB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 512MB or 2GB, got {text!r}")
    return int(float(m.group(1)) * _BYTE_SUFFIXES[m.group(2).upper()])


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> str:
    import psutil

    return f"{usable_cpus()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            # the code measured: smallpond and the benchmarks, not the results table being appended to
            [
                "git",
                "-C",
                REPO_ROOT,
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "smallpond",
                "benchmarks",
                ":!benchmarks/RESULTS.md",
            ],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def compile_bytecode() -> None:
    """Compile smallpond's modules to bytecode, as installing the package does.

    A measurement that starts fresh interpreters (the quick start, import to first result, and
    every job's worker processes: the sorts, the hash partitioning) must not pay for compiling
    smallpond's sources in every process when DuckDB's are precompiled:
    ``pip install`` compiles both, but an editable checkout run with ``PYTHONDONTWRITEBYTECODE``
    (set on this machine) would compile smallpond in every process, the workers included.
    """
    import compileall

    compileall.compile_dir(os.path.join(REPO_ROOT, "smallpond"), quiet=1)


def add_plan_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plan",
        choices=("user", "tuned"),
        default="tuned",
        help="user: the plan as the reference's examples write it (node defaults, DataSetPartitionNode(20), a "
        "DataSinkNode); tuned: the plan written for this benchmark (default)",
    )


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each side; medians are reported (default 3)")
    p.add_argument("--append-results", action="store_true", help=f"append a row to {os.path.relpath(RESULTS_PATH, REPO_ROOT)}")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where inputs, job roots and outputs go (default bench-data/)")
    p.add_argument("--executors", type=int, default=usable_cpus(), help="smallpond worker processes (default: usable CPUs)")
    p.add_argument(
        "--memory-limit",
        type=parse_bytes,
        default=None,
        help="memory per smallpond task, e.g. 2GB (default: its share of the machine)",
    )
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip validating the outputs")
    p.add_argument("--keep", action="store_true", help="keep job roots and outputs of the timed runs")


def command_line() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # run as ``python -m benchmarks.x``
        head = ["-m", spec.name]
    else:
        head = [os.path.relpath(sys.argv[0], REPO_ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0]]
    return "python " + " ".join(shlex.quote(a) for a in head + sys.argv[1:])


@dataclass
class Timings:
    """Seconds of each repeat, per side; for runs taken with :meth:`measure`, also the peak RSS of
    the process tree and the CPU seconds of each."""

    runs: Dict[str, List[float]] = field(default_factory=dict)
    peaks: Dict[str, List[int]] = field(default_factory=dict)
    cpus: Dict[str, List[float]] = field(default_factory=dict)

    def add(self, side: str, seconds: float) -> None:
        self.runs.setdefault(side, []).append(seconds)

    def measure(self, side: str, fn: Callable, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` as one repeat of ``side`` (:func:`timed`, under
        :class:`PeakRss`); records its seconds, peak RSS and CPU seconds, returns its result."""
        with PeakRss() as rss:
            secs, result = timed(fn, *args, **kwargs)
        self.add(side, secs)
        self.peaks.setdefault(side, []).append(rss.peak)
        self.cpus.setdefault(side, []).append(rss.cpu)
        return result

    def median(self, side: str) -> float:
        return statistics.median(self.runs[side])

    def describe(self, side: str) -> str:
        xs = self.runs[side]
        return f"median {self.median(side):.2f}s of {len(xs)} (" + ", ".join(f"{x:.2f}" for x in xs) + ")"


class CpuTime:
    """CPU seconds (user + system) used in a ``with`` block by this process and its descendants:
    those reaped meanwhile (a job's workers, stopped when the job ends) and those still alive (the
    workers a job kept for the process's next one): ``seconds``; ``here``: this process's alone.
    Less sensitive than wall time to the machine's other load."""

    def __enter__(self) -> "CpuTime":
        self._start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        end = self._now()
        self.here = end[0] - self._start[0]
        self.seconds = self.here + end[1] - self._start[1]

    @staticmethod
    def _now() -> Tuple[float, float]:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime, b.ru_utime + b.ru_stime + sum(descendant_cpu().values())


def _kept_workers() -> Dict[int, int]:
    """smallpond's idle workers kept for a next job: pid -> jobs each joined since it was started."""
    spares = sys.modules.get("smallpond.execution.executors.local_spares")
    return spares.kept() if spares is not None else {}


def descendant_cpu() -> Dict[int, float]:
    """CPU seconds used so far by each live descendant of this process, with the children it reaped
    (a descendant reaped later moves into this process's RUSAGE_CHILDREN, with all of its time)."""
    import psutil

    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[p.pid] = t.user + t.system + t.children_user + t.children_system
    return out


class PeakRss:
    """Peak resident memory of this process and all its descendants (the worker processes), summed,
    sampled every ``interval`` seconds by a background thread while the ``with`` block runs.

    A sample is a walk of the process tree (psutil); memory held for less than ``interval`` can be
    missed, so the figure is a lower bound of the true peak, close to it for jobs of seconds.
    The idle workers an earlier smallpond job kept for the next one, kept all through the block
    (DuckDB ran in this process meanwhile), are not the block's: not counted.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        #: CPU seconds (user + system) this process and its reaped children used in the block:
        #: less sensitive than wall time to other load on a shared machine
        self.cpu = 0.0
        self._cpu = CpuTime()
        self._stop = None
        self._thread = None

    def sample(self) -> Dict[int, int]:
        """RSS of this process and of each descendant, by pid."""
        import psutil

        me = psutil.Process()
        out = {}
        for p in [me] + me.children(recursive=True):
            try:
                out[p.pid] = p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append(self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        import threading

        self._kept = _kept_workers()
        self._samples = [self.sample()]
        self._cpu.__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._samples.append(self.sample())
        self._cpu.__exit__()
        self.cpu = self._cpu.seconds
        after = _kept_workers()
        idle = {pid for pid, jobs in self._kept.items() if after.get(pid) == jobs}
        self.peak = max(sum(rss for pid, rss in s.items() if pid not in idle) for s in self._samples)


def timed(fn: Callable, *args, **kwargs):
    """``(seconds, result)`` of ``fn(*args, **kwargs)``, after writing back all dirty pages: runs
    alternate between the two sides, and neither should pay for writing the other's output."""
    os.sync()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def duckdb_connect(threads: int, memory_limit: Optional[int] = None, temp_dir: Optional[str] = None):
    """A DuckDB connection for a baseline: ``threads`` threads and (if given) a memory limit."""
    import duckdb

    conn = duckdb.connect()
    conn.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        conn.execute(f"SET memory_limit = '{max(1, memory_limit // 2**20)}MB'")
    if temp_dir:
        os.makedirs(temp_dir, exist_ok=True)
        conn.execute(f"SET temp_directory = '{temp_dir}'")
    conn.execute("SET enable_progress_bar = false")
    return conn


def parquet_writer_options(compression: Optional[str], dictionary: bool) -> str:
    """DuckDB COPY options writing the same Parquet as a smallpond node with these settings
    (``parquet_compression``, ``parquet_dictionary_encoding``): both sides of a comparison write
    the same file format."""
    opts = f"FORMAT PARQUET, COMPRESSION '{(compression or 'uncompressed').lower()}'"
    if not dictionary:
        opts += ", DICTIONARY_SIZE_LIMIT 0, WRITE_BLOOM_FILTER false"
    return opts


def sql_list(paths: List[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def run_plan(
    plan,
    data_root: str,
    executors: int,
    *,
    job_id: Optional[str] = None,
    quiet: bool = True,
    backend: str = "local",
    ray_address: Optional[str] = None,
    platform: Optional[str] = None,
    **rt_kwargs,
):
    """Run a LogicalPlan on the embedded backend (or ``backend="ray"``, or on the queue backend with
    executors ``platform`` starts); returns the ExecutionPlan.

    The task cache is on, as by default, but each run gets an empty one of its own inside its job
    folder (unless ``task_cache`` is given, or ``SP_TASK_CACHE=off``): repeats never reuse each
    other's results, and each pays what a first build pays for filling the cache.
    """
    from loguru import logger

    from smallpond.execution.job import make_executor, make_runtime_ctx, run_job

    if quiet:
        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    own_cache = "task_cache" not in rt_kwargs and os.environ.get("SP_TASK_CACHE", "").lower() != "off"
    if own_cache:
        rt_kwargs["task_cache"] = "off"
    rt = make_runtime_ctx(job_id or str(uuid.uuid4()), None, data_root, console_log_level="WARNING", **rt_kwargs)
    if own_cache:
        rt.task_cache = os.path.join(rt.job_root, "task_cache")
    executor = (
        make_executor(rt, executors, backend=backend, ray_address=ray_address, platform=platform)
        if backend != "local" or platform
        else None
    )
    return run_job(plan, rt, num_workers=executors, executor=executor)


def job_root_of(exec_plan) -> str:
    return exec_plan.ctx.job_root


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


class Leftovers:
    """Paths to remove once all timed runs are over (none with ``keep``).

    Removing thousands of files right before a timed run slows the file creation of that run for
    seconds on a filesystem mounted with online discard (this machine's is): the removal of one
    repeat's outputs would be paid by the next repeat, and by whichever side runs next.
    """

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.paths: List[str] = []

    def add(self, path: str) -> None:
        self.paths.append(path)

    def remove_all(self) -> None:
        if not self.keep:
            for p in self.paths:
                remove(p)
            os.sync()  # wait out the discards here, not in whatever runs next
        self.paths = []


def append_results(benchmark: str, data: str, smallpond: str, duckdb: str, ratio: str, path: str = RESULTS_PATH) -> None:
    """Append one row to the results table (created with its header if missing)."""
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(RESULTS_HEADER)
    cells = [
        datetime.now().strftime("%Y-%m-%d %H:%M"),
        benchmark,
        f"`{command_line()}`",
        data,
        machine(),
        smallpond,
        duckdb,
        ratio,
        git_commit(),
    ]
    with open(path, "a") as f:
        f.write("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n")
    print(f"appended a row to {path}")


def print_header(title: str, facts: Dict[str, object]) -> None:
    print(f"== {title}")
    for k, v in facts.items():
        print(f"   {k}: {v}")
    sys.stdout.flush()


def print_run(timings: Timings, rep: int, exec_plan=None) -> None:
    """One line per timed repeat: both sides' seconds; with ``exec_plan``, a second line with where
    smallpond's time went (:func:`stage_summary`)."""
    print(
        f"   run {rep + 1}: smallpond {timings.runs['smallpond'][-1]:.2f}s, DuckDB {timings.runs['duckdb'][-1]:.2f}s", flush=True
    )
    if exec_plan is not None:
        summary = stage_summary(exec_plan)
        if summary:
            print(f"          {summary}", flush=True)


def stage_summary(exec_plan) -> str:
    """Where a job's time went, from its event log (read as the run report reads it): the seconds
    from the job's start to its first task, each kind of task (tasks done, the span from the first
    start to the last end, task-seconds), and from the last task's end to the job's end. "" if
    the log holds no started run with a finished task."""
    from smallpond.execution.events import JobHistory

    run = JobHistory.load(os.path.join(job_root_of(exec_plan), "log")).last
    if run is None or run.start.get("ev") != "job_start":
        return ""
    kinds: Dict[str, List[float]] = {}  # task class -> [tasks, first start, last end, task-seconds]
    for a in run.attempts:
        if a.get("ev") != "done" or not a.get("started"):
            continue
        began, took = float(a["started"]), float(a.get("elapsed") or 0.0)
        k = kinds.setdefault(a["key"].rsplit("-", 1)[0], [0, began, began + took, 0.0])
        k[0] += 1
        k[1], k[2], k[3] = min(k[1], began), max(k[2], began + took), k[3] + took
    if not kinds:
        return ""
    end = float(run.end["t"]) if run.end is not None else run.last_time
    first, last = min(k[1] for k in kinds.values()), max(k[2] for k in kinds.values())
    parts = [f"start to first task {first - run.started:.2f}s"]
    for name, (n, lo, hi, busy) in sorted(kinds.items(), key=lambda kv: kv[1][1]):
        parts.append(f"{name} x{n} {hi - lo:.2f}s ({busy:.2f} task-s)")
    parts.append(f"last task to end {max(0.0, end - last):.2f}s")
    return "; ".join(parts)


def report_time_ratio(
    timings: Timings,
    benchmark: str,
    count: int,
    unit: str,
    data: str,
    validated: bool,
    append: bool,
) -> None:
    """Print both medians with throughput in ``unit`` and the ratio; append a RESULTS.md row if asked.

    For sides measured with :meth:`Timings.measure`, the largest peak RSS of the process tree and
    the median CPU seconds are reported beside each time."""
    sp, dd = timings.median("smallpond"), timings.median("duckdb")
    peak = {side: max(v) for side, v in timings.peaks.items() if v}
    cpu = {side: statistics.median(v) for side, v in timings.cpus.items() if v}
    rss = {
        side: (f", peak RSS {human_bytes(peak[side])}" if side in peak else "")
        + (f", CPU {cpu[side]:.1f} s" if side in cpu else "")
        for side in ("smallpond", "duckdb")
    }
    print(f"smallpond: {timings.describe('smallpond')}; {count / sp / 1e6:.2f} M {unit}/s{rss['smallpond']}")
    print(f"DuckDB:    {timings.describe('duckdb')}; {count / dd / 1e6:.2f} M {unit}/s{rss['duckdb']}")
    print(f"ratio smallpond/DuckDB: {sp / dd:.2f}" + (" (validated)" if validated else ""))
    if append:
        append_results(benchmark, data, f"{sp:.2f} s{rss['smallpond']}", f"{dd:.2f} s{rss['duckdb']}", f"{sp / dd:.2f}")
