"""Filesystem primitives with the guarantees the checkpoint model relies on.

Invariants:

* :func:`atomic_write_bytes` never leaves a partially written file under the final name: it writes
  a temp file in the same directory, fsyncs it and renames it. A writer killed mid-write leaves
  the temp file; :func:`remove_abandoned_temps` removes those of a folder, never one being written.
* :func:`dump` / :func:`load` move signed pickles across the shared filesystem. A pickle is code
  to whoever loads it, so every pickle carries an HMAC-SHA256 of its bytes under a per-job secret;
  :func:`load` refuses a pickle whose signature does not match.

A signed record is ``SPSIG2 | sha256(payload) | HMAC-SHA256(secret, payload) | payload``. The plain
digest tells an accident from an attack: a record that is empty, short, of another format or
whose payload does not match its digest was torn or damaged (a crash, a full disk, a bad block):
:class:`CorruptRecord`, which callers may treat as absent. A record that is intact but whose HMAC
does not match was written by someone without the job's secret: :class:`SignatureError`, which is
always an error. Neither is ever unpickled. (Records of the earlier ``SPSIG1`` format, without the
plain digest, are still read; for those a mismatch cannot be told apart and is a SignatureError.)

A record of two keepers (a task's commit record that is also its task-cache entry's record, one
file under two names) is ``SPSIG3 | sha256(payload) | HMAC(secret 1) | HMAC(secret 2) | payload``:
it verifies under either secret, so each reader trusts it exactly as it trusts a record of its own
(whoever writes one knows both secrets).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import shutil
import stat
import sys
import time
import uuid
from typing import Any, Callable, List, Optional, Tuple

HF3FS_MOUNT_POINT_PREFIX = "/hf3fs"
HF3FS_FSSPEC_PROTOCOL = "hf3fs://"

_SIG_MAGIC_V1 = b"SPSIG1"
_SIG_MAGIC = b"SPSIG2"
_SIG_MAGIC_TWO = b"SPSIG3"
_DIGEST = 32


class SignatureError(Exception):
    """A pickle's signature does not match this job's secret (it was forged or altered on purpose)."""


class CorruptRecord(SignatureError):
    """A signed record is torn or damaged (empty, truncated, not a record): nothing was loaded.

    A subclass of :class:`SignatureError`, so code that refuses unverifiable records refuses these
    too; code that can recompute what the record described (commit records) treats it as absent.
    """


def on_hf3fs(path: str) -> bool:
    return path.startswith(HF3FS_MOUNT_POINT_PREFIX)


def extract_hf3fs_mount_point(path: str) -> Optional[str]:
    if not on_hf3fs(path):
        return None
    parts = path.split("/")
    return "/".join(parts[:3]) if len(parts) >= 3 else None


def find_mount_point(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def remove_path(path: str, failed: Optional[List[Tuple[str, OSError]]] = None) -> None:
    """Remove a file, a symlink or a directory tree. A missing path is a no-op.

    A tree is removed without following its symlinks (each is removed itself) and without
    entering a mount point in it (:func:`mount_points_in`): what is mounted there is not the
    engine's, nor is the folder it is mounted on (which stays, with the folders above it).
    A tree's errors are ignored (a file or link that cannot be removed raises); with ``failed``,
    neither: they are added to it (what could not be removed, and why), but for a path gone
    meanwhile and a folder left holding a mount point."""

    def note(where: str, e: OSError) -> None:
        # (a folder not empty: what it holds was named, or it holds a mount point)
        if failed is not None and e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            failed.append((where, e))

    if os.path.islink(path) or os.path.isfile(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if failed is None:
                raise  # (as ever: only a tree's errors are ignored)
            note(path, e)
    elif os.path.isdir(path):
        mounts = mount_points_in(os.path.realpath(path))
        if mounts is not None and not mounts:  # (the usual case: none)
            if sys.version_info >= (3, 12):  # (onerror is deprecated there)
                shutil.rmtree(path, onexc=lambda func, where, e: note(where, e))
            else:
                shutil.rmtree(path, onerror=lambda func, where, info: note(where, info[1]))
        else:
            _remove_around(path, mounts, note)


def _unescape_mount(field: str) -> str:
    # /proc/self/mountinfo writes a space, tab, newline and backslash of a path as \ooo (octal)
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points_in(folder: str) -> Optional[set]:
    """The mount points strictly inside ``folder`` (a real path): an empty set where there are
    none; None where the mount table cannot be read (not Linux), so each folder is asked
    (``os.path.ismount``, which does not see a bind mount of the same filesystem)."""
    try:
        table = read_file("/proc/self/mountinfo")  # (its size reads 0: read until the end)
    except OSError:
        return None
    prefix = folder.rstrip(os.sep) + os.sep
    escaped = prefix.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    if b" " + os.fsencode(escaped) not in table:
        return set()  # (the usual case, told without parsing the table: ~2 us, not ~25)
    found = set()
    for line in table.decode("utf-8", "surrogateescape").splitlines():
        fields = line.split(" ", 5)
        if len(fields) > 4:
            point = _unescape_mount(fields[4])
            if point.startswith(prefix) and point != prefix:
                found.add(point)
    return found


def _remove_around(path: str, mounts: Optional[set], note: Callable[[str, OSError], None]) -> None:
    """Remove the tree ``path`` but for the mount points in it (``mounts``: their real paths, or
    None to ask each folder), their content and the folders holding them; errors go to ``note``
    (:func:`remove_path`)."""
    real = os.path.realpath(path)
    folders = [path]  # to remove once emptied, parents first
    for top, dirs, files in os.walk(path, topdown=True, followlinks=False):
        descend = []
        for d in dirs:
            sub = os.path.join(top, d)
            if os.path.islink(sub):
                files.append(d)  # a symlink to a folder: removed itself, never followed
            elif (os.path.join(real, os.path.relpath(sub, path)) in mounts) if mounts is not None else os.path.ismount(sub):
                continue  # what is mounted there, and the folder it is mounted on, stay
            else:
                descend.append(d)
                folders.append(sub)
        dirs[:] = descend
        for name in files:
            try:
                os.unlink(os.path.join(top, name))
            except OSError as e:
                note(os.path.join(top, name), e)
    for folder in reversed(folders):
        try:
            os.rmdir(folder)  # a folder holding a mount point is not empty: it stays
        except OSError as e:
            note(folder, e)


def remove_tree_written_into(path: str, passes: int = 5) -> None:
    """Remove the directory tree ``path`` that other processes may still write files into while
    it goes, though never make a folder of again (a job's ``queue/``, where executors started by
    hand on any host write their heartbeats).

    The tree is first renamed aside (``{path}.removing-{suffix}``, beside it): writers name their
    files by the old path, so from then on none is created in it, and what it holds goes in one
    pass (removed in place, a file written into a folder after the removal emptied it made that
    folder's removal fail, and a writer beating every millisecond outran five passes on a loaded
    machine). Where it cannot be renamed (or holds a mount point, or the mount table cannot be
    read), it is removed in place, again while it stays (at most
    ``passes`` times). A tree renamed aside by an earlier call that was stopped goes too."""
    parent, name = os.path.split(os.path.abspath(path))
    target = path
    aside = os.path.join(parent, f"{name}.removing-{unique_suffix()}")
    try:
        if mount_points_in(os.path.realpath(path)) == set():  # (a mount inside would move with it)
            os.rename(path, aside)
            target = aside
    except FileNotFoundError:
        target = None
    except OSError:
        pass  # (not renamable here: removed in place)
    if target is not None:
        for _ in range(passes):
            remove_path(target)
            if not os.path.lexists(target):
                break
    try:
        leftovers = [n for n in os.listdir(parent) if n.startswith(f"{name}.removing-")]
    except OSError:
        return
    for n in leftovers:  # of a removal that an earlier process did not finish
        remove_path(os.path.join(parent, n))


_suffix_prefix = uuid.uuid4().hex[:6]
_suffix_counter = 0


def unique_suffix() -> str:
    """A name part unique among the processes of every machine sharing a folder (a random tag of
    this process, its pid and a counter), without a uuid4 per call: for temp names and attempt
    folders made once per task."""
    global _suffix_counter
    _suffix_counter += 1
    return f"{_suffix_prefix}{os.getpid():x}{_suffix_counter:x}"


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC
#: ``os.open`` flags to read a file, and to append to one (created if missing)
READ_FLAGS = os.O_RDONLY | _CLOEXEC
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _CLOEXEC


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to file descriptor ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def close_quietly(fd: int) -> None:
    """Close file descriptor ``fd``, ignoring an ``OSError``: for a descriptor that may be closed
    already (a forked child's copy, a log being ended twice) or whose file was only appended to,
    where a failed close leaves nothing to do."""
    try:
        os.close(fd)
    except OSError:
        pass


def pread_full(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes of ``fd`` at ``offset``, fewer only where the file ends first (``os.pread``
    may return less than asked, on a network filesystem, before the end of file)."""
    out = os.pread(fd, n, offset)
    while len(out) < n:
        more = os.pread(fd, n - len(out), offset + len(out))
        if not more:
            break
        out += more
    return out


def write_file(path: str, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to a new file ``path`` (truncated if it exists, refused with
    ``FileExistsError`` if ``exclusive``), mode 0666 less the umask as ``open(path, "wb")``.

    The same as ``with open(path, "wb") as f: f.write(data)`` with plain system calls: Python's
    buffered file object costs ~15 us to build and close, several times the system calls
    themselves on a fast filesystem, and the engine writes a few small files per task.
    """
    fd = os.open(path, (_NEW_FILE_FLAGS | os.O_EXCL) if exclusive else _NEW_FILE_FLAGS, 0o666)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    """The whole content of ``path``, with plain system calls (see :func:`write_file`)."""
    fd = os.open(path, READ_FLAGS)
    try:
        size = os.fstat(fd).st_size
        chunks = []
        while True:
            chunk = os.read(fd, max(size, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            size = 1 << 16
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes, *, fsync: bool = False, hold: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    The rename makes the write atomic against process crashes. ``fsync`` (off by default: it
    costs 10-300 ms per call on network and virtual disks) adds durability against power loss;
    the readers of our records do not need it, because every record is signed and a torn or
    empty record fails verification and is treated as absent (the task is recomputed).

    The temp file is ``.{name}.tmp-{12 hex digits}`` beside ``path``; a kill -9 leaves it there.
    ``hold``: it is ``flock``ed from its creation until it has its name, so that
    :func:`remove_abandoned_temps` tells a killed writer's (the kernel lets go of a dead process's
    locks) from one being written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    held = None
    try:
        with open(tmp, "wb") as f:
            if hold:
                held = _hold(f.fileno())
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        # renamed once closed: a write error that only the close reports (NFS reports them there,
        # and sends the data to the server there) leaves nothing under the name; with ``hold``,
        # a copy of the open file (``held``) keeps the lock through the rename
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)  # a full disk or an interrupt leaves no half-written temp file behind
        raise
    finally:
        if held is not None:
            os.close(held)
    if fsync:
        fsync_dir(directory)


def _hold(fd: int) -> Optional[int]:
    """Lock the open file of ``fd`` (exclusive, ``flock``); a copy of ``fd`` that keeps the lock
    once ``fd`` is closed (the lock is the open file's), or None where it cannot be locked."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        return None  # a filesystem without locks: remove_abandoned_temps goes by the age alone
    return os.dup(fd)


#: errors of ``flock`` that say a filesystem has no locks (not that a file is locked, nor that the
#: call was wrong: NFS refuses an exclusive lock of a file not open for writing with EBADF)
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


#: a temp file of :func:`atomic_write_bytes` (group 1: the name it is written for)
_TEMP_NAME = re.compile(r"\.(.+)\.tmp-[0-9a-f]{12}")
#: the file :func:`folder_clock` makes (and removes) to read a folder's clock; a killed cleaner's goes later
_CLOCK_PROBE = re.compile(r"\.clock-probe-[0-9a-f]+")
#: how long a temp file of :func:`atomic_write_bytes` must be untouched (by its folder's clock) to be taken for a killed writer's
ABANDONED_TEMP_AGE = 3600.0


def folder_clock(folder: int) -> Optional[float]:
    """The time now by the clock that stamps the files of ``folder`` (a descriptor): the
    modification time of a file written there (and removed). On NFS that is the server's clock,
    not this host's, so an age measured against it is right however far this host's clock is
    off (whatever the create did with the times). On a full disk or quota (when clean is run most)
    the file's times, or where no file can be made the folder's, are set instead, as ``touch``
    does, by that clock. None where neither can."""
    name = f".clock-probe-{unique_suffix()}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=folder)
    except OSError as e:  # (no inode nor quota left for it: the folder's times)
        try:
            return os.utime(folder) or os.fstat(folder).st_mtime if e.errno in (errno.ENOSPC, errno.EDQUOT) else None
        except OSError:
            return None
    try:
        try:
            try:
                os.write(fd, b"0")  # closed, then looked at: the server's time (NFS sends it at the close at the latest)
            finally:
                os.close(fd)
        except OSError:  # a full disk or quota: its times set to now by that clock
            os.utime(name, dir_fd=folder, follow_symlinks=False)
        return os.stat(name, dir_fd=folder, follow_symlinks=False).st_mtime
    except OSError:
        return None
    finally:
        try:
            os.unlink(name, dir_fd=folder)
        except OSError:
            pass


def remove_abandoned_temps(folder: int, written: Callable[[str], bool], older_than: float = ABANDONED_TEMP_AGE) -> List[str]:
    """Remove the temp files that writers of :func:`atomic_write_bytes` (with ``hold``) killed
    mid-write left in ``folder`` (a descriptor); returns their names.

    Only a file named as such a temp file (``.{name}.tmp-{12 hex digits}``) of a ``name`` that
    ``written`` accepts (the files the caller's folder holds), a regular file of this user (not a
    link), untouched for ``older_than`` seconds, and that no process holds locked: its writer
    holds its lock until the rename, so a write in progress is never removed (on a filesystem
    without locks, where it cannot, the age alone decides; a ``flock`` error that does not say so
    keeps the file). Anything else is left alone. The age is told by the folder's own clock
    (:func:`folder_clock`), not this host's: on NFS a file's times are the server's, and a host
    whose clock is ahead would take a file being written for an old one, one whose clock is
    behind would never remove any (nothing is removed where that clock cannot be read). A probe
    of that clock that a killed cleaner left goes too, as old."""
    import fcntl

    now = folder_clock(folder)
    if now is None:
        return []  # (no file can be made there: nor removed)
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _TEMP_NAME.fullmatch(name)
        if (match is None or not written(match.group(1))) and _CLOCK_PROBE.fullmatch(name) is None:
            continue
        try:
            # for writing: NFS (flock emulated by byte-range locks) locks a file exclusively only
            # then; its writer's lock is seen through this open file either way
            fd = os.open(name, os.O_RDWR | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), dir_fd=folder)
        except OSError:
            continue  # gone meanwhile, a link, or not this user's to write: not the engine's
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or now - st.st_mtime < older_than:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer still runs (or a child it forked meanwhile): it stays
            except OSError as e:
                if e.errno not in _NO_LOCKS:
                    continue  # whether its writer runs cannot be told: it stays
                # no locks here: by the age alone
            if os.path.samestat(st, os.stat(name, dir_fd=folder, follow_symlinks=False)):
                os.unlink(name, dir_fd=folder)
                removed.append(name)
        except OSError:
            continue  # renamed or removed meanwhile
        finally:
            os.close(fd)
    return removed


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (renames into it) durable; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_renameat2 = None
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP)


def _rename2(a: str, b: str, flags: int) -> bool:
    """``renameat2(a, b, flags)``: True if done, False (nothing changed) where the system or the
    filesystem cannot do it; other failures raise ``OSError``."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            _renameat2 = libc.renameat2
            _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), a, None, b)
    raise OSError(err, os.strerror(err), a, None, b)


def exchange_paths(a: str, b: str) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the system or the filesystem cannot do it; the
    caller then falls back to two renames.
    """
    return _rename2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(a: str, b: str) -> bool:
    """Rename ``a`` to ``b`` unless ``b`` exists (``FileExistsError``, nothing changed), in one
    atomic step (Linux ``renameat2(RENAME_NOREPLACE)``).

    Returns False, having changed nothing, where the system or the filesystem cannot do it (the
    caller then uses ``os.link`` and an unlink, which give the same result in three steps). A
    folder whose filesystem said so is not asked again: on a network filesystem each refused call
    is a round trip, once per task commit.
    """
    folder = os.path.dirname(b)
    if folder in _no_noreplace:
        return False
    if _rename2(a, b, _RENAME_NOREPLACE):
        return True
    _no_noreplace.add(folder)
    return False


#: folders whose filesystem cannot rename without replacing (see :func:`rename_noreplace`)
_no_noreplace: set = set()


def create_whole(path: str, data: bytes) -> None:
    """Create the file ``path`` holding ``data``, seen by readers whole or not at all, unless
    ``path`` exists (``FileExistsError``, nothing changed).

    The file is written unnamed (Linux ``O_TMPFILE``) and then given its name (``linkat``, which
    fails if the name exists): two system calls fewer than a named temp file renamed without
    replacing, no temp name to add to and remove from the folder, and a crash before the link
    leaves nothing behind (the kernel frees an unnamed file). Measured here, 2,000 commit-sized
    records in interleaved rounds: 16.8 vs 26.3 us of CPU a record on ext4, 6.8 vs 9.0 on tmpfs.
    Where the filesystem or the system cannot (no ``O_TMPFILE``: NFS, other systems; no
    ``/proc``), a temp file is renamed with :func:`rename_noreplace` (or linked) instead; a folder
    whose filesystem refused ``O_TMPFILE`` is not asked again.
    """
    folder = os.path.dirname(path) or "."
    if folder not in _no_tmpfile and _TMPFILE:
        try:
            fd = os.open(folder, _TMPFILE | os.O_WRONLY | _CLOEXEC, 0o666)
        except OSError as e:
            if e.errno in _UNSUPPORTED + (errno.EISDIR,):
                _no_tmpfile.add(folder)
        else:
            try:
                write_all(fd, data)
                os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=_proc_anchor(), follow_symlinks=True)
                return
            except FileExistsError:
                raise
            except OSError as e:  # no /proc (ENOENT), or a link the filesystem refuses: the named way
                if e.errno in _UNSUPPORTED + (errno.ENOENT, errno.EXDEV, errno.EPERM):
                    _no_tmpfile.add(folder)
            finally:
                os.close(fd)
    tmp = f"{path}.tmp-{unique_suffix()}"
    write_file(tmp, data, exclusive=True)
    try:
        if rename_noreplace(tmp, path):
            tmp = None
            return
        os.link(tmp, path)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


