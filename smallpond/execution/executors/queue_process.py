"""The executor process of the queue backend: take attempts from the job's queue, run them, report.

An executor is started by a platform (``mpirun``, a subprocess) or by hand on any host that sees
the data root::

    python script.py executor --job_id JOB --data_root /shared/jobs      # or:
    python -m smallpond.execution.driver executor --job_id JOB --data_root /shared/jobs

It registers under ``queue/executors/{name}/`` (a name unique per process: host, pid and a random
suffix), then loops: claim attempts from ``todo/`` by renaming them into its ``claimed/`` folder,
run them on its own pool of worker processes (the embedded backend's
:class:`~smallpond.execution.executors.local.LocalExecutor`, whose workers run
:func:`~smallpond.execution.attempt.run_attempt`), write each outcome to ``done/``, heartbeat,
and kill the attempts the scheduler cancels (``cancel/``). Its workers die with it (Linux: every
worker of the embedded backend does), so a lost executor leaves no attempt running behind the
scheduler's back.

Attempts it claimed to run behind a short one wait there only while that one stays short: after
:data:`GIVE_BACK_AFTER` seconds its pool takes them back from the worker (which confirms it never
started them) and they go back to ``todo/``, for an idle executor. Else one executor would hoard
them while another idles, and the scheduler, which counts them as running, would send no more.

When the scheduler raises the ``refresh`` count in ``queue/epoch`` (a file of the user's code
changed between two runs of a session), it replaces its worker processes, which may hold the old
module, before it takes another attempt, and acknowledges in its heartbeat.

When the run it serves ends (``queue/stop``) it exits 0; one started by hand after the job's last
run ended exits 0 at once if that run succeeded, and else (an interrupted or failed run, before
its rerun) waits up to ``SP_QUEUE_WAIT`` seconds for the next run and serves it. A run of the
job on another backend (embedded, Ray) ends the queue's generations when it starts (its stop
marker says so, :data:`~smallpond.execution.executors.queue_protocol.OTHER_BACKEND`): an executor
started by hand, or waiting for a rerun, then exits at once, saying so, while that run goes on or
once it succeeded (the job's state, :mod:`~smallpond.execution.catalog`), and after it failed
waits for a queue-backend rerun as above. One that finds the job without a queue (a session
removes it when its run succeeded) exits at once if the job succeeded, and else waits for it. When a new scheduler takes the job (a new epoch) it kills what it runs
for the old one; an executor its platform started for the old scheduler then exits, one started
by hand rejoins. When the scheduler falls silent for the timeout, a
launched executor exits; one started by hand waits up to ``SP_QUEUE_WAIT`` seconds for a
scheduler to come back, then exits. Exit status 75 means the scheduler declared it lost.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Dict, Optional, Tuple

from smallpond.common import logger
from smallpond.errors import SmallpondError, TaskError, WorkerLost
from smallpond.execution.executors.base import Completion
from smallpond.execution.executors.local import QUEUE_BEHIND_SECONDS, LocalExecutor
from smallpond.execution.executors.queue_protocol import (
    OTHER_BACKEND,
    ItemName,
    QueuePaths,
    QueueSettings,
    decode_item,
    encode_completion,
    executor_resources,
    read_json,
    this_host,
    write_json,
)
from smallpond.execution.runtime import JobLayout, RuntimeContext, resolve_job
from smallpond.io.filesystem import atomic_write_bytes, load, remove_path, verified_payload
from smallpond.processes import process_start_id

EX_OK = 0
#: an executor that cannot serve (no --job_id, no such job, ...): the Driver's status of a failure
EX_SOFTWARE = 70
EX_LOST = 75  # EX_TEMPFAIL: the scheduler gave this executor's attempts to others

#: how often the executor reads the queue's control files and cancellations (seconds)
CONTROL_INTERVAL = 0.05
#: the shortest and longest pauses of an idle executor between looks at ``todo/`` (seconds)
IDLE_MIN, IDLE_MAX = 0.0005, 0.02
#: attempts claimed to wait behind a short one go back to ``todo/`` once it has run this long
#: (seconds): another executor may be idle, and the scheduler counts them as running
GIVE_BACK_AFTER = 2 * QUEUE_BEHIND_SECONDS


class _Exit(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


class ExecutorProcess:
    """One executor: its registration, its worker pool and its loop (see the module docstring)."""

    def __init__(self, layout: JobLayout, secret: bytes, *, exec_id: Optional[str] = None, bound_epoch: Optional[int] = None):
        import psutil

        self.layout = layout
        self.paths = QueuePaths(layout)
        self.secret = secret
        self.bound_epoch = bound_epoch
        host = this_host()
        self.name = f"{exec_id or host['host']}-{os.getpid()}-{uuid.uuid4().hex[:6]}".replace("/", "_").replace(".", "_")
        self.host = host
        self.rt: Optional[RuntimeContext] = None
        self.cpus, self.memory = 1, 0
        self.pool: Optional[LocalExecutor] = None
        self.epoch = -1
        self.refresh = 0  # the scheduler's refresh count this executor's workers were started for
        self.stacks = 0  # the scheduler's last request for the stacks of running attempts, answered
        self.settings = QueueSettings.from_env()
        self.running: Dict[str, Tuple[str, int, int]] = {}  # item -> (key, attempt, cpus)
        self.items: Dict[Tuple[str, int], str] = {}  # (key, attempt) -> item
        self.nodes: Dict[str, bytes] = {}  # node ref -> pickled node (verified)
        self.beats = 0
        self.state = "waiting"
        self._sched_beat: Optional[bytes] = None
        self._sched_seen = time.monotonic()
        self._ended_seen: Optional[float] = None  # when this executor found the job's last run ended
        self._no_epoch = 0.0  # since when queue/epoch has been missing (0: it is there)
        self._state_read = -1e9  # when the job's state was last read (a run on another backend)
        self._create_time = psutil.Process().create_time()

    # -- registration and heartbeat ----------------------------------------------------------------
    def register(self) -> None:
        try:  # not makedirs: a queue folder removed meanwhile (a session that ended) is not made again
            os.mkdir(self.paths.member(self.name), 0o700)
            os.mkdir(self.paths.member(self.name, "claimed"), 0o700)
        except FileNotFoundError:
            raise _Exit(EX_OK, "the job's queue folder is gone") from None
        self._load_runtime()
        self._write_info()
        self.beat()
        logger.info("executor {} registered: {} CPU(s), {} MiB", self.name, self.cpus, self.memory >> 20)

    def _write_info(self) -> None:
        """What the scheduler reads once about this executor: who, where, what it offers."""
        write_json(
            self.paths.member(self.name, "info"),
            {
                "name": self.name,
                "pid": os.getpid(),
                "create_time": self._create_time,
                "start_id": process_start_id(os.getpid()),
                "cpus": self.cpus,
                "workers": self.cpus,
                "memory": self.memory,
                "epoch_bound": self.bound_epoch,
                "started": time.time(),
                **self.host,
            },
        )

    def _load_runtime(self) -> None:
        self.rt = load(self.layout.runtime_ctx_path, secret=self.secret)
        self.cpus, self.memory = executor_resources(self.rt)

    def beat(self) -> None:
        self.beats += 1
        # the items a worker runs (the first it holds; the others wait behind it): the scheduler's
        # stall warning tells them from those that wait
        started = [self.items[w.running] for w in self.pool.workers if w.running in self.items] if self.pool else []
        try:
            write_json(
                self.paths.member(self.name, "heartbeat"),
                {"n": self.beats, "epoch": self.epoch, "state": self.state, "refresh": self.refresh, "started": started},
            )
        except FileNotFoundError:
            if os.path.isdir(self.paths.member(self.name)):
                raise
            # a session that ended removes its queue folder (this one's first), maybe before this
            # executor read the end marker
            raise _Exit(EX_OK, "the job's queue folder is gone") from None
        self._next_beat = time.monotonic() + self.settings.heartbeat

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        code, why = EX_OK, "the job ended"
        try:
            self.register()
            next_control = 0.0
            pause = IDLE_MIN
            while True:
                now = time.monotonic()
                if now >= next_control:
                    self._control(now)
                    self._cancels()
                    next_control = now + CONTROL_INTERVAL
                if now >= self._next_beat:
                    self.beat()
                if self.pool is None:
                    time.sleep(CONTROL_INTERVAL)
                    continue
                claimed = self._claim()
                self.pool.give_back(GIVE_BACK_AFTER)
                done = self.pool.poll(0 if claimed else pause)
                for c in done:
                    self._report(c)
                for key, attempt in self.pool.given_back():
                    self._unclaim(key, attempt)
                if claimed or done:
                    pause = IDLE_MIN
                else:
                    if not any(w.inflight for w in self.pool.workers):
                        time.sleep(pause)  # the pool's poll returns at once when nothing runs
                    pause = min(IDLE_MAX, pause * 2)
        except _Exit as e:
            code, why = e.code, e.why
        except KeyboardInterrupt:
            code, why = 130, "interrupted"
        except BaseException as e:
            code, why = 1, f"{type(e).__name__}: {e}"
            raise
        finally:
            self._stop_pool(why)
            self.state = "exited"
            try:
                self.beat()
            except (OSError, _Exit):
                pass  # the job folder is gone
        (logger.info if code == EX_OK else logger.warning)("executor {} exits ({}): {}", self.name, code, why)
        return code

    def _control(self, now: float) -> None:
        """Follow the scheduler: its generation, its heartbeat, the job's end, our own loss."""
        if os.path.exists(self.paths.member(self.name, "lost")):
            raise _Exit(EX_LOST, "the scheduler declared this executor lost (no heartbeat in time)")
        meta = read_json(self.paths.epoch)
        if meta is None:
            if not os.path.isdir(self.paths.root):
                raise _Exit(EX_OK, "the job's queue folder is gone")
            # replaced by renames, it is missing only while the folder is being removed (or the
            # filesystem failed to answer: allowed for the timeout)
            self._no_epoch = self._no_epoch or now
            if now - self._no_epoch > self.settings.timeout:
                raise _Exit(EX_OK, "the job's queue folder is gone (no queue/epoch)")
            return
        self._no_epoch = 0.0
        stop = read_json(self.paths.stop)
        if stop is not None and int(stop.get("epoch", 0)) >= max(self.epoch, int(meta["epoch"])):
            if self.epoch >= 0 or self.bound_epoch is not None:
                raise _Exit(EX_OK, "the job ended")
            if stop.get("outcome") == "success":
                raise _Exit(EX_OK, f"the job finished successfully (generation {stop['epoch']}); nothing to do")
            if stop.get("outcome") == OTHER_BACKEND:
                self._other_backend(now, stop)
            # started by hand after the job's last run ended (interrupted or failed, or a marker
            # without the outcome): its rerun is likely, a new generation this executor waits
            # for and serves
            self._await_next_run(now, int(stop.get("epoch", 0)))
            return
        epoch = int(meta["epoch"])
        if epoch != self.epoch:
            self._join(epoch, meta)
            return
        refresh = int(meta.get("refresh", 0))
        if refresh != self.refresh:
            self._refresh_pool(refresh)
        stacks = int(meta.get("stacks", 0))
        if stacks != self.stacks:
            self._answer_stacks(stacks)
        beat = _read_bytes(self.paths.scheduler)
        if beat != self._sched_beat:
            self._sched_beat, self._sched_seen = beat, now
            if self.pool is None:  # the scheduler came back
                self._start_pool()
        silent = now - self._sched_seen
        if silent > self.settings.timeout and self.pool is not None:
            if self.bound_epoch is not None:
                raise _Exit(EX_OK, f"the scheduler sent no heartbeat for {silent:.0f}s")
            logger.warning(
                "executor {}: the scheduler is silent for {:.0f}s; dropping its attempts and waiting", self.name, silent
            )
            self._stop_pool(f"the scheduler sent no heartbeat for {silent:.0f}s")
        if self.pool is None and silent > self.settings.timeout + self.settings.wait:
            raise _Exit(EX_OK, f"no scheduler for {silent:.0f}s")

    def _answer_stacks(self, n: int) -> None:
        """The stall warning asked (request ``n``) where the running attempts are: each one's
        Python stack, from its worker (:meth:`LocalExecutor.attempt_stacks`), into this
        executor's ``stacks`` file (text only, keyed ``"{key}\t{attempt}"``), which says first that
        it is answering (``n`` without ``stacks``) when it asks workers."""
        self.stacks = n
        running = [w.running for w in self.pool.workers if w.running is not None] if self.pool else []
        if running:  # (the scheduler waits longer for an executor answering: its workers may be slow to)
            write_json(self.paths.member(self.name, "stacks"), {"n": n})
        dumps = self.pool.attempt_stacks(running, patience=self.settings.stacks_patience) if running else {}
        write_json(self.paths.member(self.name, "stacks"), {"n": n, "stacks": {f"{k}\t{a}": t for (k, a), t in dumps.items()}})

    def _other_backend(self, now: float, stop: dict) -> None:
        """The job's queue was ended by a run of the job on another backend (embedded, Ray): exit
        while that run goes on (it serves no queue: the job lock is held by the process that wrote
        the stop marker) or once the job succeeded; while another process holds the job (a
        queue-backend rerun that has not set its queue up yet), and after a failed or interrupted
        run, wait for the next queue run (the caller). Looked at at most once a second."""
        if now < self._state_read + 1.0:
            return
        self._state_read = now
        from smallpond.execution.ownership import lock_state

        where = f"pid {stop.get('pid', '?')} on {stop.get('host', '?')}"
        lock, holder = lock_state(self.layout.job_root)
        if lock in ("alive", "elsewhere"):
            if holder and (holder.get("pid"), holder.get("host")) == (stop.get("pid"), stop.get("host")):
                raise _Exit(
                    EX_OK,
                    f"the job is being run on another backend (embedded or Ray, by {where}), which took it over from "
                    f"the queue in generation {stop.get('epoch')}: it has no attempts for executors. Start executors "
                    "again with a queue-backend run of the job (--platform)",
                )
            return  # another run holds the job: maybe the queue's, about to set its queue up
        if _job_state(self.layout) == "success":  # None (unreadable): wait, as after a run that failed
            raise _Exit(
                EX_OK,
                f"the job finished successfully on another backend (embedded or Ray, run by {where}); nothing to do",
            )

    def _await_next_run(self, now: float, ended: int) -> None:
        """Wait (up to ``SP_QUEUE_WAIT`` seconds) for a run of the job after generation ``ended``,
        which stopped before this executor joined; then exit."""
        if self._ended_seen is None:
            self._ended_seen = now
            logger.info(
                "executor {}: the job's last run (generation {}) has ended; waiting up to {:.0f}s for the next run "
                "(the scheduler's command again)",
                self.name,
                ended,
                self.settings.wait,
            )
        if now - self._ended_seen > self.settings.wait:
            raise _Exit(
                EX_OK,
                f"the job's last run (generation {ended}) had ended and no new run started within {self.settings.wait:.0f}s",
            )

    def _join(self, epoch: int, meta: dict) -> None:
        """A new scheduler generation: drop the old one's attempts, then serve the new one."""
        if self.bound_epoch is not None and epoch > self.bound_epoch:
            raise _Exit(EX_OK, f"a new scheduler (generation {epoch}) took the job over")
        if self.bound_epoch is not None and epoch < self.bound_epoch:
            return  # our scheduler has not written its generation yet
        if self.epoch >= 0:
            logger.info(
                "executor {}: generation {} -> {}; dropping {} attempt(s) of the old one",
                self.name,
                self.epoch,
                epoch,
                len(self.running),
            )
        self._stop_pool(f"scheduler generation {epoch} replaced {self.epoch}")
        self.epoch = epoch
        self.settings = QueueSettings(
            float(meta["heartbeat"]), float(meta["timeout"]), float(meta.get("wait", self.settings.wait))
        )
        self._load_runtime()  # this run's settings (they may change what this executor offers)
        self._write_info()
        self.nodes.clear()
        self.refresh = int(meta.get("refresh", 0))  # the workers about to start are fresh
        self._sched_beat, self._sched_seen = _read_bytes(self.paths.scheduler), time.monotonic()
        self._start_pool()

    def _refresh_pool(self, refresh: int) -> None:
        """The scheduler asks for fresh worker processes (the user's code changed between two runs
        of a session): replace them before taking another attempt, then acknowledge."""
        self.refresh = refresh
        if self.pool is None:  # none running: the next pool starts fresh anyway
            self.beat()
            return
        logger.info("executor {}: replacing its worker processes (refresh {}): the user's code changed", self.name, refresh)
        self._stop_pool("the scheduler asked for fresh worker processes")
        self._start_pool()  # acknowledges in its heartbeat

    def _start_pool(self) -> None:
        self.pool = LocalExecutor(
            self.rt,
            self.cpus,
            cpus=self.cpus,
            memory=self.memory,
            rt_path=self.layout.runtime_ctx_path,
            keep_workers=False,  # (this process's jobs are the queue's; its pool lives as long as it)
        )
        self.pool.start()
        self.state = "running"
        self.beat()  # acknowledges the generation at once: the new scheduler waits for it

    def _stop_pool(self, why: str = "") -> None:
        """Kill the workers (and so every attempt this executor holds) and report those attempts
        as lost (``why``): a scheduler that is only slow gets an outcome for each."""
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        for name, (key, attempt, _) in list(self.running.items()):
            error = WorkerLost(f"executor {self.name} dropped {key} attempt {attempt}: {why or 'it stopped'}")
            try:
                self._report(Completion(key, attempt, False, None, error, worker=self.name), name)
            except OSError:
                remove_path(self.paths.member(self.name, "claimed", name))
        self.running.clear()
        self.items.clear()
        self.state = "waiting"

    # -- claiming, reporting, cancelling ---------------------------------------------------------
    def _claim(self) -> int:
        pool = self.pool
        free, behind = pool.free_slots(), pool.queue_slots()
        if free == 0 and behind == 0:
            return 0
        try:
            names = sorted(n for n in os.listdir(self.paths.todo) if not n.startswith("."))
        except FileNotFoundError:
            return 0
        claimed = 0
        used = sum(c for _, _, c in self.running.values())
        for name in names:
            item = ItemName.parse(name)
            if item is None or item.epoch != self.epoch:
                continue
            if free > 0:
                # a task needing more CPUs than are free here waits for another executor, or for
                # this one to be idle (so a task bigger than any executor still runs somewhere)
                if self.running and item.cpus > self.cpus - used:
                    continue
                queue = False
            elif behind > 0 and item.cpus <= 1:
                queue = True
            else:
                continue
            mine = self.paths.member(self.name, "claimed", name)
            try:
                os.rename(os.path.join(self.paths.todo, name), mine)
            except FileNotFoundError:
                continue  # another executor was faster
            self._start(name, item, mine, queue)
            claimed += 1
            used += item.cpus
            free, behind = pool.free_slots(), pool.queue_slots()
            if free == 0 and behind == 0:
                break
        return claimed

    def _start(self, name: str, item: ItemName, path: str, queue: bool) -> None:
        try:
            with open(path, "rb") as f:
                header, body = decode_item(f.read(), self.secret, path)
            ref = header["node"]
            blob = self.nodes.get(ref)
            if blob is None:
                node_path = self.paths.node(ref)
                with open(node_path, "rb") as f:
                    blob = self.nodes[ref] = verified_payload(f.read(), self.secret, node_path)
        except Exception as e:  # a forged or torn item: never run it, say so
            self.running[name] = (item.key, item.attempt, item.cpus)
            self._report(
                Completion(
                    item.key,
                    item.attempt,
                    False,
                    None,
                    TaskError(f"executor {self.name} refused queued item {name}: {e}", task_key=item.key, retryable=False),
                    worker=self.name,
                ),
                name,
            )
            return
        self.running[name] = (item.key, item.attempt, item.cpus)
        self.items[(item.key, item.attempt)] = name
        try:
            self.pool.submit_encoded(item.key, item.attempt, ref, blob, body, queue=queue)
        except Exception as e:  # a fault of this executor, not of the task: another one retries it
            logger.exception("executor {}: could not start {} attempt {}", self.name, item.key, item.attempt)
            error = WorkerLost(f"executor {self.name} could not start {item.key} attempt {item.attempt}: {e}")
            self._report(Completion(item.key, item.attempt, False, None, error, worker=self.name), name)

    def _report(self, c: Completion, name: Optional[str] = None) -> None:
        """Write the outcome to ``done/`` (atomically), then forget the claim."""
        name = name or self.items.get((c.key, c.attempt))
        if name is None or name not in self.running:
            return  # cancelled meanwhile
        self.items.pop((c.key, c.attempt), None)
        c.worker = f"{self.host['host']}/{self.name}/{c.worker.rsplit('/', 1)[-1]}" if c.worker else self.name
        atomic_write_bytes(os.path.join(self.paths.done, name), encode_completion(c, self.secret))
        del self.running[name]
        remove_path(self.paths.member(self.name, "claimed", name))

    def _unclaim(self, key: str, attempt: int) -> None:
        """Put an attempt this executor claimed, and that its pool gave back unstarted, back in
        ``todo/`` for any executor (this one included)."""
        name = self.items.pop((key, attempt), None)
        if name is None or self.running.pop(name, None) is None:
            return  # cancelled meanwhile
        try:
            os.rename(self.paths.member(self.name, "claimed", name), os.path.join(self.paths.todo, name))
        except FileNotFoundError:
            return  # the job's queue folder is gone
        logger.debug("executor {}: {} attempt {} waited behind a long one; back in queue/todo", self.name, key, attempt)

    def _cancels(self) -> None:
        if not self.running or self.pool is None:
            return
        try:
            wanted = [n for n in os.listdir(self.paths.cancel) if n in self.running]
        except FileNotFoundError:
            return
        for name in wanted:
            key, attempt, _ = self.running.pop(name)
            self.items.pop((key, attempt), None)
            self.pool.cancel(key, attempt)
            remove_path(self.paths.member(self.name, "claimed", name))
            remove_path(os.path.join(self.paths.cancel, name))
            logger.info("executor {}: cancelled {} attempt {}", self.name, key, attempt)


