"""Publication locks: jobs publishing into one destination take turns.

A publication reads a destination (its ``.MANIFEST.txt``, the record of what it holds), plans its
steps from that, and then changes it (moves files in, moves a new manifest in, writes the record).
Two jobs doing so at once into one folder each plan from the state before the other's steps: the
second manifest moved in drops the first job's files (an append published, reported done, and not
listed), or a job finds the other's manifest moved in and its record not yet written and refuses
the publication as a user's edit. So a publication holds, from before it reads its destinations
until its last step, an exclusive advisory lock (``flock``) on one lock file per destination
(:func:`destinations_locked`); a job finishing or abandoning an earlier run's journal does too.

* **Where**: two locks per destination, both needed.

  - The folder the destination is in (its parent, ``dirname(realpath(dest))``), locked itself:
    an ``flock`` of the directory, opened read-only, so nothing is written into it or beside the
    destination, and the lock is the destination's, whatever the data root or the user of the job
    taking it: two jobs of different data roots (or users) publishing into one new folder at
    once take turns, and the second finds the first's result and its checks refuse it (no record
    of it in that data root), where before both went ahead and the second's manifest dropped the
    first's files. It is the parent's lock, not the destination's, because the destination
    may not exist yet and a publication replaces it (a swapped-in folder); publications into
    sibling folders take turns too (a publication is a few renames). Where the parent does not
    exist yet (a check before anything ran), its nearest existing ancestor is locked; a
    publication itself always finds the parent (its staged folder is in it). Where the parent
    cannot be opened (no read permission) or locked (NFS, whose ``flock`` emulation needs a file
    open for writing, or a filesystem without locks), only the second lock holds, and the job
    logs that once per folder; so too where the folder's lock is held by the job's own process or
    one it runs under (``flock /data/out python job.py``), which it would wait for forever. A lock
    of the folder that another thread of this process holds or waits for (another publication) is
    told from those by the descriptors this process notes, noted in one step with the ``flock``
    that takes or lets go of the lock (under one threading lock, which the look takes too): a
    thread never finds another's lock taken and not yet noted, nor forgotten and not yet let go,
    and so never publishes without the folder's lock while another thread holds it.
  - ``{sha256 of realpath(dest)}.lock`` in the data root's records of this user
    (:func:`~smallpond.execution.runtime.sink_records_dir`, beside ``{sha256}.record``): a file
    the engine owns, never one in or beside the user's folder. It holds where the first cannot
    (NFS: across hosts) for the jobs that matter most: every job that may append to a destination
    or overwrite it is of that folder's records (another data root's or user's job is refused
    there: its manifest is not vouched for by their record), so they all meet on that lock file.
    ``smallpond clean`` removes the lock file of a destination it has no record of (any more)
    while no job holds it (:func:`~smallpond.execution.ops.sink_record.prune`): a job that
    opened that file meanwhile finds, once it has the lock, that it is no longer the one at its
    name, and locks the file there instead, so no two jobs ever hold the lock of one
    destination (a parent folder removed and made again while a job waited is found the same
    way).

  - **Nesting**: the lock files of the folders above the destination (:func:`folders_above`: up
    to the lowest that holds the data root's records; no destination holds those), **shared**. A
    publication into ``out/sub2`` then holds ``out``'s lock file shared and one into ``out`` holds
    it exclusively, so the two take turns, and whichever publishes second finds the other's
    result, where each had checked at planning, before either published, that nothing nested
    (:func:`~smallpond.execution.ops.sink.publish` checks again under these locks:
    :func:`~smallpond.execution.ops.sink_overlap.nested_result`). Publications into siblings
    (``out/a``, ``out/b``) hold it shared both: the lock files do not make them take turns (the
    folder lock does, where it can be taken). Like the destination's own lock file, these are of
    the data root's records: as the nesting check, they hold for the jobs of one data root and user.

  A destination inside the job's own folder (named outputs, ``FinalResults``) is this job's only
  and is not locked.
* **Order**: the locks are taken in the order of their paths (folders and lock files alike, shared
  and exclusive), so two jobs publishing into the same or nested destinations never wait on each
  other in a cycle. A lock wanted both shared and exclusive is taken exclusive. A process does not lock a destination
  again while it holds it (a publication finishing its own journal).
* **A dead holder never blocks the next job**: ``flock`` locks belong to the open file, so the
  kernel releases them when the process holding them dies (SIGKILL included). A worker forked while
  the lock is held closes its copy at once (:func:`os.register_at_fork`), so it cannot keep the
  lock after the job that took it; a fork waits while another thread is between taking a lock and
  noting it (the child would have a copy it does not know to close). A lock's file is opened
  before that step, so that an open that hangs (a stuck NFS mount) holds up no fork: a file
  opened before a fork that came before it was taken is closed unlocked and opened again (its
  thread counts the forks, :func:`_take`; the child's copy is never locked, and the child closes
  it, :data:`_opening`). The non-blocking
  ``flock`` and the look at who holds a folder's lock stay in that step: a stuck NFS server would
  hold up a fork there. A job that has to wait logs which destination and lock file it waits for, once.
* **Interrupts**: Ctrl-C (or the job's SIGTERM, raised as an exception) at any call while locks
  are taken, waited for or let go of leaves this process holding none and with no lock's file
  open that it knows of: a lock taken and not yet noted is closed in that step, one noted is let
  go of, every lock is let go of even when letting go of one is interrupted, and an interrupted
  wait for the threading lock waits on (the interrupt raised once done). That holds at each point
  where CPython raises a signal's exception: as a Python function begins (so a caller keeps its
  note of an fd until :func:`_take` or :func:`_close` has begun, and calls it again) and once a
  call into C returned (test_sink_lock raises at each in turn, by ``sys.setprofile``). What Python code cannot
  guard: an interrupt delivered right as ``os.open`` returns (CPython checks for signals once a
  call returns, before its result is stored) loses that descriptor, which stays open but holds no
  lock (a lock's file is locked only after that), so no job waits for it.
* **Filesystems**: on a local filesystem the lock serialises every process of the host. On NFS,
  Linux (since 2.6.12) maps ``flock`` onto NFS byte-range locks of the whole file, so it holds
  across hosts; a lock of a client that died is released once the server notices (NFSv4: the
  client's lease expires, 90 s by default, and the next job waits that long; NFSv3: lockd/statd,
  when the client reboots: a client that never comes back keeps it until the server's locks are
  cleared), and a client mounted with ``nolock`` or ``local_lock=flock``/``all`` locks only for
  its own host. Those byte-range locks are a process's, not an open file's: two threads of one
  process publishing into one destination at once are not serialised there. A filesystem that refuses locks (``ENOLCK``, ``EOPNOTSUPP``, some FUSE
  ones) gets a warning naming the lock file, once per process and folder, and the publication goes
  ahead unlocked, as before this module: jobs publishing into one destination at the same instant
  may then drop each other's appends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from smallpond.common import logger
from smallpond.execution.ops.sink_record import lock_path
from smallpond.io.filesystem import close_quietly

#: errors of a filesystem that has no locks; anything else is an error of the publication
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)

_held = threading.local()  # lock path -> fd, of this thread
#: every fd of a lock that a thread of this process holds, or waits for having found it not held by
#: this process itself nor one it runs under: a forked child closes them, and a thread finding a
#: folder locked by this process tells by them another thread's publication (waited for) from a
#: lock taken for the job by a process it runs under (not waited for)
_all_fds: Dict[int, str] = {}
#: taken around every change of what this process holds (a lock taken and its fd in _all_fds, a
#: lock let go and its fd out of it) and around the look at it: a thread never finds another's lock
#: taken and not yet in _all_fds, and takes it for one of the process it runs under
_fds_lock = threading.Lock()
_warned: set = set()
#: every fd of a lock's file opened and not yet taken, noted nor closed (between the open and
#: _take, outside _fds_lock): a child forked meanwhile closes its copy (it is never locked, see
#: _take, but would stay open in a worker for as long as it lives), once it finds it still is that
#: file (a number noted here is never another file's to close). Changed by subscripts, not calls
#: (an interrupt comes as a call returns): an fd leaves it before it is closed
_opening: Dict[int, str] = {}
#: forks of this process so far (counted under _fds_lock): a lock's file opened before a fork that
#: came before it is taken is not locked, since the child has a copy of it (see _take)
_forks = 0


def _held_here() -> Dict[str, int]:
    if not hasattr(_held, "paths"):
        _held.paths = {}
    return _held.paths


def _prepare(path: str) -> None:
    """Make and check the folder of the lock file ``path``: this user's folder, as for a record."""
    from smallpond.execution import user_folder

    folder = os.path.dirname(path)
    user_folder.prepare(folder)
    os.makedirs(folder, mode=0o700, exist_ok=True)


