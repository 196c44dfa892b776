"""The job's event log (``log/events.jsonl``) and the statistics read back from it.

Every job writes one JSON object per line to ``log/events.jsonl``; a resumed job appends to the
same file (each run of the job begins with a ``job_start`` event). The run report, the end-of-job
summary, ``smallpond status`` and ``Session.dump_timeline`` are all computed from these events by
:class:`JobHistory`, so they agree with each other and can be rebuilt for any job, including one
whose process crashed (its log simply ends without a ``job_end``).

Events (``ev`` names the kind, ``t`` is the time it was written, epoch seconds):

* ``job_start``: ``job_id``, ``job_root``, ``name``, ``host``, ``pid``, ``argv``, ``executor``,
  ``versions``;
* ``node``: a plan node, the first time one of its tasks is seen: ``id``, ``label``, ``type``,
  ``inputs`` (node ids), ``partitions``, ``tasks`` (planned), ``location``, ``detail``;
* ``run_start`` / ``run_end``: one scheduler run (a Driver job has one; a session one per
  computation): ``tasks``, ``resumed`` / ``ok``;
* ``resumed``: a task found committed by an earlier run (its original ``started``, ``elapsed``,
  ``worker``, ``rows``, ``bytes``);
* ``reused``: a task whose output was taken from the task cache: ``key``, ``node``, ``entry`` (the
  cache key), ``from_job`` and ``from_task`` (which job and task wrote it), ``bytes``;
* ``submit``: an attempt sent to a worker: ``key``, ``node``, ``attempt``, ``memory`` (written when
  the log is flushed, about every second, for the attempts still running then, and before a
  ``failed`` event; an attempt that succeeded first is told by its ``done`` event alone);
* ``done`` / ``failed``: an attempt ended: ``key``, ``node``, ``attempt``, ``worker``,
  ``started``, ``elapsed``, ``rows``, ``bytes`` (written), ``read`` (bytes of input files),
  ``log`` (its log file, relative to ``log/``); ``failed`` adds ``error``, ``cause`` and
  ``decision`` (``retry``, ``retry_with_more_memory`` or ``fail``);
* ``inline``: metadata-only tasks run by the scheduler itself: ``node``, ``ok``, ``elapsed``, and
  ``key`` for one task or ``n`` for several of one node that succeeded (written as one event);
* ``publication_abandoned``: a publication an earlier run began could not be finished (what it
  would move in was removed) and was given up, its sinks run again: ``destinations``,
  ``missing`` (the staged paths that are gone), ``finished`` (the destinations whose result it
  had swapped in, finished now), ``kept`` (of those, the ones still intact: their sinks count as
  published and do not run again), ``rolled_back`` (the destinations of unfinished appends whose
  moved-in files were removed: their sinks append once), ``records_removed``
  (:mod:`~smallpond.execution.ops.sink_journal`);
* ``job_end``: ``status`` (``success``, ``failure`` or ``interrupted``), ``elapsed``, ``error``.

Invariants: the log is append-only and written only by the job's scheduler process; a torn last
line (a crash mid-write) is ignored when read, and the next run of the job starts its events on a
new line, so its ``job_start`` is never glued to the torn one (a line glued so by an older version
is split where each event begins); writing it never fails a job (an I/O error turns the log off
with one warning).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from smallpond.common import logger
from smallpond.execution.resource_use import over_reservation
from smallpond.execution.scheduler import SchedulerListener
from smallpond.processes import process_start_id

EVENTS_FILE = "events.jsonl"
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
#: the same encoding made once for the events of attempts (flat, built here: nothing to check for
#: cycles), instead of a C encoder built by ``JSONEncoder.encode`` for each event
_FLAT_ENCODE = (
    json.encoder.c_make_encoder(None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    if json.encoder.c_make_encoder is not None
    else None
)
_EV_KIND = re.compile(r'\{\s*"ev"\s*:\s*"([a-z_]+)"')
#: where an event begins: JSON strings escape their quotes, so this occurs nowhere else in a line
_EV_START = re.compile(r'\{\s*"ev"\s*:')
_FLUSH_SECONDS = 1.0
#: how often a running scheduler marks its event log as written (its heartbeat: EventLog.on_tick)
_BEAT_SECONDS = 0.25


def events_path(log_root: str) -> str:
    return os.path.join(log_root, EVENTS_FILE)


def task_log_relpath(key: str, attempt: int) -> str:
    """An attempt's log file relative to ``log/`` (see :func:`smallpond.execution.attempt.execute_attempt`)."""
    return f"tasks/{key}.{attempt}.log"


