"""The embedded backend: a pool of worker processes on this machine.

Workers are long-lived interpreters that import DuckDB and Arrow once, so a task starts in
microseconds; when a job ends, those that hold nothing of the user's are kept idle for the
process's next job (:mod:`~smallpond.execution.executors.local_spares`). Each worker runs one
attempt at a time; a worker that dies (killed, segfault, ``os._exit``) is noticed when its end of
the socket closes, its attempt is reported as :class:`~smallpond.errors.WorkerLost`, and a fresh
worker takes its place.

Short tasks are pipelined: a worker running a task of a node whose tasks have taken less than
``QUEUE_BEHIND_SECONDS`` may be sent more (``submit(..., queue=True)``), up to ``QUEUE_DEPTH``
attempts in all, which it starts the moment the one before ends instead of waiting for the
scheduler's next round trip. The queued tasks are the worker's own: if the worker dies or is
cancelled, the tasks queued behind its current one are sent to its replacement, unchanged.

A queued task must not wait behind one that turned out long (a skewed partition, a slow file)
while another worker sits idle: when :meth:`LocalExecutor.poll` finds a worker idle (the
scheduler had nothing for it) and another holding queued attempts, it takes those back and gives
them to the idle one (work stealing). The worker that held them decides: its control socket's
thread answers with the attempts it has not started and will never start
(:class:`~smallpond.execution.worker.Claims`); only those move, once the answer is in. Until then
they stay where they were, for :meth:`~LocalExecutor.attempt_places` and :meth:`~LocalExecutor.cancel`.

Cancelling a queued attempt asks for it the same way instead of killing its worker, which would
take the attempt running there with it: one the worker gives up is dropped; one it had started by
then (the one before it ended meanwhile) runs, and only then is the worker killed. A queued
attempt starts when it becomes the first one its worker holds (the one before it ended, or it
moved to a worker of its own): :meth:`LocalExecutor.started` tells the scheduler, which counts
its CPUs and memory from then on.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Deque, Dict, List, NamedTuple, Optional, Set, Tuple

import cloudpickle

from smallpond.common import logger
from smallpond.errors import TaskError, WorkerLost
from smallpond.execution.executors import local_spares
from smallpond.execution.executors.base import (
    Capacity,
    Completion,
    Executor,
    encode_attempt,
    pickle_node_for_workers,
    template_of,
    with_template,
)
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import Task
from smallpond.execution.worker import local_worker_name, worker_hash_seed
from smallpond.import_path import worker_import_path
from smallpond.processes import wait_exit


class _Entry(NamedTuple):
    """An attempt sent to a worker: ``seq`` numbers it among the attempts that worker was sent."""

    key: str
    attempt: int
    node_key: object
    body: bytes  # the pickled attempt
    user_python: bool  # whether it may run user Python
    seq: int = 0
    queued: bool = False  # sent with ``queue=True`` and not reported started yet (LocalExecutor.started)


class _Worker:
    """A worker: a fresh interpreter running ``python -m smallpond.execution.worker``, or a fork of
    this process when it holds nothing a fresh one would not (:mod:`~smallpond.execution.worker_fork`).

    A fresh interpreter (not ``multiprocessing``) so the user's script is never re-imported in
    the worker: scripts without an ``if __name__ == "__main__"`` guard work. A fork starts the
    same loop without Python's start-up and smallpond's imports (~75 ms of CPU before the first
    task). The parent and the worker talk over a socket pair; the worker's death closes its end,
    which wakes the parent.
    """

    def __init__(
        self, index: int, rt_path: str, hash_seed: str, not_forked: Optional[str], env: Optional[dict] = None, warm: bool = True
    ) -> None:
        """``not_forked``: why a fresh interpreter (None: fork); ``env``: its environment (:func:`fresh_env`);
        ``warm``: a fork opens DuckDB while it waits for its first attempt."""
        from smallpond.execution.worker_fork import fork_worker

        parent_sock, child_sock = socket.socketpair()
        parent_ctl, child_ctl = socket.socketpair()  # take-backs (see the module docstring)
        self.index = index
        #: why this worker is a fresh interpreter (None: it was forked)
        self.not_forked = not_forked
        #: it was sent an attempt that may run the user's Python (it is not kept for another job)
        self.user_code = False
        #: how a fresh interpreter was started (:func:`.local_spares.spawn_key`; None: a fork)
        self.key: Optional[tuple] = None
        self.jobs_joined = 0  # jobs it was kept for after its first (:mod:`.local_spares`)
        #: a fork has this process's salt of ``str`` hashes, drawn at its start unless
        #: PYTHONHASHSEED said otherwise: not the job's (:func:`worker_hash_seed`), so set orders
        #: in user Python would differ from a fresh worker's; it runs only tasks without user code
        self.foreign_salt = self.not_forked is None and os.environ.get("PYTHONHASHSEED") != hash_seed
        if self.not_forked is None:
            self.proc = fork_worker(child_sock.fileno(), rt_path, index, child_ctl.fileno(), warm=warm)
        else:
            env = fresh_env(hash_seed) if env is None else env
            fds = (child_sock.fileno(), child_ctl.fileno())
            argv = [sys.executable, "-m", "smallpond.execution.worker", str(fds[0]), rt_path, str(index), str(fds[1])]
            self.proc = subprocess.Popen(
                argv,
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        child_sock.close()
        child_ctl.close()
        self.sock = parent_sock
        self.conn = Connection(parent_sock.detach())
        self.ctl = Connection(parent_ctl.detach())
        #: attempts sent and not answered, in the order the worker runs them; the first one runs
        self.inflight: Deque[_Entry] = deque()
        self.head_since = 0.0  # when the first in-flight attempt started (about)
        self.nodes_sent: Set[object] = set()  # node keys this worker has received
        self.sent = 0  # the ``seq`` of the last attempt sent
        #: the asks for queued attempts not answered yet, oldest first (the worker answers in
        #: order): why (``"steal"``, ``"give_back"``, ``"cancel"``) and the ``seq`` asked for
        self.asks: Deque[Tuple[str, List[int]]] = deque()
        #: the ``seq`` of cancelled attempts still in ``inflight``: asked back, not answered yet
        self.doomed: Set[int] = set()

    @property
    def asked(self) -> Set[int]:
        """The ``seq`` of the attempts asked back and not answered yet (nothing is sent meanwhile)."""
        return {seq for _, seqs in self.asks for seq in seqs}

    @property
    def running(self) -> Optional[Tuple[str, int]]:
        return self.inflight[0][:2] if self.inflight else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()

    def wait(self, timeout: float) -> int:
        """Reap the process once it has exited (``subprocess.TimeoutExpired`` after ``timeout``
        seconds), told the moment it exits where the kernel can (:func:`~smallpond.processes.wait_exit`)."""
        deadline = time.monotonic() + timeout
        wait_exit(self.proc.pid, timeout)
        return self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        for conn in (self.conn, self.ctl):
            try:
                conn.close()
            except OSError:
                pass


#: a task may be queued behind a running one whose node's tasks take less than this (seconds)
QUEUE_BEHIND_SECONDS = 0.05
#: attempts a worker may hold at once: the one it runs and those queued behind it (at most
#: ``QUEUE_DEPTH - 1`` short tasks wait behind a short one). On 2,000 no-op tasks 4 measured 1-10%
#: faster than 2, in two sets of 5 runs; 6 and 8 were within the noise of 4.
QUEUE_DEPTH = 4


class TaskEncoder:
    """Pickles attempts for worker processes: each node once, each task without its node.

    A node (with the user's functions, SQL, datasets) is pickled the first time it is seen and
    kept by key; an attempt travels as ``(task without its node, inputs, attempt, memory)``.
    Keys are held with a reference to the node, so an ``id()`` is never reused while cached.
    Shared by the backends that ship tasks to processes (local workers, the file queue).

    The task fields all tasks of a node share (its label, call site, output name, limits) travel
    once too, in the node's blob (:func:`~smallpond.execution.executors.base.template_of`): an
    attempt then carries only the task's own fields (:func:`~.base.encode_attempt`).
    """

    def __init__(self) -> None:
        self._node_keys: Dict[int, Tuple[int, object]] = {}
        #: node key -> the pickled node (with its tasks' shared fields, see ``with_template``)
        self.blobs: Dict[object, bytes] = {}
        #: node key -> the shared fields of its tasks (``template_of``), if they have some
        self.templates: Dict[object, tuple] = {}
        self._next_key = 0  # keys are never reused: a worker keeps every node it was sent

    def node_key(self, node, task: Optional[Task] = None) -> Tuple[int, bool]:
        """(the node's key, whether it was pickled just now); ``task``: one of its tasks, whose
        shared fields go with the node."""
        entry = self._node_keys.get(id(node))
        if entry is not None:
            return entry[0], False
        key = self._next_key
        template = template_of(task) if task is not None else None
        self.blobs[key] = with_template(pickle_node_for_workers(node), template)
        if template is not None:
            self.templates[key] = template
        self._next_key += 1
        self._node_keys[id(node)] = (key, node)
        return key, True

    def forget(self, nodes) -> None:
        """Pickle ``nodes`` again when next seen, under new keys (see :meth:`Executor.forget_nodes`).
        The old pickles stay: an attempt already queued with one still needs it."""
        for node in nodes:
            self._node_keys.pop(id(node), None)

    def encode(self, task: Task, inputs: list, attempt: int, memory: int) -> Tuple[int, bytes]:
        """(node key, :func:`encode_attempt`'s pickle of the attempt).

        Raises :class:`~smallpond.errors.TaskError` (not retryable) if it cannot be pickled.
        """
        try:
            key, _ = self.node_key(task.node, task)
            return key, encode_attempt(task, inputs, attempt, memory, self.templates.get(key))
        except Exception as e:
            raise _pickle_error(task, attempt, e) from e


class LocalExecutor(Executor):
    """Worker processes on this machine: ``num_workers`` of them (default: usable CPUs), the
    first started by :meth:`start`, each other one when a task first finds every started worker
    busy.

    Args:
        runtime_ctx: the job's runtime context.
        num_workers: worker processes (default: usable CPUs).
        cpus, memory: what the pool offers (default: the machine's usable CPUs, at least one per
            worker, and its usable memory).
        rt_path: a signed runtime-context file (beside the job secret) the workers load; default:
            this context, written to ``config/runtime_ctx.pickle`` by :meth:`start`.
        keep_workers: keep idle workers for the next job of this process when this one shuts
            down, and start with those an earlier one kept (:mod:`.local_spares`).
    """

    name = "local"
    starts_quietly = True

    def __init__(
        self,
        runtime_ctx: RuntimeContext,
        num_workers: Optional[int] = None,
        *,
        cpus: Optional[int] = None,
        memory: Optional[int] = None,
        rt_path: Optional[str] = None,
        keep_workers: bool = True,
    ) -> None:
        self.rt = runtime_ctx
        self.num_workers = max(1, num_workers or runtime_ctx.usable_cpu_count)
        self._capacity = Capacity(
            self.num_workers,
            max(self.num_workers, cpus or runtime_ctx.usable_cpu_count),
            memory or runtime_ctx.usable_memory_size,
        )
        self._limits = (cpus or runtime_ctx.usable_cpu_count, memory or runtime_ctx.usable_memory_size)
        self._at_once: Optional[int] = None  # see expect_tasks_at_once
        self._write_rt = rt_path is None
        self._rt_path = rt_path or os.path.join(runtime_ctx.config_root, "runtime_ctx.pickle")
        self.workers: List[_Worker] = []
        self._next_index = 0
        self._lost: List[Completion] = []
        # a node is pickled once and sent once per worker; tasks travel without it
        self._encoder = TaskEncoder()
        self._node_blobs = self._encoder.blobs
        self._node_times: Dict[object, List[float]] = {}  # node key -> [attempts, total seconds]
        self._given_back: List[Tuple[str, int]] = []  # see give_back
        #: idle workers are kept for the process's next job at shutdown, and taken from its last
        self.keep_workers = keep_workers
        #: the run's outcome told by the job that ends (see :meth:`record_outcome`): workers are
        #: kept only after a run that succeeded, never after a failed start or a failed run
        self._outcome: Optional[str] = None

    @property
    def capacity(self) -> Capacity:
        return self._capacity

    def attempt_limits(self) -> Tuple[int, int]:
        return self._limits

    def expect_tasks_at_once(self, tasks: int) -> None:
        self._at_once = tasks

    def start(self) -> None:
        from smallpond.io.filesystem import dump

        # always this run's context: a resumed job may run with other settings (environment,
        # fault injection, log levels) than the run that first created the job root
        if self._write_rt:
            os.makedirs(os.path.dirname(self._rt_path), exist_ok=True)
            dump(self.rt, self._rt_path, secret=self.rt.secret)
        # one worker now, the others when the scheduler first has work for them: a job that
        # never runs two tasks at once (a small query, a one-partition plan) boots one
        # interpreter instead of ``num_workers`` on a machine whose cores it shares with this
        # process (~30 ms of a one-task job's 0.3 s on 2 cores). Unless the first is a fork:
        # then the others are forked now too (~2 ms each), and wait without opening DuckDB.
        # Later this process has DuckDB, Arrow or threads of its own (the plan check, the
        # result imports) and they would be fresh interpreters, each spending ~0.1 s of CPU
        # on Python's start and smallpond's imports when the first stage of two tasks is due
        if not self.workers:
            from smallpond.execution.worker_fork import fork_refusal

            # (no more than the cores, nor than the tasks the job's plan can run at once when it
            # is known: each fork costs this process ~4 ms of CPU in series and ~18 ms in all
            # (63 forks 1.1 s of a one-task job with num_executors=64 on 2 cores; the one fork
            # too many of a one-task job on 2 cores ~20 ms of its ~0.35 s)
            eager = min(self.num_workers, self._limits[0])
            if self._at_once is not None:
                eager = min(eager, max(1, self._at_once))
            if self._spawn().not_forked is None:
                while len(self.workers) < eager and fork_refusal() is None:
                    self._spawn(warm=False)

    def _spawn(self, may_fork: bool = True, warm: bool = True) -> _Worker:
        from smallpond.execution.worker_fork import fork_refusal

        seed = worker_hash_seed(self.rt, os.environ)
        keep = self.keep_workers and local_spares.enabled()  # (a bad SP_KEEP_WORKERS fails here, not at the end)
        not_forked = fork_refusal() if may_fork else "a fresh interpreter was asked for"
        w = key = env = None
        if not_forked is not None:  # a worker an earlier job of this process kept, else a new one
            env = fresh_env(seed)
            key = self._spare_key(env)
            w = local_spares.take(key, self._rt_path, self._next_index) if keep else None
        if w is None:
            w = _Worker(self._next_index, self._rt_path, seed, not_forked, env, warm)
            w.key = key
        self._next_index += 1
        self.workers.append(w)
        return w

    def free_slots(self) -> int:
        """Idle workers, counting those not started yet (:meth:`submit` starts them)."""
        return sum(1 for w in self.workers if not w.inflight) + self.num_workers - len(self.workers)

    def _short(self, w: _Worker, now: float) -> bool:
        """True if ``w`` runs a task and has room in its queue, every task it holds is of a node
        known to be quick, and the one running has not run for long."""
        if not 1 <= len(w.inflight) < QUEUE_DEPTH or now - w.head_since > QUEUE_BEHIND_SECONDS or w.asks:
            return False
        for entry in w.inflight:
            stats = self._node_times.get(entry.node_key)
            if stats is None or stats[0] < 2 or stats[1] / stats[0] >= QUEUE_BEHIND_SECONDS:
                return False
        return True

    def queue_slots(self) -> int:
        """Attempts the workers could take queued behind their current (short) ones; none while a
        worker is idle (it would take one back at once, onto CPUs another attempt holds: elastic threads)."""
        if self.free_slots() > 0:
            return 0
        now = time.monotonic()
        return sum(QUEUE_DEPTH - len(w.inflight) for w in self.workers if self._short(w, now))

    def submit(self, task: Task, inputs: list, attempt: int, *, memory: int, queue: bool = False) -> None:
        """Send an attempt to an idle worker, or with ``queue`` behind a short running task."""
        node_key, body = self._encoder.encode(task, inputs, attempt, memory)
        self._submit_entry(_Entry(task.key, attempt, node_key, body, task.runs_user_python, queued=queue), queue)

    def submit_encoded(
        self, key: str, attempt: int, node_key, node_blob: bytes, body: bytes, *, queue: bool = False, user_python: bool = True
    ) -> None:
        """Like :meth:`submit`, for an attempt pickled elsewhere (by a :class:`TaskEncoder`).

        ``node_key`` names ``node_blob`` (the pickled node) among this pool's nodes; use keys that
        are not ints, which :meth:`submit` uses for its own. ``user_python``: the attempt may run
        the user's Python (:attr:`Task.runs_user_python`; when not known, True).
        """
        self._node_blobs.setdefault(node_key, node_blob)
        self._submit_entry(_Entry(key, attempt, node_key, body, user_python, queued=queue), queue)

    def _submit_entry(self, entry: _Entry, queue: bool, avoid: Optional[_Worker] = None) -> None:
        """Send ``entry`` to an idle worker, or with ``queue`` behind a short one (not ``avoid``)."""
        if not self.workers:
            self.start()
        if queue:
            now = time.monotonic()
            # a forked worker last: it would have to be replaced for an attempt of user Python
            w = min(
                (w for w in self.workers if w is not avoid and self._short(w, now)),
                key=lambda x: (entry.user_python and x.foreign_salt, len(x.inflight)),
                default=None,
            )
            if w is None:
                # the worker that was short when the scheduler asked has passed the mark since
                # (a loaded machine): queue behind the least busy one rather than fail the job
                # (one asked for its queued attempts last: nothing is sent to it until it answers)
                w = min(self.workers, key=lambda x: (x is avoid, bool(x.asks), len(x.inflight)))
        else:
            w = next((w for w in self.workers if not w.inflight), None)
            if w is None and len(self.workers) < self.num_workers:
                w = self._spawn()
        if w is None:
            raise RuntimeError("no worker can take the task")  # the scheduler checks first
        if w.foreign_salt and entry.user_python:
            # user Python runs in a worker with the job's hash salt only (set orders repeat):
            # a fresh interpreter replaces the forked one (idle, unless no other worker could
            # queue the attempt: then it takes over the one running there too, from the start)
            w = self._replace(w, may_fork=False)
        for _ in range(2):
            if self._send(w, entry):
                return
            # the worker died: nobody would ever answer for this attempt, so send it to a fresh
            # worker instead; the attempt the dead worker was running (if any) is lost
            logger.warning("worker {} (pid {}) died; replacing it", w.index, w.pid)
            w = self._replace(w, lose_head=True)
        self._lost.append(
            Completion(entry.key, entry.attempt, False, None, WorkerLost(f"could not send {entry.key} to a worker"))
        )

    def _send(self, w: _Worker, entry: _Entry) -> bool:
        node_key, seq = entry.node_key, w.sent + 1
        try:
            blob = None if node_key in w.nodes_sent else self._node_blobs[node_key]
            w.conn.send_bytes(pickle.dumps((seq, node_key, blob, entry.body), protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            return False
        w.sent = seq
        w.user_code = w.user_code or entry.user_python
        w.nodes_sent.add(node_key)
        if not w.inflight:
            w.head_since = time.monotonic()
        w.inflight.append(entry._replace(seq=seq))
        return True

    def _ask_back(self) -> None:
        """While a worker is idle (or not started yet) at the start of a poll, the scheduler had
        nothing for it: ask the workers holding queued attempts for them (those most loaded
        first, as many as the idle ones can hold). The answers come on their control sockets
        (:meth:`_took_back`)."""
        idle = sum(1 for w in self.workers if not w.inflight) + self.num_workers - len(self.workers)
        room = idle * QUEUE_DEPTH
        if room == 0:
            return
        for w in sorted(self.workers, key=lambda x: len(x.inflight), reverse=True):
            if room <= 0 or len(w.inflight) < 2:
                break
            if not w.asks:
                room -= self._ask(w, _queued_seqs(w)[-room:])  # the last wait longest

    def give_back(self, after: float) -> None:
        """Ask each worker whose running attempt has run for more than ``after`` seconds for the
        attempts queued behind it. Those it gives up go to an idle worker of this pool if there
        is one; the others are handed back by :meth:`given_back` (the queue backend's executor
        puts them back in the job's queue, for any executor)."""
        now = time.monotonic()
        for w in self.workers:
            if len(w.inflight) > 1 and not w.asks and now - w.head_since > after:
                self._ask(w, _queued_seqs(w), "give_back")

    def given_back(self) -> List[Tuple[str, int]]:
        """The attempts ``(key, attempt)`` taken back by :meth:`give_back` since the last call: no
        worker of this pool has them, none will run them."""
        out, self._given_back = self._given_back, []
        return out

    def _ask(self, w: _Worker, seqs: List[int], why: str = "steal") -> int:
        """Ask ``w`` for the attempts ``seqs`` queued on it (``why``: see ``_Worker.asks``);
        returns how many were asked for."""
        if not seqs:
            return 0
        try:
            w.ctl.send_bytes(pickle.dumps(seqs))
        except OSError:
            return 0  # it is dying: its socket tells poll
        w.asks.append((why, list(seqs)))
        return len(seqs)

    def _took_back(self, w: _Worker, out: List[Completion]) -> None:
        """``w`` answered its oldest ask: the cancelled attempts it gave up are dropped; the others
        go to idle workers, else queue behind short ones (or, asked by :meth:`give_back`, to
        :meth:`given_back`). A cancelled attempt it did not give up had started: once the
        outcomes it sent before are read (into ``out``), if it still runs, the worker is killed."""
        why, seqs = w.asks.popleft()
        try:
            given = set(pickle.loads(w.ctl.recv_bytes()))
        except (EOFError, OSError):
            w.asks.clear()  # it died: its socket tells poll, and its replacement gets its queue
            return
        moved = [e for e in w.inflight if e.seq in given and e.seq not in w.doomed]
        w.inflight = deque(e for e in w.inflight if e.seq not in given)
        w.doomed -= given
        for entry in moved:
            idle = any(not x.inflight for x in self.workers) or len(self.workers) < self.num_workers
            if why == "give_back" and not idle:
                self._given_back.append((entry.key, entry.attempt))
                continue
            logger.debug("{} attempt {} moves from worker {} (pid {})", entry.key, entry.attempt, w.index, w.pid)
            self._submit_entry(entry, queue=not idle, avoid=w)
        if not any(s in w.doomed for s in seqs):
            return
        # a cancelled attempt had started: the outcomes of those before it were sent before the
        # answer, so they can be read now; if it has not ended with them, it runs: stop the worker
        while w.conn.poll(0) and self._receive(w, out):
            pass
        if any(e.seq in w.doomed and e.seq in seqs for e in w.inflight):
            logger.debug("worker {} (pid {}) started a cancelled attempt: stopping it", w.index, w.pid)
            self._replace(w)

    def _receive(self, w: _Worker, out: List[Completion]) -> bool:
        """Read the outcome ``w`` sent into ``out`` (not a cancelled attempt's); False if it died."""
        try:
            got = pickle.loads(w.conn.recv_bytes())
        except (EOFError, OSError):
            return False
        if type(got) is tuple:  # a worker sends an outcome as Completion.to_wire()
            got = Completion.from_wire(got)
        head = _pop_entry(w.inflight, got.key, got.attempt)
        w.head_since = time.monotonic()
        if head is not None:
            stats = self._node_times.setdefault(head.node_key, [0, 0.0])
            stats[0] += 1
            stats[1] += got.elapsed
            if head.seq in w.doomed:
                w.doomed.discard(head.seq)
                return True  # cancelled: not reported
        out.append(got)
        return True

    def started(self) -> List[Tuple[str, int]]:
        """The queued attempts that are now the first their worker holds (it runs them) and were
        not reported yet."""
        out = []
        for w in self.workers:
            head = w.inflight[0] if w.inflight else None
            if head is not None and head.queued:
                w.inflight[0] = head._replace(queued=False)
                if head.seq not in w.doomed:
                    out.append((head.key, head.attempt))
        return out

    def poll(self, timeout: float) -> List[Completion]:
        out, self._lost = self._lost, []
        self._ask_back()
        busy = {w.conn: w for w in self.workers if w.running is not None}
        asked = {w.ctl: w for w in self.workers if w.asks}
        if not busy and not asked:
            return out
        answered = []
        for conn in _readable([*busy, *asked], 0 if out else timeout):
            if conn in asked:
                answered.append(asked[conn])  # after the completions: they may replace workers
                continue
            w = busy[conn]
            if w not in self.workers:
                continue  # replaced by a submit of this poll
            if self._receive(w, out):
                continue
            head = w.inflight[0]
            key, attempt = head.key, head.attempt
            w.kill()
            try:
                code = w.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            how = exit_text(code)
            logger.warning("worker {} (pid {}) {} while running {}", w.index, w.pid, how, key)
            if head.seq not in w.doomed:  # (a cancelled one is not reported)
                error = _memory_watch_note(self.rt, key, attempt) or WorkerLost(
                    f"worker process {w.pid} {how} while running {key}"
                )
                out.append(Completion(key, attempt, False, None, error, worker=local_worker_name(w.index)))
            w.inflight.popleft()
            self._replace(w)
        for w in answered:
            if w in self.workers:  # else it was replaced, its queue sent to its replacement
                self._took_back(w, out)
        return out

    def _replace(self, w: _Worker, lose_head: bool = False, may_fork: bool = True) -> _Worker:
        """Kill ``w`` and start a fresh worker, which gets the attempts still queued on ``w``.

        With ``lose_head`` the attempt ``w`` was running is reported as lost instead; without
        ``may_fork`` the new worker is a fresh interpreter."""
        if w in self.workers:
            self.workers.remove(w)
        w.close()
        w.kill()
        try:
            w.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._forget_worker(w)
        fresh = self._spawn(may_fork)
        pending, w.inflight, w.asks = list(w.inflight), deque(), deque()
        doomed, w.doomed = w.doomed, set()
        if lose_head and pending:
            head = pending.pop(0)
            if head.seq not in doomed:
                key = head.key
                lost = WorkerLost(f"worker process {w.pid} died while running {key}")
                self._lost.append(Completion(key, head.attempt, False, None, lost, worker=local_worker_name(w.index)))
        for entry in pending:
            if entry.seq in doomed:
                continue  # cancelled
            if not self._send(fresh, entry):
                self._lost.append(
                    Completion(entry.key, entry.attempt, False, None, WorkerLost(f"could not send {entry.key} to a worker"))
                )
        return fresh

    def cancel(self, key: str, attempt: Optional[int] = None) -> None:
        """Abandon the attempts of ``key``: one a worker runs ends with the worker (the rest of its
        queue moves to a fresh one); one queued behind it is asked back (see the module docstring)."""

        for w in list(self.workers):
            hits = [e.seq for e in w.inflight if e.key == key and (attempt is None or e.attempt == attempt)]
            hits = [seq for seq in hits if seq not in w.doomed]
            if not hits:
                continue
            if hits[0] != w.inflight[0].seq and self._ask(w, hits, "cancel"):
                w.doomed.update(hits)
                continue
            # it runs (or the worker is dying): a worker cannot be told to stop a task; stop it
            w.inflight = deque(e for e in w.inflight if e.seq not in hits)
            self._replace(w)

    def forget_nodes(self, nodes) -> None:
        self._encoder.forget(nodes)

    def attempt_places(self) -> Dict[Tuple[str, int], Tuple[bool, str]]:
        """A worker runs the first attempt it holds; the others wait behind it."""
        out = {}
        for w in self.workers:
            for i, (key, attempt, *_) in enumerate(w.inflight):
                if w.inflight[i].seq in w.doomed:
                    continue
                where = f"worker process {w.pid}" if i == 0 else f"queued behind {w.inflight[0][0]} on worker process {w.pid}"
                out[(key, attempt)] = (i == 0, where)
        return out

    def attempt_stacks(self, attempts, **wait: float) -> Dict[Tuple[str, int], str]:
        """Each running attempt's stack, from its worker's faulthandler (``wait``: :func:`~smallpond.execution.stacks.request`'s)."""
        from smallpond.execution import stacks

        wanted = set(attempts)
        pids = {w.running: w.pid for w in self.workers if w.running in wanted}
        dumps = stacks.request(self.rt.temp_root, pids, **wait)
        return {key: stacks.attempt_frames(text) for key, text in dumps.items()}

    def restart_workers(self, why: str) -> None:
        if not self.workers:
            return
        logger.info("restarting the workers ({}): they may hold the code as it was", why)
        self.shutdown(keep=False)
        self.start()

    def _spare_key(self, env: dict) -> tuple:
        return local_spares.spawn_key(self.rt, env)

    def record_outcome(self, outcome: str) -> None:
        self._outcome = outcome

    def shutdown(self, keep: bool = True) -> None:
        """Stop the workers; with ``keep`` (and :attr:`keep_workers`), after a run that
        succeeded (:meth:`record_outcome`), those that hold nothing of the user's are kept idle
        for this process's next job (:mod:`.local_spares`). A start that failed, or a run that
        failed or was interrupted, stops them all: a worker of a failed run may be what failed."""
        if keep and self.keep_workers and self.workers and self._outcome == "success":
            key = self._spare_key(fresh_env(worker_hash_seed(self.rt, os.environ)))
            stop = set(map(id, local_spares.park(self.workers, key)))
            for w in self.workers:
                if id(w) not in stop:
                    self._forget_worker(w)  # (its stack dumps go to its next job's temp root)
            self.workers = [w for w in self.workers if id(w) in stop]
        # workers hold no state worth a graceful exit: every result is committed on disk, and an
        # interpreter teardown (DuckDB, Arrow) costs ~0.4 s per worker
        for w in self.workers:
            w.kill()
        for w in self.workers:
            try:
                w.wait(5)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(5)
            w.close()
            self._forget_worker(w)
        self.workers = []

    def _forget_worker(self, w: _Worker) -> None:
        """What a worker that has ended leaves behind: its stack dump file."""
        from smallpond.execution import stacks

        stacks.remove(self.rt.temp_root, w.pid)


def fresh_env(hash_seed: str) -> dict:
    """The environment of a fresh worker interpreter: this process's, with its import path and
    the job's hash seed (set orders in task code the same in every worker and run)."""
    return dict(os.environ, PYTHONPATH=worker_import_path(), PYTHONHASHSEED=hash_seed)


def _memory_watch_note(rt: RuntimeContext, key: str, attempt: int):
    """The OutOfMemory of an attempt whose worker the memory watch ended (``enforce_memory_limit``:
    its code, running in C, did not stop when interrupted), or None."""
    if not rt.enforce_memory_limit:
        return None
    from smallpond.execution.memory_watch import take_note

    return take_note(rt.log_root, key, attempt)


def _queued_seqs(w: _Worker) -> List[int]:
    """The ``seq`` of the attempts queued on ``w`` behind its first one (not cancelled ones)."""
    return [e.seq for e in list(w.inflight)[1:] if e.seq not in w.doomed]


def _pop_entry(inflight: Deque[_Entry], key: str, attempt: int) -> Optional[_Entry]:
    """Remove the entry of the attempt ``(key, attempt)`` a worker answered for: its first one,
    unless the worker skipped attempts it gave back before this one (their answer may come after
    this completion)."""
    for i, e in enumerate(inflight):
        if e.key == key and e.attempt == attempt:
            del inflight[i]
            return e
    return None


def _readable(conns: List[Connection], timeout: float) -> List[Connection]:
    """The connections of ``conns`` that have something to read, or whose other end closed,
    waiting up to ``timeout`` seconds for one: ``multiprocessing.connection.wait`` with one
    ``poll`` object made per call, without the selector it builds (about a quarter of the
    instructions; the scheduler asks once per round, about once a task). A closed end is reported
    (POLLHUP or POLLERR, whatever was asked for)."""
    poller = select.poll()
    by_fd = {conn.fileno(): conn for conn in conns}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(max(0, math.ceil(timeout * 1000)))]


def exit_text(code: Optional[int]) -> str:
    """How a worker process ended, for a :class:`WorkerLost`: its exit code, or the signal that
    killed it by name (SIGKILL with a word on the OOM killer, which sends it)."""
    if code is None:
        return "died (exit code unknown)"
    if code >= 0:
        return f"died (exit code {code})"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGKILL:
        return (
            f"was killed by {name} (exit code {code}; kill -9, or the kernel's OOM killer when the machine ran out of "
            "memory: dmesg tells; then split the work into more partitions or smaller batches)"
        )
    return f"was killed by {name} (exit code {code})"


def _pickle_error(task: Task, attempt: int, e: BaseException) -> TaskError:
    """The TaskError for a task that cannot be sent to a worker: names the unpicklable function."""
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