def _open(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    _opening[fd] = path  # (at once: a fork closes it in the child from here on)
    return fd


def _open_folder(path: str) -> int:
    # read-only: nothing is written into the user's folder, and flock needs no more
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    _opening[fd] = path
    return fd


def _lock(path: str, dest: str, folder: bool = False, shared: bool = False) -> Optional[int]:
    """Take the lock of ``dest`` at ``path`` (a lock file, or with ``folder`` the folder ``dest``
    is in), waiting for its holder; its fd, or None where it cannot be locked (said once).
    ``shared``: a shared lock (of a folder above a destination), else an exclusive one.

    An interrupt (Ctrl-C, or the job's SIGTERM raised as an exception) at any call on the way
    leaves no lock taken and no fd open that this process knows of (see :func:`_take`)."""
    said, how = False, fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        if not folder:
            _prepare(path)
        forks = _forks
        try:
            # opened before _fds_lock is taken: an open that hangs (a stuck NFS mount) holds up no
            # fork (_before_fork); a fork meanwhile is found by _take, which then locks nothing
            fd = _open_folder(path) if folder else _open(path)
        except OSError as e:
            if not folder:
                raise
            return _folder_unlocked(e, path, dest)  # gone meanwhile, or not ours to read
        opened = [fd]  # set to None by _take once it noted or closed fd
        try:
            state, failed = _take(fd, path, how, folder, forks, opened)
        except BaseException:
            if opened[0] is not None:  # interrupted as _take began (CPython checks for signals there)
                if fd in _opening:
                    del _opening[fd]
                os.close(fd)  # not locked yet
            raise
        if state == "forked":
            continue  # a child forked since the open has a copy of it: open it again
        if state == "ours":
            return _folder_unlocked(BlockingIOError(errno.EDEADLK, "locked by this job's own parent"), path, dest)
        if state == "failed":
            return _folder_unlocked(failed, path, dest) if folder else _no_locks(failed, path, dest)
        pending = [fd]  # noted in _all_fds: taken, or to be waited for; None once _close took it over
        try:
            try:
                if state == "waits":
                    if not said:
                        logger.info("waiting for another job publishing into {} to finish (lock {})", dest, path)
                        said = True
                    fcntl.flock(fd, how)
                if _still_there(fd, path):
                    return fd
            except OSError as e:
                _close(fd, pending)
                return _folder_unlocked(e, path, dest) if folder else _no_locks(e, path, dest)
            except BaseException:  # interrupted waiting, or once it had the lock: let go of it
                _close(fd, pending)
                raise
            _close(fd, pending)  # removed (by smallpond clean, or a user) while this waited for it: lock the one now there
        except BaseException:
            if pending[0] is not None:  # interrupted as _close began
                _close(fd, pending)
            raise


def _take(fd: int, path: str, how: int, folder: bool, forks: int, opened: List[Optional[int]]) -> Tuple[str, Optional[OSError]]:
    """Try the lock on ``fd`` (the file at ``path``, opened when :data:`_forks` was ``forks``)
    without waiting, and note it in :data:`_all_fds`, in one step under :data:`_fds_lock`:
    ``("taken", None)``, or ``("waits", None)`` when another holds it (noted too, to be waited
    for); ``fd`` closed: ``("forked", None)`` when a fork came after the open (the child has a
    copy of the open file, which it does not know to close: locked, it would keep the lock),
    ``("ours", None)`` for a folder locked by this process or one it runs under, ``("failed",
    error)`` when ``flock`` failed. An interrupt closes ``fd`` unless it is noted (the caller lets
    go of it then): under :data:`_fds_lock`, so no fork has a copy of it locked. ``opened[0]`` is
    set to None once ``fd`` is noted or closed: until then (an interrupt as this began) the caller
    closes it."""
    noted = closed = False
    try:
        with _fds_lock:
            try:
                if _forks != forks:
                    return "forked", None
                try:
                    fcntl.flock(fd, how | fcntl.LOCK_NB)
                    state = "taken"
                except BlockingIOError:
                    # `flock DIR python job.py`: waiting would wait for this job itself
                    state = "ours" if folder and _held_by_this_process_or_its_parents(fd) else "waits"
                except OSError as e:
                    return "failed", e
                if state != "ours":
                    _all_fds[fd] = path  # held, or waited for: another thread of this process waits for it too
                    noted = True
                    opened[0] = None
                    if fd in _opening:
                        del _opening[fd]
                return state, None
            finally:
                if not noted:
                    _all_fds.pop(fd, None)
                    closed = True
                    opened[0] = None
                    if fd in _opening:
                        del _opening[fd]
                    os.close(fd)  # the only copy (a fork waits for _fds_lock): its lock, if taken, goes with it
    except BaseException:
        opened[0] = None
        if noted:  # interrupted leaving _fds_lock: let go of it
            _close(fd)
        elif not closed:  # interrupted waiting for _fds_lock: nothing was locked
            if fd in _opening:
                del _opening[fd]
            os.close(fd)
        raise


def _close(fd: int, pending: Optional[List[Optional[int]]] = None) -> None:
    """Let go of the lock on ``fd`` (held or waited for), forget it and close it, under
    :data:`_fds_lock`. An interrupt while waiting for :data:`_fds_lock` does not leave the lock on
    ``fd`` held: the wait goes on, and the interrupt is raised once ``fd`` is let go of and closed;
    one once it is taken closes ``fd`` all the same. ``pending[0]`` (the caller's note of ``fd``)
    is set to None first: an interrupt as this begins (CPython checks for signals there) leaves it
    set, and the caller calls this again."""
    if pending is not None:
        pending[0] = None
    interrupted, entered = None, False
    while not entered:
        try:
            with _fds_lock:
                entered = True
                try:
                    _all_fds.pop(fd, None)
                finally:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_UN)  # the open file's: also where a child forked meanwhile has it still
                    except OSError:
                        pass
                    finally:
                        os.close(fd)
        except BaseException as e:
            if entered:
                raise
            interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted


