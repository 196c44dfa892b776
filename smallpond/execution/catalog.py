"""Job folders under a data root: find them, tell their state, remove finished ones.

A job folder is a directory ``{data_root}/{job_time:%Y-%m-%d-%H-%M-%S}.{job_id}`` (see
:class:`~smallpond.execution.runtime.JobLayout`) holding ``log/.STATUS``. Its state:

* ``success`` / ``failure`` / ``interrupted``: the last line of ``log/.STATUS`` (and the event
  log's ``job_end``);
* ``running``: ``.STATUS`` says running and the process that started the run is alive (or runs on
  another host, where this cannot be checked);
* ``crashed``: ``.STATUS`` says running but that process is gone from this host (for a run killed
  before its first event, no live process holds the job lock);
* ``unreadable``: the folder is another user's (job folders are ``0700``): it is listed, never
  removed, and does not stop the listing of the others.

Invariants of :func:`remove_job`: it removes only a directory that is a direct child of the data
root, named like a job folder, holding ``log/.STATUS``, not a symbolic link, owned by the user
removing it (:func:`owned_by_another_user`: whether another user's job is finished, or its
results still read its files, cannot be told from here for sure; root too removes only its own),
not running, and holding no file that a recorded published result lists (a ``type="manifest"`` result reads its
files where the job wrote them: :mod:`~smallpond.execution.published_refs`).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional

from smallpond.errors import SmallpondError
from smallpond.execution.events import scan_last_run
from smallpond.execution.runtime import JOB_FOLDER_NAME, JOB_TIME_FORMAT, parse_job_id
from smallpond.processes import same_process_start

#: a job folder's name (the runtime's :data:`~smallpond.execution.runtime.JOB_FOLDER_NAME`, under
#: the name this module has always given it)
JOB_DIR_RE = JOB_FOLDER_NAME
FINISHED = ("success", "failure", "interrupted", "crashed")


class JobLookupError(SmallpondError, LookupError):
    """No job, or more than one, matches what was asked for."""


@dataclass
class JobInfo:
    """What a job folder says about its job."""

    path: str
    job_id: str
    job_time: datetime
    state: str = "unknown"
    updated: float = 0.0  # when the job last changed state (mtime of log/.STATUS)
    name: str = ""
    argv: List[str] = field(default_factory=list)
    host: str = ""
    pid: int = 0
    tasks_done: int = 0  # attempts that ended well in the latest run
    tasks_resumed: int = 0
    tasks_reused: int = 0  # taken from the task cache in the latest run
    attempts_failed: int = 0

    @property
    def log_root(self) -> str:
        return os.path.join(self.path, "log")

    @property
    def command(self) -> str:
        if not self.argv:
            return ""
        return " ".join([os.path.basename(self.argv[0])] + self.argv[1:])

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - (self.updated or self.job_time.timestamp()))


def is_job_folder(path: str) -> bool:
    return bool(JOB_DIR_RE.fullmatch(os.path.basename(path.rstrip(os.sep)))) and os.path.isfile(
        os.path.join(path, "log", ".STATUS")
    )


def _last_status(path: str) -> tuple:
    status_path = os.path.join(path, "log", ".STATUS")
    try:
        with open(status_path) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        mtime = os.path.getmtime(status_path)
    except PermissionError:
        return "unreadable", 0.0
    except OSError:
        return "unknown", 0.0
    return (lines[-1].split("@", 1)[0] if lines else "unknown"), mtime


def process_alive(host: str, pid: int, since: float = 0.0, start_id: Optional[str] = None) -> Optional[bool]:
    """True/False if process ``pid`` on ``host`` is alive (and is the one that started with
    ``start_id``, :func:`~smallpond.processes.process_start_id`; without it, one started before
    ``since``); None if ``host`` is another machine.

    The id, where known, decides: a start time read now moves with every step of the wall clock
    since (NTP, a resumed virtual machine), and a running job taken for a crashed one could be
    removed by ``smallpond clean``."""
    if host and host != socket.gethostname():
        return None
    if pid <= 0:
        return False
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        same = same_process_start(pid, None, start_id)  # by the id; None: not recorded, or unreadable
        if same is not None:
            return same
        return not since or p.create_time() <= since + 1.0  # a reused pid started later
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def describe_job(path: str) -> JobInfo:
    """A job folder's :class:`JobInfo` (reads ``log/.STATUS`` and the last ``job_start`` event)."""
    path = os.path.abspath(path)
    m = JOB_DIR_RE.fullmatch(os.path.basename(path.rstrip(os.sep)))
    if m is None:
        raise JobLookupError(f"{path} is not a job folder (expected a name like 2026-01-31-12-00-00.<uuid>)")
    info = JobInfo(path, m.group(2), datetime.strptime(m.group(1), JOB_TIME_FORMAT))
    status, info.updated = _last_status(path)
    try:
        scan = scan_last_run(info.log_root)
    except OSError:  # another user's job: its state says so
        scan = {"start": None, "done": 0, "resumed": 0, "reused": 0, "failed": 0}
    start = scan["start"]
    info.tasks_done, info.tasks_resumed, info.attempts_failed = scan["done"], scan["resumed"], scan["failed"]
    info.tasks_reused = scan.get("reused", 0)
    if start is not None:
        info.name = start.get("name", "")
        info.argv = list(start.get("argv") or [])
        info.host = start.get("host", "")
        info.pid = int(start.get("pid") or 0)
    info.state = status
    if status == "running" and start is not None:
        if process_alive(info.host, info.pid, float(start.get("t", 0.0)), start.get("start_id")) is False:
            info.state = "crashed"
    elif status == "running":
        # killed before its first event (e.g. while mpirun started its executors): the job lock,
        # taken before .STATUS said running, tells whether a process still runs it
        from smallpond.execution.ownership import live_lock_holder

        if live_lock_holder(path) is None:
            info.state = "crashed"
    return info


