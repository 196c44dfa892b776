"""Who may use a job folder: ownership checks, the job lock, the secret, and starting over.

A job folder ``{data_root}/{time}.{job_id}/`` holds pickles, and a pickle is code to whoever loads
it. They are signed with the job's secret (``config/secret``, ``0600`` in a ``0700`` folder), so
only the user who started the job (and root) can write a record the job will load. That holds
only if the folder really is that user's, which this module checks before anything is read:

* :func:`check_job_folder`: an existing folder is adopted for resume only if it is a real
  directory (not a symlink), owned by the current user and not writable by group or others; its
  ``config/`` likewise, and its secret is a regular file only its owner can read. Anything else is
  a :class:`JobFolderError` naming the folder and the reason. A data root writable by every user
  gets a warning (:func:`warn_if_shared`): others can plant folders there (they are refused, but
  the job's name is then taken).
* :func:`check_secret`: a folder with signed records but no ``config/secret`` cannot be resumed
  (nothing in it can be verified): a :class:`JobFolderError` that names the way out,
  ``restart=True`` / ``--restart``, which moves the old folder aside (:func:`move_aside`; nothing is
  deleted) and starts the job afresh.
* :class:`JobLock`: ``config/job.lock``, created with ``O_EXCL``, holds the host, PID and process
  start time of the process running the job. A second run of the same job at the same time is
  refused with a message naming the holder. A lock whose holder is gone (same host, and that
  process no longer exists or is another process with a reused PID) is taken over, by one process
  only (the stale record is checked again and moved under an flock of ``job.lock.guard``); a lock
  held on another host is never taken over automatically: the message says how to remove it.
* :func:`refuse_unless_removable`: removing a job folder (or its intermediates) that this user
  could not remove all of (another user's, a folder in it that is not theirs, a parent they cannot
  change) is refused before anything goes, naming the folder and what to do;
  :func:`remove_or_say` names what still could not be removed, instead of passing over it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
import uuid
from datetime import datetime
from typing import Optional

from smallpond.common import logger
from smallpond.errors import SmallpondError
from smallpond.processes import process_start_id, process_start_time, same_process_start

#: a job's publication journal, in its ``config/`` folder (ops/sink_journal.py): a restart never moves one aside
PUBLICATION_JOURNAL = "publication.journal"

LOCK_NAME = "job.lock"


class JobFolderError(SmallpondError):
    """A job folder cannot be used: not ours, unsafe permissions, missing secret, or in use."""


def describe_owner(uid: int) -> str:
    """``uid 1000 (alice)``: a user as a message names them."""
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _check_owned(path: str, what: str, *, directory: bool) -> os.stat_result:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    if stat.S_ISLNK(st.st_mode):
        raise JobFolderError(f"refusing to use {what} {path}: it is a symbolic link (to {os.readlink(path)!r})")
    if directory and not stat.S_ISDIR(st.st_mode):
        raise JobFolderError(f"refusing to use {what} {path}: it is not a directory")
    if not directory and not stat.S_ISREG(st.st_mode):
        raise JobFolderError(f"refusing to use {what} {path}: it is not a regular file")
    me = os.geteuid()
    if st.st_uid != me:
        raise JobFolderError(
            f"refusing to resume from {what} {path}: it is owned by {describe_owner(st.st_uid)}, not by you "
            f"({describe_owner(me)}); its records could run someone else's code. Use another data root or job id."
        )
    if st.st_mode & 0o022:
        raise JobFolderError(
            f"refusing to resume from {what} {path}: it is writable by {'group and others' if st.st_mode & 0o002 else 'its group'} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}), so someone else could have planted records in it. "
            f"If you trust its content, 'chmod go-w {path}' and run again; else start over with restart=True (--restart)."
        )
    return st


def check_job_folder(layout) -> None:
    """Raise :class:`JobFolderError` unless the existing job folder of ``layout`` is safely ours."""
    _check_owned(layout.job_root, "job folder", directory=True)
    if os.path.lexists(layout.config_root):
        _check_owned(layout.config_root, "job config folder", directory=True)
    if os.path.lexists(layout.secret_path):
        st = _check_owned(layout.secret_path, "job secret", directory=False)
        if st.st_mode & 0o077:
            raise JobFolderError(
                f"refusing to resume with job secret {layout.secret_path}: it is readable by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}), so anyone could have signed records with it. "
                "Start over with restart=True (--restart)."
            )


_warned_roots: set = set()


def warn_if_shared(data_root: str) -> None:
    """Warn (once per data root) if every user may create entries in ``data_root``."""
    try:
        st = os.stat(data_root)
    except OSError:
        return
    if st.st_mode & 0o002 and data_root not in _warned_roots:
        _warned_roots.add(data_root)
        sticky = "" if st.st_mode & stat.S_ISVTX else " and has no sticky bit (others may also rename your folders)"
        logger.warning(
            "data root {} is writable by every user{}: others can plant job folders there. smallpond resumes only "
            "folders you own that only you can write, but a private data root (SP_DATA_ROOT) is safer",
            data_root,
            sticky,
        )


def has_signed_records(layout) -> bool:
    """True if the folder holds anything signed with its secret (checkpoints, pickles, a journal)."""
    for records in (layout.completed_task_dir, layout.published_records_dir):
        try:
            with os.scandir(records) as it:
                if any(e.name.endswith(".commit") for e in it):
                    return True
        except OSError:
            pass
    try:
        with os.scandir(layout.config_root) as it:
            return any(e.name.endswith((".pickle", ".journal")) for e in it)
    except OSError:
        return False


def check_secret(layout) -> None:
    """A resumed folder with signed records must still have its secret; else say how to start over."""
    if os.path.lexists(layout.secret_path) or not has_signed_records(layout):
        return
    raise JobFolderError(
        f"cannot resume job folder {layout.job_root}: its secret {layout.secret_path} is missing, so none of its "
        "checkpoints can be verified. Start the job over with restart=True (smallpond.init) or --restart (Driver): "
        "the old folder is moved aside, not deleted."
    )


def refuse_if_publishing(layout, action: str, rerun: str, then: str) -> None:
    """Raise :class:`JobFolderError` if the job in ``layout`` began publishing and did not finish
    (its ``config/publication.journal`` is there): ``action`` (``"restart"``, ``"remove"``) would
    take the journal away, and with it the only way to finish that publication; the message names
    the journal and what to do: run the job again (``rerun``: how, e.g. ``" without restart"``),
    which finishes the publication, then ``then``; or remove the journal by hand to give the publication up."""
    journal = os.path.join(layout.config_root, PUBLICATION_JOURNAL)
    if not os.path.lexists(journal):
        return
    raise JobFolderError(
        f"cannot {action} job {layout.job_root}: an earlier run of it began publishing and did not finish "
        f"(its publication journal {journal} is still there), and its destinations may hold a result no "
        f"record vouches for yet. Run the job again{rerun} (same job id and data root), which "
        f"finishes that publication, then {then}; or, if it cannot be run again (its secret was lost), "
        "remove that journal to give the publication up"
    )


def _not_removable(path: str, st: os.stat_result) -> Optional[str]:
    """Why this process (not root) cannot remove what the folder ``path`` holds (``st``: its lstat), or None."""
    me = os.geteuid()
    if st.st_uid != me:
        return (
            f"{path} is owned by {describe_owner(st.st_uid)}, not by you ({describe_owner(me)}). Only its owner "
            "(or root) can remove it: run this as that user, or leave the job to them"
        )
    if st.st_mode & 0o700 != 0o700:
        return (
            f"you cannot list or change {path} (mode {stat.S_IMODE(st.st_mode):04o}). "
            f"If it may go, 'chmod -R u+rwx {path}' and run again"
        )
    return None


def _owner_of(path: str) -> str:
    try:
        return f"its owner: {describe_owner(os.stat(path).st_uid)}"
    except OSError as e:
        return f"its owner cannot be told: {e.strerror}"


def refuse_unless_removable(layout, action: str, paths) -> None:
    """Raise :class:`JobFolderError` before anything is removed if this process could not remove
    all of ``paths`` (the job's folder, or folders in it): one of them, or a folder in them, is
    another user's or not open to its owner (checked folder by folder, not following a link nor
    entering a mount point: :func:`~smallpond.io.filesystem.remove_path` removes a link itself and
    leaves a mount point, :func:`~smallpond.io.filesystem.mount_points_in`). The message names the
    folder and what to do; files are not looked at (a folder that may be changed lets go of any
    file in it)."""
    from smallpond.io.filesystem import mount_points_in

    if os.geteuid() == 0:
        return  # (root may remove anything here; where it may not, as on NFS, remove_or_say says so)

    def refuse(why: str) -> JobFolderError:
        return JobFolderError(f"cannot {action} job {layout.job_root}: nothing was removed, because {why}")

    try:  # the job's folder first: another user's is named as such, not by what it hides
        st = os.lstat(layout.job_root)
        if stat.S_ISDIR(st.st_mode) and st.st_uid != os.geteuid():
            raise refuse(_not_removable(layout.job_root, st))
    except FileNotFoundError:
        return
    except OSError as e:  # (a data root closed to this user: nothing of it can be removed)
        raise refuse(f"{layout.job_root} cannot be looked at ({e.strerror}): run this as its owner") from None
    for top in paths:
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise refuse(f"{top} cannot be looked at ({e.strerror})") from None
        parent = os.path.dirname(os.path.abspath(top))
        if not os.access(parent, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            raise refuse(
                f"you cannot remove what {parent} holds (not writable by you), {top} included: run this as a user "
                f"who can change {parent} ({_owner_of(parent)}), or have them remove it"
            )
        if not stat.S_ISDIR(st.st_mode):
            continue
        # what remove_path leaves: the mount points in it, by the mount table (a bind mount of the
        # same filesystem included), else by a change of device
        mounts = mount_points_in(os.path.realpath(top))
        todo = [(top, os.path.realpath(top), st)]
        while todo:
            path, real, st = todo.pop()
            why = _not_removable(path, st)
            if why is not None:
                raise refuse(why)
            try:
                with os.scandir(path) as it:
                    subs = [e for e in it if e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                continue
            except OSError as e:
                raise refuse(f"{path} cannot be listed ({e.strerror})") from None
            for e in subs:
                try:
                    sub = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (os.path.join(real, e.name) not in mounts) if mounts is not None else sub.st_dev == st.st_dev:
                    todo.append((e.path, os.path.join(real, e.name), sub))


def remove_or_say(layout, action: str, paths) -> None:
    """Remove each of ``paths`` (the job's folder, or folders in it), all of them whatever one of
    them left; then a :class:`JobFolderError` naming the first file or folder that could not be
    removed (and how many more) if anything could not."""
    from smallpond.io.filesystem import remove_path

    failed: list = []
    for path in paths:
        remove_path(path, failed)
    if failed:
        (where, first), more = failed[0], f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise JobFolderError(
            f"could not {action} job {layout.job_root} completely: {where} could not be removed{more}: "
            f"{first.strerror or first}. What could be removed is gone; fix that (its owner, its mode) and run again"
        )


def move_aside(layout) -> Optional[str]:
    """Rename an existing job folder to ``{job_root}.restarted-{time}``; returns the new name.

    The folder's job lock is taken first, so a job that is being run is never moved from under
    it (:class:`JobFolderError` names its holder), and held across the rename, so no run can
    start in it meanwhile.
    """
    if not os.path.lexists(layout.job_root):
        return None
    aside = f"{layout.job_root}.restarted-{datetime.now():%Y-%m-%d-%H-%M-%S}-{uuid.uuid4().hex[:6]}"
    lock = JobLock(layout) if os.path.isdir(layout.config_root) else None
    if lock is not None:
        lock.acquire()
    try:
        # moved aside, that publication would never be finished (the job's rerun finishes the
        # journal in its own folder), and no other job's nesting check would see it again
        refuse_if_publishing(layout, "restart", " without restart", "restart it")
        os.rename(layout.job_root, aside)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if lock is not None:  # the lock moved with the folder: that run is over
        lock.held = False
        try:
            os.unlink(os.path.join(aside, os.path.relpath(lock.path, layout.job_root)))
        except OSError:
            pass
    logger.warning("restart: the previous job folder {} was moved to {}; the job starts over", layout.job_root, aside)
    return aside


def is_zombie(pid: int) -> bool:
    """Whether process ``pid`` has exited but its parent has not reaped it yet (state ``Z``, or
    ``X``, in ``/proc/{pid}/stat``; False where that cannot be read): ``os.kill(pid, 0)`` still
    succeeds for it, although it holds nothing and never runs again."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rindex(b")") + 2 :][:1]
    return state in (b"Z", b"X")