#: how much of each worker log's end :func:`attempt_log_relpath` reads first
_LOG_TAIL_BYTES = 16384


def attempt_log_relpath(log_root: str, key: str, attempt: int) -> Optional[str]:
    """Where a failed attempt's lines are, relative to ``log/``: its own file when it has one,
    else the log of the worker process that started it (which holds its start line: an attempt
    whose worker was killed, or that logged nothing of its own, has no file), else None.

    A summary or report that named ``tasks/{key}.{attempt}.log`` for such an attempt pointed at a
    file that does not exist.
    """
    own = task_log_relpath(key, attempt)
    if os.path.exists(os.path.join(log_root, own)):
        return own
    from smallpond.execution.attempt import PROCESS_LOG_DIR

    folder = os.path.join(log_root, PROCESS_LOG_DIR)
    needle = f" - start {key} attempt {attempt} ".encode()
    try:
        paths = [os.path.join(folder, name) for name in os.listdir(folder)]
    except OSError:
        return None
    # a worker process runs one attempt at a time: a lost one's start line is near the end of its
    # worker's log, so the logs' tails are read first (a scheduler of many workers and long logs
    # reads a few KiB of each, not all of them), whole logs only if no tail holds it
    for tail in (_LOG_TAIL_BYTES, None):
        found: Optional[tuple] = None
        for path in paths:
            try:
                with open(path, "rb") as f:
                    if tail is not None:
                        f.seek(max(0, os.fstat(f.fileno()).st_size - tail))
                    if needle not in f.read():
                        continue
                    mtime = os.fstat(f.fileno()).st_mtime
            except OSError:
                continue
            if found is None or mtime > found[0]:  # a rerun may start an attempt of that number again
                found = (mtime, f"{PROCESS_LOG_DIR}/{os.path.basename(path)}")
        if found is not None:
            return found[1]
    return None


def existing_attempt_log(log_root: str, log: Optional[str]) -> Optional[str]:
    """``log`` (relative to ``log_root``) if that file exists; else, for an attempt's own file
    (``tasks/{key}.{attempt}.log``, which events of earlier versions named even when the attempt
    had none), the log holding that attempt's lines (:func:`attempt_log_relpath`); else None."""
    if not log:
        return None
    if os.path.exists(os.path.join(log_root, log)):
        return log
    m = re.fullmatch(r"tasks/(.+)\.(\d+)\.log", log)
    return None if m is None else attempt_log_relpath(log_root, m.group(1), int(m.group(2)))


def _split_events(line: str) -> List[str]:
    """The events of one line of the log: one, unless a run appended its first event to the torn
    last line of a killed run (logs written before :meth:`EventLog._write` ended such a line)."""
    starts = [m.start() for m in _EV_START.finditer(line)]
    if len(starts) < 2:
        return [line]
    return [line[a:b] for a, b in zip(starts, starts[1:] + [len(line)])]


def read_events(log_root: str) -> List[dict]:
    """The events of a job (every run), oldest first; unreadable lines (a torn tail) are skipped."""
    out: List[dict] = []
    try:
        f = open(events_path(log_root), encoding="utf-8")
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            for part in _split_events(line):
                try:
                    ev = json.loads(part)
                except ValueError:
                    continue
                if isinstance(ev, dict) and "ev" in ev:
                    out.append(ev)
    return out


def scan_last_run(log_root: str) -> Dict[str, Any]:
    """The ``job_start`` and ``job_end`` events of a job's latest run and how many attempts ended
    ``done`` / ``failed`` and tasks were ``resumed`` / ``reused`` (from the task cache) in it, without parsing every event (for listing
    many jobs quickly; events are written with ``ev`` first)."""
    out: Dict[str, Any] = {"start": None, "end": None, "done": 0, "failed": 0, "resumed": 0, "reused": 0}
    try:
        f = open(events_path(log_root), encoding="utf-8")
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            for part in _split_events(line):
                _scan_event(part, out)
    return out