def list_jobs(data_root: str) -> List[JobInfo]:
    """Every job folder under ``data_root``, oldest first."""
    try:
        names = sorted(os.listdir(data_root))
    except FileNotFoundError:
        return []
    except OSError as e:  # a file, or a folder this user may not list
        raise JobLookupError(f"cannot list the data root {data_root}: {e.strerror or e}") from e
    out = []
    for name in names:
        path = os.path.join(data_root, name)
        if JOB_DIR_RE.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
            out.append(describe_job(path))
    return out


def find_job(data_root: str, spec: str) -> JobInfo:
    """The job named by ``spec``: a job folder path, a job id (a UUID or the string it was made
    from), or a unique prefix of a job id or of a folder name. The newest folder wins when one job
    id has several."""
    if os.sep in spec or spec in (".", ".."):
        if not os.path.isdir(spec):
            raise JobLookupError(f"no job folder at {spec}")
        return describe_job(spec)
    if os.path.isdir(spec) and is_job_folder(spec):
        return describe_job(spec)
    jobs = list_jobs(data_root)
    exact = str(parse_job_id(spec))
    hits = [j for j in jobs if j.job_id == exact]
    if not hits:
        hits = [j for j in jobs if j.job_id.startswith(spec.lower()) or os.path.basename(j.path).startswith(spec)]
    if not hits:
        raise JobLookupError(f"no job matching {spec!r} under {data_root}")
    if len({j.job_id for j in hits}) > 1:
        shown = ", ".join(os.path.basename(j.path) for j in hits[:5])
        raise JobLookupError(f"{spec!r} matches {len(hits)} jobs under {data_root}: {shown}; give more of the id")
    return max(hits, key=lambda j: j.job_time)


def owned_by_another_user(path: str) -> Optional[str]:
    """Why job folder ``path`` is not this user's to remove (it belongs to another user), or None."""
    from smallpond.execution.runtime import this_uid

    try:
        uid = os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        return None  # gone, or not to be stat'ed: the other checks say so
    if uid == this_uid():
        return None
    try:
        import pwd

        who = f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        who = f"uid {uid}"
    return (
        f"it belongs to {who}, and smallpond clean removes only the jobs of the user running it (whether another "
        "user's job is finished, or a result of theirs still reads it, is theirs to tell): run it as that user"
    )


def remove_job(data_root: str, info: JobInfo, published: Optional[Dict[str, list]] = None) -> None:
    """Delete a finished job's folder; refuses anything that is not one, and a job folder a
    published result still reads from (see the module docstring). ``published``: what
    :func:`~smallpond.execution.published_refs.results_listing` found for the job folders being
    removed, if the caller looked already (once for many)."""
    from smallpond.io.filesystem import remove_path

    root = os.path.realpath(data_root)
    path = info.path
    if os.path.islink(path) or os.path.dirname(os.path.realpath(path)) != root or not is_job_folder(path):
        raise JobLookupError(f"refusing to remove {path}: not a job folder directly under {data_root}")
    other = owned_by_another_user(path)
    if other:
        raise JobLookupError(f"refusing to remove {path}: {other}")
    current = describe_job(path)
    if current.state not in FINISHED:
        raise JobLookupError(f"refusing to remove {path}: the job is {current.state}")
    from smallpond.execution.ownership import live_lock_holder

    holder = live_lock_holder(path)  # whatever .STATUS says, a job that is being run stays
    if holder is not None:
        raise JobLookupError(f"refusing to remove {path}: the job is being run by {holder} (it holds the job lock)")
    from smallpond.execution.published_refs import pending_publication, results_listing, why_kept

    pending = pending_publication(path)
    if pending:
        raise JobLookupError(f"refusing to remove {path}: {pending}")
    listings = (results_listing(data_root, [path]) if published is None else published).get(path)
    if listings:
        raise JobLookupError(f"refusing to remove {path}: {why_kept(listings)}")
    remove_path(path)