def holder_alive(holder: dict) -> bool:
    """Whether the process that wrote a lock on this host still runs (and is the same process)."""
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if is_zombie(pid):
        return False  # killed (kill -9 of a driver), only not yet reaped by its parent
    # another process that reused the PID? (by the start id where the record has one: a step of
    # the wall clock since the lock was taken moves the start time read now)
    return same_process_start(pid, holder.get("started"), holder.get("start_id")) is not False


def _read_lock(path: str) -> Optional[dict]:
    """The record of the job lock at ``path``: None if there is none, ``{}`` if it is torn or
    unreadable (treated as held by an unknown holder on this host)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _holder_name(holder: dict) -> str:
    return f"process {holder.get('pid', '?')} on host {holder.get('host') or '?'}"


def live_lock_holder(job_root: str) -> Optional[str]:
    """Who holds the job lock of the folder ``job_root`` (a process on this host that is alive, or
    any process on another host), or None if nobody does."""
    holder = _read_lock(os.path.join(job_root, "config", LOCK_NAME))
    if holder is None:
        return None
    host = holder.get("host")
    if host and host != socket.gethostname() or not holder or holder_alive(holder):
        return _holder_name(holder)
    return None


def lock_state(job_root: str) -> "tuple[str, Optional[dict]]":
    """Whether a process runs the job in folder ``job_root``, by its job lock, and the lock's record:
    ``"none"`` (no lock: nobody runs it), ``"alive"`` (held by a process on this host that still
    runs), ``"dead"`` (held by a process on this host that is gone, or another one now has its PID),
    ``"elsewhere"`` (held on another host: cannot be told from here) or ``"unreadable"`` (torn,
    or this user may not read it: held by an unknown holder, as :func:`live_lock_holder` counts it)."""
    holder = _read_lock(os.path.join(job_root, "config", LOCK_NAME))
    if holder is None:
        return "none", None
    if not holder:
        return "unreadable", holder
    host = holder.get("host")
    if host and host != socket.gethostname():
        return "elsewhere", holder
    return ("alive" if holder_alive(holder) else "dead"), holder


class JobLock:
    """The lock that keeps a second run of the same job out while one runs (see module docstring)."""

    def __init__(self, layout) -> None:
        self.path = os.path.join(layout.config_root, LOCK_NAME)
        self.job_root = layout.job_root
        self.held = False
        self._token = uuid.uuid4().hex

    def _record(self) -> bytes:
        pid = os.getpid()
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": pid,
                "started": process_start_time(pid),
                "start_id": process_start_id(pid),
                "token": self._token,
                "acquired": time.time(),
            }
        ).encode()

    def _read(self) -> Optional[dict]:
        return _read_lock(self.path)

    def _create(self) -> None:
        """Create the lock file with its content in one step (FileExistsError if it exists).

        The record is written to a temp file and hard-linked to the lock's name, so nobody ever
        reads a lock without its holder; where hard links are not allowed, ``O_EXCL``.
        """
        tmp = f"{self.path}.tmp-{self._token}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self._record())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
        finally:
            os.unlink(tmp)

    def acquire(self) -> None:
        """Take the lock or raise :class:`JobFolderError` naming its holder."""
        for _ in range(3):
            try:
                self._create()
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile
                self._take_over_if_stale(holder)
                continue
            self.held = True
            return
        raise JobFolderError(f"could not take the job lock {self.path} (it changed hands repeatedly); try again")

    def _take_over_if_stale(self, holder: dict) -> None:
        host = holder.get("host")
        where = _holder_name(holder)
        since = holder.get("acquired")
        since_txt = f" since {datetime.fromtimestamp(since):%Y-%m-%d %H:%M:%S}" if since else ""
        if host and host != socket.gethostname():
            raise JobFolderError(
                f"job {self.job_root} is being run by {where}{since_txt} (lock {self.path}). Wait for it to end; "
                f"if that process is gone (its machine crashed), remove {self.path} and run again."
            )
        if holder and holder_alive(holder):
            raise JobFolderError(
                f"job {self.job_root} is already being run by {where}{since_txt} (lock {self.path}); "
                "two runs of one job would undo each other's work. Wait for it to end, or stop it."
            )
        # stale (holder gone, or a torn lock file): move it away. Several processes may have read
        # the same stale record; without a guard, one that renames after another took over moves
        # the new holder's live lock away and both run the job. So the record is read again and
        # moved under an flock (released when its process dies, so it never goes stale itself);
        # whoever finds another record there gives up this take-over and races on O_EXCL again
        guard = os.open(f"{self.path}.guard", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX)
            except OSError as e:  # a filesystem without flock (some FUSE ones): unguarded, as before
                logger.debug("no flock on {}: {!r}; taking the stale job lock over unguarded", self.path, e)
            if self._read() != holder:
                return
            stale = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.path, stale)
            except FileNotFoundError:
                return
        finally:
            os.close(guard)
        logger.warning("took over the stale job lock of {} (that process is gone)", where)
        try:
            os.unlink(stale)
        except OSError:
            pass

    def release(self) -> None:
        """Remove the lock if this object still holds it."""
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if holder and holder.get("token") == self._token:
            try:
                os.unlink(self.path)
            except OSError:
                pass