def _folder_unlocked(e: OSError, path: str, dest: str) -> None:
    """The folder lock of ``dest`` could not be taken: said once per folder; the lock file in the
    data root's records still makes this data root's jobs take turns."""
    if path not in _warned:
        _warned.add(path)
        logger.info(
            "cannot lock the folder {} ({}): jobs of other data roots or users publishing into {} at the same instant "
            "are not made to take turns (this data root's jobs are)",
            path,
            e.strerror or (os.strerror(e.errno) if e.errno else e),
            dest,
        )
    return None


def _held_by_this_process_or_its_parents(fd: int) -> bool:
    """Whether the ``flock`` on the file open as ``fd`` is held by this process or one it runs
    under (``flock /data/out python job.py``, a common way to keep one cron job at a time, takes
    the lock of the very folder a job publishing into ``/data/out/day1`` locks, and passes it
    down): waiting for that holder would wait forever. Linux only (``/proc/locks``); False
    where it cannot be told."""
    st = os.fstat(fd)
    for mine in list(_all_fds):  # another thread of this process publishing: it lets go, wait for it
        try:
            other = os.fstat(mine)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return False
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            holders = {int(w[4]) for w in (line.split() for line in f) if len(w) > 5 and w[1] == "FLOCK" and w[5] == inode}
    except (OSError, ValueError):
        return False
    pid, seen = os.getpid(), set()
    while pid > 1 and pid not in seen:
        if pid in holders:
            return True
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/status") as f:
                pid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        except (OSError, ValueError, StopIteration, IndexError):
            return False
    return False