def _scan_event(part: str, out: Dict[str, Any]) -> None:
    m = _EV_KIND.match(part)
    if m is None:
        return
    kind = m.group(1)
    if kind in ("done", "failed", "resumed", "reused"):
        if part.rstrip().endswith("}"):  # not a torn one
            out[kind] += 1
    elif kind in ("job_start", "job_end"):
        try:
            ev = json.loads(part)
        except ValueError:
            return
        if kind == "job_start":
            out.update(start=ev, end=None, done=0, failed=0, resumed=0, reused=0)
        else:
            out["end"] = ev


# -- statistics ------------------------------------------------------------------------------------


@dataclass
class NodeStats:
    """What one node's tasks did in one run of a job."""

    id: int
    label: str = ""
    type: str = ""
    inputs: List[int] = field(default_factory=list)
    partitions: Any = "?"
    planned: int = 0
    location: str = ""
    detail: str = ""
    done: int = 0  # tasks finished by this run (executed or inline)
    inline: int = 0
    resumed: int = 0
    reused: int = 0  # taken from the task cache
    retries: int = 0  # failed attempts that were retried
    failed: int = 0  # tasks given up
    running: int = 0
    cancelled: int = 0  # attempts stopped while running (speculative copies that lost)
    rows: int = 0
    written: int = 0
    read: int = 0
    task_seconds: float = 0.0
    cpu_seconds: float = 0.0  # of the tasks run, as measured in their workers
    peak_memory: int = 0  # the highest of its tasks' peaks (0: not measured)
    peak_reserved: int = 0  # what the task that peaked highest had reserved
    over_reserved: int = 0  # tasks whose peak was clearly above what they reserved
    first_start: Optional[float] = None
    last_end: Optional[float] = None
    durations: List[float] = field(default_factory=list)

    def add_use(self, ev: dict) -> None:
        """Count what a finished attempt used (its ``cpu``, ``peak_memory`` and ``memory`` fields)."""
        self.cpu_seconds += float(ev.get("cpu") or 0.0)
        peak, reserved = int(ev.get("peak_memory") or 0), int(ev.get("memory") or 0)
        if peak > self.peak_memory:
            self.peak_memory, self.peak_reserved = peak, reserved
        if over_reservation(peak, reserved):
            self.over_reserved += 1

    @property
    def finished(self) -> int:
        return self.done + self.resumed + self.reused

    @property
    def wall_seconds(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return max(0.0, self.last_end - self.first_start)

    @property
    def state(self) -> str:
        if self.failed:
            return "failed"
        if self.planned and self.finished >= self.planned:
            return "done"
        if self.running or self.finished:
            return "running"
        return "waiting"


@dataclass
class RunStats:
    """One run of a job: from a ``job_start`` to its ``job_end`` (absent if the process died)."""

    index: int
    start: dict
    end: Optional[dict] = None
    nodes: Dict[int, NodeStats] = field(default_factory=dict)
    attempts: List[dict] = field(default_factory=list)  # done and failed attempts, in order
    failures: List[dict] = field(default_factory=list)  # failed attempts (retried or not)
    running: Dict[tuple, dict] = field(default_factory=dict)  # (key, attempt) -> submit event
    last_time: float = 0.0

    @property
    def started(self) -> float:
        return float(self.start.get("t", 0.0))

    @property
    def status(self) -> str:
        return self.end.get("status", "failure") if self.end else "running"

    @property
    def elapsed(self) -> float:
        if self.end is not None:
            return float(self.end.get("elapsed") or (self.end["t"] - self.started))
        return max(0.0, self.last_time - self.started)

    def node(self, node_id: int) -> NodeStats:
        ns = self.nodes.get(node_id)
        if ns is None:
            ns = self.nodes[node_id] = NodeStats(node_id, label=f"node {node_id}")
        return ns

    def total(self, attr: str):
        return sum(getattr(n, attr) for n in self.nodes.values())

    @property
    def workers(self) -> List[str]:
        return sorted({a.get("worker") or "?" for a in self.attempts})


class JobHistory:
    """Every run of a job, built from its events (fed one by one, or all at once)."""

    def __init__(self, events: Iterable[dict] = ()) -> None:
        self.runs: List[RunStats] = []
        for ev in events:
            self.feed(ev)

    @staticmethod
    def load(log_root: str) -> "JobHistory":
        return JobHistory(read_events(log_root))

    @property
    def last(self) -> Optional[RunStats]:
        return self.runs[-1] if self.runs else None

    def feed(self, ev: dict) -> None:
        kind = ev.get("ev")
        if kind == "job_start" or not self.runs:
            self.runs.append(RunStats(len(self.runs), ev if kind == "job_start" else {"t": ev.get("t", 0.0)}))
            if kind == "job_start":
                return
        run = self.runs[-1]
        t = float(ev.get("t", 0.0))
        run.last_time = max(run.last_time, t)
        if kind == "node":
            ns = run.node(int(ev["id"]))
            for k in ("label", "type", "inputs", "partitions", "location", "detail"):
                if k in ev:
                    setattr(ns, k, ev[k])
            ns.planned = int(ev.get("tasks", 0))
        elif kind == "resumed":
            run.node(int(ev["node"])).resumed += 1
        elif kind == "reused":
            run.node(int(ev["node"])).reused += 1
        elif kind == "submit":
            run.running[(ev["key"], ev.get("attempt", 0))] = ev
            run.node(int(ev["node"])).running += 1
        elif kind in ("done", "failed"):
            self._attempt_end(run, ev, t)
        elif kind == "cancelled":
            ns = run.node(int(ev["node"]))
            if run.running.pop((ev["key"], ev.get("attempt", 0)), None) is not None:
                ns.running = max(0, ns.running - 1)
            ns.cancelled += 1
        elif kind == "inline":
            ns = run.node(int(ev["node"]))
            if ev.get("ok", True):
                n = int(ev.get("n", 1))
                ns.done += n
                ns.inline += n
        elif kind == "job_end":
            run.end = ev

    @staticmethod
    def _attempt_end(run: RunStats, ev: dict, t: float) -> None:
        ns = run.node(int(ev["node"]))
        sub = run.running.pop((ev["key"], ev.get("attempt", 0)), None)
        if sub is not None:
            ns.running = max(0, ns.running - 1)
        elapsed = float(ev.get("elapsed") or 0.0)
        started = float(ev.get("started") or 0.0)
        if not started:  # a lost worker reports no start: from the submission to now
            started = float(sub["t"]) if sub is not None else t - elapsed
            elapsed = max(elapsed, t - started)
        a = dict(ev, started=started, elapsed=elapsed)
        run.attempts.append(a)
        ns.first_start = started if ns.first_start is None else min(ns.first_start, started)
        ns.last_end = started + elapsed if ns.last_end is None else max(ns.last_end, started + elapsed)
        ns.task_seconds += elapsed
        ns.add_use(ev)
        if ev["ev"] == "done":
            ns.done += 1
            ns.rows += int(ev.get("rows") or 0)
            ns.written += int(ev.get("bytes") or 0)
            ns.read += int(ev.get("read") or 0)
            ns.durations.append(elapsed)
            return
        run.failures.append(a)
        if ev.get("decision") == "fail":
            ns.failed += 1
        else:
            ns.retries += 1


#: what an attempt used (:mod:`~smallpond.execution.resource_use`), the fields of its events
_USE_FIELDS = ("cpu", "peak_memory", "memory")


def _use_fields(stats: Dict[str, Any]) -> Dict[str, Any]:
    """What an attempt used, the fields it measured."""
    return {k: stats[k] for k in _USE_FIELDS if stats.get(k) is not None}


# -- the writer ------------------------------------------------------------------------------------


class EventLog(SchedulerListener):
    """Writes the job's events (a scheduler listener, plus the job's start and end) and keeps a
    :class:`JobHistory` of them in memory for the summary."""

    def __init__(self, log_root: str) -> None:
        self.log_root = log_root
        self.path = events_path(log_root)
        self.history = JobHistory()
        #: the log holds no earlier run of the job: :attr:`history` is the whole job's
        self._first_run = not os.path.exists(self.path)
        self._file = None
        self._broken = False
        self._last_flush = 0.0
        self._last_beat = 0.0
        self._announced: set = set()
        self._inline: Dict[int, list] = {}  # node id -> [tasks, seconds]: inline tasks not yet written
        self._unwritten: Dict[tuple, dict] = {}  # (task key, attempt) -> its submit event, not yet written
        self._pending_resumed: List[tuple] = []
        self._reported_failures: set = set()
        self._run_tasks: Dict[int, int] = {}
        self._started = time.time()

    # -- writing ---------------------------------------------------------------------------------
    def emit(self, kind: str, **fields) -> None:
        self._write(self._event(kind, fields))

    def _event(self, kind: str, fields: Dict[str, Any]) -> Dict[str, Any]:
        """The event, fed to the history (after the inline tasks not yet written, in order)."""
        if self._inline:
            self._emit_inline()
        ev = {"ev": kind, "t": round(time.time(), 3), **fields}
        self.history.feed(ev)
        return ev

    def _write(self, ev: Dict[str, Any], flat: bool = False) -> None:
        """Append ``ev`` as one line; ``flat``: an attempt's event, built here of plain values
        (encoded by :data:`_FLAT_ENCODE`, to the same text)."""
        if self._broken:
            return
        try:
            if self._file is None:
                os.makedirs(self.log_root, exist_ok=True)
                torn = _ends_mid_line(self.path)
                self._file = open(self.path, "a", encoding="utf-8")
                if torn:  # an earlier run was killed mid-write: its torn line stays alone
                    self._file.write("\n")
            if flat and _FLAT_ENCODE is not None:
                self._file.write("".join(_FLAT_ENCODE(ev, 0)) + "\n")
            else:
                self._file.write(_ENCODER.encode(ev) + "\n")
        except (OSError, TypeError, ValueError) as e:
            self._broken = True
            logger.warning("cannot write the event log {}: {}; the run report will be incomplete", self.path, e)

    def whole_history(self) -> JobHistory:
        """Every run of the job: the events kept in memory if this is its first run (and all of
        them could be written), else read back from the log."""
        if self._inline:
            self._emit_inline()
        if self._first_run and not self._broken:
            return self.history
        self.flush()
        return JobHistory.load(self.log_root)

    def _emit_inline(self) -> None:
        """One ``inline`` event per node for the metadata-only tasks that succeeded since the last
        event (a partition of thousands of tasks is thousands of them, written at once)."""
        pending, self._inline = self._inline, {}
        for node, (n, elapsed) in pending.items():
            self.emit("inline", node=node, ok=True, n=n, elapsed=round(elapsed, 6))

    def flush(self) -> None:
        if self._inline:
            self._emit_inline()
        if self._unwritten:  # submissions of attempts still running
            unwritten, self._unwritten = self._unwritten, {}
            for (key, attempt), submitted in unwritten.items():
                self._write_submit(key, attempt, submitted)
        self._last_flush = time.time()
        if self._file is not None:
            try:
                self._file.flush()
            except OSError:
                pass

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    # -- the job ---------------------------------------------------------------------------------
    def job_start(self, rt, *, name: Optional[str], executor: str) -> None:
        self._started = time.time()
        self.emit(
            "job_start",
            job_id=str(rt.job_id),
            job_root=rt.job_root,
            name=name or "",
            host=socket.gethostname(),
            pid=os.getpid(),
            start_id=process_start_id(os.getpid()),  # tells this process from a later one with its pid
            argv=list(sys.argv),
            executor=executor,
            versions=_versions(),
        )
        self.flush()

    def job_end(self, status: str, error: Optional[BaseException] = None) -> None:
        fields: Dict[str, Any] = {"status": status, "elapsed": round(time.time() - self._started, 3)}
        if error is not None:
            fields["error"] = _error_text(error)
            key = getattr(error, "task_key", "")
            if key:
                fields["task"] = key
                log = attempt_log_relpath(self.log_root, key, getattr(error, "attempt", 0))
                if log is not None:
                    fields["log"] = log
        self.emit("job_end", **fields)
        self.close()

    # -- nodes -----------------------------------------------------------------------------------
    def _announce(self, node, tasks: int, inputs: List[int], partitions: int) -> None:
        from smallpond.logical.node import _node_detail

        self._announced.add(int(node.id))
        try:
            detail = _node_detail(node).strip()
        except Exception:
            detail = ""
        self.emit(
            "node",
            id=int(node.id),
            label=node.label,
            type=type(node).__name__,
            inputs=inputs,
            partitions=partitions,
            tasks=tasks,
            location=node.location,
            detail=detail,
        )

    # -- scheduler events ------------------------------------------------------------------------
    def on_resumed(self, task, record: dict) -> None:
        self._pending_resumed.append((task, record))  # written after the nodes, at on_start

    def on_start(self, state) -> None:
        # the nodes tasks carry are slim copies without their inputs: the edges come from the tasks
        counts: Dict[int, int] = {}
        inputs: Dict[int, set] = {}
        partitions: Dict[int, int] = {}
        nodes = {}
        # (metadata-only tasks nothing needs are rebuilt after the run: their nodes are planned too)
        tasks = {u.key: u for u in state.unneeded_inline}
        tasks.update(state.tasks)
        for t in tasks.values():
            if t.node_id in self._announced or t.node is None:
                continue
            counts[t.node_id] = counts.get(t.node_id, 0) + 1
            nodes.setdefault(t.node_id, t.node)
            grid = 1
            for p in t.partition_infos:
                grid *= max(1, int(p.npartitions))
            partitions[t.node_id] = max(partitions.get(t.node_id, 1), grid)
            deps = inputs.setdefault(t.node_id, set())
            for k in t.input_keys:
                dep = tasks.get(k)
                if dep is not None and dep.node_id != t.node_id:
                    deps.add(dep.node_id)
        for nid in sorted(nodes):  # inputs are created, so numbered, before their consumers
            self._announce(nodes[nid], counts[nid], sorted(inputs[nid]), partitions[nid])
        resumed, self._pending_resumed = self._pending_resumed, []
        self.emit("run_start", tasks=len(state.tasks) - len(state.done) + len(resumed), resumed=len(resumed))
        for task, record in resumed:
            stats = record.get("stats") or {}
            self.emit(
                "resumed",
                key=task.key,
                node=task.node_id,
                attempt=record.get("attempt", 0),
                started=record.get("started"),
                elapsed=record.get("elapsed"),
                worker=record.get("worker", ""),
                rows=stats.get("rows"),
                bytes=stats.get("bytes"),
                **_use_fields(stats),
            )

    def on_reused(self, task, entry) -> None:
        self.emit(
            "reused",
            key=task.key,
            node=task.node_id,
            entry=entry.key,
            from_job=entry.job,
            from_task=entry.task,
            bytes=entry.bytes,
        )

    def on_submit(self, task, attempt: int, memory: int) -> None:
        # kept in memory as (time, node, memory), and written (and fed to the history) at the next
        # flush only if the attempt still runs then: an attempt that ended before is told by its
        # done/failed event, which carries its start (most tiny tasks: no event built for nothing)
        if self._inline:
            self._emit_inline()
        self._unwritten[(task.key, attempt)] = (round(time.time(), 3), task.node_id, memory)

    def _write_submit(self, key: str, attempt: int, submitted: tuple) -> None:
        """The ``submit`` event of an attempt :meth:`on_submit` kept, fed to the history and written."""
        t, node, memory = submitted
        ev = {"ev": "submit", "t": t, "key": key, "node": node, "attempt": attempt, "memory": memory}
        self.history.feed(ev)
        self._write(ev, flat=True)

    def on_inline(self, task, ok: bool, elapsed: float) -> None:
        if not ok:
            self.emit("inline", key=task.key, node=task.node_id, ok=False, elapsed=round(elapsed, 6))
            return
        pending = self._inline.get(task.node_id)
        if pending is None:
            self._inline[task.node_id] = [1, elapsed]
        else:
            pending[0] += 1
            pending[1] += elapsed

    def on_completion(self, task, c, decision) -> None:
        key, attempt, stats = task.key, c.attempt, c.stats
        submitted = self._unwritten.pop((key, attempt), None)
        if self._inline:
            self._emit_inline()
        # the event built once, its fields in their order (see the module docstring)
        ev = {
            "ev": "done" if decision is None else "failed",
            "t": round(time.time(), 3),
            "key": key,
            "node": task.node_id,
            "attempt": attempt,
            "worker": c.worker,
            "started": round(c.started, 3) if c.started else None,
            "elapsed": round(c.elapsed, 6),
            "rows": stats.get("rows"),
            "bytes": stats.get("bytes"),
            "read": stats.get("read"),
        }
        for k in _USE_FIELDS:
            v = stats.get(k)
            if v is not None:
                ev[k] = v
        # the attempt's own log, or the worker process's log holding its start and done lines
        if decision is None:
            ev["log"] = stats.get("log") or task_log_relpath(key, attempt)
            self.history.feed(ev)
            self._write(ev, flat=True)
            return
        if submitted is not None:  # a lost worker's failure has no start of its own: its submission tells it
            self._write_submit(key, attempt, submitted)
        self._reported_failures.add((key, attempt))
        log = stats.get("log") or attempt_log_relpath(self.log_root, key, attempt)
        if log is not None:
            ev["log"] = log
        err = c.error
        ev["error"] = getattr(err, "message", None) or _error_text(err)
        ev["cause"] = getattr(err, "cause_type", "") or type(err).__name__
        ev["decision"] = getattr(decision, "value", str(decision))
        self.history.feed(ev)
        self._write(ev)

    def on_cancelled(self, task, attempt: int, reason: str) -> None:
        self._unwritten.pop((task.key, attempt), None)
        self.emit("cancelled", key=task.key, node=task.node_id, attempt=attempt, reason=reason)

    def on_tick(self, state, elapsed: float) -> None:
        now = time.time()
        if now - self._last_flush >= _FLUSH_SECONDS:
            self.flush()
        if now - self._last_beat >= _BEAT_SECONDS and self._file is not None and not self._broken:
            # the heartbeat: a killed run lasted, for `smallpond status` (summary.last_log_write),
            # until its logs' last write ("crashed in 1.3 s" after 2 s of tasks that log nothing)
            self._last_beat = now
            try:
                os.utime(self.path)
            except OSError:
                pass

    def on_end(self, state, ok: bool) -> None:
        # failures the scheduler decided without an attempt ending (inline tasks, unpicklable tasks)
        for key, err in state.failed.items():
            attempt = getattr(err, "attempt", 0)
            if (key, attempt) in self._reported_failures:
                continue
            self._reported_failures.add((key, attempt))
            task = state.tasks.get(key)
            self.emit(
                "failed",
                key=key,
                node=task.node_id if task is not None else 0,
                attempt=attempt,
                worker="scheduler",
                started=None,
                elapsed=0.0,
                log=attempt_log_relpath(self.log_root, key, attempt) or "",
                error=getattr(err, "message", None) or _error_text(err),
                cause=getattr(err, "cause_type", "") or type(err).__name__,
                decision="fail",
            )
        self.emit("run_end", ok=ok)
        self.flush()


def _ends_mid_line(path: str) -> bool:
    """Whether the file at ``path`` is not empty and does not end with a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _error_text(err: Optional[BaseException]) -> str:
    """An error as one text: a TaskError renders itself (node, call site, SQL); others get their class."""
    from smallpond.errors import TaskError

    if err is None:
        return ""
    if isinstance(err, TaskError):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _versions() -> Dict[str, str]:
    """Python's, smallpond's, DuckDB's and pyarrow's versions (looked up once per process)."""
    global _versions_seen
    if _versions_seen is None:
        import platform

        from smallpond.common import installed_version

        out = {"python": platform.python_version()}
        for dist in ("smallpond", "duckdb", "pyarrow"):
            found = installed_version(dist)
            if found is not None:
                out[dist] = found
        _versions_seen = out
    return dict(_versions_seen)


_versions_seen: Optional[Dict[str, str]] = None


# -- derived views ---------------------------------------------------------------------------------


def chrome_trace(run: RunStats) -> dict:
    """The attempts of a run as Chrome trace events (open in Perfetto or ``chrome://tracing``):
    one process per worker (named in each slice's ``args``), one slice per attempt."""
    workers = {w: i for i, w in enumerate(run.workers)}
    events: List[dict] = []
    for a in run.attempts:
        ns = run.nodes.get(int(a["node"]))
        events.append(
            {
                "name": a["key"],
                "cat": ns.label if ns else str(a["node"]),
                "ph": "X",
                "ts": int(float(a["started"]) * 1e6),
                "dur": int(float(a["elapsed"]) * 1e6),
                "pid": workers.get(a.get("worker") or "?", 0),
                "tid": int(a["node"]),
                "args": {
                    "worker": a.get("worker") or "?",
                    **{
                        k: a.get(k)
                        for k in ("attempt", "rows", "bytes", "read", "cpu", "peak_memory", "memory", "error", "decision")
                        if a.get(k) is not None
                    },
                },
            }
        )
    return {"traceEvents": events}
