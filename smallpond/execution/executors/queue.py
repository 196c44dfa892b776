"""The queue backend: executor processes (mpirun, subprocesses, or started by hand on any host)
take attempts from a work queue on the shared filesystem.

This module is the scheduler's side, :class:`QueueExecutor`; the executor processes' side is
:mod:`smallpond.execution.executors.queue_process`, and the files and settings both use are in
:mod:`smallpond.execution.executors.queue_protocol`. Everything goes through files under the job's
``queue/`` folder, so executors need nothing but the data root (no port, no service)::

    queue/
      epoch                    JSON: the scheduler's generation, its timing settings and its refresh count
      epochs/{n}/              created exclusively: one scheduler per generation
      scheduler                the scheduler's heartbeat ("{epoch} {counter}")
      stop                     JSON: the job ended (executors of that generation exit) and how
      nodes/{epoch}.{k}.node   signed pickled nodes, written once, shared by the attempts of a node
      todo/{item}              signed attempts waiting for an executor
      cancel/{item}            the scheduler abandoned this attempt (its executor kills it)
      done/{item}              signed Completions, written by executors
      executors/{name}/        one per executor: info (JSON), heartbeat (JSON), claimed/{item}, lost

Invariants:

* **Claims are atomic.** An executor claims an item with ``os.rename(todo/X, executors/E/claimed/X)``:
  exactly one rename succeeds. It writes ``done/X`` (atomically) before it forgets the claim, so
  an item is always either waiting, claimed by one executor, or done.
* **Every item, node and completion is signed** with the job secret, like the commit records;
  executors and the scheduler refuse files whose signature does not match.
* **Generations (epochs).** Each scheduler run takes the next epoch; item names start with it.
  A new scheduler clears the queue of older generations and, before it reads any commit record,
  waits until every live executor has acknowledged the new epoch (having killed the attempts it
  held for the old one) or is gone. So a stale attempt can neither commit behind the new run's
  back nor be reported into it. Executors the old scheduler launched exit; executors started by
  hand rejoin.
* **Fresh workers on request.** Between two runs of a session, a file of the user's code may have
  changed; the worker processes of the executors may hold the module as it was
  (:meth:`QueueExecutor.restart_workers`). The scheduler then raises the ``refresh`` count in
  ``epoch``; each executor replaces its worker processes and says so in its heartbeat, and no
  attempt is queued before every joined executor has (one that does not within the timeout is
  declared lost). An executor that joins later starts fresh workers anyway.
* **Nothing is lost silently.** Executors heartbeat; one whose heartbeat stops for
  ``timeout`` seconds (or whose process is found dead, on this host) is declared lost: its
  claimed attempts are reported as :class:`~smallpond.errors.WorkerLost` and retried elsewhere,
  and a ``lost`` marker tells it to stop if it wakes up. A scheduler with no executor says so
  in its log, and fails the job if the executors it launched have all exited.

Timing knobs (environment variables, read by the scheduler and sent to executors in ``epoch``):
``SP_QUEUE_HEARTBEAT`` (seconds between heartbeats, default 1), ``SP_QUEUE_TIMEOUT`` (silence
after which an executor or the scheduler counts as lost, default 20), ``SP_QUEUE_WAIT`` (how long
an executor waits for a scheduler to start or come back, default 120).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Set, Tuple

from smallpond.common import logger
from smallpond.errors import ParameterError, WorkerLost
from smallpond.execution.executors.base import Capacity, Completion, Executor
from smallpond.execution.executors.local import QUEUE_BEHIND_SECONDS, TaskEncoder
from smallpond.execution.executors.queue_protocol import (
    OTHER_BACKEND,
    ItemName,
    QueuePaths,
    QueueSettings,
    encode_item,
    executor_cpus_setting,
    process_alive,
    read_json,
    this_host,
    write_json,
)
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import Task
from smallpond.io.filesystem import atomic_write_bytes, dump, remove_path, signed_bytes, verified_payload

# -- the scheduler's side -------------------------------------------------------------------------


@dataclass
class _Member:
    """An executor as the scheduler sees it."""

    name: str
    info: dict
    counter: object = None
    changed: float = 0.0  # monotonic time its heartbeat last changed
    epoch: int = -1
    state: str = ""
    refresh: int = 0  # the scheduler's refresh count its workers were started for (its heartbeat)
    checked: float = 0.0  # monotonic time its process was last checked (same host only)
    read: float = 0.0  # monotonic time its heartbeat was last read
    started: frozenset = frozenset()  # the items its workers run, as of its heartbeat

    @property
    def workers(self) -> int:
        return int(self.info.get("workers", 1))

    @property
    def cpus(self) -> int:
        return int(self.info.get("cpus", 1))

    @property
    def memory(self) -> int:
        return int(self.info.get("memory", 0))

    def describe(self) -> str:
        return f"{self.name} (host {self.info.get('host')}, pid {self.info.get('pid')})"


#: how often the scheduler looks at the executors' folders and heartbeats (seconds)
SCAN_INTERVAL = 0.05
#: seconds the stall warning waits for the executors' answers with their attempts' stacks (and
#: up to ``QueueSettings.stacks_patience`` more for one that said it is answering)
STACKS_WAIT = 2.0
#: the shortest and longest pauses of a poll that finds nothing (seconds)
POLL_MIN, POLL_MAX = 0.0005, 0.02
#: how often a scheduler without executors says so (seconds)
NO_EXECUTOR_WARNING = 30.0


class QueueExecutor(Executor):
    """The scheduler's side of the queue backend.

    Args:
        runtime_ctx: the job's runtime context.
        platform: what starts executors: a :class:`~smallpond.platform.Platform` or its name
            (``"mpi"``, ``"base"``: plain subprocesses, ``"manual"``: none, they are started by
            hand with ``python script.py executor --job_id ... --data_root ...``).
        num_executors: how many executors the platform starts (default: one per usable CPU).
        settings: timing (default: from ``SP_QUEUE_*`` variables).

    Executors started by hand join any job they are pointed at, also one whose platform launched
    some. The capacity is what the executors that joined offer; it changes as they come and go.
    """

    name = "queue"

    def __init__(
        self,
        runtime_ctx: RuntimeContext,
        *,
        platform=None,
        num_executors: int = 0,
        settings: Optional[QueueSettings] = None,
    ) -> None:
        from smallpond.platform import Platform, get_platform

        self.rt = runtime_ctx
        self.platform: Platform = platform if isinstance(platform, Platform) else get_platform(platform or "manual")
        if num_executors < 0:
            raise ParameterError(f"num_executors must not be negative, got {num_executors!r}")
        #: executors the platform starts (none for "manual": they are started by hand)
        self.num_executors = 0 if self.platform.name == "manual" else (num_executors or runtime_ctx.usable_cpu_count)
        if self.platform.name == "manual" and num_executors:
            logger.warning(
                "queue backend: num_executors={} is ignored with platform 'manual': start executors by hand", num_executors
            )
        self.settings = settings or QueueSettings.from_env()
        self.paths = QueuePaths(runtime_ctx.layout)
        self.epoch = 0
        self._refresh = 0  # how many times executors were asked for fresh worker processes
        self._stacks = 0  # how many times executors were asked for their attempts' stacks
        self._seq = 0
        self._encoder = TaskEncoder()
        self._nodes_written: Set[int] = set()
        self._outstanding: Dict[str, Tuple[str, int]] = {}  # item name -> (key, attempt)
        #: outstanding items submitted with queue=True and not seen started (using nothing yet)
        self._queued: Set[str] = set()
        self._recent: Deque[float] = deque(maxlen=32)  # seconds of the latest successful attempts
        self._names: Dict[Tuple[str, int], str] = {}  # (key, attempt) -> item name
        self._members: Dict[str, _Member] = {}
        self._gone: Set[str] = set()  # executors lost or exited: never counted again
        self._ready: List[Completion] = []  # outcomes read, not yet returned by poll
        self._lost: List[Completion] = []
        self._launched: List[str] = []
        self._relaunches = 0
        self._last_scan = 0.0
        self._started_at = 0.0
        self._last_warning = 0.0
        self._host = this_host()
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None
        self._started = False
        self._closed = False
        self._outcome: Optional[str] = None  # the run's outcome, written into the stop marker

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the next generation of the job's queue, fence off older ones, launch executors."""
        if self._started:
            return
        self._started = True
        rt, paths = self.rt, self.paths
        paths.create()  # one scheduler per job at a time: the Job's lock (execution.ownership) sees to it
        # executors' workers load this run's context (settings may differ from an earlier run)
        dump(rt, rt.runtime_ctx_path, secret=rt.secret)
        self.epoch = self._next_epoch()
        self._write_epoch()
        remove_path(paths.stop)
        for d in (paths.todo, paths.cancel, paths.done, paths.nodes):
            for name in os.listdir(d):
                remove_path(os.path.join(d, name))
        self._beat_once(0)
        self._beat = threading.Thread(target=self._beat_loop, name="smallpond-queue-heartbeat", daemon=True)
        self._beat.start()
        self._fence_older_generations()
        self._started_at = time.monotonic()
        self._last_warning = self._started_at
        if self.num_executors > 0:
            self._launch(self.num_executors)
        else:
            logger.info(
                "queue backend: waiting for executors; start them with: {}",
                " ".join(self.executor_command()),
            )

    def end_earlier_runs(self) -> None:
        """For a run of the job on another backend (embedded, Ray): stop what executors of an
        earlier queue-backend run still do for the job, before this run reads any commit record.

        Executors whose scheduler was killed go on with their attempts (and claim the queued ones)
        until they find it silent for ``timeout`` seconds; a queue-backend rerun fences them off
        in :meth:`start`, and a run on another backend must too, or the old attempts would run
        beside its own. So this takes the next generation of the job's queue and ends it at once
        (``stop`` written before ``epoch``): every executor drops its attempts and exits, as at
        the end of a job, and this waits for them as :meth:`start` does (one that does not
        answer within the timeout is declared lost; its ``lost`` marker stops it when it wakes).
        """
        paths = self.paths
        paths.create()
        self._started = self._closed = True  # nothing is submitted, and shutdown has nothing to say
        self.epoch = self._next_epoch()
        write_json(paths.stop, {"epoch": self.epoch, "outcome": OTHER_BACKEND, "pid": os.getpid(), **self._host})
        self._write_epoch()
        for d in (paths.todo, paths.cancel, paths.done):
            for name in os.listdir(d):
                remove_path(os.path.join(d, name))
        self._fence_older_generations()

    def _write_epoch(self) -> None:
        """``queue/epoch``: this scheduler's generation, timing and refresh count (executors read it)."""
        write_json(
            self.paths.epoch,
            {
                "epoch": self.epoch,
                "heartbeat": self.settings.heartbeat,
                "timeout": self.settings.timeout,
                "wait": self.settings.wait,
                "refresh": self._refresh,
                "stacks": self._stacks,
                "pid": os.getpid(),
                **self._host,
            },
        )

    def restart_workers(self, why: str) -> None:
        """Have every executor replace its worker processes, and wait until the joined ones have
        (those that do not within the timeout are declared lost): the next attempts run the code
        as it is now. Between runs nothing of ours runs; an attempt still held is reported lost."""
        if not self._started or self._closed:
            return
        self._refresh += 1
        logger.info("queue backend: asking the executors for fresh worker processes ({})", why)
        self._write_epoch()
        deadline = time.monotonic() + self.settings.timeout
        while True:
            self._scan(force=True)
            behind = [m for m in self._joined() if m.refresh < self._refresh]
            if not behind or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for m in behind:
            self._lose(m, f"did not replace its worker processes within {self.settings.timeout:.0f}s")

    def executor_command(self) -> List[str]:
        """The command that starts one more executor of this job (on any host sharing the data root)."""
        script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else None
        head = [sys.executable, script] if script else [sys.executable, "-m", "smallpond.execution.driver"]
        return head + self._executor_args()

    def _executor_args(self) -> List[str]:
        """The Driver arguments of an executor of this job."""
        rt = self.rt
        return ["executor", "--job_id", str(rt.job_id), "--job_time", repr(rt.job_time.timestamp()), "--data_root", rt.data_root]

    def _launch(self, n: int) -> None:
        executor_cpus_setting()  # a bad value is refused here, not by each executor as it starts
        args = ["smallpond.execution.driver", *self._executor_args(), "--console_log_level", self.rt.console_log_level]
        envs = {"SP_QUEUE_EPOCH": str(self.epoch)}
        for var in ("SP_EXECUTOR_CPUS", "SP_QUEUE_HEARTBEAT", "SP_QUEUE_TIMEOUT", "SP_QUEUE_WAIT"):
            if os.environ.get(var):
                envs[var] = os.environ[var]
        log_path = os.path.join(self.rt.log_root, "executors.out")
        ids = self.platform.start_job(n, "-m", args, envs, {"log_path": log_path})
        self._launched.extend(ids)
        logger.info(
            "queue backend: {} started {} executor(s) (launch ids {}); their output: {}", self.platform.name, n, ids, log_path
        )

    def _next_epoch(self) -> int:
        prev = read_json(self.paths.epoch) or {}
        existing = [int(n) for n in os.listdir(self.paths.epochs) if n.isdigit()]
        epoch = max([int(prev.get("epoch", 0))] + existing) + 1
        while True:
            try:
                os.mkdir(os.path.join(self.paths.epochs, str(epoch)))
                return epoch
            except FileExistsError:
                epoch += 1

    def _fence_older_generations(self) -> None:
        """Wait until every live executor of an older generation has acknowledged this one or left."""
        deadline = time.monotonic() + self.settings.timeout
        waiting: List[str] = []
        while True:
            self._scan(force=True)
            waiting = [
                m.describe()
                for m in self._members.values()
                if m.epoch < self.epoch and m.state not in ("exited", "waiting") and m.name not in self._gone
            ]
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if waiting:
            logger.warning("queue backend: executors {} did not acknowledge generation {}; declared lost", waiting, self.epoch)
            for m in list(self._members.values()):
                if m.epoch < self.epoch and m.state not in ("exited", "waiting"):
                    self._lose(m, "did not acknowledge the new scheduler")

    # -- heartbeat ---------------------------------------------------------------------------------
    def _beat_once(self, n: int) -> None:
        try:
            atomic_write_bytes(self.paths.scheduler, f"{self.epoch} {n} {os.getpid()}".encode())
        except OSError as e:  # the job folder may be gone at the very end
            logger.debug("queue backend: could not write the scheduler heartbeat: {}", e)

    def _beat_loop(self) -> None:
        n = 0
        while not self._stop.wait(self.settings.heartbeat):
            n += 1
            self._beat_once(n)

    # -- the executors -------------------------------------------------------------------------------
    def _scan(self, force: bool = False) -> None:
        """Look at the executors' folders: who joined, who is alive, who is lost."""
        now = time.monotonic()
        if not force and now - self._last_scan < SCAN_INTERVAL:
            return
        self._last_scan = now
        try:
            names = os.listdir(self.paths.executors)
        except FileNotFoundError:
            names = []
        for name in names:
            if name in self._members or name in self._gone:
                continue
            info = read_json(self.paths.member(name, "info"))
            if info is None:
                continue  # still registering
            if os.path.exists(self.paths.member(name, "lost")):
                self._gone.add(name)
                continue
            # a heartbeat last written long ago (an executor of an earlier run that died) counts as
            # that old at once, less two heartbeats: a live executor on a host whose clock is off
            # gets that long to show its heartbeat moving
            try:
                age = time.time() - os.stat(self.paths.member(name, "heartbeat")).st_mtime
            except OSError:
                age = 0.0
            grace = self.settings.timeout - 2 * self.settings.heartbeat
            self._members[name] = _Member(name, info, changed=now - max(0.0, min(age, grace)))
        for m in list(self._members.values()):
            # a joined executor's heartbeat is read twice per heartbeat; one that is joining, at
            # every scan (the job may be waiting for it)
            joined = m.epoch == self.epoch and m.state == "running"
            if force or not joined or now - m.read >= self.settings.heartbeat / 2:
                m.read = now
                hb = read_json(self.paths.member(m.name, "heartbeat")) or {}
                counter = hb.get("n")
                if counter != m.counter:
                    m.counter, m.changed = counter, now
                m.epoch = int(hb.get("epoch", -1))
                m.state = str(hb.get("state", ""))
                m.refresh = int(hb.get("refresh", 0))
                m.started = frozenset(hb.get("started") or ())
            if m.state == "exited":
                self._leave(m, "exited")
            elif now - m.changed > self.settings.timeout:
                self._lose(m, f"sent no heartbeat for {now - m.changed:.1f}s")
            elif self._same_host(m) and now - m.checked > 0.2:
                m.checked = now
                if not process_alive(int(m.info.get("pid", -1)), m.info.get("create_time"), m.info.get("start_id")):
                    self._lose(m, "died")

    def _same_host(self, m: _Member) -> bool:
        return m.info.get("host") == self._host["host"] and m.info.get("pidns") == self._host["pidns"]

    def _joined(self) -> List[_Member]:
        return [m for m in self._members.values() if m.epoch == self.epoch and m.state == "running"]

    def _leave(self, m: _Member, why: str) -> None:
        self._members.pop(m.name, None)
        self._gone.add(m.name)
        self._collect_done()  # what it finished is an outcome, not a loss: read that first
        lost = self._claimed_by(m)
        if lost or m.epoch == self.epoch:
            logger.info("queue backend: executor {} {}", m.describe(), why)
        for item in lost:
            self._report_lost(item, m, why)

    def _lose(self, m: _Member, why: str) -> None:
        """Declare ``m`` lost: it must stop (a marker says so), its attempts go to others."""
        try:
            atomic_write_bytes(self.paths.member(m.name, "lost"), why.encode())
        except OSError:
            pass
        logger.warning("queue backend: executor {} {}: declared lost", m.describe(), why)
        self._leave(m, why)
        if m.info.get("epoch_bound") == self.epoch and self._relaunches < self.num_executors and not self._closed:
            self._relaunches += 1
            self._launch(1)

    def _claimed_by(self, m: _Member) -> List[str]:
        try:
            return [n for n in os.listdir(self.paths.member(m.name, "claimed")) if n in self._outstanding]
        except FileNotFoundError:
            return []

    def _report_lost(self, item: str, m: _Member, why: str) -> None:
        key, attempt = self._forget(item)
        self._lost.append(
            Completion(
                key,
                attempt,
                False,
                None,
                WorkerLost(f"executor {m.name} on {m.info.get('host')} {why} while running {key} attempt {attempt}"),
                worker=m.name,
            )
        )

    def _forget(self, item: str) -> Tuple[str, int]:
        key, attempt = self._outstanding.pop(item)
        self._names.pop((key, attempt), None)
        self._queued.discard(item)
        return key, attempt

    def _check_launched(self) -> None:
        """Fail the job if no executor can come: all it launched exited and nobody else joined."""
        if self._joined() or self._members:
            return
        now = time.monotonic()
        if self._launched and all(self.platform.poll_job(i) is not None for i in self._launched):
            codes = [self.platform.poll_job(i) for i in self._launched]
            raise RuntimeError(
                f"queue backend: every executor the '{self.platform.name}' platform started has exited "
                f"(exit codes {codes}) and no other executor is connected; see {os.path.join(self.rt.log_root, 'executors.out')}"
            )
        if now - self._last_warning > NO_EXECUTOR_WARNING:
            self._last_warning = now
            logger.warning(
                "queue backend: no executor connected for {:.0f}s; start one with: {}",
                now - self._started_at,
                " ".join(self.executor_command()),
            )

    # -- the Executor contract -----------------------------------------------------------------------
    @property
    def capacity(self) -> Capacity:
        self._scan()
        joined = self._joined()
        return Capacity(sum(m.workers for m in joined), sum(m.cpus for m in joined), sum(m.memory for m in joined))

    def attempt_limits(self) -> Tuple[int, int]:
        """The largest joined executor's CPUs and memory; before any joined, this machine's (an
        executor given more than it has runs the attempt when it is otherwise idle)."""
        joined = self._joined()
        if not joined:
            return self.rt.usable_cpu_count, self.rt.usable_memory_size
        return max(m.cpus for m in joined), max(m.memory for m in joined)

    def free_slots(self) -> int:
        return max(0, self.capacity.num_workers - (len(self._outstanding) - len(self._queued)))

    def queue_slots(self) -> int:
        """While attempts are short, one more per worker may wait in ``todo/``: an executor then
        starts its next attempt the moment one ends, not a scheduler round trip later."""
        recent = self._recent
        if len(recent) < 4 or sum(recent) / len(recent) >= QUEUE_BEHIND_SECONDS:
            return 0
        return max(0, self.capacity.num_workers - len(self._queued))

    def submit(self, task: Task, inputs: list, attempt: int, *, memory: int, queue: bool = False) -> None:
        """Write the attempt into ``todo/`` (and its node into ``nodes/`` the first time)."""
        if not self._started:
            self.start()
        node_key, body = self._encoder.encode(task, inputs, attempt, memory)
        ref = f"{self.epoch}.{node_key}"
        secret = self.rt.secret
        if node_key not in self._nodes_written:
            atomic_write_bytes(self.paths.node(ref), signed_bytes(self._encoder.blobs[node_key], secret))
            self._nodes_written.add(node_key)
        self._seq += 1
        # (the CPUs the scheduler reserved: elastic threads too, or an executor would run another
        # task beside this one's DuckDB threads)
        item = str(ItemName(self.epoch, self._seq, max(1, int(task.threads or task.cpu_limit)), task.key, attempt))
        header = {"key": task.key, "attempt": attempt, "node": ref, "memory": int(memory)}
        atomic_write_bytes(os.path.join(self.paths.todo, item), encode_item(header, body, secret))
        self._outstanding[item] = (task.key, attempt)
        self._names[(task.key, attempt)] = item
        if queue:
            self._queued.add(item)

    def poll(self, timeout: float) -> List[Completion]:
        deadline = time.monotonic() + timeout
        pause = POLL_MIN
        while True:
            self._scan()
            self._collect_done()
            out, self._ready, self._lost = self._ready + self._lost, [], []
            if out:
                return out
            if not self._joined():
                self._check_launched()
            now = time.monotonic()
            if now >= deadline:
                return out
            time.sleep(min(pause, deadline - now))
            pause = min(POLL_MAX, pause * 2)

    def started(self) -> List[Tuple[str, int]]:
        """The queued items an executor's heartbeat lists as running (seen up to a heartbeat late):
        from then on they take a worker, and the scheduler counts their CPUs and memory."""
        if not self._queued:
            return []
        running = frozenset().union(*(m.started for m in self._members.values()))
        out = []
        for item in self._queued & running:
            self._queued.discard(item)
            out.append(self._outstanding[item])
        return out

    def _collect_done(self) -> None:
        """Read the outcomes executors wrote into ``done/`` (kept for :meth:`poll`)."""
        try:
            names = os.listdir(self.paths.done)
        except FileNotFoundError:
            return
        secret = self.rt.secret
        for name in names:
            if name.startswith("."):
                continue  # an executor's write in progress
            path = os.path.join(self.paths.done, name)
            if name in self._outstanding:
                try:
                    with open(path, "rb") as f:
                        c = pickle.loads(verified_payload(f.read(), secret, path))
                except Exception as e:  # unreadable or forged: the attempt's outcome is unknown
                    key, attempt = self._outstanding[name]
                    c = Completion(
                        key, attempt, False, None, WorkerLost(f"the outcome of {key} attempt {attempt} is unreadable: {e}")
                    )
                self._forget(name)
                if c.ok:
                    self._recent.append(c.elapsed)
                self._ready.append(c)
            remove_path(path)  # done, or a cancelled / older attempt's: nobody's outcome

    def cancel(self, key: str, attempt: Optional[int] = None) -> None:
        """Take the attempt back from ``todo/``, or tell the executor that claimed it to kill it."""
        items = [n for (k, a), n in list(self._names.items()) if k == key and (attempt is None or a == attempt)]
        for item in items:
            self._forget(item)
            try:
                os.unlink(os.path.join(self.paths.todo, item))
                continue  # nobody had it yet
            except FileNotFoundError:
                pass
            try:
                atomic_write_bytes(os.path.join(self.paths.cancel, item), b"")
            except OSError as e:
                logger.warning("queue backend: could not cancel {}: {}", item, e)

    def forget_nodes(self, nodes) -> None:
        self._encoder.forget(nodes)

    def attempt_places(self) -> Dict[Tuple[str, int], Tuple[bool, str]]:
        """An item still in ``todo/`` waits for an executor; a claimed one runs if its executor's
        latest heartbeat lists it as started, else it waits behind another attempt there."""
        out: Dict[Tuple[str, int], Tuple[bool, str]] = {}
        try:
            todo = set(os.listdir(self.paths.todo))
        except OSError:
            todo = set()
        for item in todo & self._outstanding.keys():
            out[self._outstanding[item]] = (False, "in queue/todo, not taken by an executor yet")
        for m in list(self._members.values()):
            try:
                claimed = [n for n in os.listdir(self.paths.member(m.name, "claimed")) if n in self._outstanding]
            except OSError:
                continue
            started = set((read_json(self.paths.member(m.name, "heartbeat")) or {}).get("started", ())) if claimed else set()
            for item in claimed:
                ran = item in started
                out[self._outstanding[item]] = (
                    ran,
                    f"executor {m.describe()}" + ("" if ran else ", queued behind another attempt"),
                )
        return out

    def attempt_stacks(self, attempts) -> Dict[Tuple[str, int], str]:
        """Each running attempt's stack: the executors are asked through ``queue/epoch`` (a request
        number) and answer in their ``stacks`` files, each from its own workers (executors on
        other hosts too). Those that do not answer within :data:`STACKS_WAIT` seconds are left out,
        but one that has said it is answering (its workers are slow to, on a loaded machine) is
        waited for as long as they are."""
        from smallpond.execution import stacks

        if not self._started or self._closed or not attempts:
            return {}
        wanted = set(attempts)
        self._stacks += 1
        self._write_epoch()
        out: Dict[Tuple[str, int], str] = {}

        def answered(name: str) -> Optional[bool]:
            answer = read_json(self.paths.member(name, "stacks"))
            if not answer or answer.get("n") != self._stacks:
                return False
            if "stacks" not in answer:
                return None  # answering: its workers were asked
            for item, text in (answer.get("stacks") or {}).items():
                key, _, attempt = str(item).rpartition("\t")
                if attempt.isdigit() and (key, int(attempt)) in wanted and isinstance(text, str):
                    out[(key, int(attempt))] = text
            return True

        stacks.await_answers(
            {m.name for m in self._joined()}, answered, STACKS_WAIT, patience=STACKS_WAIT + self.settings.stacks_patience
        )
        return out

    def record_outcome(self, outcome: str) -> None:
        """Written into the stop marker: an executor started by hand after a successful run exits
        at once, after any other it waits for the rerun."""
        self._outcome = outcome

    def shutdown(self) -> None:
        """Tell this generation's executors the job ended; wait for the launched ones to exit."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if self.epoch > 0:  # else it never took a generation of the job (another scheduler runs it)
            try:
                stop = {"epoch": self.epoch}
                if self._outcome is not None:
                    stop["outcome"] = self._outcome
                write_json(self.paths.stop, stop)
            except OSError:
                pass
        deadline = time.monotonic() + max(10.0, 2 * self.settings.heartbeat)
        for job in self._launched:
            left = deadline - time.monotonic()
            if self.platform.wait_job(job, max(0.0, left)) is None:
                logger.warning("queue backend: executors of launch {} did not exit; killing them", job)
                self.platform.stop_job(job)
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)

    def describe(self) -> str:
        c = self.capacity
        return (
            f"queue ({self.platform.name}, generation {self.epoch}): {len(self._joined())} executor(s) joined so far, "
            f"{c.num_workers} worker(s), {c.num_cpus} CPU(s), {c.memory // (1 << 20)} MiB; "
            f"{self.num_executors} launched"
        )


def end_earlier_queue_runs(rt: RuntimeContext) -> None:
    """Before a run of the job on a backend other than the queue: stop the executors of its earlier
    queue-backend runs (see :meth:`QueueExecutor.end_earlier_runs`); nothing to do for a job
    that never ran on the queue backend."""
    if read_json(QueuePaths(rt.layout).epoch) is None:
        return
    QueueExecutor(rt, platform="manual").end_earlier_runs()