_TMPFILE = getattr(os, "O_TMPFILE", 0)
#: folders whose filesystem cannot create unnamed files (see :func:`create_whole`)
_no_tmpfile: set = set()
_proc_fd = [None]


def _proc_anchor() -> int:
    """A folder descriptor for ``linkat``: with one, ``os.link`` follows the ``/proc/self/fd``
    link to the unnamed file (``AT_SYMLINK_FOLLOW``); without, Python calls ``link()``, which
    does not."""
    if _proc_fd[0] is None:
        _proc_fd[0] = os.open("/", os.O_RDONLY | _CLOEXEC)
    return _proc_fd[0]


if hasattr(os, "register_at_fork"):  # a forked worker closes the descriptors it inherits
    os.register_at_fork(after_in_child=lambda: _proc_fd.__setitem__(0, None))


def atomic_write_text(path: str, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), fsync=fsync)


def sign(data: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


#: the length of a key made by :func:`private_key`
KEY_BYTES = 32


def private_key(path: str, what: str, refusal: str, *, create: bool = True) -> Optional[bytes]:
    """The signing key kept in file ``path``: :data:`KEY_BYTES` random bytes, created owner-only
    (``0600``, exclusively) when there is none (None instead if not ``create``).

    One mechanism for the keys that sign records shared by jobs (the task cache's, the data
    root's records of published results): whoever can read the key can sign records its readers
    trust, so a key that is not a regular file private to this user (owned by someone else,
    readable or writable by group or others, a symbolic link) is refused with a
    :class:`~smallpond.errors.ParameterError` naming it (``what``: what it is; ``refusal``: what
    is refused). A key shorter than :data:`KEY_BYTES` is one being written by another process
    (waited for), else the leftover of a crash, replaced by a new one: records signed with it no
    longer verify and count as absent, which their readers allow for.
    """
    from smallpond.errors import ParameterError

    for attempt in range(40):
        try:
            fd = os.open(path, READ_FLAGS | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            if not create:
                return None
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
            except FileExistsError:
                continue  # another process made it first: read theirs
            key = os.urandom(KEY_BYTES)
            try:
                write_all(fd, key)
            finally:
                os.close(fd)
            return key
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise ParameterError(f"{what} {path} is a symbolic link, not a file of its own: {refusal}") from None
        try:
            st = os.fstat(fd)
            if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
                raise ParameterError(
                    f"{what} {path} is not private to this user (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}): {refusal}"
                )
            key = pread_full(fd, KEY_BYTES + 1, 0)
        finally:
            os.close(fd)
        if len(key) >= KEY_BYTES:
            return key
        if attempt < 20:
            time.sleep(0.05)  # being written by the process that created it
            continue
        tmp = f"{path}.tmp-{unique_suffix()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
        try:
            write_all(fd, os.urandom(KEY_BYTES))
        finally:
            os.close(fd)
        os.replace(tmp, path)  # a crash left it short: read back whichever key won
    raise ParameterError(f"{what} {path} could not be read: it keeps changing; {refusal}")


def signed_bytes(payload: bytes, secret: bytes, second: Optional[bytes] = None) -> bytes:
    """``payload`` framed as a signed record (see the module docstring); given a ``second``
    secret, a record that verifies under either."""
    if second is None:
        return _SIG_MAGIC + hashlib.sha256(payload).digest() + hmac.digest(secret, payload, "sha256") + payload
    sigs = hmac.digest(secret, payload, "sha256") + hmac.digest(second, payload, "sha256")
    return _SIG_MAGIC_TWO + hashlib.sha256(payload).digest() + sigs + payload


def _signatures(data: bytes) -> int:
    """How many HMACs a record framed as ``SPSIG2`` (1) or ``SPSIG3`` (2) carries after its digest;
    0 if ``data`` is not such a record (whole)."""
    n = 2 if data.startswith(_SIG_MAGIC_TWO) else 1 if data.startswith(_SIG_MAGIC) else 0
    return n if n and len(data) >= len(_SIG_MAGIC) + (1 + n) * _DIGEST else 0


def unverified_payload(data: bytes) -> bytes:
    """The payload of a signed record *without* verifying it (``data`` itself if it is not one):
    only for housekeeping that decides what to keep, never for what to trust."""
    signatures = _signatures(data)
    return data[len(_SIG_MAGIC) + (1 + signatures) * _DIGEST :] if signatures else data


def verified_payload(data: bytes, secret: bytes, path: str = "") -> bytes:
    """The payload of a signed record, or :class:`CorruptRecord` / :class:`SignatureError`."""
    signatures = _signatures(data)
    if signatures:
        start = len(_SIG_MAGIC)
        digest, payload = data[start : start + _DIGEST], data[start + (1 + signatures) * _DIGEST :]
        sigs = [data[start + i * _DIGEST : start + (i + 1) * _DIGEST] for i in range(1, 1 + signatures)]
        if not hmac.compare_digest(digest, hashlib.sha256(payload).digest()):
            raise CorruptRecord(
                f"refusing to load {path!r}: the record is torn or damaged (its content does not match its digest)"
            )
        mine = sign(payload, secret)
        if not any([hmac.compare_digest(sig, mine) for sig in sigs]):
            raise SignatureError(
                f"refusing to load {path!r}: its signature does not match this job's secret "
                "(the record is intact but was not written by this job: it was altered or planted)"
            )
        return payload
    if data.startswith(_SIG_MAGIC_V1) and len(data) >= len(_SIG_MAGIC_V1) + _DIGEST:
        sig, payload = data[len(_SIG_MAGIC_V1) : len(_SIG_MAGIC_V1) + _DIGEST], data[len(_SIG_MAGIC_V1) + _DIGEST :]
        if not hmac.compare_digest(sig, sign(payload, secret)):
            raise SignatureError(f"refusing to load pickle {path!r}: its signature does not match this job's secret")
        return payload
    raise CorruptRecord(
        f"refusing to load unsigned pickle {path!r}: not a signed record ({len(data)} bytes; empty, torn or unsigned)"
    )


#: upstream's default ``buffering`` of :func:`dump` and :func:`load` (an I/O buffer size; the
#: bytes written or read do not depend on it)
DEFAULT_BUFFERING = 2 * 1024 * 1024


def dump(
    obj: Any,
    path: str,
    buffering: int = DEFAULT_BUFFERING,
    atomic_write: bool = True,
    *,
    secret: Optional[bytes] = None,
    fsync: bool = False,
) -> int:
    """Pickle ``obj`` with cloudpickle (signed if ``secret`` is given) and write it to ``path``;
    returns its size. ``buffering`` is the size of the write buffer of a non-atomic write."""
    import cloudpickle

    payload = cloudpickle.dumps(obj)
    if secret is not None:
        payload = signed_bytes(payload, secret)
    if atomic_write:
        atomic_write_bytes(path, payload, fsync=fsync)
    else:
        with open(path, "wb", buffering=buffering) as f:
            f.write(payload)
    return len(payload)


def load(path: str, buffering: int = DEFAULT_BUFFERING, *, secret: Optional[bytes] = None) -> Any:
    """Load a pickle written by :func:`dump`, verifying its signature when ``secret`` is given."""
    import pickle

    with open(path, "rb", buffering=buffering) as f:
        data = f.read()
    if secret is not None:
        data = verified_payload(data, secret, path)
    return pickle.loads(data)


def link_or_copy(src: str, dst: str, *, allow_link: bool = True) -> str:
    """Hard-link ``src`` to ``dst`` if possible, else copy it (:func:`clone_or_copy`). Returns
    "link" or "copy"."""
    if allow_link:
        try:
            os.link(src, dst)
            return "link"
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    clone_or_copy(src, dst)
    return "copy"


#: ioctl FICLONE (linux/fs.h): the destination shares the source's blocks copy-on-write
_FICLONE = 0x40049409


def clone_or_copy(src: str, dst: str) -> str:
    """Make ``dst`` an independent copy of ``src`` (a new inode: writing one never changes the
    other). A reflink (``FICLONE``: btrfs, XFS, bcachefs...) shares blocks until either is
    written and costs no copy; where the filesystem lacks it, the bytes are copied. Returns
    "clone" or "copy"."""
    try:
        import fcntl

        with open(src, "rb") as fs, open(dst, "wb") as fd:
            fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
        return "clone"
    except (ImportError, OSError):
        pass
    shutil.copyfile(src, dst)
    return "copy"


def folder_size(path: str) -> int:
    """Bytes of the files under ``path`` (symbolic links are not followed)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