def folder_to_lock(dest: str) -> str:
    """The folder whose lock is ``dest``'s (see the module docstring): the folder ``dest`` is in,
    real path, or its nearest existing ancestor while it does not exist."""
    folder = os.path.dirname(os.path.realpath(dest)) or os.sep
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    return folder


def _still_there(fd: int, path: str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def _no_locks(e: OSError, path: str, dest: str) -> None:
    """A lock that failed: an error, or (a filesystem without locks) a warning and no lock."""
    if e.errno not in _NO_LOCKS:
        raise e
    folder = os.path.dirname(path)
    if folder not in _warned:
        _warned.add(folder)
        logger.warning(
            "cannot lock {} ({}): the filesystem of {} has no file locks, so jobs publishing into {} at the same "
            "instant are not made to take turns and may drop each other's appends; publish into one destination "
            "from one job at a time, or keep the data root on a filesystem with locks (local, or NFS without nolock)",
            path,
            os.strerror(e.errno),
            folder,
            dest,
        )
    return None


def folders_above(dest: str, records_dir: str) -> List[str]:
    """The folders above ``dest`` (real paths, nearest first) that may be another publication's
    destination, whose lock files a publication into ``dest`` holds shared (module docstring):
    those that do not hold ``records_dir``, since a destination holding the data root, or inside
    its ``.smallpond`` folder, is refused when planned
    (:func:`~smallpond.execution.ops.sink_overlap.check_overlap`)."""
    records = os.path.realpath(records_dir)
    out, folder = [], os.path.dirname(os.path.realpath(dest))
    while folder != records and not records.startswith(folder.rstrip(os.sep) + os.sep):
        out.append(folder)
        folder = os.path.dirname(folder)
    return out


@contextlib.contextmanager
def destinations_locked(dests: Iterable[str], records_dir: str, job_root: Optional[str] = None) -> Iterator[None]:
    """Hold the publication lock of each of ``dests`` (those outside ``job_root``) while the block
    runs, and those of the folders above them shared (see the module docstring)."""
    wanted: Dict[str, Tuple[str, bool, bool]] = {}  # lock path -> (destination, is it a folder, shared)

    def want(path: str, dest: str, folder: bool, shared: bool) -> None:
        was = wanted.get(path)
        if was is None or (was[2] and not shared):  # an exclusive lock where one is wanted both ways
            wanted[path] = (dest, folder, shared)

    root = os.path.realpath(job_root) + os.sep if job_root else None
    for dest in dests:
        real = os.path.realpath(dest)
        if root is None or not (real + os.sep).startswith(root):
            want(lock_path(records_dir, dest), dest, False, False)
            want(folder_to_lock(dest), dest, True, False)
            for above in folders_above(real, records_dir):
                want(lock_path(records_dir, above), f"{above} (around {dest})", False, True)
    held = _held_here()
    taken: List[str] = []
    try:
        for path in sorted(wanted):
            if path in held:
                continue  # this thread holds it already (a publication finishing its own journal)
            held[path] = _lock(path, *wanted[path])
            taken.append(path)
        yield
    finally:
        try:
            _let_go(held, taken)
        except BaseException:
            # CPython checks for signals as a function begins: an interrupt right then let go of none
            _let_go(held, taken)
            raise


def _let_go(held: Dict[str, Optional[int]], taken: List[str]) -> None:
    """Let go of the locks at the paths ``taken`` (last first), which this thread holds (``held``):
    every one of them, also when one is interrupted (the first interrupt raised once all are)."""
    interrupted, pending = None, [None]
    while taken or pending[0] is not None:
        try:
            if pending[0] is not None:  # interrupted as _close began: it let go of nothing
                _close(pending[0], pending)
            while taken:
                # off the books by subscripts and deletes, not calls: CPython raises an interrupt
                # once a call returns, which here would lose the fd between the books and its close
                path = taken[-1]
                fd = held[path] if path in held else None
                if path in held:
                    del held[path]
                del taken[-1]
                if fd is not None:
                    pending[0] = fd
                    _close(fd, pending)  # closing it lets go of the lock (the open file's; a forked child closed its copy)
        except BaseException as e:
            interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted


def _before_fork() -> None:
    # a fork waits until no thread is between taking a lock and noting it (or letting it go and
    # forgetting it): the child then closes every copy of a locked file it has; a file opened and
    # not yet taken is found by its thread (_forks changed) and never locked (_take)
    _fds_lock.acquire()


def _after_fork_in_parent() -> None:
    global _forks
    _forks += 1
    _fds_lock.release()


def _after_fork_in_child() -> None:
    # the child's copies of the locked files would keep the locks once the parent dies (the lock
    # is the open file's, not the process's): close them, and do not unlock them (the parent's)
    global _fds_lock
    _fds_lock = threading.Lock()  # the parent's, held across the fork (_before_fork): the child has a fresh one
    for fd in list(_all_fds):
        close_quietly(fd)
    _all_fds.clear()
    for fd, path in list(_opening.items()):  # opened by a thread the child has not: never locked
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                os.close(fd)
        except OSError:
            pass  # (closed meanwhile, or its file gone: left as it is)
    _opening.clear()
    if hasattr(_held, "paths"):
        _held.paths = {}


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