def _read_bytes(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _wait_for(what: str, check, seconds: float):
    """``check()`` once it returns something other than None, within ``seconds``; else raise."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise SmallpondError(f"executor: gave up after {seconds:.0f}s waiting for {what}")
        time.sleep(0.1)


def find_job(job_id, data_root, job_time=None, wait: float = 0.0) -> JobLayout:
    """The job folder the executor serves: given by its time, or the one for ``job_id`` found
    under ``data_root`` (waiting up to ``wait`` seconds for a scheduler to create it)."""
    from smallpond.execution.runtime import find_job_time

    if job_id in (None, "") and not os.environ.get("SP_JOBID"):
        raise SmallpondError("executor mode needs the job to serve: --job_id (or SP_JOBID), as given to the scheduler")
    jid, jt, root = resolve_job(job_id, job_time, data_root)
    explicit_time = job_time is not None or bool(os.environ.get("SP_JOB_TIME"))
    if not explicit_time:
        jt = _wait_for(f"job {jid} to appear under {root}", lambda: find_job_time(root, str(jid)), wait)
    layout = JobLayout(root, jt, jid)
    checked = [0.0]

    def queue_or_end():
        meta = read_json(QueuePaths(layout).epoch)
        if meta is not None:
            return meta
        if time.monotonic() - checked[0] >= 1.0:  # no queue (a session's run removes it as it ends)
            checked[0] = time.monotonic()
            if _job_state(layout) == "success":
                raise _Exit(EX_OK, f"the job finished successfully (it has no queue: {layout.queue_root}); nothing to do")
        return None

    _wait_for(f"the scheduler of job {jid} to set up {layout.queue_root}", queue_or_end, wait)
    return layout


def _job_state(layout: JobLayout) -> Optional[str]:
    """The job's state (:func:`~smallpond.execution.catalog.describe_job`), None if unreadable."""
    from smallpond.execution.catalog import describe_job

    try:
        return describe_job(layout.job_root).state
    except Exception as e:
        logger.debug("executor: cannot read the state of job {}: {}", layout.job_root, e)
        return None


def run_executor(
    job_id=None,
    data_root: Optional[str] = None,
    job_time=None,
    *,
    exec_id: Optional[str] = None,
    console_log_level: str = "INFO",
) -> int:
    """Serve one job as an executor until it ends; returns the exit status (0: the job ended)."""
    settings = QueueSettings.from_env()
    raw_epoch = os.environ.get("SP_QUEUE_EPOCH")
    bound = int(raw_epoch) if raw_epoch and raw_epoch.isdigit() else None
    logger.remove_default_sink()
    sink = logger.add(sys.stderr, level=console_log_level)
    file_sink = None
    try:
        if os.environ.get("SP_TEST_EXECUTOR_EXIT"):  # tests only: an executor that cannot start
            raise SmallpondError("SP_TEST_EXECUTOR_EXIT is set: this executor exits at once")
        try:
            layout = find_job(job_id, data_root, job_time, settings.wait)
        except _Exit as e:
            logger.info("executor exits ({}): {}", e.code, e.why)
            return e.code
        with open(layout.secret_path, "rb") as f:
            secret = f.read()
        proc = ExecutorProcess(layout, secret, exec_id=exec_id, bound_epoch=bound)
        file_sink = logger.add(os.path.join(layout.log_root, f"executor-{proc.name}.log"), level="DEBUG")
        return proc.run()
    except SmallpondError as e:  # (it exited 1: the Driver's failures exit 70, README)
        logger.error("{}", e)
        return EX_SOFTWARE
    finally:
        for s in (sink, file_sink):
            if s is not None:
                logger.remove(s)
        logger.restore_default_sink()
