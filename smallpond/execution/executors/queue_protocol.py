"""The queue backend's protocol: its settings, the files of a job's ``queue/`` folder and their format.

Shared by the scheduler's side (:mod:`smallpond.execution.executors.queue`) and the executor
processes' side (:mod:`smallpond.execution.executors.queue_process`); the design and its
invariants are described in :mod:`smallpond.execution.executors.queue`. Nothing here keeps state.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from smallpond.errors import ParameterError
from smallpond.execution.executors.base import Completion
from smallpond.execution.runtime import JobLayout, RuntimeContext
from smallpond.io.filesystem import atomic_write_bytes, signed_bytes, verified_payload

# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueSettings:
    """Timing of the queue protocol (seconds); see the module docstring for the variables."""

    heartbeat: float = 1.0
    timeout: float = 20.0
    wait: float = 120.0

    def __post_init__(self) -> None:
        if not self.heartbeat > 0:
            raise ParameterError(f"SP_QUEUE_HEARTBEAT must be positive, got {self.heartbeat!r}")
        if not self.timeout >= 2 * self.heartbeat:
            raise ParameterError(
                f"SP_QUEUE_TIMEOUT ({self.timeout!r}) must be at least twice SP_QUEUE_HEARTBEAT ({self.heartbeat!r})"
            )
        if not self.wait >= 0:
            raise ParameterError(f"SP_QUEUE_WAIT must not be negative, got {self.wait!r}")

    @property
    def stacks_patience(self) -> float:
        """How long an executor waits at most for its workers' stacks when the stall warning asks
        (:data:`~smallpond.execution.stacks.PATIENCE`): its heartbeat waits meanwhile, so at most
        half the timeout."""
        from smallpond.execution.stacks import PATIENCE

        return min(PATIENCE, self.timeout / 2)

    @classmethod
    def from_env(cls) -> "QueueSettings":
        values = {}
        for field_name, var in (("heartbeat", "SP_QUEUE_HEARTBEAT"), ("timeout", "SP_QUEUE_TIMEOUT"), ("wait", "SP_QUEUE_WAIT")):
            raw = os.environ.get(var)
            if raw:
                try:
                    values[field_name] = float(raw)
                except ValueError:
                    raise ParameterError(f"environment variable {var}={raw!r} is not a number of seconds") from None
        return cls(**values)


# -- the folder layout and the item format --------------------------------------------------------


#: the ``outcome`` of ``queue/stop`` written by a run of the job on another backend (embedded,
#: Ray) that ended the queue's generations before it started: executors that find it do not wait
#: for a queue-backend rerun while that run goes on or after it succeeded
OTHER_BACKEND = "other-backend"


class QueuePaths:
    """Where the queue's files are (no I/O except :meth:`create`)."""

    def __init__(self, layout: JobLayout) -> None:
        self.layout = layout
        self.root = layout.queue_root
        self.epoch = os.path.join(self.root, "epoch")
        self.epochs = os.path.join(self.root, "epochs")
        self.scheduler = os.path.join(self.root, "scheduler")
        self.stop = os.path.join(self.root, "stop")
        self.nodes = os.path.join(self.root, "nodes")
        self.todo = os.path.join(self.root, "todo")
        self.cancel = os.path.join(self.root, "cancel")
        self.done = os.path.join(self.root, "done")
        self.executors = os.path.join(self.root, "executors")

    def create(self) -> None:
        for d in (self.epochs, self.nodes, self.todo, self.cancel, self.done, self.executors):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def node(self, ref: str) -> str:
        return os.path.join(self.nodes, f"{ref}.node")

    def member(self, name: str, *parts: str) -> str:
        return os.path.join(self.executors, name, *parts)


@dataclass(frozen=True)
class ItemName:
    """``{epoch:05d}.{seq:09d}.{cpus}.{key}.{attempt}``: sorts by generation, then submission order."""

    epoch: int
    seq: int
    cpus: int
    key: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.epoch:05d}.{self.seq:09d}.{self.cpus}.{self.key}.{self.attempt}"

    @staticmethod
    def parse(name: str) -> Optional["ItemName"]:
        parts = name.split(".")
        if len(parts) != 5:
            return None
        try:
            return ItemName(int(parts[0]), int(parts[1]), int(parts[2]), parts[3], int(parts[4]))
        except ValueError:
            return None


def encode_item(header: dict, body: bytes, secret: bytes) -> bytes:
    """A queued attempt: ``header`` (key, attempt, node ref, memory) and the pickled attempt, signed."""
    return signed_bytes(pickle.dumps((header, body), protocol=pickle.HIGHEST_PROTOCOL), secret)


def decode_item(data: bytes, secret: bytes, what: str) -> Tuple[dict, bytes]:
    """(header, body) of a queued attempt; raises SignatureError if it is not this job's."""
    return pickle.loads(verified_payload(data, secret, what))


def encode_completion(c: Completion, secret: bytes) -> bytes:
    import cloudpickle

    from smallpond.execution.commit import _fast_pickle

    return signed_bytes(_fast_pickle(c) or cloudpickle.dumps(c), secret)


def read_json(path: str) -> Optional[dict]:
    """A small JSON file, or None if it is missing or torn."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def write_json(path: str, value: dict) -> None:
    atomic_write_bytes(path, json.dumps(value).encode())


def this_host() -> Dict[str, object]:
    """What identifies this machine and pid namespace, so a pid seen here can be checked here."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return {"host": socket.gethostname(), "pidns": pidns}


def process_alive(pid: int, create_time: Optional[float], start_id: Optional[str] = None) -> bool:
    """Whether process ``pid`` runs on this host and is the one that started with ``start_id``
    (:func:`~smallpond.processes.process_start_id`) or, without one, at ``create_time``: a pid may be
    reused. The id decides where known: a start time read now moves with every step of the wall
    clock since the executor registered (a live executor was once declared lost that way)."""
    import psutil

    from smallpond.processes import same_process_start

    try:
        p = psutil.Process(pid)
        if same_process_start(pid, create_time, start_id) is False:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def executor_resources(rt: RuntimeContext) -> Tuple[int, int]:
    """(CPUs, bytes of memory) an executor offers: its share of the host.

    ``SP_EXECUTOR_CPUS`` sets the CPUs; else the host's usable CPUs divided among the executors
    on it: ``OMPI_COMM_WORLD_LOCAL_SIZE`` under mpirun, ``SP_EXECUTORS_ON_HOST`` (set by the
    subprocess launcher, or by hand), else 1. Memory is the same share of the usable memory.
    """
    share = 1
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "SP_EXECUTORS_ON_HOST"):
        raw = os.environ.get(var)
        if raw and raw.isdigit() and int(raw) > 0:
            share = int(raw)
            break
    cpus = executor_cpus_setting() or max(1, rt.usable_cpu_count // share)
    return cpus, max(1, rt.usable_memory_size // share)


def executor_cpus_setting() -> Optional[int]:
    """``SP_EXECUTOR_CPUS`` (None if unset); not a positive integer: ParameterError naming it. Read
    by each executor, and by the scheduler before it launches any (else a bad value showed only as
    "every executor exited")."""
    raw = os.environ.get("SP_EXECUTOR_CPUS")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ParameterError(f"SP_EXECUTOR_CPUS must be a positive integer, got {raw!r}")
    return int(raw)
